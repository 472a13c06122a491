//! The model sources over HTTP: `GET /admin/v1/sources` (what `sluice ctl sources` shows) and
//! the MLflow registry webhook, `POST /admin/v1/sources/mlflow/webhook`. The webhook is not
//! behind the admin token (MLflow cannot send one): its HMAC signature under the source's
//! `webhook_secret` is the authentication, and all it can do is make a source look at the
//! registry now.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::http::{HttpState, json_ok, read_body};
use sluice_core::error::ServeError;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/v1/sources", get(list_sources))
        .route("/admin/v1/sources/mlflow/webhook", post(mlflow_webhook))
}

async fn list_sources(State(state): State<Arc<HttpState>>) -> Response {
    json_ok(&serde_json::json!({ "sources": state.sources.views() }))
}

async fn mlflow_webhook(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let body = read_body(&state, &headers, body).await?;
        let woken = state.sources.webhook(&headers, &body)?;
        Ok::<_, ServeError>(json_ok(
            &serde_json::json!({ "accepted": true, "sources": woken }),
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

//! `POST /v2/models/{m}/outcomes`: the ground truth for answers already given, by request id.
//! The whole batch is checked before anything is joined, so a bad record refuses the batch
//! (400 naming the record and field; 413 over `outcomes.max_batch`) and changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::http::{HttpState, json_ok, read_body};
use crate::outcomes::Source;
use crate::outcomes::record::{BatchError, parse_batch};
use crate::telemetry::quality::OutputKind;
use sluice_core::error::{ErrorKind, ServeError, ServeResult};

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/v2/models/{model}/outcomes", post(post_outcomes))
}

async fn post_outcomes(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        state.outcomes_auth.authorize(&headers, peer)?;
        let outcomes = state.inference.outcomes().cloned().ok_or_else(|| {
            ServeError::not_found("outcomes are off here (outcomes.enabled = false)")
        })?;
        let kinds = output_kinds(&state, &model)?;
        let body = read_body(&state, &headers, body).await?;
        let records = parse_batch(&body, outcomes.config().max_batch).map_err(|e| match e {
            BatchError::Invalid(reason) => ServeError::bad_request(reason),
            BatchError::TooMany { given, limit } => ServeError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "{given} outcomes in one call, more than the limit of {limit} \
                     (outcomes.max_batch); send them in smaller batches"
                ),
            ),
        })?;
        for (i, r) in records.iter().enumerate() {
            if !kinds.iter().any(|k| k.accepts(&r.outcome.truth)) {
                return Err(ServeError::bad_request(format!(
                    "outcomes[{i}]: model '{model}' predicts {}; its outcomes are {}",
                    kinds[0].as_str(),
                    match kinds[0] {
                        OutputKind::Class => "'label' (the true class) or 'reward'",
                        OutputKind::Value => "'value' (the true target) or 'reward'",
                        OutputKind::Other => "'reward' only",
                    }
                )));
            }
        }
        Ok::<_, ServeError>(json_ok(&outcomes.apply(&model, &records, Source::Http)))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// What the model's loaded versions predict (usually one kind; versions may differ).
fn output_kinds(state: &HttpState, model: &str) -> ServeResult<Vec<OutputKind>> {
    let snapshot = state.inference.router().snapshot();
    let routes = snapshot.models.get(model).ok_or_else(|| {
        ServeError::not_found(format!(
            "unknown model '{}'",
            sluice_core::error::truncate(model, sluice_core::error::ECHO_MAX)
        ))
    })?;
    let mut kinds: Vec<OutputKind> = Vec::new();
    for v in routes.versions.values() {
        let kind = OutputKind::of(&v.signature);
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        kinds.push(OutputKind::Other);
    }
    Ok(kinds)
}

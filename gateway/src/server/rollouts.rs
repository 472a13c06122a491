//! The rollout admin API: start (`POST .../rollouts`), show (`GET .../rollout`) and abort
//! (`DELETE .../rollout`) a model's guarded rollout. Mutations go through the admin auth like
//! every other change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::http::{HttpState, authorized_json, json_ok};
use crate::rollout::{Assessment, RolloutOverrides, RolloutPlan};
use crate::routing::{Decision, Phase, Rollout, RolloutState};
use sluice_core::error::ServeError;

type AppState = State<Arc<HttpState>>;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/v1/models/{model}/rollouts", post(start))
        .route("/admin/v1/models/{model}/rollout", get(show).delete(abort))
}

/// A rollout as the API shows it.
#[derive(Serialize)]
struct RolloutView<'a> {
    model: &'a str,
    id: u64,
    /// The version being rolled out.
    version: u64,
    /// The primary it is compared with, and the rollback target.
    baseline: u64,
    state: RolloutState,
    /// shadow, step, watch or finished.
    phase: &'static str,
    /// The current step (0-based) while in one.
    step_index: Option<usize>,
    /// The candidate's share of unversioned traffic, in percent.
    weight: f64,
    started_at: String,
    elapsed_s: f64,
    phase_elapsed_s: f64,
    /// Why the last decision was taken.
    reason: &'a str,
    plan: &'a RolloutPlan,
    /// The guard's latest comparison, while the rollout runs.
    comparison: Option<Assessment>,
    timeline: &'a [Decision],
}

fn view<'a>(model: &'a str, r: &'a Rollout, comparison: Option<Assessment>) -> RolloutView<'a> {
    let now = Instant::now();
    RolloutView {
        model,
        id: r.id,
        version: r.candidate,
        baseline: r.baseline,
        state: r.state,
        phase: r.phase.as_str(),
        step_index: match r.phase {
            Phase::Step(i) => Some(i),
            _ => None,
        },
        weight: r.weight(),
        started_at: humantime::format_rfc3339_millis(r.started_at).to_string(),
        elapsed_s: now.saturating_duration_since(r.started).as_secs_f64(),
        phase_elapsed_s: now.saturating_duration_since(r.phase_started).as_secs_f64(),
        reason: &r.reason,
        plan: &r.plan,
        comparison,
        timeline: &r.timeline,
    }
}

/// Starts a guarded rollout of a loaded version: every field but `version` defaults from the
/// `[rollout]` config section. 400 names the bad field, 404 an unknown model or version, 409 a
/// rollout already under way.
async fn start(
    State(state): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let (actor, request): (_, RolloutOverrides) =
            authorized_json(&state, &headers, peer, body, "rollout").await?;
        let rollout = state.guard.start(&model, &request, &actor).await?;
        let body = json_ok(&view(&model, &rollout, None));
        Ok::<_, ServeError>((StatusCode::CREATED, body).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn show(State(state): AppState, Path(model): Path<String>) -> Response {
    match state.guard.get(&model) {
        Ok((rollout, latest)) => json_ok(&view(&model, &rollout, latest)),
        Err(error) => error.into_response(),
    }
}

/// Aborts the running rollout: all traffic back on the baseline at once.
async fn abort(
    State(state): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let actor = state.auth.authorize(&headers, peer)?;
        let rollout = state.guard.abort(&model, &actor).await?;
        Ok::<_, ServeError>(json_ok(&view(&model, &rollout, None)))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

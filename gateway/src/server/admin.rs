//! Model control over HTTP: Triton's repository API (`/v2/repository/...`) and sluice's own
//! admin API (`/admin/v1/...`). Reads are open; every mutation goes through [`super::auth::AdminAuth`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::http::{HttpState, authorized_json, json_ok, read_body};
use crate::lifecycle::{IndexEntry, ModelState};
use crate::repository::LoadedVersion;
use crate::routing::{ModelRoutes, TrafficPolicy};
use crate::telemetry::compare::ShadowSummary;
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::TensorSpec;

type AppState = State<Arc<HttpState>>;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/admin/v1/models", get(list_models))
        .route("/admin/v1/models/{model}", get(show_model))
        .route("/admin/v1/models/{model}/stats", get(model_stats))
        .route(
            "/admin/v1/models/{model}/traffic",
            get(show_traffic).put(set_traffic),
        )
        .merge(super::rollouts::routes())
        .merge(super::sources::routes())
}

/// Triton's index entry: versions are strings, absent when nothing is loaded.
#[derive(Serialize)]
struct TritonIndexEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    state: ModelState,
    reason: String,
}

#[derive(serde::Deserialize, Default)]
struct IndexRequest {
    /// Only models that are ready (Triton's `ready` flag).
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(state): AppState, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let body = read_body(&state, &headers, body).await?;
        let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
            IndexRequest::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ServeError::bad_request(format!("invalid index request: {e}")))?
        };
        let entries: Vec<TritonIndexEntry> = state
            .models
            .index()?
            .into_iter()
            .filter(|e: &IndexEntry| !request.ready || e.state == ModelState::Ready)
            .map(|e| TritonIndexEntry {
                name: e.name,
                version: e.version.map(|v| v.to_string()),
                state: e.state,
                reason: e.reason,
            })
            .collect();
        Ok::<_, ServeError>(json_ok(&entries))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Triton's load body: `{"parameters": {...}}` replaces the model's config or files for this
/// load. sluice always loads the folder as it is on disk, so it refuses parameters rather than
/// ignore them, as the gRPC load does.
#[derive(serde::Deserialize, Default)]
#[serde(expecting = "a load request: an object with optional \"parameters\"")]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

async fn load(
    State(state): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let actor = state.auth.authorize(&headers, peer)?;
        let body = read_body(&state, &headers, body).await?;
        let request: LoadRequest = if body.iter().all(u8::is_ascii_whitespace) {
            LoadRequest::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ServeError::bad_request(format!("invalid load request: {e}")))?
        };
        if let Some(key) = request.parameters.keys().next() {
            return Err(sluice_protocol::unsupported_load_parameter(key));
        }
        let report = state.control.load(&model, &actor).await?;
        Ok::<_, ServeError>(json_ok(&report))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn unload(
    State(state): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let actor = state.auth.authorize(&headers, peer)?;
        state.control.unload(&model, &actor).await?;
        Ok::<_, ServeError>(json_ok(
            &serde_json::json!({ "model": model, "unloaded": true }),
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// One model as the admin API shows it.
#[derive(Serialize)]
struct ModelView<'a> {
    name: &'a str,
    state: ModelState,
    /// The version answering requests without a version in the URL.
    serving_version: Option<u64>,
    /// Whether `serving_version` was set by a traffic policy (else: newest loaded).
    primary_pinned: bool,
    versions: Vec<VersionView<'a>>,
    /// The last failed load of this model, if the failure is the latest news about it.
    last_error: Option<String>,
    /// The traffic policy in force.
    traffic: TrafficPolicy,
    /// Shadow comparisons so far, per shadow version.
    shadow: Vec<ShadowView>,
    /// The sources that feed this model (a bucket, a registry): what they last saw and their
    /// last error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sources: Vec<crate::sources::SourceView>,
}

#[derive(Serialize)]
struct ShadowView {
    version: u64,
    #[serde(flatten)]
    summary: ShadowSummary,
}

#[derive(Serialize)]
struct VersionView<'a> {
    version: u64,
    runtime: &'static str,
    loaded_at: String,
    /// Requests waiting for a worker right now.
    queued: usize,
    inputs: &'a [TensorSpec],
    outputs: &'a [TensorSpec],
}

fn version_view(v: &LoadedVersion) -> VersionView<'_> {
    VersionView {
        version: v.version,
        runtime: v.runtime.as_str(),
        loaded_at: humantime::format_rfc3339_seconds(v.loaded_at).to_string(),
        queued: v.runner.queued(),
        inputs: &v.signature.inputs,
        outputs: &v.signature.outputs,
    }
}

fn model_view<'a>(
    state: &HttpState,
    name: &'a str,
    routes: Option<&'a ModelRoutes>,
    error: Option<String>,
) -> ModelView<'a> {
    let serving = routes.and_then(|r| r.primary_version()).map(|v| v.version);
    ModelView {
        name,
        state: if serving.is_some() {
            ModelState::Ready
        } else {
            ModelState::Unavailable
        },
        serving_version: serving,
        primary_pinned: routes.is_some_and(|r| r.traffic.primary.is_some()),
        versions: routes
            .map(|r| r.versions.values().rev().map(|v| version_view(v)).collect())
            .unwrap_or_default(),
        last_error: error,
        traffic: routes.map(|r| r.traffic.to_policy()).unwrap_or_default(),
        shadow: state
            .inference
            .shadow()
            .summaries(name)
            .into_iter()
            .map(|(version, summary)| ShadowView { version, summary })
            .collect(),
        sources: state.sources.feeding(name),
    }
}

async fn list_models(State(state): AppState) -> Response {
    let snapshot = state.models.router().snapshot();
    let failures = state.models.failures();
    let mut names: Vec<&String> = snapshot.models.keys().chain(failures.keys()).collect();
    names.sort();
    names.dedup();
    let views: Vec<ModelView<'_>> = names
        .into_iter()
        .map(|name| {
            model_view(
                &state,
                name,
                snapshot.models.get(name),
                failures.get(name).cloned(),
            )
        })
        .collect();
    json_ok(&serde_json::json!({ "models": views }))
}

async fn show_model(State(state): AppState, Path(model): Path<String>) -> Response {
    let snapshot = state.models.router().snapshot();
    let failure = state.models.failures().remove(&model);
    let found: ServeResult<Response> = match (snapshot.models.get(&model), failure) {
        // A model a source feeds but has not loaded yet (its registry unreachable since
        // start-up) is shown with the source's error.
        (None, None) if state.sources.feeding(&model).is_empty() => {
            Err(ServeError::unknown_model(&model))
        }
        (routes, failure) => Ok(json_ok(&model_view(&state, &model, routes, failure))),
    };
    found.unwrap_or_else(IntoResponse::into_response)
}

async fn show_traffic(State(state): AppState, Path(model): Path<String>) -> Response {
    let snapshot = state.models.router().snapshot();
    match snapshot.models.get(&model) {
        Some(routes) => json_ok(&routes.traffic.to_policy()),
        None => ServeError::unknown_model(&model).into_response(),
    }
}

/// Replaces the model's traffic policy as a whole, validated against the versions loaded at
/// the moment it is stored; a refused policy changes nothing and every problem is named.
async fn set_traffic(
    State(state): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let (actor, policy): (_, TrafficPolicy) =
            authorized_json(&state, &headers, peer, body, "traffic policy").await?;
        let in_force = state.control.set_traffic(&model, &policy, &actor).await?;
        Ok::<_, ServeError>(json_ok(&in_force))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    /// Span to summarise, e.g. "60s" (default 60s, at most 120s).
    window: Option<String>,
}

#[derive(Serialize)]
struct VariantStats {
    version: u64,
    variant: sluice_core::Variant,
    #[serde(flatten)]
    stats: crate::telemetry::window::WindowStats,
    /// Live quality from joined outcomes over the same span (at most 5 minutes, in
    /// 10-second slots); absent before any outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<crate::telemetry::quality::QualityView>,
}

/// Drift of one version over its drift window (`drift.window`, not the stats span).
#[derive(Serialize)]
struct VersionDrift {
    version: u64,
    #[serde(flatten)]
    report: crate::drift::DriftReport,
}

/// p50/p90/p99, request rate and server-side error rate per version and variant over a recent
/// span, straight from the in-process rolling windows; and drift per version with a profile.
async fn model_stats(
    State(state): AppState,
    Path(model): Path<String>,
    axum::extract::Query(query): axum::extract::Query<StatsQuery>,
) -> Response {
    let run = || {
        let span = match &query.window {
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                ServeError::bad_request(format!("window: '{text}' is not a duration: {e}"))
            })?,
            None => std::time::Duration::from_secs(60),
        };
        let snapshot = state.models.router().snapshot();
        let routes = snapshot
            .models
            .get(&model)
            .ok_or_else(|| ServeError::unknown_model(&model))?;
        let mut series = Vec::new();
        for version in routes.versions.values().rev() {
            for variant in [
                sluice_core::Variant::Primary,
                sluice_core::Variant::Canary,
                sluice_core::Variant::Direct,
                sluice_core::Variant::Shadow,
            ] {
                let stats = version.windows.get(variant).stats(span);
                let quality = Some(version.quality.get(variant).view(span))
                    .filter(|q| q.outcomes > 0 && variant != sluice_core::Variant::Shadow);
                if stats.requests > 0 || quality.is_some() {
                    series.push(VariantStats {
                        version: version.version,
                        variant,
                        stats,
                        quality,
                    });
                }
            }
        }
        let drift: Vec<VersionDrift> = routes
            .versions
            .values()
            .rev()
            .filter_map(|v| {
                let report = v.drift.as_ref()?.report();
                Some(VersionDrift {
                    version: v.version,
                    report,
                })
            })
            .collect();
        Ok::<_, ServeError>(json_ok(&serde_json::json!({
            "model": model,
            "window_seconds": span.as_secs().clamp(1, 120),
            "series": series,
            "drift": drift,
            "baseline_accuracy": routes
                .versions
                .values()
                .rev()
                .filter_map(|v| Some(serde_json::json!({
                    "version": v.version,
                    "accuracy": v.baseline_accuracy?,
                })))
                .collect::<Vec<_>>(),
        })))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

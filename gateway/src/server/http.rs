//! The HTTP listener's routes: KServe v2 (JSON), V1 predict, health and metadata. Handlers only
//! decode, call the one inference path, and encode; errors become responses in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::infer::Inference;
use crate::lifecycle::ModelManager;
use sluice_core::error::{ErrorKind, ServeError, ServeResult};
use sluice_protocol::{binary, v1, v2};

/// Response header naming the version that answered.
pub const MODEL_VERSION_HEADER: &str = "sluice-model-version";
/// Response header naming the side of the traffic split that answered.
pub const VARIANT_HEADER: &str = "sluice-variant";

/// What every handler shares.
pub struct HttpState {
    pub inference: Arc<Inference>,
    pub models: Arc<ModelManager>,
    pub ready: Arc<AtomicBool>,
    pub max_body_size: usize,
    /// `server.max_response_size`, also applied to the encoded JSON answer.
    pub max_response_size: usize,
    /// `server.connections.body_read_timeout`: longest a body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// Gatekeeper for mutating calls.
    pub auth: super::auth::AdminAuth,
    /// Gatekeeper for the outcomes endpoint (its own token, so applications need not hold
    /// the admin one).
    pub outcomes_auth: super::auth::AdminAuth,
    /// Runs guarded rollouts.
    pub guard: Arc<crate::controllers::Guard>,
    /// Where every change of a model goes (this node, or the fleet's control topic).
    pub control: Arc<dyn crate::control::ModelControl>,
    /// The model sources (bucket, registries): their status and webhooks.
    pub sources: Arc<crate::sources::Sources>,
}

type AppState = State<Arc<HttpState>>;

/// The HTTP listener's service. The two inference routes carry nearly all of its traffic, so
/// they are recognised here and go straight to their handler; everything else (and any
/// inference path the router must decode, such as a percent-encoded name) goes through the
/// router. Profiled, batch-1 churn: the router's path match and URL-parameter map (2.5 %) and
/// its error-wrapping layer's boxed future (2.2 %) were ~4 % of the server's CPU per request,
/// for routes whose shape is fixed and whose errors are JSON already.
#[derive(Clone)]
pub struct HttpService {
    state: Arc<HttpState>,
    router: Router,
}

impl HttpService {
    pub fn new(state: Arc<HttpState>) -> HttpService {
        HttpService {
            router: routes(Arc::clone(&state)),
            state,
        }
    }
}

type BoxedAnswer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
>;

impl tower::Service<http::Request<hyper::body::Incoming>> for HttpService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        BoxedAnswer,
        <Router as tower::Service<http::Request<hyper::body::Incoming>>>::Future,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        use futures_util::future::Either;
        if request.method() == Method::POST
            && let Some((model, version)) = infer_target(request.uri().path())
        {
            let state = Arc::clone(&self.state);
            let (parts, body) = request.into_parts();
            return Either::Left(Box::pin(async move {
                Ok(
                    run_v2(&state, model, version, parts.headers, Body::new(body))
                        .await
                        .unwrap_or_else(IntoResponse::into_response),
                )
            }));
        }
        Either::Right(tower::Service::call(&mut self.router, request))
    }
}

/// The model and version of `/v2/models/{model}/infer` or
/// `/v2/models/{model}/versions/{version}/infer`, when each is a plain path segment (not
/// empty, nothing percent-encoded: those are the router's to decode and refuse).
fn infer_target(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
    let plain = |segment: &str| !segment.is_empty() && !segment.contains(['/', '%']);
    match rest.split_once('/') {
        None => plain(rest).then(|| (rest.to_owned(), None)),
        Some((model, tail)) => {
            let version = tail.strip_prefix("versions/")?;
            (plain(model) && plain(version)).then(|| (model.to_owned(), Some(version.to_owned())))
        }
    }
}

fn routes(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        // TF-Serving puts the verb after a colon in the last segment (`churn:predict`), which
        // a path pattern cannot split; the handler parses the tail itself.
        .route("/v1/models/{*target}", post(v1_predict))
        .merge(super::admin::routes())
        .merge(super::outcomes::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Outermost: whatever answers an error without JSON (an extractor's rejection, such
        // as a path that is not valid percent-encoded UTF-8) is turned into `{"error": ...}`.
        // Layers here do not see the inference requests `HttpService` matches by hand (their
        // errors are JSON already); a layer those need belongs in `HttpService::call`.
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Wraps a non-JSON error answer's text as `{"error": ...}`, keeping its status.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match text.as_str() {
        "" => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
        // axum's words for a path segment it cannot decode.
        t if t.starts_with("Invalid URL") => format!(
            "the request path is not valid: {}; percent-encoded path segments must decode \
             to UTF-8",
            t.trim_start_matches("Invalid URL")
                .trim_start_matches(':')
                .trim()
        ),
        t => t.to_string(),
    };
    let mut json = ServeError::new(ErrorKind::BadRequest, message).into_response();
    *json.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn json_ok(value: &impl serde::Serialize) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// The common start of a mutating admin call: authorize the caller, then read and parse the
/// JSON body; `what` names the body in the 400 ("invalid traffic policy: ...").
pub(super) async fn authorized_json<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    body: Body,
    what: &str,
) -> ServeResult<(crate::lifecycle::Actor, T)> {
    let actor = state.auth.authorize(headers, peer)?;
    let body = read_body(state, headers, body).await?;
    let parsed = serde_json::from_slice(&body)
        .map_err(|e| ServeError::bad_request(format!("invalid {what}: {e}")))?;
    Ok((actor, parsed))
}

/// Oversized bodies up to this size (or twice the limit) are read and thrown away before the
/// 413 goes out.
const DRAIN_AT_MOST: u64 = 8 << 20;

/// Reads and drops up to `cap` bytes of `body`.
async fn drain(mut body: Body, cap: u64) {
    use http_body_util::BodyExt;
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
        if read > cap {
            break;
        }
    }
}

/// Reads the whole body, refusing with 413 anything over the configured limit, before or
/// while it streams in, and with 408 a body that takes longer than the body timeout (a
/// chunked body announcing 2^63 bytes is never waited on for long).
pub(super) async fn read_body(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> ServeResult<Bytes> {
    let timeout = state.body_read_timeout;
    let mut untimed = std::pin::pin!(read_body_untimed(state, headers, body));
    // A small body has usually arrived with its head: take it without arming a timer (one
    // timer-wheel insert and cancel per request otherwise). A body still on its way is then
    // awaited under the timeout; the next poll registers the real waker.
    let ready = {
        let mut now = std::task::Context::from_waker(std::task::Waker::noop());
        std::future::Future::poll(untimed.as_mut(), &mut now)
    };
    if let std::task::Poll::Ready(read) = ready {
        return read;
    }
    tokio::time::timeout(timeout, untimed)
        .await
        .unwrap_or_else(|_| {
            Err(ServeError::new(
                ErrorKind::BodyTimeout,
                format!(
                    "the request body did not arrive within {} \
                     (server.connections.body_read_timeout)",
                    humantime::format_duration(timeout)
                ),
            ))
        })
}

async fn read_body_untimed(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> ServeResult<Bytes> {
    let limit = state.max_body_size;
    let too_large = || {
        ServeError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > limit as u64) {
        // The client is still sending: read and discard a moderately oversized body so that
        // it gets the 413 rather than a connection reset mid-upload. A huge one is cut off.
        if len <= (2 * limit as u64).max(DRAIN_AT_MOST) {
            drain(body, DRAIN_AT_MOST.max(2 * limit as u64)).await;
        }
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ServeError::bad_request(format!(
            "could not read request body: {e}"
        ))),
    }
}

async fn live() -> Response {
    json_ok(&serde_json::json!({ "live": true }))
}

async fn ready(State(state): AppState) -> Response {
    let ready = state.ready.load(Ordering::Acquire);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        serde_json::to_vec(&serde_json::json!({ "ready": ready })).unwrap_or_default(),
    )
}

async fn server_metadata() -> Response {
    json_ok(&v2::SERVER_METADATA)
}

fn metadata(state: &HttpState, model: &str, version: Option<&str>) -> ServeResult<Response> {
    let snapshot = state.models.router().snapshot();
    let target = snapshot.resolve(model, version)?;
    let versions = match version {
        Some(_) => vec![target.version.to_string()],
        None => snapshot
            .models
            .get(model)
            .map(|routes| routes.versions.keys().map(u64::to_string).collect())
            .unwrap_or_default(),
    };
    Ok(json_ok(&target.metadata(versions)))
}

async fn model_metadata(State(state): AppState, Path(model): Path<String>) -> Response {
    metadata(&state, &model, None).unwrap_or_else(IntoResponse::into_response)
}

async fn version_metadata(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata(&state, &model, Some(&version)).unwrap_or_else(IntoResponse::into_response)
}

fn readiness(state: &HttpState, model: &str, version: Option<&str>) -> Response {
    match state.inference.resolve(model, version) {
        Ok(_) => json_ok(&serde_json::json!({ "name": model, "ready": true })),
        Err(e) => e.into_response(),
    }
}

async fn model_ready(State(state): AppState, Path(model): Path<String>) -> Response {
    readiness(&state, &model, None)
}

async fn version_ready(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    readiness(&state, &model, Some(&version))
}

// The whole request rather than `HeaderMap` and `Body` extractors: axum's `HeaderMap`
// extractor clones the map (two allocations per request); the parts are moved out instead.
async fn infer(
    State(state): AppState,
    Path(model): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    run_v2(&state, model, None, parts.headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn infer_version(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    run_v2(&state, model, Some(version), parts.headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run_v2(
    state: &HttpState,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> ServeResult<Response> {
    let body = read_body(state, &headers, body).await?;
    // Plain v2 JSON and Triton's binary tensor framing share one decoder and one encoder.
    let (mut request, encoding) =
        binary::decode_request(&body, binary::header_length(&headers)?, model, version)?;
    request.keys.headers = headers;
    let response = state.inference.infer(request).await?;
    let encoded = binary::encode_response(&response, &encoding);
    check_encoded_size(state, encoded.body.len())?;
    let mut http = json_response(StatusCode::OK, encoded.body);
    if let Some(length) = encoded.header_length {
        let octets = HeaderValue::from_static("application/octet-stream");
        http.headers_mut().insert(header::CONTENT_TYPE, octets);
        http.headers_mut()
            .insert(binary::HEADER_LENGTH, HeaderValue::from(length));
    }
    stamp_version(&mut http, &response);
    Ok(http)
}

/// The core has capped the outputs' raw size; JSON text is larger than raw, so the encoded
/// answer is held to the same limit before it is sent.
fn check_encoded_size(state: &HttpState, len: usize) -> ServeResult<()> {
    if len > state.max_response_size {
        return Err(ServeError::new(
            ErrorKind::ResponseTooLarge,
            format!(
                "the answer would be {len} bytes, more than the limit of {} bytes \
                 (server.max_response_size); ask for fewer rows or outputs, or binary outputs",
                state.max_response_size
            ),
        ));
    }
    Ok(())
}

/// Says which version and which side of the traffic split answered, and the request id the
/// answer's outcome should name (an id that cannot be a header value is in the body only).
fn stamp_version(http: &mut Response, response: &sluice_core::InferResponse) {
    // Names made with `from_static` are used in place; a `&str` name is copied into a new
    // allocation per insert (profiled: three per answer).
    use axum::http::HeaderName;
    let headers = http.headers_mut();
    if let Some(id) = response
        .id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(HeaderName::from_static(crate::infer::REQUEST_ID_HEADER), id);
    }
    headers.insert(
        HeaderName::from_static(MODEL_VERSION_HEADER),
        version_value(response.version),
    );
    headers.insert(
        HeaderName::from_static(VARIANT_HEADER),
        HeaderValue::from_static(response.variant.as_str()),
    );
}

/// The version header's value; versions up to 255 are made once and shared (a clone is a
/// reference count, a new value two allocations).
fn version_value(version: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| (0..256u64).map(HeaderValue::from).collect());
    usize::try_from(version)
        .ok()
        .and_then(|v| small.get(v))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(version))
}

/// `{m}:predict` or `{m}/versions/{v}:predict`.
fn parse_v1_target(target: &str) -> ServeResult<(String, Option<String>)> {
    let unknown = || ServeError::not_found(format!("no V1 route for /v1/models/{target}"));
    let path = target.strip_suffix(":predict").ok_or_else(unknown)?;
    match path.split('/').collect::<Vec<_>>().as_slice() {
        [model] => Ok((model.to_string(), None)),
        [model, "versions", version] => Ok((model.to_string(), Some(version.to_string()))),
        _ => Err(unknown()),
    }
}

async fn v1_predict(
    State(state): AppState,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let (model, version) = parse_v1_target(&target)?;
        let body = read_body(&state, &headers, body).await?;
        let keys = sluice_core::RequestKeys {
            headers,
            parameters: Vec::new(),
        };
        // V1 has no datatypes: decode against the signature of the very version that runs it.
        let route = state.inference.route(&model, version.as_deref(), &keys)?;
        let (inputs, format) = v1::decode(&body, &route.target.signature)?;
        let request = sluice_core::InferRequest {
            model,
            version,
            inputs,
            protocol: sluice_core::Protocol::V1,
            keys,
            ..Default::default()
        };
        let response = state.inference.infer_routed(route, request).await?;
        let body = v1::encode(format, &response.outputs);
        check_encoded_size(&state, body.len())?;
        let mut http = json_response(StatusCode::OK, body);
        stamp_version(&mut http, &response);
        Ok::<_, ServeError>(http)
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn no_route(method: Method, uri: Uri) -> Response {
    ServeError::not_found(format!("no route for {method} {}", uri.path())).into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ServeError::new(
        ErrorKind::MethodNotAllowed,
        format!("method {method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_targets() {
        assert_eq!(
            parse_v1_target("churn:predict").unwrap(),
            ("churn".into(), None)
        );
        assert_eq!(
            parse_v1_target("churn/versions/2:predict").unwrap(),
            ("churn".into(), Some("2".into()))
        );
        assert!(parse_v1_target("churn:classify").is_err());
        assert!(parse_v1_target("a/b:predict").is_err());
    }

    #[test]
    fn inference_paths_matched_by_hand() {
        let target = |path| infer_target(path);
        assert_eq!(
            target("/v2/models/churn/infer"),
            Some(("churn".into(), None))
        );
        assert_eq!(
            target("/v2/models/churn/versions/3/infer"),
            Some(("churn".into(), Some("3".into())))
        );
        // A model may be called "versions".
        assert_eq!(
            target("/v2/models/versions/infer"),
            Some(("versions".into(), None))
        );
        for other in [
            "/v2/models/churn",
            "/v2/models/infer",
            "/v2/models//infer",
            "/v2/models/churn/infer/",
            "/v2/models/churn/versions/infer",
            "/v2/models/churn/versions//infer",
            "/v2/models/churn/versions/3/4/infer",
            "/v2/models/churn/other/3/infer",
            "/v2/models/ch%75rn/infer",
            "/v2/models/churn/versions/%33/infer",
            "/v1/models/churn/infer",
        ] {
            assert_eq!(target(other), None, "{other}");
        }
    }
}

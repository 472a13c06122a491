//! The gRPC listener: `inference.GRPCInferenceService` (KServe v2, wire-compatible with
//! `tritonclient.grpc`) and the standard `grpc.health.v1` health service.
//!
//! Like the HTTP handlers, every RPC only decodes, calls the core ([`Inference`] for inference,
//! [`ModelManager`] for the repository), and encodes; errors become a `tonic::Status` through the
//! one kind-to-code table in [`sluice_core::error`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::auth::AdminAuth;
use super::connections::ConnectionConfig;
use crate::infer::Inference;
use crate::lifecycle::{Actor, ModelManager};
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use sluice_core::error::{ErrorKind, ServeResult};
use sluice_protocol::grpc::{self as codec, proto};
use sluice_protocol::v2::SERVER_METADATA;

/// The service name health checks use for the inference service.
const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// What every RPC shares (the same parts the HTTP handlers share).
pub struct GrpcState {
    pub inference: Arc<Inference>,
    pub models: Arc<ModelManager>,
    pub ready: Arc<AtomicBool>,
    /// Largest accepted request message, `server.max_body_size` as for HTTP bodies.
    pub max_message_size: usize,
    /// Gatekeeper for the repository load/unload calls, the same as the HTTP admin API's.
    pub auth: AdminAuth,
    /// Where loads and unloads go (this node, or the fleet's control topic).
    pub control: Arc<dyn crate::control::ModelControl>,
}

/// The gRPC listener, built and ready to serve.
pub struct GrpcListener {
    routes: tonic::service::Routes,
    health: HealthReporter,
}

impl GrpcListener {
    /// Builds the services; health checks answer NOT_SERVING until [`set_serving`] says
    /// otherwise (set here, before anything can race the start-up's call).
    pub async fn new(state: GrpcState) -> GrpcListener {
        let max = state.max_message_size;
        // tonic refuses messages over 4 MiB by default; the limit is the HTTP body limit.
        let inference =
            GrpcInferenceServiceServer::new(InferenceService(state)).max_decoding_message_size(max);
        let (health, health_service) = tonic_health::server::health_reporter();
        set_serving(&health, false).await;
        let routes = tonic::service::Routes::new(inference).add_service(health_service);
        GrpcListener { routes, health }
    }

    /// The health reporter, for [`set_serving`].
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until shutdown is signalled, then lets open calls finish for at most `drain`
    /// (the same drain as the HTTP listener's). Connections get the HTTP listener's limits
    /// (the same accept loop, h2 only).
    pub async fn serve(
        self,
        listener: TcpListener,
        limits: ConnectionConfig,
        request_timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let mut stop = shutdown.clone();
        let health = self.health.clone();
        let not_serving = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
            set_serving(&health, false).await;
            std::future::pending::<()>().await;
        };
        // A unary call reads its whole message before the handler runs: a client trickling
        // it in is cut off after the body timeout (plus the time the call itself may take).
        let call_deadline = limits.body_read_timeout + request_timeout;
        let routes = self.routes.prepare();
        let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let call = tower::ServiceExt::oneshot(routes.clone(), request);
            async move {
                Ok::<_, std::convert::Infallible>(
                    match tokio::time::timeout(call_deadline, call).await {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => Status::deadline_exceeded(format!(
                            "the call did not complete within {call_deadline:?} \
                             (server.connections.body_read_timeout + server.request_timeout)"
                        ))
                        .into_http(),
                    },
                )
            }
        });
        let serving = super::connections::Listener {
            name: "grpc",
            service,
            http2_only: true,
            config: limits,
        };
        let serve = super::connections::serve(listener, serving, shutdown.clone());
        let deadline = async {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            () = serve => {}
            () = not_serving => {}
            () = deadline => tracing::warn!(?drain, "drain timeout reached; closing open gRPC connections"),
        }
    }
}

/// Reports the server (`""`) and the inference service as SERVING or NOT_SERVING.
pub async fn set_serving(health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

struct InferenceService(GrpcState);

impl InferenceService {
    /// The caller of a mutating call, if allowed: `authorization: Bearer <token>` metadata, or
    /// a loopback peer when no token is configured (the HTTP admin API's rules).
    fn authorize<T>(&self, request: &Request<T>) -> ServeResult<Actor> {
        // Always known for TCP connections; unknown counts as remote, so it fails closed.
        let peer = request
            .remote_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let headers = request.metadata().clone().into_headers();
        let actor = self.0.auth.authorize(&headers, peer)?;
        Ok(Actor::new(format!("grpc: {actor}")))
    }
}

fn version_of(version: &str) -> Option<&str> {
    Some(version).filter(|v| !v.is_empty())
}

fn required<'a>(field: &str, value: &'a str) -> ServeResult<&'a str> {
    sluice_protocol::check_name(field, value)
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        let ready = self.0.ready.load(Ordering::Acquire);
        Ok(Response::new(proto::ServerReadyResponse { ready }))
    }

    /// An unknown model or version is "not ready", not an error, as Triton answers.
    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let name = required("name", &request.name)?;
        let ready = match self.0.inference.resolve(name, version_of(&request.version)) {
            Ok(_) => true,
            Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Unavailable) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        Ok(Response::new(proto::ServerMetadataResponse {
            name: SERVER_METADATA.name.to_string(),
            version: SERVER_METADATA.version.to_string(),
            extensions: SERVER_METADATA
                .extensions
                .iter()
                .map(|e| e.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let name = required("name", &request.name)?;
        let version = version_of(&request.version);
        let snapshot = self.0.models.router().snapshot();
        let target = snapshot.resolve(name, version)?;
        // As the HTTP metadata: the one version asked for, or every loaded version.
        let versions = match version {
            Some(_) => vec![target.version.to_string()],
            None => snapshot
                .models
                .get(name)
                .map(|routes| routes.versions.keys().map(u64::to_string).collect())
                .unwrap_or_default(),
        };
        Ok(Response::new(codec::model_metadata(
            target.metadata(versions),
        )))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let mut request = codec::decode_request(message)?;
        // Metadata is where a sticky-routing key header arrives over gRPC.
        request.keys.headers = metadata.into_headers();
        let response = self.0.inference.infer(request).await?;
        // The id is in the message (`id`) and, as over HTTP, in the sluice-request-id header.
        let id = response
            .id
            .as_deref()
            .and_then(|id| tonic::metadata::MetadataValue::try_from(id).ok());
        let mut answer = Response::new(codec::encode_response(response));
        if let Some(id) = id {
            answer
                .metadata_mut()
                .insert(crate::infer::REQUEST_ID_HEADER, id);
        }
        Ok(answer)
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        let ready_only = request.into_inner().ready;
        let models = self
            .0
            .models
            .index()?
            .into_iter()
            .filter(|entry| !ready_only || entry.state == crate::lifecycle::ModelState::Ready)
            .map(|entry| proto::repository_index_response::ModelIndex {
                name: entry.name,
                version: entry.version.map(|v| v.to_string()).unwrap_or_default(),
                state: entry.state.as_str().to_string(),
                reason: entry.reason,
            })
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        let actor = self.authorize(&request)?;
        let request = request.into_inner();
        // Triton's load parameters replace the model's config or files for this load; sluice
        // always loads what is on disk, so it refuses them rather than ignore them.
        if let Some(key) = request.parameters.keys().next() {
            return Err(sluice_protocol::unsupported_load_parameter(key).into());
        }
        let model = required("model_name", &request.model_name)?;
        self.0.control.load(model, &actor).await?;
        Ok(Response::new(proto::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        let actor = self.authorize(&request)?;
        let request = request.into_inner();
        let model = required("model_name", &request.model_name)?;
        self.0.control.unload(model, &actor).await?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }
}

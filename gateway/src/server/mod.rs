//! The listeners: HTTP (KServe v2, V1, the admin API), gRPC and metrics, and how each serves
//! until it is drained. [`crate::app`] wires them to the rest at start-up.

pub mod admin;
pub mod auth;
mod config;
pub mod connections;
pub mod grpc;
pub mod http;
mod outcomes;
mod rollouts;
mod sources;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{AdminConfig, ServerConfig};

/// The metrics listener: Prometheus text exposition at `/metrics`.
pub(crate) fn metrics_routes(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// Serves until shutdown is signalled, then lets open requests finish for at most `drain`.
/// The connection loop gives handlers the peer address, which is how a mutation without a
/// configured token is limited to loopback.
pub(crate) async fn serve_until_drained<S>(
    listener: TcpListener,
    serving: connections::Listener<S>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    S: tower::Service<
            ::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let serve = connections::serve(listener, serving, shutdown.clone());
    let deadline = async {
        let _ = shutdown.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        () = serve => {}
        () = deadline => tracing::warn!(?drain, "drain timeout reached; closing open connections"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

//! A server that does nothing: the most this machine can serve for a request shape.
//!
//! It does the work every HTTP server must do for a request (accept, parse, read the whole body,
//! write a response) and nothing else. `sluice-load` pointed at it, on the same machine and with
//! the same request and response bodies, gives the ceiling a real server is measured against.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Pause after a failed accept: the usual cause is running out of file descriptors, which a
/// tight retry loop would only make worse.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on `listener` forever, answering every
/// request with 200 and `response` as `application/json`.
pub async fn serve(listener: TcpListener, response: Bytes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                eprintln!("sluice-ceiling: accept failed: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Same reason as the client: small responses must not wait for a delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            eprintln!("sluice-ceiling: cannot set TCP_NODELAY: {error}");
        }
        let response = response.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, response.clone()));
            // A client closing its connections at the end of a run is normal, not worth a line.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // Read the whole body, as a real server must before it can answer.
    request.into_body().collect().await?;
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

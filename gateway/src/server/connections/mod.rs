//! Connections on every listener: accepted, counted, capped, and closed when the client goes
//! idle or sends its request head too slowly. One accept loop serves HTTP (HTTP/1 and h2),
//! gRPC (h2) and metrics, so a hostile client meets the same limits on each.
//!
//! Why not hyper's own `header_read_timeout`: it runs whenever HTTP/1 waits for a head, so it
//! also cuts kept-alive connections that are merely idle. Here the head clock starts at the
//! first byte of a head (as Go's `ReadHeaderTimeout`), and idleness has its own, longer clock.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

mod socket;

use socket::Watched;

use crate::telemetry::metrics;
use sluice_core::error::ErrorKind;
use sluice_core::units::{byte_size, human_duration};

/// Limits on the connections of every listener (`[server.connections]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Longest an HTTP/1 request head (request line and headers) may take to arrive, counted
    /// from its first byte; a slower client is disconnected (slowloris).
    #[serde(with = "human_duration")]
    pub header_read_timeout: Duration,
    /// Longest a request body may take to arrive; a slower one is answered 408 (HTTP) or
    /// DEADLINE_EXCEEDED (gRPC) and the connection closed.
    #[serde(with = "human_duration")]
    pub body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive,
    /// h2 and gRPC alike).
    #[serde(with = "human_duration")]
    pub idle_timeout: Duration,
    /// Open connections per listener; beyond it a new connection is closed at once (and the
    /// refusals logged, at most every 10 s), so a flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Concurrent h2 streams (requests) per connection, HTTP and gRPC.
    pub http2_max_concurrent_streams: u32,
    /// Largest request head: HTTP/1 headers (answered 431) and the h2 header list.
    #[serde(with = "byte_size")]
    pub max_header_size: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            // Generous for any real client on any link; a request head is a few hundred bytes.
            header_read_timeout: Duration::from_secs(10),
            // 8 MiB (the default body limit) at ~1 Mbit/s.
            body_read_timeout: Duration::from_secs(60),
            // Above the common client pools' idle timeouts, so pools rarely race the close.
            idle_timeout: Duration::from_secs(120),
            // Well under the usual file-descriptor limits of a container (65536 and up).
            max_connections: 10_000,
            // Triton's and Go's gRPC servers' neighbourhood; h2's own default is unbounded.
            http2_max_concurrent_streams: 256,
            max_header_size: 64 << 10,
        }
    }
}

impl ConnectionConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let at_least = |name: &str, value: Duration, min: Duration| {
            (value < min).then(|| format!("server.connections.{name} must be at least {min:?}"))
        };
        let ms = Duration::from_millis(100);
        problems.extend(at_least(
            "header_read_timeout",
            self.header_read_timeout,
            ms,
        ));
        problems.extend(at_least("body_read_timeout", self.body_read_timeout, ms));
        problems.extend(at_least("idle_timeout", self.idle_timeout, ms));
        if self.max_connections == 0 {
            problems.push("server.connections.max_connections must be at least 1".into());
        }
        if self.http2_max_concurrent_streams == 0 {
            problems
                .push("server.connections.http2_max_concurrent_streams must be at least 1".into());
        }
        // hyper cannot parse HTTP/1 with a smaller buffer.
        if !(8192..=u64::from(u32::MAX)).contains(&self.max_header_size) {
            problems.push("server.connections.max_header_size must be 8KiB to 4GiB".into());
        }
        problems
    }
}

/// What a listener serves and how.
pub struct Listener<S> {
    /// Metric label and log name: `http`, `grpc` or `metrics`.
    pub name: &'static str,
    pub service: S,
    /// gRPC speaks h2 only; the HTTP listener takes HTTP/1 and h2 (prior knowledge).
    pub http2_only: bool,
    pub config: ConnectionConfig,
}

/// Accepts and serves connections until shutdown is signalled; then stops accepting, asks
/// every connection to finish (HTTP/1 after its current request, h2 with GOAWAY) and waits
/// for them. Dropping the future closes every connection at once (the drain deadline).
pub async fn serve<S, B>(
    listener: TcpListener,
    serving: Listener<S>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Listener {
        name,
        service,
        http2_only,
        config,
    } = serving;
    let builder = Arc::new(builder(&config, http2_only));
    let limits = Arc::new(config);
    let open = Arc::new(AtomicUsize::new(0));
    let refusals = RateLimited::default();
    let accept_errors = RateLimited::default();
    let (finish, finishing) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: say so, and do not spin on it.
                accept_errors.warn(|suppressed| {
                    tracing::warn!(listener = name, %error, suppressed, "cannot accept a connection")
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Acquire) >= limits.max_connections {
            drop(stream);
            metrics::connection_closed(name, CloseReason::OverLimit.as_str());
            let max = limits.max_connections;
            refusals.warn(|suppressed| {
                tracing::warn!(
                    listener = name,
                    %peer,
                    max_connections = max,
                    suppressed,
                    "connection refused: server.connections.max_connections are open"
                )
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let connection = Connection {
            name,
            http2_only,
            peer,
            local,
            activity: Arc::new(Activity::new(http2_only)),
            limits: Arc::clone(&limits),
            open: OpenGuard::new(name, Arc::clone(&open)),
        };
        connections.spawn(connection.run(
            stream,
            service.clone(),
            Arc::clone(&builder),
            finishing.clone(),
        ));
    }
    // Stop accepting now: the kernel refuses new clients instead of queueing them.
    drop(listener);
    let _ = finish.send(true);
    while connections.join_next().await.is_some() {}
}

fn builder(config: &ConnectionConfig, http2_only: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if http2_only {
        builder = builder.http2_only();
    }
    let header_size = usize::try_from(config.max_header_size)
        .unwrap_or(usize::MAX)
        .max(8192);
    builder.http1().max_buf_size(header_size);
    builder
        .http2()
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_header_size).unwrap_or(u32::MAX));
    builder
}

/// Why a connection ended: the `reason` label of `sluice_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it, or the exchange ended normally.
    Client,
    /// No request in progress for `idle_timeout`.
    Idle,
    /// A request head took longer than `header_read_timeout`.
    HeaderTimeout,
    /// A request body took longer than `body_read_timeout`.
    BodyTimeout,
    /// Refused at accept: `max_connections` were open.
    OverLimit,
    /// A protocol error (malformed request, reset).
    Error,
    /// Closed by the server's shutdown.
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Idle => "idle",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::OverLimit => "over_limit",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Counts a listener's open connections, in the atomic the cap reads and in the gauge.
struct OpenGuard {
    name: &'static str,
    open: Arc<AtomicUsize>,
}

impl OpenGuard {
    fn new(name: &'static str, open: Arc<AtomicUsize>) -> OpenGuard {
        let now = open.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::connections_open(name, now);
        OpenGuard { name, open }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let now = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::connections_open(self.name, now);
    }
}

/// What the watchdog knows of a connection, written by its I/O and its requests. Times are
/// milliseconds since the connection opened; `NONE` is unset.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while no request was in progress.
    head_since: AtomicU64,
    /// h2 multiplexes: bytes between requests are frames, not a slow head.
    http2: AtomicBool,
    /// Set by an HTTP/1 response that closes its connection (`Connection: close`): the
    /// reason the connection then ends for.
    close: Mutex<Option<CloseReason>>,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new(http2: bool) -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            http2: AtomicBool::new(http2),
            close: Mutex::new(None),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now(), Ordering::Release);
        }
    }

    fn begin(self: &Arc<Self>, http2: bool) -> RequestGuard {
        if http2 {
            self.http2.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        RequestGuard(Arc::clone(self))
    }

    /// What to do now, and when to look again.
    fn verdict(&self, limits: &ConnectionConfig) -> (Option<CloseReason>, Duration) {
        let look_again = limits.header_read_timeout.min(limits.idle_timeout) / 2;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (None, look_again);
        }
        let now = self.now();
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE
            && !self.http2.load(Ordering::Acquire)
            && now.saturating_sub(head) >= millis(limits.header_read_timeout)
        {
            return (Some(CloseReason::HeaderTimeout), Duration::ZERO);
        }
        let idle = now.saturating_sub(self.idle_since.load(Ordering::Acquire));
        let idle_limit = millis(limits.idle_timeout);
        if idle >= idle_limit {
            return (Some(CloseReason::Idle), Duration::ZERO);
        }
        let until_idle = Duration::from_millis(idle_limit - idle);
        (
            None,
            until_idle.min(look_again).max(Duration::from_millis(5)),
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}

/// A request in progress on a connection.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.idle_since.store(activity.now(), Ordering::Release);
        }
    }
}

struct Connection {
    name: &'static str,
    /// The gRPC listener: its service is tonic's.
    http2_only: bool,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    activity: Arc<Activity>,
    limits: Arc<ConnectionConfig>,
    /// Held for the connection's life.
    #[allow(dead_code)]
    open: OpenGuard,
}

impl Connection {
    async fn run<S, B>(
        self,
        stream: TcpStream,
        service: S,
        builder: Arc<auto::Builder<TokioExecutor>>,
        mut finishing: watch::Receiver<bool>,
    ) where
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: Arc::clone(&self.activity),
            max_header_size: self.limits.max_header_size,
            rewriting: None,
        });
        let activity = Arc::clone(&self.activity);
        let (peer, local, http2_only) = (self.peer, self.local, self.http2_only);
        let requests = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let http2 = request.version() == http::Version::HTTP_2;
            let guard = activity.begin(http2);
            // Who is calling, in the form the listener's service reads: tonic's on the gRPC
            // listener (the h2-only one), axum's on the others. One, not both: each insert
            // is an allocation per request.
            let extensions = request.extensions_mut();
            if http2_only {
                extensions.insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: local,
                    remote_addr: Some(peer),
                });
            } else {
                extensions.insert(axum::extract::ConnectInfo(peer));
            }
            let call = tower::ServiceExt::oneshot(service.clone(), request);
            let activity = Arc::clone(&activity);
            async move {
                let response = call.await;
                if let Ok(response) = &response
                    && !http2
                    // A body-timeout answer says `Connection: close` (the rest of the body may
                    // never come); the close is counted for that reason.
                    && response.extensions().get::<ErrorKind>() == Some(&ErrorKind::BodyTimeout)
                    && let Ok(mut close) = activity.close.lock()
                {
                    close.get_or_insert(CloseReason::BodyTimeout);
                }
                drop(guard);
                response
            }
        });
        let connection = builder.serve_connection(io, requests);
        tokio::pin!(connection);
        // Set once the connection is asked to finish: by then its end is that reason's.
        let mut finishing_for: Option<(CloseReason, Instant)> = None;
        let reason = loop {
            let (verdict, look_again) = self.activity.verdict(&self.limits);
            match (verdict, finishing_for) {
                // A slow head: close at once.
                (Some(CloseReason::HeaderTimeout), _) => break CloseReason::HeaderTimeout,
                (Some(CloseReason::Idle), None) => {
                    connection.as_mut().graceful_shutdown();
                    finishing_for = Some((CloseReason::Idle, Instant::now()));
                }
                _ => {}
            }
            // A connection asked to finish gets a grace period (a response still being
            // written), then is closed.
            if let Some((reason, since)) = finishing_for
                && since.elapsed() > self.limits.header_read_timeout
            {
                break reason;
            }
            tokio::select! {
                result = connection.as_mut() => {
                    break match (finishing_for, result) {
                        (Some((reason, _)), _) => reason,
                        (None, Ok(())) => CloseReason::Client,
                        (None, Err(error)) => {
                            tracing::debug!(listener = self.name, peer = %self.peer, %error, "connection ended with an error");
                            CloseReason::Error
                        }
                    };
                }
                () = tokio::time::sleep(look_again) => {}
                _ = finishing.wait_for(|f| *f), if finishing_for.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    finishing_for = Some((CloseReason::Shutdown, Instant::now()));
                }
            }
        };
        let asked = self.activity.close.lock().ok().and_then(|c| *c);
        let reason = match (reason, asked) {
            (CloseReason::Client | CloseReason::Error, Some(asked)) => asked,
            (reason, _) => reason,
        };
        metrics::connection_closed(self.name, reason.as_str());
    }
}

/// A warning logged at most every 10 s, with the count of those held back in between.
#[derive(Default)]
struct RateLimited {
    last: Mutex<Option<std::time::Instant>>,
    suppressed: AtomicU64,
}

impl RateLimited {
    fn warn(&self, log: impl FnOnce(u64)) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            *last = Some(std::time::Instant::now());
            log(self.suppressed.swap(0, Ordering::AcqRel));
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::socket::json_for_hyper_error;
    use super::*;

    #[test]
    fn the_documented_config_shows_the_defaults() {
        let text = include_str!("../../../../config/sluice.toml");
        let config: crate::config::Config = toml::from_str(text).unwrap();
        assert_eq!(config.server.connections, ConnectionConfig::default());
        assert!(ConnectionConfig::default().problems().is_empty());
    }

    #[test]
    fn hyper_error_heads_become_json() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(json_for_hyper_error(head, 65536).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains("max_header_size"));
        // Our own answers carry a body and are left alone.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
        assert!(json_for_hyper_error(ours, 65536).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(json_for_hyper_error(ok, 65536).is_none());
    }

    #[test]
    fn problems_name_the_field() {
        let config = ConnectionConfig {
            idle_timeout: Duration::ZERO,
            max_connections: 0,
            max_header_size: 100,
            ..ConnectionConfig::default()
        };
        let problems = config.problems().join("\n");
        for field in ["idle_timeout", "max_connections", "max_header_size"] {
            assert!(
                problems.contains(&format!("server.connections.{field}")),
                "{problems}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_heads_are_told_apart() {
        let limits = ConnectionConfig {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            ..ConnectionConfig::default()
        };
        let activity = Arc::new(Activity::new(false));
        assert_eq!(activity.verdict(&limits).0, None);
        // A request in progress is never idle, however long it runs.
        let request = activity.begin(false);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(activity.verdict(&limits).0, None);
        drop(request);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(activity.verdict(&limits).0, None);
        // A head starts arriving and does not finish in time.
        activity.read();
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(
            activity.verdict(&limits).0,
            Some(CloseReason::HeaderTimeout)
        );
        // On h2, bytes between requests are frames: only idleness counts.
        let h2 = Arc::new(Activity::new(true));
        h2.read();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h2.verdict(&limits).0, None);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(h2.verdict(&limits).0, Some(CloseReason::Idle));
    }
}

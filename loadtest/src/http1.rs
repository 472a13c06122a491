//! One closed-loop HTTP/1.1 connection: send, read the whole response, record, repeat.
//!
//! The hyper connection is driven inside the same task as the request loop instead of being
//! spawned, as hyper's examples do. A spawned driver costs a task wake-up (often on another
//! worker) for every read and write; here the socket, the request and the response body all
//! advance in one poll. It is also what lets a request outlive its connection cleanly: when the
//! connection ends, dropping it fails the request it held, so nothing waits for a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::pace::{Pace, Window};
use crate::stats::{ErrorKind, Recorder};
use crate::target::{BodyCursor, RequestTemplate};

/// First pause after a failed connect, so a server that is down is not hammered by a hot loop.
pub(crate) const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between connect attempts.
pub(crate) const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// An open connection: the handle requests go through, and the future that moves its bytes.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the server has closed the connection.
    driver: Option<Pin<Box<Driver>>>,
}

/// What one attempt to use the connection came to.
pub(crate) enum Step<T> {
    Done(T),
    TimedOut,
    /// The measurement window closed; the task stops without recording the attempt.
    WindowEnded,
}

/// What to do after an attempt to (re)connect.
pub(crate) enum Reconnect<C> {
    Ready(C),
    /// The attempt failed (and was counted); the pause before the next one is over.
    Retry,
    /// The window ends before another attempt could start.
    Stop,
}

/// Exponential pause between failed connects, so that a server that is down is not hammered
/// by a hot loop.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(RECONNECT_BACKOFF_MIN)
    }

    /// Turns a bounded connect attempt into the next step, counting a failure as `connect`.
    pub(crate) async fn after<C>(
        &mut self,
        attempt: Step<Result<C, ()>>,
        recorder: &mut Recorder,
        window: Window,
    ) -> Reconnect<C> {
        match attempt {
            Step::Done(Ok(fresh)) => {
                self.0 = RECONNECT_BACKOFF_MIN;
                Reconnect::Ready(fresh)
            }
            Step::Done(Err(())) | Step::TimedOut => {
                record_error(recorder, window, ErrorKind::Connect);
                let pause = Instant::now() + self.0;
                if pause >= window.end {
                    return Reconnect::Stop;
                }
                tokio::time::sleep_until(pause).await;
                self.0 = (self.0 * 2).min(RECONNECT_BACKOFF_MAX);
                Reconnect::Retry
            }
            Step::WindowEnded => Reconnect::Stop,
        }
    }
}

/// When the next request goes out and its latency counts from: now (closed loop) or the
/// schedule's answer (open loop); `None` when the schedule has run past the window.
pub(crate) async fn next_send(pace: Option<&mut Pace>, window: Window) -> Option<Instant> {
    match pace {
        Some(pace) => Some(pace.wait().await).filter(|due| *due < window.end),
        None => Some(Instant::now()),
    }
}

/// Runs one connection until `window` ends, reconnecting whenever it breaks.
///
/// Only requests that finish (or fail) inside `window` are recorded; those of the warm-up, and
/// the one cut short when the window closes, are not.
pub async fn run_connection(
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    window: Window,
    timeout: Duration,
    mut recorder: Recorder,
    mut pace: Option<Pace>,
    mut cursor: BodyCursor,
) -> Recorder {
    // One timer for the task, re-armed for each step, rather than a new timer entry per request.
    let mut timer = pin!(tokio::time::sleep_until(window.end));
    let mut backoff = Backoff::new();
    let mut connection: Option<Connection> = None;

    loop {
        if connection.as_ref().is_none_or(|c| c.driver.is_none()) {
            connection = None;
            let attempt = bounded(timer.as_mut(), window, timeout, connect(addr)).await;
            match backoff.after(attempt, &mut recorder, window).await {
                Reconnect::Ready(fresh) => connection = Some(fresh),
                Reconnect::Retry => continue,
                Reconnect::Stop => return recorder,
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };

        let Some(started) = next_send(pace.as_mut(), window).await else {
            return recorder;
        };
        let request = template.request(&mut cursor);
        let exchange = exchange(&mut conn.sender, request);
        match bounded(
            timer.as_mut(),
            window,
            timeout,
            drive(exchange, &mut conn.driver),
        )
        .await
        {
            Step::Done(Ok(status)) => {
                let finished = Instant::now();
                if window.contains(finished) {
                    recorder.response(status, finished - started);
                }
            }
            Step::Done(Err(_)) => {
                record_error(&mut recorder, window, ErrorKind::Io);
                connection = None;
            }
            Step::TimedOut => {
                // HTTP/1.1 cannot cancel a request; the connection is unusable until the late
                // response arrives, so start a new one.
                record_error(&mut recorder, window, ErrorKind::Timeout);
                connection = None;
            }
            Step::WindowEnded => return recorder,
        }
    }
}

pub(crate) fn record_error(recorder: &mut Recorder, window: Window, kind: ErrorKind) {
    if window.contains(Instant::now()) {
        recorder.error(kind);
    }
}

/// Runs `work` until it finishes, `timeout` passes, or the window ends, whichever is first.
pub(crate) async fn bounded<F: Future>(
    mut timer: Pin<&mut Sleep>,
    window: Window,
    timeout: Duration,
    work: F,
) -> Step<F::Output> {
    let deadline = Instant::now() + timeout;
    let ends_window = deadline >= window.end;
    timer.as_mut().reset(deadline.min(window.end));
    tokio::select! {
        biased;
        out = work => Step::Done(out),
        () = timer => if ends_window { Step::WindowEnded } else { Step::TimedOut },
    }
}

async fn connect(addr: SocketAddr) -> Result<Connection, ()> {
    let stream = TcpStream::connect(addr).await.map_err(drop)?;
    // Requests are small and each waits for its answer: Nagle's algorithm would hold every one
    // back for a delayed ACK.
    stream.set_nodelay(true).map_err(drop)?;
    let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.map_err(drop)?;
    Ok(Connection {
        sender,
        driver: Some(Box::pin(driver)),
    })
}

/// Sends one request and reads its whole body.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<StatusCode, hyper::Error> {
    // The connection takes the next request only once it has finished the last response.
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    // Drain frame by frame: the bytes must arrive, but there is no need to gather them.
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// Polls `exchange` together with the connection that carries it.
///
/// The driver goes first so that bytes it reads reach the exchange in the same poll. If the
/// connection ends (the server closed it, or it broke), the driver is dropped, which hands the
/// exchange whatever was read or an error, and the exchange is finished on its own.
pub(crate) async fn drive<F, D>(exchange: F, driver: &mut Option<Pin<Box<D>>>) -> F::Output
where
    F: Future,
    D: Future,
{
    let mut exchange = pin!(exchange);
    if let Some(running) = driver {
        tokio::select! {
            biased;
            _ = running.as_mut() => {}
            out = &mut exchange => return out,
        }
        *driver = None;
    }
    exchange.await
}

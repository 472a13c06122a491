//! `--http2`: the HTTP/1.1 loop's twin over HTTP/2 with prior knowledge (h2c). Each connection
//! carries one request at a time, closed loop or paced, so its numbers compare with HTTP/1.1's at
//! the same `--connections`.
//!
//! As in [`crate::http1`], the connection is driven inside the connection's task rather than
//! spawned. Unlike HTTP/1.1, a request that times out is cancelled (its stream is reset when the
//! exchange is dropped) and the connection stays usable.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::{
    RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN, Step, bounded, drive, record_error,
};
use crate::run::{Pace, Window};
use crate::stats::{ErrorKind, Recorder};
use crate::target::{BodyCursor, RequestTemplate};

type Driver = http2::Connection<TokioIo<TcpStream>, Full<Bytes>, TokioExecutor>;

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended.
    driver: Option<Pin<Box<Driver>>>,
}

/// Runs one HTTP/2 connection until `window` ends, reconnecting whenever it breaks; records as
/// [`crate::http1::run_connection`] does.
pub async fn run_connection(
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    window: Window,
    timeout: Duration,
    mut recorder: Recorder,
    mut pace: Option<Pace>,
    mut cursor: BodyCursor,
) -> Recorder {
    let mut timer = pin!(tokio::time::sleep_until(window.end));
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut connection: Option<Connection> = None;

    loop {
        if connection
            .as_ref()
            .is_none_or(|c| c.driver.is_none() || c.sender.is_closed())
        {
            connection = None;
            match bounded(timer.as_mut(), window, timeout, connect(addr)).await {
                Step::Done(Ok(fresh)) => {
                    backoff = RECONNECT_BACKOFF_MIN;
                    connection = Some(fresh);
                }
                Step::Done(Err(())) | Step::TimedOut => {
                    record_error(&mut recorder, window, ErrorKind::Connect);
                    let pause = Instant::now() + backoff;
                    if pause >= window.end {
                        return recorder;
                    }
                    tokio::time::sleep_until(pause).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    continue;
                }
                Step::WindowEnded => return recorder,
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };

        let started = match pace.as_mut() {
            Some(pace) => {
                let due = pace.wait().await;
                if due >= window.end {
                    return recorder;
                }
                due
            }
            None => Instant::now(),
        };
        let request = template.request_h2(&mut cursor);
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
            // The dropped exchange reset its stream; the connection carries on.
            Step::TimedOut => record_error(&mut recorder, window, ErrorKind::Timeout),
            Step::WindowEnded => return recorder,
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Connection, ()> {
    let stream = TcpStream::connect(addr).await.map_err(drop)?;
    stream.set_nodelay(true).map_err(drop)?;
    let (sender, driver) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(drop)?;
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
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

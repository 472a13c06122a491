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

use crate::http1::{Backoff, Reconnect, Step, bounded, drive, next_send, record_error};
use crate::pace::{Pace, Window};
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
    let mut backoff = Backoff::new();
    let mut connection: Option<Connection> = None;

    loop {
        if connection
            .as_ref()
            .is_none_or(|c| c.driver.is_none() || c.sender.is_closed())
        {
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

//! A run: warm up, measure, merge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

pub use crate::pace::{Pace, Window};
use crate::progress::Progress;
use crate::stats::Recorder;
use crate::target::{BodyCursor, RequestTemplate};
use crate::{http1, http2};

/// Everything a run needs, checked and resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect, resolved once from the template's URL.
    pub addr: SocketAddr,
    /// The request every connection sends.
    pub template: RequestTemplate,
    /// Concurrent keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Load applied before measuring, so that connection set-up and the server's cold caches do
    /// not count.
    pub warmup: Duration,
    /// How long to measure.
    pub duration: Duration,
    /// Longest a request (or a connect) may take before it counts as an error.
    pub timeout: Duration,
    /// Open loop: requests per second across all connections, sent on schedule whether or not
    /// earlier ones have been answered. `None` is closed loop.
    pub rate: Option<f64>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

/// What a run measured, merged over all connections.
#[derive(Debug, Clone)]
pub struct Summary {
    pub recorder: Recorder,
    /// Length of the measured window.
    pub duration: Duration,
    pub connections: usize,
}

/// Runs the load described by `config` and returns what it measured.
///
/// Takes about `warmup + duration`: every connection stops when the window ends, dropping the
/// request it has in flight rather than waiting for it.
pub async fn run(config: &Config) -> anyhow::Result<Summary> {
    let template = Arc::new(config.template.clone());
    let start = Instant::now() + config.warmup;
    let window = Window {
        start,
        end: start + config.duration,
    };

    // The open-loop mode and other protocols plug in here: each is a task per connection that
    // returns a Recorder.
    let mut tasks = Vec::with_capacity(config.connections);
    let mut progress = Progress::default();
    let now = Instant::now();
    for index in 0..config.connections {
        let recorder = Recorder::new(config.timeout)?.with_live(progress.counter());
        let pace = config
            .rate
            .map(|rate| Pace::for_connection(rate, config.connections, index, now));
        let cursor = BodyCursor::for_connection(index, config.connections);
        let template = Arc::clone(&template);
        tasks.push(if config.http2 {
            tokio::spawn(http2::run_connection(
                config.addr,
                template,
                window,
                config.timeout,
                recorder,
                pace,
                cursor,
            ))
        } else {
            tokio::spawn(http1::run_connection(
                config.addr,
                template,
                window,
                config.timeout,
                recorder,
                pace,
                cursor,
            ))
        });
    }

    let printer = config.progress.then(|| progress.spawn(window));
    summarize(config, tasks, printer).await
}

/// Waits for every connection task, merges what they recorded, and stops the progress line.
pub(crate) async fn summarize(
    config: &Config,
    tasks: Vec<tokio::task::JoinHandle<Recorder>>,
    printer: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Summary> {
    let mut merged = Recorder::new(config.timeout)?;
    for task in tasks {
        let recorder = task.await.context("a connection task failed")?;
        merged.merge(&recorder)?;
    }
    if let Some(printer) = printer {
        printer.abort();
    }
    Ok(Summary {
        recorder: merged,
        duration: config.duration,
        connections: config.connections,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::net::TcpListener;

    use super::*;
    use crate::stats::ErrorKind;

    fn config(addr: SocketAddr, connections: usize) -> anyhow::Result<Config> {
        let url = format!("http://{addr}/v2/models/m/infer");
        Ok(Config {
            addr,
            template: RequestTemplate::new(&url, None, [], Bytes::from_static(b"{\"x\":1}"))?,
            connections,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            rate: None,
            http2: false,
            progress: false,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measures_a_real_server() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(crate::ceiling::serve(
            listener,
            Bytes::from_static(b"{\"ok\":true}"),
        ));

        let summary = run(&config(addr, 4)?).await?;
        server.abort();

        let r = &summary.recorder;
        assert!(r.responses() > 0, "no responses recorded");
        assert_eq!(r.statuses().get(&200).copied(), Some(r.responses()));
        for kind in ErrorKind::ALL {
            assert_eq!(r.errors(kind), 0, "{kind} errors");
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measures_a_real_server_over_http2() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(crate::ceiling::serve(
            listener,
            Bytes::from_static(b"{\"ok\":true}"),
        ));
        let mut config = config(addr, 4)?;
        config.http2 = true;
        let paced = Config {
            rate: Some(200.0),
            ..config.clone()
        };

        for config in [config, paced] {
            let summary = run(&config).await?;
            let r = &summary.recorder;
            assert!(r.responses() > 0, "no responses recorded");
            assert_eq!(r.statuses().get(&200).copied(), Some(r.responses()));
            for kind in ErrorKind::ALL {
                assert_eq!(r.errors(kind), 0, "{kind} errors");
            }
        }
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn counts_refused_connections() -> anyhow::Result<()> {
        // Bind, learn the port, close: nothing listens there now.
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let mut config = config(addr, 2)?;
        config.warmup = Duration::ZERO;

        let summary = run(&config).await?;
        let r = &summary.recorder;
        assert_eq!(r.responses(), 0);
        assert!(r.errors(ErrorKind::Connect) > 0);
        Ok(())
    }

    #[tokio::test]
    async fn counts_timeouts() -> anyhow::Result<()> {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut config = config(addr, 2)?;
        config.warmup = Duration::ZERO;
        config.timeout = Duration::from_millis(50);

        let summary = run(&config).await?;
        server.abort();
        let r = &summary.recorder;
        assert_eq!(r.responses(), 0);
        assert!(r.errors(ErrorKind::Timeout) > 0);
        Ok(())
    }
}

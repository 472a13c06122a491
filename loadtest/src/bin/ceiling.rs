//! `sluice-ceiling`: a do-nothing HTTP/1.1 and h2c server, to measure the most this machine can
//! serve for a request shape. The command line only; the server is `sluice_loadtest::ceiling`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use tokio::net::TcpListener;

/// Answers every request with 200 and the same bytes, after reading the whole request body.
#[derive(Debug, Parser)]
#[command(name = "sluice-ceiling", version)]
struct Args {
    /// Port to listen on; the default is sluice's HTTP port, so it stands in for the gateway.
    #[arg(short, long, default_value_t = 8000)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,

    /// File whose bytes are every response body (sent as application/json) [default: {}].
    #[arg(long, value_name = "FILE")]
    response: Option<PathBuf>,

    /// Runtime worker threads [default: one per CPU].
    #[arg(long)]
    threads: Option<NonZeroUsize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let response = match &args.response {
        Some(path) => Bytes::from(
            std::fs::read(path)
                .with_context(|| format!("cannot read response file {}", path.display()))?,
        ),
        None => Bytes::from_static(b"{}"),
    };

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "sluice-ceiling: listening on http://{addr}, answering {} bytes",
            response.len()
        );
        tokio::select! {
            () = sluice_loadtest::ceiling::serve(listener, response) => Ok(()),
            signal = tokio::signal::ctrl_c() => signal.context("cannot wait for Ctrl-C"),
        }
    })
}

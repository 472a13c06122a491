//! `sluice-load`: closed-loop HTTP load against one URL. The command line only; the work is in
//! the `sluice_loadtest` library.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Method};
use sluice_loadtest::{Config, Report, RequestTemplate, target};

/// Closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending a request,
/// waiting for the whole response, and sending the next.
#[derive(Debug, Parser)]
#[command(name = "sluice-load", version)]
struct Args {
    /// URL to load, e.g. http://127.0.0.1:8000/v2/models/churn/infer (http only).
    #[arg(long)]
    url: String,

    /// File whose bytes are the request body; read once. Without it requests have no body.
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,

    /// Concurrent connections, each with one request in flight.
    #[arg(short, long, default_value = "64")]
    connections: NonZeroUsize,

    /// How long to measure, e.g. 10s, 1m.
    #[arg(short, long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Load applied before measuring; its requests are not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// HTTP method [default: POST with --body, GET without].
    #[arg(short = 'X', long, value_parser = parse_method)]
    method: Option<Method>,

    /// Extra header, 'Name: value'; repeat for more. A Content-Type here replaces the default
    /// application/json.
    #[arg(short = 'H', long = "header", value_name = "'K: V'", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// A request (or connect) taking longer than this counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Runtime worker threads [default: one per CPU].
    #[arg(long)]
    threads: Option<NonZeroUsize>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    /// Open loop: send this many requests per second in total, on schedule, and measure each
    /// latency from its scheduled time (coordinated-omission corrected). Without it the load is
    /// closed loop: each connection sends as soon as its last answer arrives.
    #[arg(long)]
    rate: Option<f64>,

    /// Wire protocol. `grpc` sends KServe v2 `ModelInfer` calls to the --url's host and port
    /// (the gRPC listener), built from the v2 JSON --body for the model the URL path names.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,

    /// With --protocol http: speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1, one
    /// request in flight per connection.
    #[arg(long)]
    http2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Http,
    Grpc,
}

fn parse_method(arg: &str) -> Result<Method, String> {
    Method::from_bytes(arg.to_ascii_uppercase().as_bytes()).map_err(|e| e.to_string())
}

fn parse_header(arg: &str) -> Result<(HeaderName, HeaderValue), String> {
    target::parse_header(arg).map_err(|e| format!("{e:#}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.duration.is_zero() {
        bail!("--duration must be longer than zero");
    }
    if args.timeout.is_zero() {
        bail!("--timeout must be longer than zero");
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(load(args))
}

async fn load(args: Args) -> anyhow::Result<()> {
    let body = match &args.body {
        Some(path) => Bytes::from(
            tokio::fs::read(path)
                .await
                .with_context(|| format!("cannot read body file {}", path.display()))?,
        ),
        None => Bytes::new(),
    };
    let template = RequestTemplate::new(&args.url, args.method, args.headers, body.clone())?;
    let addr = template.resolve().await?;
    let config = Config {
        addr,
        template,
        connections: args.connections.get(),
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        rate: args.rate,
        http2: args.http2,
    };
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    if args.http2 && args.protocol == Protocol::Grpc {
        bail!("--http2 applies to --protocol http (gRPC is always HTTP/2)");
    }
    if args.rate.is_some() && args.protocol == Protocol::Grpc {
        bail!("--rate is implemented for --protocol http only");
    }

    let summary = match args.protocol {
        Protocol::Http => sluice_loadtest::run(&config).await?,
        Protocol::Grpc => {
            let call = sluice_loadtest::grpc::GrpcTemplate::new(config.template.url(), &body)?;
            sluice_loadtest::grpc::run(&config, call).await?
        }
    };
    let report = Report::new(&summary);
    let mut out = io::stdout().lock();
    if args.json {
        report.write_json(&mut out)?;
    } else {
        report.write_table(&mut out, &config)?;
    }
    out.flush()?;

    if report.requests == 0 {
        bail!("no responses in the measured window");
    }
    Ok(())
}

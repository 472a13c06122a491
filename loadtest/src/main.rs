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
use sluice_loadtest::npy::{self, ColumnChange, Matrix};
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
    #[arg(long, value_name = "FILE", conflicts_with = "npy")]
    body: Option<PathBuf>,

    /// Instead of --body: build v2 JSON bodies from the rows of a 2-D float32 .npy sample,
    /// --batch rows each, taken round-robin (at most 1000 distinct bodies, built at start-up).
    #[arg(long, value_name = "FILE")]
    npy: Option<PathBuf>,

    /// With --npy: the input tensor's name.
    #[arg(long, default_value = "input", requires = "npy")]
    input_name: String,

    /// With --npy: rows per request.
    #[arg(long, default_value = "1", requires = "npy")]
    batch: NonZeroUsize,

    /// With --npy: add DELTA to feature column COL before encoding (to provoke drift); repeat
    /// for more.
    #[arg(long, value_name = "COL=DELTA", requires = "npy", value_parser = parse_change)]
    shift: Vec<ColumnChange>,

    /// With --npy: multiply feature column COL by FACTOR before encoding (and before any
    /// --shift); repeat for more.
    #[arg(long, value_name = "COL=FACTOR", requires = "npy", value_parser = parse_change)]
    scale: Vec<ColumnChange>,

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

    /// No progress line on stderr (it is printed once a second otherwise).
    #[arg(short, long)]
    quiet: bool,

    /// Also write the latency-percentile plot (HDR histogram, log "nines" x axis) as SVG here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,

    /// Scenario: start a guarded rollout of this version of the model the --url names (through
    /// sluice's admin API on the same host and port), keep the load on, and print the rollout's
    /// timeline until the guard has finished with it (promoted and watched, or rolled back).
    /// --duration and --warmup do not apply; the report covers the whole rollout.
    #[arg(long, value_name = "VERSION")]
    rollout: Option<String>,

    /// With --rollout: canary weights in percent, e.g. 5,25,50,100 [default: the server's].
    #[arg(long, value_delimiter = ',', requires = "rollout")]
    steps: Vec<f64>,

    /// With --rollout: least time per step, e.g. 5s [default: the server's].
    #[arg(long, value_parser = humantime::parse_duration, requires = "rollout")]
    step_duration: Option<Duration>,

    /// With --rollout: requests each side needs in a step before the guard judges it.
    #[arg(long, requires = "rollout")]
    min_requests: Option<u64>,

    /// With --rollout: how long the promoted version is watched [default: the server's].
    #[arg(long, value_parser = humantime::parse_duration, requires = "rollout")]
    watch_period: Option<Duration>,

    /// With --rollout: more fields of the rollout request, as a JSON object, e.g.
    /// '{"max_p99_ratio": 2, "shadow_stage": {"duration": "10s"}}'.
    #[arg(long, value_name = "JSON", requires = "rollout")]
    rollout_options: Option<String>,

    /// With --rollout: the admin API's bearer token.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// With --rollout: how often to print a timeline line.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    timeline_interval: Duration,

    /// With --rollout: abort the rollout if it has not finished after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    rollout_limit: Duration,
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

fn parse_change(arg: &str) -> Result<ColumnChange, String> {
    npy::parse_column_change(arg).map_err(|e| format!("{e:#}"))
}

/// The rollout request and where to send it, from the command line.
fn rollout_scenario(
    args: &Args,
    config: &Config,
) -> anyhow::Result<sluice_loadtest::rollout::Scenario> {
    let url = config.template.url();
    let model = sluice_loadtest::rollout::model_from_path(url.path())
        .with_context(|| format!("--rollout: no model in the URL path '{}'", url.path()))?;
    let mut request = match &args.rollout_options {
        Some(text) => serde_json::from_str(text).context("--rollout-options is not JSON")?,
        None => serde_json::json!({}),
    };
    let Some(fields) = request.as_object_mut() else {
        bail!("--rollout-options must be a JSON object");
    };
    fields.insert("version".into(), args.rollout.clone().into());
    if !args.steps.is_empty() {
        fields.insert("steps".into(), args.steps.clone().into());
    }
    let human = |d: &Duration| humantime::format_duration(*d).to_string();
    if let Some(d) = &args.step_duration {
        fields.insert("step_duration".into(), human(d).into());
    }
    if let Some(d) = &args.watch_period {
        fields.insert("watch_period".into(), human(d).into());
    }
    if let Some(n) = args.min_requests {
        fields.insert("min_requests".into(), n.into());
    }
    let authority = url
        .authority()
        .with_context(|| format!("URL '{url}' has no host"))?;
    Ok(sluice_loadtest::rollout::Scenario {
        base: format!("http://{authority}"),
        model,
        request,
        token: args.token.clone(),
        interval: args.timeline_interval,
        limit: args.rollout_limit,
    })
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
    let bodies = match &args.npy {
        Some(path) => {
            let mut sample = Matrix::read(path)?;
            for change in &args.scale {
                sample.apply(*change, true)?;
            }
            for change in &args.shift {
                sample.apply(*change, false)?;
            }
            sample.bodies(&args.input_name, args.batch.get())?
        }
        None => vec![body.clone()],
    };
    if args.npy.is_some() && args.protocol == Protocol::Grpc {
        bail!("--npy is implemented for --protocol http only");
    }
    let template = RequestTemplate::new(
        &args.url,
        args.method.clone(),
        args.headers.clone(),
        bodies[0].clone(),
    )?
    .with_bodies(bodies)?;
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
        progress: !args.quiet,
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
        Protocol::Http if args.rollout.is_some() => {
            sluice_loadtest::rollout::run(&config, rollout_scenario(&args, &config)?).await?
        }
        Protocol::Grpc if args.rollout.is_some() => {
            bail!("--rollout is implemented for --protocol http only")
        }
        Protocol::Http => sluice_loadtest::run(&config).await?,
        Protocol::Grpc => {
            let call = sluice_loadtest::grpc::GrpcTemplate::new(config.template.url(), &body)?;
            sluice_loadtest::grpc::run(&config, call).await?
        }
    };
    let report = Report::new(&summary);
    // A rollout runs as long as it takes, with no warm-up: say so in the table.
    let config = Config {
        duration: summary.duration,
        warmup: if args.rollout.is_some() {
            Duration::ZERO
        } else {
            config.warmup
        },
        ..config
    };
    let mut out = io::stdout().lock();
    if args.json {
        report.write_json(&mut out)?;
    } else {
        report.write_table(&mut out, &config)?;
    }
    out.flush()?;

    if let Some(path) = &args.svg {
        let title = format!(
            "{} {}: {} connections, {:.0} req/s",
            config.template.method(),
            config.template.url(),
            report.connections,
            report.throughput_rps
        );
        let svg = sluice_loadtest::svg::latency_svg(summary.recorder.latency_us(), &title);
        std::fs::write(path, svg)
            .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }

    if report.requests == 0 {
        bail!("no responses in the measured window");
    }
    Ok(())
}

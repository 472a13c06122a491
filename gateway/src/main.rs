//! The `sluice` command line: serve, check a config, list a repository, build a drift profile.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice::Config;
use sluice::repository;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Model-serving gateway for ONNX models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model repository over HTTP (KServe v2, V1 REST).
    Serve(ServeArgs),
    /// Validate a config and print every problem at once.
    CheckConfig(ConfigArgs),
    /// List the models and versions a repository holds and which would be loaded.
    Models(ConfigArgs),
    /// Build a version's drift reference (profile.json) from a sample of training rows.
    Profile(ProfileArgs),
    /// Operate a running sluice through its admin API (token from SLUICE_ADMIN_TOKEN).
    Ctl(CtlArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct CtlArgs {
    /// Base URL of the server's HTTP listener.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Admin token; needed for changes when the server has one configured.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Subcommand)]
enum CtlAction {
    /// List models, their loaded versions and state.
    Models,
    /// Show one model.
    Model { name: String },
    /// (Re)load a model from the repository, applying its version policy.
    Load { name: String },
    /// Stop serving a model.
    Unload { name: String },
    /// The repository index (every model folder and its state).
    Index,
    /// Show a model's traffic policy, or replace it with `--set '{"primary": "1", ...}'`.
    Traffic {
        name: String,
        /// The new policy, as the admin API takes it (JSON).
        #[arg(long)]
        set: Option<String>,
    },
    /// Show a model's guarded rollout, start one (`--start VERSION`), or abort it (`--abort`).
    Rollout {
        name: String,
        /// Start a guarded rollout of this loaded version.
        #[arg(long, conflicts_with = "abort")]
        start: Option<String>,
        /// Overrides of the [rollout] defaults for `--start`, as JSON, e.g.
        /// '{"steps": [10, 50, 100], "step_duration": "1m"}'.
        #[arg(long, requires = "start")]
        options: Option<String>,
        /// Abort the rollout under way: the canary's weight goes to 0.
        #[arg(long)]
        abort: bool,
    },
    /// p50/p99, error rates and drift per version and variant over the last minute.
    Stats { name: String },
    /// The model sources (a bucket, MLflow registries): what each last saw, changed and
    /// failed at.
    Sources,
}

#[derive(Args)]
struct ProfileArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Model name (a folder in the repository).
    #[arg(long)]
    model: String,
    /// Version to profile; the profile is written into its folder.
    #[arg(long)]
    version: u64,
    /// Training rows: .npy (float32/float64, [rows, features]) or .csv (header optional).
    #[arg(long)]
    sample: PathBuf,
    /// Runtime for the prediction run (auto, trees, ort, tract); default: as the server would
    /// pick.
    #[arg(long, value_parser = parse_runtime)]
    runtime: Option<sluice_runtime::RuntimeChoice>,
    /// Fine quantiles per feature (a multiple of 10): KS resolution is about 1/quantiles.
    #[arg(long, default_value_t = sluice::profiling::DEFAULT_QUANTILES)]
    quantiles: usize,
    /// The input whose columns are the features; default: the first 2-D float input.
    #[arg(long)]
    input: Option<String>,
    /// Write here instead of <repository>/<model>/<version>/profile.json.
    #[arg(long)]
    output: Option<PathBuf>,
    /// One true class label per sample row, in the sample's order: .npy (1-D, integers or
    /// floats) or text with one number per line. Stores the version's accuracy (log loss, ROC
    /// AUC) on the sample: the live accuracy alert's baseline. Classifiers only.
    #[arg(long)]
    labels: Option<PathBuf>,
}

fn parse_runtime(text: &str) -> Result<sluice_runtime::RuntimeChoice, String> {
    text.parse()
}

/// Where the config comes from; flags override the file.
#[derive(Args)]
struct ConfigArgs {
    /// Config file (TOML). Default: config/sluice.toml when it exists, else built-in defaults.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Model repository folder (overrides repository.path).
    #[arg(long, env = "SLUICE_MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// HTTP port (overrides server.http_port).
    #[arg(long, env = "SLUICE_HTTP_PORT")]
    http_port: Option<u16>,
    /// gRPC port (overrides server.grpc_port).
    #[arg(long, env = "SLUICE_GRPC_PORT")]
    grpc_port: Option<u16>,
    /// Metrics port (overrides server.metrics_port).
    #[arg(long, env = "SLUICE_METRICS_PORT")]
    metrics_port: Option<u16>,
    /// Kafka brokers for the prediction log, "host:port[,...]" (selects the Kafka sink and
    /// overrides prediction_log.kafka.brokers).
    #[arg(long, env = "SLUICE_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka control topic that replicas of a fleet share (overrides fleet.control_topic;
    /// brokers: fleet.brokers, else the prediction log's).
    #[arg(long, env = "SLUICE_CONTROL_TOPIC")]
    control_topic: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Runtime for models whose model.toml does not pin one: auto, trees, ort, tract
    /// (overrides runtime.default).
    #[arg(long, env = "SLUICE_RUNTIME", value_parser = parse_runtime)]
    runtime: Option<sluice_runtime::RuntimeChoice>,
}

const DEFAULT_CONFIG: &str = "config/sluice.toml";

/// glibc's malloc was ~16 % of the server's CPU under load (perf, batch-1 churn at 64
/// connections): every request allocates its tensors, JSON and headers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG).is_file() => {
                Config::from_file(Path::new(DEFAULT_CONFIG))?
            }
            None => Config::default(),
        };
        if let Some(path) = &self.model_repository {
            config.repository.path = path.clone();
        }
        if let Some(port) = self.http_port {
            config.server.http_port = port;
        }
        if let Some(port) = self.grpc_port {
            config.server.grpc_port = port;
        }
        if let Some(port) = self.metrics_port {
            config.server.metrics_port = port;
        }
        if let Some(brokers) = &self.kafka_brokers {
            config.prediction_log.sink = sluice::predlog::SinkChoice::Kafka;
            config.prediction_log.kafka.brokers = brokers.clone();
        }
        if let Some(topic) = self.control_topic.as_ref().filter(|t| !t.is_empty()) {
            config.fleet.control_topic = Some(topic.clone());
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::Models(args) => list_models(&args),
        Command::Profile(args) => profile(&args),
        Command::Ctl(args) => ctl(&args),
        Command::Version => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(runtime) = args.runtime {
        config.runtime.default = runtime;
    }
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = sluice::Server::start(config).await?;
        sluice::server::termination_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        server.shutdown();
        let log = server.wait().await;
        tracing::info!(
            log_delivered = log.delivered,
            log_undelivered = log.undelivered,
            "stopped"
        );
        Ok(())
    })
}

/// Calls the admin API and prints the JSON answer; a non-2xx answer is an error.
fn ctl(args: &CtlArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    use reqwest::Method;
    let json = |text: &str, what: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON"))
    };
    let (method, path, body) = match &args.action {
        CtlAction::Models => (Method::GET, "/admin/v1/models".to_string(), None),
        CtlAction::Model { name } => (Method::GET, format!("/admin/v1/models/{name}"), None),
        CtlAction::Load { name } => (
            Method::POST,
            format!("/v2/repository/models/{name}/load"),
            None,
        ),
        CtlAction::Unload { name } => (
            Method::POST,
            format!("/v2/repository/models/{name}/unload"),
            None,
        ),
        CtlAction::Index => (Method::POST, "/v2/repository/index".to_string(), None),
        CtlAction::Traffic { name, set } => {
            let path = format!("/admin/v1/models/{name}/traffic");
            match set {
                Some(policy) => (Method::PUT, path, Some(json(policy, "--set")?)),
                None => (Method::GET, path, None),
            }
        }
        CtlAction::Rollout {
            name,
            start,
            options,
            abort,
        } => match (start, abort) {
            (Some(version), _) => {
                let mut body = match options {
                    Some(text) => json(text, "--options")?,
                    None => serde_json::json!({}),
                };
                let Some(fields) = body.as_object_mut() else {
                    anyhow::bail!("--options must be a JSON object");
                };
                fields.insert("version".into(), version.clone().into());
                (
                    Method::POST,
                    format!("/admin/v1/models/{name}/rollouts"),
                    Some(body),
                )
            }
            (None, true) => (
                Method::DELETE,
                format!("/admin/v1/models/{name}/rollout"),
                None,
            ),
            (None, false) => (
                Method::GET,
                format!("/admin/v1/models/{name}/rollout"),
                None,
            ),
        },
        CtlAction::Stats { name } => (Method::GET, format!("/admin/v1/models/{name}/stats"), None),
        CtlAction::Sources => (Method::GET, "/admin/v1/sources".to_string(), None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach sluice at {base}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text);
        if status.is_success() {
            println!("{pretty}");
            Ok(())
        } else {
            anyhow::bail!("{status}: {pretty}")
        }
    })
}

fn profile(args: &ProfileArgs) -> anyhow::Result<()> {
    use sluice::drift::profile::PredictionProfile;
    use sluice::profiling::{ProfileRequest, write_profile};
    let config = args.config.load()?;
    let request = ProfileRequest {
        model: args.model.clone(),
        version: args.version,
        sample: args.sample.clone(),
        runtime: args.runtime,
        quantiles: args.quantiles,
        input: args.input.clone(),
        output: args.output.clone(),
        labels: args.labels.clone(),
    };
    let (path, profile) = write_profile(&config, &request)?;
    let prediction = match &profile.prediction {
        Some(p @ PredictionProfile::Score { .. }) => format!("{} (quantiles)", p.describe()),
        Some(p @ PredictionProfile::Class { classes, .. }) => {
            format!("{} ({} classes)", p.describe(), classes.len())
        }
        None => "none".to_string(),
    };
    println!(
        "wrote {}: {} rows, {} features of input '{}', prediction: {prediction}",
        path.display(),
        profile.sample.rows,
        profile.features.len(),
        profile.input
    );
    if let Some(q) = &profile.quality {
        let optional = |name: &str, value: Option<f64>| {
            value.map_or(String::new(), |v| format!(", {name} {v:.4}"))
        };
        println!(
            "quality on {} labelled rows: accuracy {:.4}{}{}",
            q.rows,
            q.accuracy,
            optional("log loss", q.log_loss),
            optional("ROC AUC", q.roc_auc)
        );
    }
    Ok(())
}

fn check_config(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let mut problems = config.problems();
    if config.repository.path.is_dir() {
        match repository::scan(&config.repository.path) {
            Ok((_, bad)) => problems.extend(bad.iter().map(ToString::to_string)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        println!("config is valid");
        Ok(())
    } else {
        for problem in &problems {
            println!("- {problem}");
        }
        anyhow::bail!("{} problem(s) found", problems.len())
    }
}

fn list_models(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    // A bucket is listed as its cache holds it (what was downloaded and checked last).
    let folder = match config.repository.object_store_uri() {
        Some(_) => config.repository.s3.cache_dir.clone(),
        None => config.repository.path.clone(),
    };
    let (models, problems) = repository::scan(&folder)?;
    let default_runtime = config.runtime.default;
    println!(
        "{:<20} {:<16} {:<16} runtime",
        "model", "on disk", "would load"
    );
    for model in &models {
        let policy = model
            .config
            .version_policy
            .as_ref()
            .unwrap_or(&config.repository.version_policy);
        let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        println!(
            "{:<20} {:<16} {:<16} {}",
            model.name,
            join(&model.versions),
            join(&policy.select(&model.versions)),
            model.config.runtime.unwrap_or(default_runtime).as_str()
        );
    }
    for problem in &problems {
        println!("! {problem}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap checks its definitions only when a subcommand is parsed: a clash (two `--runtime`
    /// flags in one subcommand) would otherwise surface as a panic in a user's hands.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["sluice", "serve", "--runtime", "trees"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.runtime, Some(sluice_runtime::RuntimeChoice::Trees));
        assert!(Cli::try_parse_from(["sluice", "serve", "--runtime", "gpu"]).is_err());
    }
}

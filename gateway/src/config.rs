//! Typed configuration: the whole of `sluice.toml`, its defaults, and validation that reports
//! every problem at once with its field path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Everything sluice reads from its config file. Every section and field has a default, so an
/// empty file (or no file) is a valid config.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, limits and shutdown.
    pub server: ServerConfig,
    /// Where models come from and which versions stay loaded.
    pub repository: RepositoryConfig,
    /// How models run: runtime choice, worker threads, queue sizes.
    pub runtime: RuntimeConfig,
    /// Who may change models and traffic.
    pub admin: AdminConfig,
    /// Shadow runs' budget.
    pub traffic: TrafficConfig,
    /// The prediction log and the lifecycle events: sink, inputs, memory bound.
    pub prediction_log: crate::predlog::PredictionLogConfig,
    /// Guarded rollouts: how often the guard looks, and every rollout's defaults.
    pub rollout: crate::monitor::guard::RolloutConfig,
    /// Replicas that follow one Kafka control topic; off (a single node) by default.
    pub fleet: crate::fleet::FleetConfig,
    /// Input and prediction drift against each version's `profile.json`.
    pub drift: DriftConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Measure drift for every version that has a `profile.json`; off ignores the profiles.
    pub enabled: bool,
    /// Span PSI and KS are computed over, e.g. "5m": long enough for a few thousand rows,
    /// short enough to notice a change within minutes.
    #[serde(with = "human_duration")]
    pub window: Duration,
    /// Width of one time bucket; the window slides by this much at a time.
    #[serde(with = "human_duration")]
    pub bucket: Duration,
    /// How often PSI and KS are recomputed, the gauges set and the thresholds checked.
    #[serde(with = "human_duration")]
    pub evaluate_interval: Duration,
    /// PSI at or above which a series is drifting. 0.2 is the customary "significant shift"
    /// line (0.1-0.2: moderate).
    pub psi_threshold: f64,
    /// KS statistic at or above which a series is drifting. 0.1 is about the two-sample 5 %
    /// critical value for a 200-row window against a 1000-row reference.
    pub ks_threshold: f64,
    /// A raised alert clears once the value falls below `threshold * clear_ratio`
    /// (hysteresis, so a value hovering at the threshold does not flap).
    pub clear_ratio: f64,
    /// Values a series' window must hold before its thresholds are checked; smaller windows
    /// are mostly sampling noise. The gauges are published regardless.
    pub min_rows: u64,
    /// URL that receives each alert (raised and cleared) as a JSON POST, e.g. a retraining
    /// job's trigger. http:// only.
    pub webhook_url: Option<String>,
    /// Longest a webhook post may take.
    #[serde(with = "human_duration")]
    pub webhook_timeout: Duration,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window: Duration::from_secs(300),
            bucket: Duration::from_secs(10),
            evaluate_interval: Duration::from_secs(1),
            psi_threshold: 0.2,
            ks_threshold: 0.1,
            clear_ratio: 0.8,
            min_rows: 200,
            webhook_url: None,
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

impl DriftConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.bucket < Duration::from_millis(100) {
            problems.push("drift.bucket must be at least 100ms".into());
        }
        if self.window < self.bucket {
            problems.push("drift.window must be at least one drift.bucket".into());
        } else if self.window.as_nanos() / self.bucket.as_nanos().max(1) > 1000 {
            // Every bucket holds a counter per bin of every feature: keep memory bounded.
            problems.push("drift.window may hold at most 1000 buckets".into());
        }
        if self.evaluate_interval < Duration::from_millis(100) {
            problems.push("drift.evaluate_interval must be at least 100ms".into());
        }
        for (name, value) in [
            ("drift.psi_threshold", self.psi_threshold),
            ("drift.ks_threshold", self.ks_threshold),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                problems.push(format!("{name} must be a positive number"));
            }
        }
        if !(self.clear_ratio > 0.0 && self.clear_ratio <= 1.0) {
            problems.push("drift.clear_ratio must be in (0, 1]".into());
        }
        if let Some(url) = &self.webhook_url {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" => {}
                Ok(_) => problems.push(format!(
                    "drift.webhook_url: '{url}' must be an http:// URL (this build has no TLS client)"
                )),
                Err(e) => problems.push(format!("drift.webhook_url: '{url}' is not a URL: {e}")),
            }
        }
        problems
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficConfig {
    /// Shadow copies that may run at once, across all models. Small on purpose: shadows must
    /// never take the CPU that answers clients.
    pub shadow_workers: usize,
    /// Shadow copies that may wait; beyond it copies are dropped and counted.
    pub shadow_queue: usize,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            shadow_workers: 1,
            shadow_queue: 256,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token that mutating calls (load, unload, traffic) must present. The
    /// `SLUICE_ADMIN_TOKEN` environment variable wins over it. With no token at all, mutations
    /// are accepted from loopback clients only.
    pub token: Option<String>,
    /// File holding the token (its first line), e.g. a mounted Kubernetes secret.
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address every listener binds to.
    pub host: String,
    /// KServe v2 / V1 REST port (0 picks a free port).
    pub http_port: u16,
    /// KServe v2 gRPC port (0 picks a free port).
    pub grpc_port: u16,
    /// Prometheus metrics port (0 picks a free port).
    pub metrics_port: u16,
    /// Largest accepted request body, e.g. "8MiB"; larger bodies get 413.
    #[serde(with = "byte_size")]
    pub max_body_size: u64,
    /// Largest answer, in bytes of output tensors, e.g. "32MiB"; a request whose outputs
    /// would be larger is answered 413 (gRPC RESOURCE_EXHAUSTED) instead.
    #[serde(with = "byte_size")]
    pub max_response_size: u64,
    /// Inference requests in progress at once, across all models and protocols; more are
    /// refused at once with 503 + Retry-After.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, queueing included, before it is answered with 504.
    #[serde(with = "human_duration")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.
    #[serde(with = "human_duration")]
    pub drain_timeout: Duration,
    /// Timeouts and limits of client connections (`[server.connections]`).
    pub connections: crate::server::connections::ConnectionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: default_host(),
            http_port: 8000,
            grpc_port: 8001,
            metrics_port: 8002,
            max_body_size: 8 * 1024 * 1024,
            // Four times the body limit: outputs are rarely larger than inputs, and a request
            // cannot multiply its answer past it.
            max_response_size: 32 * 1024 * 1024,
            max_concurrent_requests: 4096,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            connections: Default::default(),
        }
    }
}

/// All interfaces, as Triton does; bind to 127.0.0.1 to keep sluice private to the host.
fn default_host() -> String {
    "0.0.0.0".to_string()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// Folder holding `<model>/<version>/model.onnx`.
    pub path: PathBuf,
    /// Versions kept loaded when a model's `model.toml` does not say; latest 2 keeps the
    /// previous version as the instant rollback target.
    pub version_policy: VersionPolicy,
    /// How often to re-scan the repository and (re)load what changed, e.g. "5s". Off when
    /// unset: models then change only through the model-control API.
    #[serde(default, with = "optional_duration")]
    pub poll_interval: Option<Duration>,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            path: PathBuf::from("models"),
            version_policy: VersionPolicy::Latest(2),
            poll_interval: None,
        }
    }
}

/// Which versions of a model are loaded (Triton's version policies).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The N highest version numbers.
    Latest(usize),
    /// Every version folder.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// The versions to load out of those present, highest first.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut versions = available.to_vec();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        match self {
            VersionPolicy::Latest(n) => versions.truncate(*n),
            VersionPolicy::All => {}
            VersionPolicy::Specific(wanted) => versions.retain(|v| wanted.contains(v)),
        }
        versions
    }

    fn problems(&self, path: &str) -> Vec<String> {
        match self {
            VersionPolicy::Latest(0) => vec![format!("{path}: latest must be at least 1")],
            VersionPolicy::Specific(v) if v.is_empty() => {
                vec![format!("{path}: specific needs at least one version")]
            }
            _ => Vec::new(),
        }
    }
}

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    /// ONNX Runtime when its library can be found, tract otherwise.
    #[default]
    Auto,
    /// ONNX Runtime (through `ORT_DYLIB_PATH`, `runtime.ort_library` or `.ort/`).
    Ort,
    /// tract, pure Rust: always available.
    Tract,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Runtime for models whose `model.toml` does not pin one.
    pub default: RuntimeChoice,
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` wins over it, `.ort/` is tried last.
    pub ort_library: Option<PathBuf>,
    /// Worker threads (each with its own session) per loaded model version.
    pub instances: usize,
    /// Requests that may wait for a worker, per loaded version; beyond it requests get 503.
    pub queue_capacity: usize,
    /// How ONNX Runtime sessions are built (`[runtime.ort]`).
    pub ort: crate::runtime::OrtOptions,
    /// Dynamic batching for models whose `model.toml` does not set it.
    pub batching: crate::runtime::Batching,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            default: RuntimeChoice::Auto,
            ort_library: None,
            instances: default_instances(),
            queue_capacity: 1024,
            ort: Default::default(),
            batching: Default::default(),
        }
    }
}

/// One worker per core, up to 4: small models are latency-bound, not compute-bound.
fn default_instances() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}

/// A config file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and parses a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Every problem with this config, each naming its field; empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let s = &self.server;
        let ports = [
            ("server.http_port", s.http_port),
            ("server.grpc_port", s.grpc_port),
            ("server.metrics_port", s.metrics_port),
        ];
        for (i, (name_a, a)) in ports.iter().enumerate() {
            for (name_b, b) in &ports[i + 1..] {
                if *a != 0 && a == b {
                    problems.push(format!("{name_a} and {name_b} are both {a}"));
                }
            }
        }
        if s.host.parse::<std::net::IpAddr>().is_err() {
            problems.push(format!(
                "server.host: '{}' is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)",
                s.host
            ));
        }
        if s.max_concurrent_requests == 0 {
            problems.push("server.max_concurrent_requests must be at least 1".into());
        }
        if s.max_body_size == 0 {
            problems.push("server.max_body_size must be greater than 0".into());
        }
        if s.request_timeout.is_zero() {
            problems.push("server.request_timeout must be greater than 0".into());
        }
        if s.max_response_size == 0 {
            problems.push("server.max_response_size must be greater than 0".into());
        }
        problems.extend(s.connections.problems());
        problems.extend(
            self.repository
                .version_policy
                .problems("repository.version_policy"),
        );
        if !self.repository.path.is_dir() {
            problems.push(format!(
                "repository.path: {} is not a directory",
                self.repository.path.display()
            ));
        }
        let r = &self.runtime;
        if r.instances == 0 {
            problems.push("runtime.instances must be at least 1".into());
        }
        if r.queue_capacity == 0 {
            problems.push("runtime.queue_capacity must be at least 1".into());
        }
        if self.traffic.shadow_workers == 0 {
            problems.push("traffic.shadow_workers must be at least 1".into());
        }
        if self.traffic.shadow_queue == 0 {
            problems.push("traffic.shadow_queue must be at least 1".into());
        }
        problems.extend(r.batching.problems("runtime.batching"));
        if r.ort.intra_threads == 0 {
            problems.push("runtime.ort.intra_threads must be at least 1".into());
        }
        if self
            .repository
            .poll_interval
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            problems.push("repository.poll_interval must be at least 100ms".into());
        }
        problems.extend(self.drift.problems());
        if self.admin.token.as_deref().is_some_and(str::is_empty) {
            problems.push("admin.token is empty: remove it or set a secret".into());
        }
        if let Some(file) = &self.admin.token_file
            && !file.is_file()
        {
            problems.push(format!(
                "admin.token_file: {} does not exist",
                file.display()
            ));
        }
        problems.extend(self.prediction_log.problems());
        problems.extend(self.rollout.problems());
        problems.extend(self.fleet.problems());
        if let Some(lib) = &r.ort_library
            && !lib.is_file()
        {
            problems.push(format!(
                "runtime.ort_library: {} does not exist",
                lib.display()
            ));
        }
        problems
    }

    /// `Ok` when valid, else every problem together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Durations in human form ("250ms", "30s", "5m").
pub mod human_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("'{text}' is not a duration like \"250ms\": {e}"))
        })
    }
}

/// An optional human duration.
pub mod optional_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => human_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        human_duration::deserialize(d).map(Some)
    }
}

/// Sizes as "8MiB", "512KiB", "1GiB", "1000" (bytes) or a bare integer.
pub mod byte_size {
    use super::*;

    pub fn serialize<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a size: a number of bytes or a string like \"8MiB\""
        )]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Text(text) => parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!("'{text}' is not a size like \"8MiB\""))
            }),
        }
    }

    pub fn parse(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        number.checked_mul(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.server.http_port, 8000);
        assert_eq!(config.repository.version_policy, VersionPolicy::Latest(2));
    }

    #[test]
    fn parses_human_forms() {
        let config: Config = toml::from_str(
            r#"
            [server]
            max_body_size = "2MiB"
            request_timeout = "250ms"
            [repository]
            version_policy = { specific = [1, 3] }
            "#,
        )
        .unwrap();
        assert_eq!(config.server.max_body_size, 2 << 20);
        assert_eq!(config.server.request_timeout, Duration::from_millis(250));
        assert_eq!(
            config.repository.version_policy,
            VersionPolicy::Specific(vec![1, 3])
        );
        let all: RepositoryConfig = toml::from_str(r#"version_policy = "all""#).unwrap();
        assert_eq!(all.version_policy, VersionPolicy::All);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<Config>("[server]\nhttp_prot = 1\n").unwrap_err();
        assert!(err.to_string().contains("http_prot"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut config = Config::default();
        config.server.grpc_port = config.server.http_port;
        config.runtime.instances = 0;
        config.repository.path = PathBuf::from("/nonexistent/models");
        config.repository.version_policy = VersionPolicy::Latest(0);
        let problems = config.problems();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("server.http_port and server.grpc_port"));
    }

    #[test]
    fn drift_section() {
        let config: Config = toml::from_str(
            "[drift]\nwindow = \"1m\"\nbucket = \"5s\"\nwebhook_url = \"ftp://x\"\nclear_ratio = 2.0\n",
        )
        .unwrap();
        assert_eq!(config.drift.window, Duration::from_secs(60));
        assert!(config.drift.enabled);
        let problems = config.drift.problems();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[1].contains("http://"), "{problems:#?}");
        assert!(DriftConfig::default().problems().is_empty());
    }

    #[test]
    fn version_policies_select_like_triton() {
        let available = [1, 3, 2];
        assert_eq!(VersionPolicy::Latest(2).select(&available), vec![3, 2]);
        assert_eq!(VersionPolicy::All.select(&available), vec![3, 2, 1]);
        assert_eq!(
            VersionPolicy::Specific(vec![1, 7]).select(&available),
            vec![1]
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(byte_size::parse("8MiB"), Some(8 << 20));
        assert_eq!(byte_size::parse("1000"), Some(1000));
        assert_eq!(byte_size::parse("12 KiB"), Some(12 << 10));
        assert_eq!(byte_size::parse("lots"), None);
    }
}

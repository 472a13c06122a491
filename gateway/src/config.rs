//! The whole of `sluice.toml`: this file only gathers the sections, each of which lives with
//! the subsystem that owns it (its fields, defaults and checks), and reports every problem at
//! once with its field path. The serde forms of durations and sizes are in
//! [`sluice_core::units`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::drift::DriftConfig;
pub use crate::fleet::FleetConfig;
pub use crate::infer::TrafficConfig;
pub use crate::outcomes::OutcomesConfig;
pub use crate::predlog::PredictionLogConfig;
pub use crate::repository::{RepositoryConfig, VersionPolicy};
pub use crate::rollout::RolloutConfig;
pub use crate::server::{AdminConfig, ServerConfig};
pub use crate::sources::RegistryConfig;
pub use sluice_runtime::{RuntimeChoice, RuntimeConfig};

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
    pub prediction_log: PredictionLogConfig,
    /// Guarded rollouts: how often the guard looks, and every rollout's defaults.
    pub rollout: RolloutConfig,
    /// Replicas that follow one Kafka control topic; off (a single node) by default.
    pub fleet: FleetConfig,
    /// Input and prediction drift against each version's `profile.json`.
    pub drift: DriftConfig,
    /// Ground-truth outcomes joined with recent predictions: live quality, and the guard's
    /// correctness test.
    pub outcomes: OutcomesConfig,
    /// Model registries to follow (`[[registry.mlflow]]`).
    pub registry: RegistryConfig,
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
        problems.extend(self.server.problems());
        problems.extend(self.repository.problems());
        problems.extend(self.runtime.problems());
        problems.extend(self.traffic.problems());
        problems.extend(self.drift.problems());
        problems.extend(self.outcomes.problems());
        problems.extend(self.admin.problems());
        problems.extend(self.prediction_log.problems());
        problems.extend(self.rollout.problems());
        problems.extend(self.fleet.problems());
        problems.extend(self.registry.problems());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}

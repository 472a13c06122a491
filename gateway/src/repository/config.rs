//! The `[repository]` config section and Triton's version policies.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::units::optional_duration;

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

    pub fn problems(&self, path: &str) -> Vec<String> {
        match self {
            VersionPolicy::Latest(0) => vec![format!("{path}: latest must be at least 1")],
            VersionPolicy::Specific(v) if v.is_empty() => {
                vec![format!("{path}: specific needs at least one version")]
            }
            _ => Vec::new(),
        }
    }
}

impl RepositoryConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.version_policy.problems("repository.version_policy");
        if !self.path.is_dir() {
            problems.push(format!(
                "repository.path: {} is not a directory",
                self.path.display()
            ));
        }
        if self
            .poll_interval
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            problems.push("repository.poll_interval must be at least 100ms".into());
        }
        problems
    }
}

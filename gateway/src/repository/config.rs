//! The `[repository]` config section and Triton's version policies.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::units::optional_duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// Folder holding `<model>/<version>/model.onnx`, or an S3-compatible bucket as
    /// `s3://bucket/prefix` (see `[repository.s3]`): its versions are downloaded into a local
    /// cache, checked, and served from there.
    pub path: PathBuf,
    /// Versions kept loaded when a model's `model.toml` does not say; latest 2 keeps the
    /// previous version as the instant rollback target.
    pub version_policy: VersionPolicy,
    /// How often to re-scan the repository and (re)load what changed, e.g. "5s". Off when
    /// unset: models then change only through the model-control API.
    #[serde(default, with = "optional_duration")]
    pub poll_interval: Option<Duration>,
    /// How to reach the bucket when `path` is an `s3://` URI.
    pub s3: ObjectStoreConfig,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            path: PathBuf::from("models"),
            version_policy: VersionPolicy::Latest(2),
            poll_interval: None,
            s3: ObjectStoreConfig::default(),
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
    /// `path` when it names a bucket (`s3://...`) rather than a folder.
    pub fn object_store_uri(&self) -> Option<&str> {
        self.path.to_str().filter(|p| p.starts_with("s3://"))
    }

    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.version_policy.problems("repository.version_policy");
        if let Some(uri) = self.object_store_uri() {
            problems.extend(self.s3.problems(uri));
        } else if !self.path.is_dir() {
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

/// `[repository.s3]`: an S3-compatible object store (AWS S3, MinIO, Ceph, moto). Every field
/// left out falls back to the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
/// `AWS_ENDPOINT_URL`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// The S3 API's base URL for S3-compatible stores, e.g. "http://minio:9000"; AWS itself
    /// when unset. An `http://` endpoint is allowed (plain HTTP), for a store inside the
    /// cluster.
    pub endpoint: Option<String>,
    /// The bucket's region, e.g. "eu-west-1".
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`): what MinIO and most S3-compatible stores want.
    pub path_style: bool,
    /// Access key; prefer the environment variables for secrets.
    pub access_key_id: Option<String>,
    /// Secret key; prefer the environment variables for secrets.
    pub secret_access_key: Option<String>,
    /// Local folder the versions are downloaded to and served from; it survives restarts,
    /// so a restart serves at once from what was verified before, even with the bucket
    /// unreachable. Default `.sluice-cache` (relative to the working directory).
    pub cache_dir: PathBuf,
    /// Most bytes the cache may hold, e.g. "20GiB": a version that would take the cache past
    /// it is refused with that reason. Only the versions the version policies select are
    /// kept, so the cache holds no more than what serves.
    #[serde(with = "sluice_core::units::byte_size")]
    pub cache_max_size: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            endpoint: None,
            region: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            cache_dir: PathBuf::from(".sluice-cache"),
            // Room for a handful of models with two versions each.
            cache_max_size: 10 << 30,
        }
    }
}

impl ObjectStoreConfig {
    fn problems(&self, uri: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let bucket = uri
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap_or("");
        if bucket.is_empty() {
            problems.push(format!(
                "repository.path: '{uri}' names no bucket (expected s3://bucket/prefix)"
            ));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(format!(
                "repository.s3.endpoint: '{endpoint}' must start with http:// or https://"
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            problems
                .push("repository.s3: access_key_id and secret_access_key go together".to_string());
        }
        if self.cache_max_size == 0 {
            problems.push("repository.s3.cache_max_size must be more than 0".into());
        }
        problems
    }
}

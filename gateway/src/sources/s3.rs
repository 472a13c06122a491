//! An S3-compatible bucket as the model repository (`repository.path = "s3://bucket/prefix"`),
//! laid out like a folder: `<prefix>/<model>/<version>/model.onnx`, optional
//! `<prefix>/<model>/model.toml`, `profile.json` and `model.onnx.sha256` next to the model.
//!
//! The bucket is mirrored into a local cache folder, which is the repository the loader reads:
//! a version the policy selects is downloaded into staging, checked (each object's size and
//! ETag as listed, the `.sha256` sidecar when present, the model builds), and moved into the
//! cache in one rename; only then is the model (re)loaded through the control. A listing is
//! acted on only once it is seen unchanged on two polls in a row (an upload of a version's
//! files in progress is never half-loaded; a multipart upload is invisible until complete),
//! and each state is acted on once: a refused version is not retried until it changes. The
//! cache keeps only what the policies select, within `cache_max_size`, and survives a restart:
//! what is cached and still listed is not downloaded again, and with the bucket unreachable at
//! start the cache serves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, GetOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::stage::{self, Staged};
use super::status::{SourceHandle, backoff};
use crate::control::ModelControl;
use crate::lifecycle::{Actor, ModelManager};
use crate::repository::{Loader, ModelConfig, ModelDir, RepositoryConfig};

/// The model file names a version may hold (the runtime's precedence).
const MODEL_FILES: [&str; 3] = ["model.onnx", "model.txt", "model.json"];

/// One object as listed: its name inside the version (or model) folder, size and ETag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RemoteFile {
    name: String,
    size: u64,
    etag: Option<String>,
}

/// One model folder of the bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RemoteModel {
    config: Option<RemoteFile>,
    /// Version -> its files, sorted by name.
    versions: BTreeMap<u64, Vec<RemoteFile>>,
}

type Listing = BTreeMap<String, RemoteModel>;

/// The marker of a cached version (or of a model folder's `model.toml`): the objects it was
/// downloaded from.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    source: String,
    files: Vec<RemoteFile>,
}

/// Why a model's sync stopped: a failure that may pass (retried with backoff), with what was
/// done before it.
struct Transient(String);

pub struct S3Source {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
    cache: PathBuf,
    max_cache: u64,
    handle: Arc<SourceHandle>,
    /// The listing each model was last acted on.
    applied: Listing,
    /// Versions refused, with the objects they were refused for.
    refused: BTreeMap<String, Vec<RemoteFile>>,
    /// Model folders a registry source fills in the same cache: only their `model.toml`
    /// comes from the bucket, and the cache's versions of them are never removed.
    registry_models: BTreeSet<String>,
}

/// A file name that stays inside its folder and is not one of sluice's hidden files.
fn plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

/// `s3://bucket/prefix` -> ("bucket", "prefix").
fn parse_uri(uri: &str) -> Result<(&str, &str), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("'{uri}' is not an s3:// URI"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("'{uri}' names no bucket"));
    }
    Ok((bucket, prefix.trim_matches('/')))
}

impl S3Source {
    /// The source for `repository` (whose `path` is an `s3://` URI). Nothing is contacted yet.
    pub fn new(
        repository: &RepositoryConfig,
        uri: &str,
        registry_models: BTreeSet<String>,
    ) -> Result<S3Source, String> {
        let (bucket, prefix) = parse_uri(uri)?;
        let s3 = &repository.s3;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Ok(region) = std::env::var("AWS_REGION") {
            builder = builder.with_region(region);
        }
        let endpoint = s3
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let allow_http = endpoint.as_ref().is_some_and(|e| e.starts_with("http://"));
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &s3.region {
            builder = builder.with_region(region);
        }
        if let (Some(key), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        // The source's own loop retries with backoff; a request gives up soon so that a check
        // of an unreachable bucket ends in seconds, not in object_store's default 3 minutes.
        // The overall timeout leaves room for big model files.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let store = builder
            .with_virtual_hosted_style_request(!s3.path_style)
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(600)),
            )
            .build()
            .map_err(|e| format!("repository.path {uri}: {e}"))?;
        let prefix = (!prefix.is_empty())
            .then(|| ObjectPath::parse(prefix))
            .transpose()
            .map_err(|e| format!("repository.path {uri}: {e}"))?;
        let cache = s3.cache_dir.clone();
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("repository.s3.cache_dir {}: {e}", cache.display()))?;
        stage::clear_staging(&cache);
        Ok(S3Source {
            store: Arc::new(store),
            prefix,
            cache,
            max_cache: s3.cache_max_size,
            handle: Arc::new(SourceHandle::new(uri.to_string(), "s3", Vec::new())),
            applied: Listing::new(),
            refused: BTreeMap::new(),
            registry_models,
        })
    }

    /// The local folder the loader serves from.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    pub fn handle(&self) -> Arc<SourceHandle> {
        Arc::clone(&self.handle)
    }

    /// Every object under the prefix, as model folders. Objects that do not fit the layout
    /// (deeper folders, version names that are not integers) are left out.
    async fn list(&self) -> Result<Listing, String> {
        let mut listing = Listing::new();
        let mut objects = self.store.list(self.prefix.as_ref());
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(|e| format!("cannot list {}: {e}", self.handle.name))?;
            let parts: Vec<String> = match &self.prefix {
                Some(prefix) => match meta.location.prefix_match(prefix) {
                    Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
                    None => continue,
                },
                None => meta
                    .location
                    .parts()
                    .map(|p| p.as_ref().to_string())
                    .collect(),
            };
            let file = |name: &str| RemoteFile {
                name: name.to_string(),
                size: meta.size,
                etag: meta.e_tag.clone(),
            };
            match parts.as_slice() {
                [model, name] if name == "model.toml" => {
                    listing.entry(model.clone()).or_default().config = Some(file(name));
                }
                // Only plain file names: a listed key must not reach outside its version folder.
                [model, version, name] if plain(name) => {
                    if let Ok(v) = version.parse::<u64>() {
                        let entry = listing.entry(model.clone()).or_default();
                        entry.versions.entry(v).or_default().push(file(name));
                    }
                }
                _ => {}
            }
        }
        for model in listing.values_mut() {
            for files in model.versions.values_mut() {
                files.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        Ok(listing)
    }

    fn object(&self, model: &str, rest: &[&str]) -> ObjectPath {
        let mut parts: Vec<String> = self
            .prefix
            .iter()
            .flat_map(|p| p.parts().map(|p| p.as_ref().to_string()))
            .collect();
        parts.push(model.to_string());
        parts.extend(rest.iter().map(|s| s.to_string()));
        ObjectPath::from_iter(parts)
    }

    /// Downloads one object into `target`, checking that it is the object listed: the same
    /// ETag (the store refuses the read otherwise) and the listed size.
    async fn download(
        &self,
        location: &ObjectPath,
        want: &RemoteFile,
        target: &Path,
    ) -> Result<(), String> {
        let options = GetOptions {
            if_match: want.etag.clone(),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(location, options)
            .await
            .map_err(|e| format!("cannot download {location}: {e}"))?;
        if got.meta.e_tag != want.etag || got.meta.size != want.size {
            return Err(format!("{location} changed while it was being read"));
        }
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        let mut written = 0u64;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("download of {location} broke off: {e}"))?;
            written += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        if written != want.size {
            return Err(format!(
                "{location}: read {written} bytes, listed as {}",
                want.size
            ));
        }
        Ok(())
    }

    /// Bytes the cache holds, by its markers.
    fn cache_size(&self) -> u64 {
        let Ok(models) = std::fs::read_dir(&self.cache) else {
            return 0;
        };
        models
            .filter_map(Result::ok)
            .filter_map(|m| m.file_name().into_string().ok())
            .filter(|m| !m.starts_with('.'))
            .flat_map(|m| stage::marked_versions::<Marker>(&self.cache, &m))
            .map(|(_, marker)| marker.files.iter().map(|f| f.size).sum::<u64>())
            .sum()
    }

    /// Makes `<cache>/<name>/model.toml` what the bucket holds; answers whether it changed,
    /// or `None` when the bucket's `model.toml` does not parse: refused (until it changes),
    /// and the model left as cached.
    async fn sync_config(
        &mut self,
        name: &str,
        remote: &RemoteModel,
    ) -> Result<Option<bool>, Transient> {
        let dir = self.cache.join(name);
        let marker_path = dir.join(".model.toml.source.json");
        let local: Option<RemoteFile> = std::fs::read(&marker_path)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        if local == remote.config {
            return Ok(Some(false));
        }
        let what = format!("{name}/model.toml");
        let Some(want) = remote.config.clone() else {
            let _ = std::fs::remove_file(dir.join("model.toml"));
            let _ = std::fs::remove_file(&marker_path);
            return Ok(Some(true));
        };
        if self
            .refused
            .get(&what)
            .is_some_and(|f| f.first() == Some(&want))
        {
            return Ok(None);
        }
        let staged = Staged::new(&self.cache, name, 0).map_err(|e| Transient(e.to_string()))?;
        let file = staged.dir().join("model.toml");
        self.download(&self.object(name, &["model.toml"]), &want, &file)
            .await
            .map_err(Transient)?;
        if let Err(reason) = ModelConfig::read(&staged.dir()) {
            self.refused.insert(what.clone(), vec![want]);
            self.handle.refused(what, reason);
            return Ok(None);
        }
        let io = |e: std::io::Error| Transient(e.to_string());
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::rename(&file, dir.join("model.toml")).map_err(io)?;
        let text = serde_json::to_vec(&want).unwrap_or_default();
        std::fs::write(&marker_path, text).map_err(io)?;
        self.refused.remove(&what);
        self.handle.forget_refusal(&what);
        Ok(Some(true))
    }

    /// Downloads, checks and installs one version; `Ok(Err(reason))` is a refusal.
    async fn fetch_version(
        &self,
        loader: &Arc<Loader>,
        name: &str,
        version: u64,
        files: &[RemoteFile],
    ) -> Result<Result<String, String>, Transient> {
        let size: u64 = files.iter().map(|f| f.size).sum();
        let cached = stage::read_marker::<Marker>(&self.cache.join(name).join(version.to_string()))
            .map(|m| m.files.iter().map(|f| f.size).sum::<u64>())
            .unwrap_or(0);
        let after = self.cache_size().saturating_sub(cached) + size;
        if after > self.max_cache {
            return Ok(Err(format!(
                "the cache would hold {after} bytes, over repository.s3.cache_max_size \
                 ({} bytes)",
                self.max_cache
            )));
        }
        let started = Instant::now();
        let staged =
            Staged::new(&self.cache, name, version).map_err(|e| Transient(e.to_string()))?;
        for file in files {
            let location = self.object(name, &[&version.to_string(), &file.name]);
            self.download(&location, file, &staged.dir().join(&file.name))
                .await
                .map_err(Transient)?;
        }
        let downloaded = started.elapsed();
        for model_file in MODEL_FILES {
            if files.iter().any(|f| f.name == model_file)
                && let Err(reason) = stage::check_digest(&staged.dir(), model_file)
            {
                return Ok(Err(reason));
            }
        }
        let checked = match staged
            .verify_loads(loader, name, &self.cache.join(name))
            .await
        {
            Ok(took) => took,
            Err(reason) => return Ok(Err(format!("the model does not load: {reason}"))),
        };
        let marker = Marker {
            source: self.handle.name.clone(),
            files: files.to_vec(),
        };
        stage::write_marker(&staged.dir(), &marker).map_err(|e| Transient(e.to_string()))?;
        staged
            .install(&self.cache, name)
            .map_err(|e| Transient(e.to_string()))?;
        Ok(Ok(format!(
            "{name}/{version} cached ({size} bytes, downloaded in {} ms, checked in {} ms)",
            downloaded.as_millis(),
            checked.as_millis()
        )))
    }

    /// Makes the cached `<name>` folder hold what the bucket holds of the versions its policy
    /// selects. Answers whether anything in the folder changed.
    async fn sync_model(
        &mut self,
        loader: &Arc<Loader>,
        name: &str,
        remote: &RemoteModel,
    ) -> Result<bool, Transient> {
        if !crate::repository::valid_model_name(name) {
            self.handle.refused(
                name.to_string(),
                "model names may hold only letters, digits, '_', '-' and '.'".into(),
            );
            return Ok(false);
        }
        if self.registry_models.contains(name) {
            return Ok(self.sync_config(name, remote).await?.unwrap_or(false));
        }
        let Some(mut changed) = self.sync_config(name, remote).await? else {
            // A model.toml that does not parse would change how every version loads: nothing
            // of this model changes until it is fixed.
            return Ok(false);
        };
        let model_dir = self.cache.join(name);
        let config = ModelConfig::read(&model_dir).unwrap_or_default();
        let available: Vec<u64> = remote
            .versions
            .iter()
            .filter(|(_, files)| files.iter().any(|f| MODEL_FILES.contains(&f.name.as_str())))
            .map(|(v, _)| *v)
            .collect();
        let wanted = loader.versions_to_load(&ModelDir {
            name: name.to_string(),
            path: model_dir.clone(),
            config,
            versions: available,
        });
        for &version in &wanted {
            let files = &remote.versions[&version];
            let what = format!("{name}/{version}");
            let local = stage::read_marker::<Marker>(&model_dir.join(version.to_string()));
            if local.is_some_and(|m| m.files == *files) {
                continue;
            }
            if self.refused.get(&what) == Some(files) {
                continue;
            }
            match self.fetch_version(loader, name, version, files).await? {
                Ok(change) => {
                    self.refused.remove(&what);
                    self.handle.forget_refusal(&what);
                    self.handle.changed(change);
                    changed = true;
                }
                Err(reason) => {
                    self.refused.insert(what.clone(), files.clone());
                    self.handle.refused(what, reason);
                }
            }
        }
        // What the policy no longer selects (or the bucket no longer holds) leaves the cache.
        let keep: BTreeSet<u64> = wanted.into_iter().collect();
        for (version, _) in stage::marked_versions::<Marker>(&self.cache, name) {
            if !keep.contains(&version) {
                let _ = std::fs::remove_dir_all(model_dir.join(version.to_string()));
                changed = true;
            }
        }
        Ok(changed)
    }

    fn summary(listing: &Listing) -> String {
        let versions: usize = listing.values().map(|m| m.versions.len()).sum();
        format!("{} models, {versions} versions", listing.len())
    }

    /// Start-up: brings the cache up to date with the bucket before the first load (without
    /// waiting for a listing to settle: nothing is serving yet). With the bucket unreachable
    /// the cache serves as it is.
    pub async fn sync_at_start(&mut self, loader: &Arc<Loader>) {
        let listing = match self.list().await {
            Ok(listing) => listing,
            Err(error) => {
                self.handle.failed(format!("{error}; serving the cache"));
                return;
            }
        };
        self.handle.checked(Self::summary(&listing));
        self.handle.set_models(listing.keys().cloned().collect());
        for (name, remote) in &listing {
            match self.sync_model(loader, name, remote).await {
                Ok(_) => {
                    self.applied.insert(name.clone(), remote.clone());
                }
                Err(Transient(error)) => {
                    self.handle.failed(error);
                }
            }
        }
        self.remove_unlisted(&listing);
    }

    /// Cached model folders the bucket does not list (at start: removed while sluice was
    /// down).
    fn remove_unlisted(&self, listing: &Listing) {
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.')
                && !listing.contains_key(&name)
                && !self.registry_models.contains(&name)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Polls every `interval` (backing off while the bucket fails) until shutdown, and asks
    /// `control` to load what changed and unload what is gone.
    pub async fn run(
        mut self,
        models: Arc<ModelManager>,
        control: Arc<dyn ModelControl>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let actor = Actor::new(format!("source {}", self.handle.name));
        let loader = Arc::clone(models.loader());
        let mut previous = self.applied.clone();
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff(interval, failures)) => {}
                _ = self.handle.wake.notified() => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
            let listing = match self.list().await {
                Ok(listing) => listing,
                Err(error) => {
                    failures = self.handle.failed(error);
                    continue;
                }
            };
            failures = 0;
            self.handle.checked(Self::summary(&listing));
            self.handle.set_models(listing.keys().cloned().collect());
            for (name, remote) in &listing {
                let settled = previous.get(name) == Some(remote);
                if !settled || self.applied.get(name) == Some(remote) {
                    continue;
                }
                match self.sync_model(&loader, name, remote).await {
                    Ok(changed) => {
                        self.applied.insert(name.clone(), remote.clone());
                        let served = models.router().snapshot().models.contains_key(name);
                        if changed || !served {
                            let _ = control.load(name, &actor).await;
                        }
                    }
                    Err(Transient(error)) => failures = self.handle.failed(error),
                }
            }
            // Models gone from the bucket (seen gone twice) stop being served.
            let gone: Vec<String> = self
                .applied
                .keys()
                .filter(|m| !listing.contains_key(*m) && !previous.contains_key(*m))
                .filter(|m| !self.registry_models.contains(*m))
                .cloned()
                .collect();
            for name in gone {
                self.applied.remove(&name);
                let _ = std::fs::remove_dir_all(self.cache.join(&name));
                self.handle
                    .changed(format!("{name} is gone from the bucket"));
                let _ = control.unload(&name, &actor).await;
            }
            previous = listing;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("s3://b/models/prod/").unwrap(),
            ("b", "models/prod")
        );
        assert_eq!(parse_uri("s3://b").unwrap(), ("b", ""));
        assert!(parse_uri("s3:///x").is_err());
        assert!(parse_uri("/models").is_err());
        assert!(plain("model.onnx") && plain("profile.json"));
        assert!(!plain("..") && !plain(".sluice-source.json") && !plain("a\\b") && !plain(""));
    }
}

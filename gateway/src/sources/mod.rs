//! Model sources: where version folders come from. The local folder is the repository itself
//! (watched by [`crate::controllers::poller`]); an S3-compatible bucket ([`s3`]) is mirrored
//! into a local cache that becomes the repository; an MLflow Model Registry ([`mlflow`])
//! places the version its alias names into the repository. Every source only writes checked
//! version folders (through [`stage`]: staging, verification, one rename) and asks for loads
//! through [`crate::control::ModelControl`], so version policies, `model.toml`, guarded
//! rollouts and the atomic publish are the same whatever the source.
//!
//! [`Sources`] is built once at start-up from the config: it says which folder the loader
//! reads, brings the cache up to date before the first load, starts one task per source, and
//! answers the admin API (`/admin/v1/sources`, the webhook).

pub mod config;
pub mod mlflow;
pub mod s3;
pub mod stage;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{MlflowSourceConfig, RegistryConfig};
pub use status::{SourceHandle, SourceState, SourceView, backoff};

use crate::control::ModelControl;
use crate::lifecycle::ModelManager;
use crate::repository::RepositoryConfig;
use sluice_core::error::{ErrorKind, ServeError, ServeResult};

/// How often a bucket is polled when `repository.poll_interval` is not set.
const DEFAULT_S3_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// The configured sources: their shared status, and (until started) the sources themselves.
pub struct Sources {
    handles: Vec<Arc<SourceHandle>>,
    /// (config, handle) of each MLflow source, for webhook deliveries.
    mlflow: Vec<(MlflowSourceConfig, Arc<SourceHandle>)>,
    pending: std::sync::Mutex<Pending>,
    s3_poll: std::time::Duration,
}

#[derive(Default)]
struct Pending {
    s3: Option<s3::S3Source>,
    mlflow: Vec<mlflow::MlflowSource>,
}

impl Sources {
    /// Builds the sources of `repository` and `registry`; answers them and the local folder
    /// the loader is to read (the bucket's cache, or the repository path itself).
    pub fn build(
        repository: &RepositoryConfig,
        registry: &RegistryConfig,
    ) -> Result<(Sources, PathBuf), String> {
        let mut pending = Pending::default();
        let mut handles = Vec::new();
        let registry_models = registry
            .mlflow
            .iter()
            .map(|c| c.served_name().to_string())
            .collect();
        let local = match repository.object_store_uri() {
            Some(uri) => {
                let source = s3::S3Source::new(repository, uri, registry_models)?;
                let local = source.cache().to_path_buf();
                handles.push(source.handle());
                pending.s3 = Some(source);
                local
            }
            None => repository.path.clone(),
        };
        let mut mlflow = Vec::new();
        for config in &registry.mlflow {
            let source = mlflow::MlflowSource::new(config, local.clone())?;
            handles.push(source.handle());
            mlflow.push((config.clone(), source.handle()));
            pending.mlflow.push(source);
        }
        Ok((
            Sources {
                handles,
                mlflow,
                pending: std::sync::Mutex::new(pending),
                s3_poll: repository.poll_interval.unwrap_or(DEFAULT_S3_POLL),
            },
            local,
        ))
    }

    /// Whether a source other than the local folder owns the repository (then the local
    /// poller stays off: the source polls).
    pub fn owns_repository(&self) -> bool {
        self.handles.iter().any(|h| h.kind == "s3")
    }

    /// Before the first load: brings the bucket's cache up to date (or leaves it as it is
    /// when the bucket cannot be reached).
    pub async fn prepare(&self, models: &ModelManager) {
        let s3 = self.pending.lock().ok().and_then(|mut p| p.s3.take());
        if let Some(mut s3) = s3 {
            s3.sync_at_start(models.loader()).await;
            if let Ok(mut pending) = self.pending.lock() {
                pending.s3 = Some(s3);
            }
        }
    }

    /// Starts one task per source.
    pub fn start(
        &self,
        models: &Arc<ModelManager>,
        control: &Arc<dyn ModelControl>,
        shutdown: &watch::Sender<bool>,
    ) -> Vec<JoinHandle<()>> {
        let pending = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let mut tasks = Vec::new();
        if let Some(s3) = pending.s3 {
            tasks.push(tokio::spawn(s3.run(
                Arc::clone(models),
                Arc::clone(control),
                self.s3_poll,
                shutdown.subscribe(),
            )));
        }
        for source in pending.mlflow {
            tasks.push(tokio::spawn(source.run(
                Arc::clone(models),
                Arc::clone(control),
                shutdown.subscribe(),
            )));
        }
        tasks
    }

    /// Every source as the admin API shows it.
    pub fn views(&self) -> Vec<SourceView> {
        self.handles.iter().map(|h| SourceView::of(h)).collect()
    }

    /// The sources that feed `model`.
    pub fn feeding(&self, model: &str) -> Vec<SourceView> {
        self.handles
            .iter()
            .filter(|h| h.feeds(model))
            .map(|h| SourceView::of(h))
            .collect()
    }

    /// An MLflow webhook delivery: authentic when its signature verifies under one of the
    /// sources' `webhook_secret`s (and it is recent); then the sources with that secret that
    /// follow the model it names look at the registry at once. Answers the sources woken
    /// (none when the delivery is about a model no such source follows).
    pub fn webhook(&self, headers: &http::HeaderMap, body: &[u8]) -> ServeResult<Vec<String>> {
        let refuse = |message: String| ServeError::new(ErrorKind::Unauthorized, message);
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| refuse(format!("webhook delivery without the {name} header")))
        };
        let delivery = mlflow::webhook::Delivery {
            delivery_id: header(mlflow::webhook::DELIVERY_ID_HEADER)?,
            timestamp: header(mlflow::webhook::TIMESTAMP_HEADER)?,
            signature: header(mlflow::webhook::SIGNATURE_HEADER)?,
            body,
        };
        let mut last_error = None;
        let mut verified = Vec::new();
        for (config, handle) in &self.mlflow {
            let Some(secret) = config.webhook_secret.as_deref() else {
                continue;
            };
            let now = SystemTime::now();
            match mlflow::webhook::verify(secret, &delivery, now, config.webhook_max_age) {
                Ok(()) => verified.push((config, handle)),
                Err(error) => last_error = Some(error),
            }
        }
        if verified.is_empty() {
            let error = last_error.map_or_else(
                || "no registry source has a webhook_secret".to_string(),
                |e| e.to_string(),
            );
            tracing::warn!(%error, "webhook delivery refused");
            return Err(refuse(format!("webhook delivery refused: {error}")));
        }
        // Only an authentic body is read.
        let event = mlflow::webhook::parse_event(body)
            .map_err(|e| ServeError::bad_request(format!("webhook delivery: {e}")))?;
        let mut woken = Vec::new();
        for (config, handle) in verified {
            if event.model.as_deref() == Some(config.model.as_str()) {
                handle.wake.notify_one();
                woken.push(handle.name.clone());
            }
        }
        tracing::info!(
            entity = %event.entity,
            action = %event.action,
            sources = ?woken,
            "webhook delivery accepted"
        );
        Ok(woken)
    }
}

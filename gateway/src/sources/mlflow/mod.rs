//! An MLflow Model Registry as a model source: follows a registered model's alias (or stage)
//! and serves the version it points to under `serve_as`, as the version folder
//! `<repository>/<serve_as>/<registry version>/model.onnx`.
//!
//! When the alias moves to a version not yet served: `get-download-uri` says where its files
//! are, the ONNX file (`MLmodel` + `model.onnx` as `mlflow.onnx.log_model` writes them, or an
//! artifact folder holding one `.onnx` file) comes through the tracking server's artifact
//! proxy into staging, is checked (size, `.sha256` sidecar, builds and matches `model.toml`),
//! and only then becomes the version folder; the model is then loaded through the control,
//! which starts a guarded rollout when its `model.toml` has a `[rollout]` table (else the
//! version becomes primary). Versions above the alias's are removed (the alias moved back).
//!
//! The outcome is written back: the source watches the routing snapshot (so it works the same
//! on a single node and in a fleet) and tags the version `sluice.rollout = promoted` or
//! `rolled_back` (with `sluice.rollout.reason`); a rolled-back or refused version leaves the
//! repository, is not fetched again, and with `restore_alias` the alias is pointed back at the
//! version that kept serving.

pub mod client;
pub mod webhook;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::client::{MlflowClient, MlflowError};
use super::config::MlflowSourceConfig;
use super::stage::{self, Staged};
use super::status::{SourceHandle, backoff};
use crate::control::ModelControl;
use crate::lifecycle::{Actor, ModelManager};
use crate::routing::RolloutState;

/// The tag sluice writes on a registry version, and the one with the reason.
pub const ROLLOUT_TAG: &str = "sluice.rollout";
pub const REASON_TAG: &str = "sluice.rollout.reason";

/// How often the source looks at the served state for a rollout's outcome: a rollback is
/// written back within this of being decided.
const OUTCOME_TICK: Duration = Duration::from_millis(200);

/// Written into each version folder the source published.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    source: String,
    registry_version: u64,
    artifact_uri: String,
    file: String,
}

/// Refused and rolled-back versions, kept next to the version folders so that a restart does
/// not fetch them again: `<repository>/<serve_as>/.sluice-refused.json`.
const REFUSED_FILE: &str = ".sluice-refused.json";

pub struct MlflowSource {
    config: MlflowSourceConfig,
    client: MlflowClient,
    handle: Arc<SourceHandle>,
    serve_as: String,
    repo: PathBuf,
    /// The registry version the source last acted on.
    applied: Option<u64>,
    /// Outcomes already written back: (rollout id, state).
    reported: HashSet<(u64, &'static str)>,
    /// Versions not to serve, and why.
    refused: BTreeMap<u64, String>,
}

impl MlflowSource {
    pub fn new(config: &MlflowSourceConfig, repo: PathBuf) -> Result<MlflowSource, String> {
        let serve_as = config.served_name().to_string();
        let refused = std::fs::read(repo.join(&serve_as).join(REFUSED_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        stage::clear_staging(&repo);
        Ok(MlflowSource {
            client: MlflowClient::new(config)?,
            handle: Arc::new(SourceHandle::new(
                config.source_name(),
                "mlflow",
                vec![serve_as.clone()],
            )),
            serve_as,
            repo,
            applied: None,
            reported: HashSet::new(),
            refused,
            config: config.clone(),
        })
    }

    pub fn handle(&self) -> Arc<SourceHandle> {
        Arc::clone(&self.handle)
    }

    /// Follows the alias until shutdown: asks at start, every `poll_interval` (backing off
    /// while the registry fails) and at once when a webhook delivery wakes it; watches the
    /// served state for rollout outcomes in between.
    pub async fn run(
        mut self,
        models: Arc<ModelManager>,
        control: Arc<dyn ModelControl>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let actor = Actor::new(format!("source {}", self.handle.name));
        let mut next_check = Instant::now();
        loop {
            if Instant::now() >= next_check {
                let failures = match self.check(&models, control.as_ref(), &actor).await {
                    Ok(()) => 0,
                    Err(error) => self.handle.failed(error),
                };
                next_check = Instant::now() + backoff(self.config.poll_interval, failures);
            }
            tokio::select! {
                _ = tokio::time::sleep(OUTCOME_TICK) => {}
                _ = self.handle.wake.notified() => next_check = Instant::now(),
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
            self.watch_outcome(&models, control.as_ref(), &actor).await;
        }
    }

    /// Where the alias (or stage) points now.
    async fn pointed(&self) -> Result<Option<u64>, MlflowError> {
        match (&self.config.alias, &self.config.stage) {
            (Some(alias), _) => self.client.alias_version(&self.config.model, alias).await,
            (None, Some(stage)) => self.client.stage_version(&self.config.model, stage).await,
            (None, None) => Ok(None),
        }
    }

    fn version_dir(&self, version: u64) -> PathBuf {
        self.repo.join(&self.serve_as).join(version.to_string())
    }

    /// One look at the registry; an error is a failure that may pass.
    async fn check(
        &mut self,
        models: &ModelManager,
        control: &dyn ModelControl,
        actor: &Actor,
    ) -> Result<(), String> {
        let pointer = self.config.pointer();
        let version = match self.pointed().await {
            Ok(v) => v,
            Err(e) => return Err(e.to_string()),
        };
        self.handle.checked(match version {
            Some(v) => format!("{pointer} -> version {v}"),
            None => format!("{pointer} is not set"),
        });
        let Some(version) = version else {
            return Ok(());
        };
        if self.applied == Some(version) {
            return Ok(());
        }
        if self.refused.contains_key(&version) {
            // Refused before (the status says why); not fetched again.
            self.applied = Some(version);
            return Ok(());
        }
        let published = stage::read_marker::<Marker>(&self.version_dir(version)).is_some();
        if !published {
            match self.fetch(models, version).await {
                Ok(change) => self.handle.changed(change),
                Err(MlflowError::Refused(reason)) => {
                    // Acted on, whatever the refusal does with the alias next.
                    self.applied = Some(version);
                    self.refuse(models, version, &reason, "refused").await;
                    return Ok(());
                }
                Err(MlflowError::Transient(error)) => return Err(error),
            }
        }
        // The alias names the version to serve: what lies above it is what it moved away from.
        for (above, _) in stage::marked_versions::<Marker>(&self.repo, &self.serve_as) {
            if above > version {
                let _ = std::fs::remove_dir_all(self.version_dir(above));
            }
        }
        self.applied = Some(version);
        match control.load(&self.serve_as, actor).await {
            Ok(report) => {
                let rollout = models
                    .router()
                    .snapshot()
                    .models
                    .get(&self.serve_as)
                    .and_then(|r| r.rollout.clone())
                    .filter(|r| r.candidate == version && r.is_active());
                self.handle.changed(match rollout {
                    Some(_) => format!("version {version} in a guarded rollout"),
                    None => format!(
                        "serving versions {:?} after {pointer} -> {version}",
                        report.versions
                    ),
                });
                Ok(())
            }
            Err(error) => {
                // The check before publishing passed, so this is the load itself (e.g. the
                // runtime's warm-up): the version leaves again and is not retried.
                let _ = std::fs::remove_dir_all(self.version_dir(version));
                let _ = control.load(&self.serve_as, actor).await;
                self.refuse(models, version, &error.message, "refused")
                    .await;
                Ok(())
            }
        }
    }

    /// Downloads and checks `version`'s ONNX file and installs it as its version folder.
    async fn fetch(&self, models: &ModelManager, version: u64) -> Result<String, MlflowError> {
        let started = Instant::now();
        let model = &self.config.model;
        let uri = self.client.download_uri(model, version).await?;
        let path = client::proxy_path(&uri).map_err(MlflowError::Refused)?;
        let files = self.client.list_artifacts(&path).await?;
        let file = onnx_file(&files).map_err(|found| {
            MlflowError::Refused(format!(
                "registry version {version} has no ONNX file to serve ({found}) at {uri}"
            ))
        })?;
        let staged = Staged::new(&self.repo, &self.serve_as, version)
            .map_err(|e| MlflowError::Transient(e.to_string()))?;
        let size = self
            .client
            .download(
                &format!("{path}/{}", file.name),
                &staged.dir().join("model.onnx"),
            )
            .await?;
        if file.size.is_some_and(|listed| listed != size) {
            return Err(MlflowError::Transient(format!(
                "{} changed while it was downloaded ({size} bytes, listed {:?})",
                file.name, file.size
            )));
        }
        let sidecar = format!("{}.sha256", file.name);
        if files.iter().any(|f| f.name == sidecar) {
            self.client
                .download(
                    &format!("{path}/{sidecar}"),
                    &staged.dir().join("model.onnx.sha256"),
                )
                .await?;
            stage::check_digest(&staged.dir(), "model.onnx").map_err(MlflowError::Refused)?;
        }
        let downloaded = started.elapsed();
        let checked = staged
            .verify_loads(
                models.loader(),
                &self.serve_as,
                &self.repo.join(&self.serve_as),
            )
            .await
            .map_err(|e| MlflowError::Refused(format!("{} does not load: {e}", file.name)))?;
        let marker = Marker {
            source: self.handle.name.clone(),
            registry_version: version,
            artifact_uri: uri,
            file: file.name.clone(),
        };
        let io = |e: std::io::Error| MlflowError::Transient(e.to_string());
        stage::write_marker(&staged.dir(), &marker).map_err(io)?;
        staged.install(&self.repo, &self.serve_as).map_err(io)?;
        Ok(format!(
            "version {version} fetched ({size} bytes, downloaded in {} ms, checked in {} ms)",
            downloaded.as_millis(),
            checked.as_millis()
        ))
    }

    /// Marks `version` as not to be served, says so in the registry, and with `restore_alias`
    /// points the alias back at the version serving.
    async fn refuse(&mut self, models: &ModelManager, version: u64, reason: &str, tag: &str) {
        self.refused.insert(version, reason.to_string());
        let dir = self.repo.join(&self.serve_as);
        if std::fs::create_dir_all(&dir).is_ok()
            && let Ok(text) = serde_json::to_vec_pretty(&self.refused)
        {
            let _ = std::fs::write(dir.join(REFUSED_FILE), text);
        }
        self.handle
            .refused(format!("{}/{version}", self.serve_as), reason.to_string());
        self.write_back(version, tag, Some(reason)).await;
        self.restore_alias(models, version).await;
    }

    /// Sets the outcome tags on a registry version; a failure is logged (serving is right
    /// either way).
    async fn write_back(&self, version: u64, outcome: &str, reason: Option<&str>) {
        let model = &self.config.model;
        let mut result = self
            .client
            .set_tag(model, version, ROLLOUT_TAG, outcome)
            .await;
        if let (Ok(()), Some(reason)) = (&result, reason) {
            let reason = sluice_core::error::truncate(reason, 4000);
            result = self
                .client
                .set_tag(model, version, REASON_TAG, &reason)
                .await;
        }
        if let Err(error) = result {
            tracing::warn!(source = %self.handle.name, version, %error, "cannot tag the registry version");
        }
    }

    async fn restore_alias(&mut self, models: &ModelManager, refused: u64) {
        let (true, Some(alias)) = (self.config.restore_alias, self.config.alias.clone()) else {
            return;
        };
        let serving = models
            .router()
            .snapshot()
            .models
            .get(&self.serve_as)
            .and_then(|r| r.primary_version().map(|v| v.version));
        let Some(serving) = serving.filter(|v| *v != refused) else {
            return;
        };
        match self
            .client
            .set_alias(&self.config.model, &alias, serving)
            .await
        {
            Ok(()) => {
                self.applied = Some(serving);
                self.handle.changed(format!(
                    "alias {alias} restored to version {serving} (version {refused} is not served)"
                ));
            }
            Err(error) => {
                tracing::warn!(source = %self.handle.name, %error, "cannot restore the alias");
            }
        }
    }

    /// Writes a finished rollout of a version this source published back to the registry.
    async fn watch_outcome(
        &mut self,
        models: &ModelManager,
        control: &dyn ModelControl,
        actor: &Actor,
    ) {
        let rollout = models
            .router()
            .snapshot()
            .models
            .get(&self.serve_as)
            .and_then(|r| r.rollout.clone());
        let Some(rollout) = rollout else {
            return;
        };
        let state = rollout.state;
        let outcome = match state {
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
            RolloutState::Progressing | RolloutState::Paused => return,
        };
        let candidate = rollout.candidate;
        if self.reported.contains(&(rollout.id, outcome))
            || stage::read_marker::<Marker>(&self.version_dir(candidate)).is_none()
        {
            return;
        }
        self.reported.insert((rollout.id, outcome));
        if state == RolloutState::Promoted {
            self.write_back(candidate, outcome, None).await;
            self.handle.changed(format!(
                "version {candidate} promoted; tagged in the registry"
            ));
            return;
        }
        // Rolled back (or aborted): the baseline kept serving; the candidate leaves the
        // repository so that no restart or reload serves it again.
        let _ = std::fs::remove_dir_all(self.version_dir(candidate));
        let _ = control.load(&self.serve_as, actor).await;
        self.refuse(models, candidate, &rollout.reason, outcome)
            .await;
    }
}

/// The ONNX file of an artifact folder: `model.onnx` next to an `MLmodel` (what
/// `mlflow.onnx.log_model` writes), else the one `.onnx` file; otherwise what was found.
fn onnx_file(files: &[client::ArtifactFile]) -> Result<&client::ArtifactFile, String> {
    let onnx: Vec<&client::ArtifactFile> = files
        .iter()
        .filter(|f| !f.is_dir && f.name.ends_with(".onnx"))
        .collect();
    if let Some(model) = onnx.iter().find(|f| f.name == "model.onnx")
        && (files.iter().any(|f| f.name == "MLmodel") || onnx.len() == 1)
    {
        return Ok(model);
    }
    match onnx.as_slice() {
        [one] => Ok(one),
        [] => {
            let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            Err(if names.is_empty() {
                "the artifact folder is empty".into()
            } else {
                format!("found {}", names.join(", "))
            })
        }
        several => {
            let names: Vec<&str> = several.iter().map(|f| f.name.as_str()).collect();
            Err(format!(
                "several .onnx files, none named model.onnx: {}",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ArtifactFile;
    use super::*;

    fn files(names: &[&str]) -> Vec<ArtifactFile> {
        names
            .iter()
            .map(|n| ArtifactFile {
                name: n.to_string(),
                is_dir: !n.contains('.') && *n != "MLmodel",
                size: Some(1),
            })
            .collect()
    }

    #[test]
    fn the_onnx_file_is_found_or_its_absence_named() {
        let logged = files(&["MLmodel", "model.onnx", "conda.yaml", "requirements.txt"]);
        assert_eq!(onnx_file(&logged).unwrap().name, "model.onnx");
        assert_eq!(
            onnx_file(&files(&["churn.onnx", "README.md"]))
                .unwrap()
                .name,
            "churn.onnx"
        );
        let err = onnx_file(&files(&["MLmodel", "model.pkl"])).unwrap_err();
        assert_eq!(err, "found MLmodel, model.pkl");
        assert!(
            onnx_file(&files(&["a.onnx", "b.onnx"]))
                .unwrap_err()
                .contains("several")
        );
        assert!(onnx_file(&[]).unwrap_err().contains("empty"));
    }
}

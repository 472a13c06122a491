//! Turning a version folder into a served [`LoadedVersion`], off the request path:
//! build the runtime instances, check them against `model.toml`, warm every instance up with a
//! real inference, then start its worker threads. Any failure leaves nothing behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{ModelConfig, ModelDir};
use super::{RepositoryConfig, VersionPolicy};
use crate::drift::DriftConfig;
use crate::drift::{self, DriftMonitor};
use sluice_core::tensor::{ModelSignature, Tensor, TensorData};
use sluice_runtime::{
    Backend, LoadError, MODEL_FILES, Runner, RunnerOptions, RuntimeKind, Runtimes, model_file,
};
use sluice_runtime::{RuntimeChoice, RuntimeConfig};

/// A model version that is ready to serve. Requests hold an `Arc` to it, so a version that is
/// swapped out lives until its last in-flight request ends, then its workers stop.
pub struct LoadedVersion {
    pub model: String,
    pub version: u64,
    pub signature: ModelSignature,
    pub runtime: RuntimeKind,
    pub runner: Runner,
    pub path: PathBuf,
    pub loaded_at: SystemTime,
    /// Size and modification time of the model file when it was loaded.
    pub(super) fingerprint: Option<(u64, SystemTime)>,
    /// The `model.toml` settings it was loaded with.
    pub(super) settings: ModelConfig,
    /// Recent latency and errors per traffic variant, for the guard and the stats endpoint.
    pub windows: crate::telemetry::window::VariantWindows,
    /// Live quality from joined outcomes, per variant; shared with the predictions waiting
    /// in the outcome index.
    pub quality: Arc<crate::telemetry::quality::VersionQuality>,
    /// The accuracy `sluice profile --labels` measured on the profile's sample: the live
    /// accuracy alert's baseline.
    pub baseline_accuracy: Option<f64>,
    /// Its request metrics, recorded through handles.
    pub metrics: crate::telemetry::metrics::VersionMetrics,
    /// Drift against the version's `profile.json`; `None` without one (or with drift off).
    pub drift: Option<Arc<DriftMonitor>>,
    /// The data expectations of `model.toml`'s `[expectations]`; `None` without the table.
    pub expectations: Option<crate::expectations::Expectations>,
    /// Size and modification time of `profile.json` when it was loaded: a new profile
    /// reloads the version.
    pub(super) profile_fingerprint: Option<(u64, SystemTime)>,
}

/// Versions built and not yet freed, in this process. A swapped-out version is freed when its
/// last in-flight request ends, so after swaps settle this equals the versions loaded: more
/// means a leak.
static ALIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn alive_versions() -> usize {
    ALIVE.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts a version built; its `Drop` counts it freed.
pub(super) fn count_built() {
    ALIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    crate::telemetry::metrics::record_version_built();
}

impl Drop for LoadedVersion {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        crate::telemetry::metrics::record_version_freed();
        tracing::debug!(model = %self.model, version = self.version, "model version freed");
    }
}

impl LoadedVersion {
    /// Whether this version is what a load from `model` would build now: same file on disk,
    /// same `model.toml` settings. A reload replaces versions for which this is false (also
    /// when another model file now takes precedence, e.g. a `model.onnx` next to `model.txt`).
    pub fn is_current(&self, model: &ModelDir) -> bool {
        self.settings == model.config
            && model_file(&model.version_dir(self.version)).as_ref() == Some(&self.path)
            && fingerprint(&self.path).is_some_and(|now| Some(now) == self.fingerprint)
            && fingerprint(&profile_file(&self.path)) == self.profile_fingerprint
    }

    /// Its v2 model metadata; `versions` lists the model's loaded versions.
    pub fn metadata(&self, versions: Vec<String>) -> sluice_protocol::v2::ModelMetadata<'_> {
        sluice_protocol::v2::ModelMetadata::new(
            &self.model,
            self.runtime.platform(),
            &self.signature,
            versions,
        )
    }

    /// Counts the request's (validated) inputs into the drift window; nothing without a
    /// profile. A few relaxed atomic adds per feature and row, no lock, no allocation.
    pub fn observe_inputs(&self, inputs: &[Tensor]) {
        if let Some(drift) = &self.drift {
            drift.observe_inputs(inputs);
        }
    }

    /// Checks the request's (validated) inputs against the data expectations: a 400 for a
    /// violation when they reject, the violations kept in `flagged` when they flag. Nothing
    /// without an `[expectations]` table.
    pub fn check_expectations(
        &self,
        inputs: &[Tensor],
        flagged: &mut crate::expectations::Flagged,
    ) -> sluice_core::error::ServeResult<()> {
        match &self.expectations {
            Some(expectations) => expectations.check(inputs, flagged),
            None => Ok(()),
        }
    }

    /// Counts the prediction of each row; `outputs` in signature order, as the model
    /// returned them.
    pub fn observe_outputs(&self, outputs: &[Tensor]) {
        if let Some(drift) = &self.drift {
            drift.observe_outputs(outputs);
        }
    }
}

/// The version's data expectations; an `[expectations]` table that does not fit the model
/// (or its profile) refuses the load, like any other `model.toml` mismatch.
fn expectations(
    model: &ModelDir,
    version: u64,
    signature: &ModelSignature,
) -> Result<Option<crate::expectations::Expectations>, LoadError> {
    let declared: Vec<(&str, &[String])> = model
        .config
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.features.as_slice()))
        .collect();
    crate::expectations::for_version(
        &model.name,
        version,
        &model.version_dir(version),
        model.config.expectations.as_ref(),
        signature,
        &declared,
    )
    .map_err(LoadError)
}

/// The model file of a version folder, or why there is none.
fn version_file(model: &ModelDir, version: u64) -> Result<PathBuf, LoadError> {
    let dir = model.version_dir(version);
    model_file(&dir).ok_or_else(|| LoadError(format!("{} holds no {MODEL_FILES}", dir.display())))
}

/// The profile next to a version's model file.
fn profile_file(model_file: &std::path::Path) -> PathBuf {
    model_file.with_file_name(drift::profile::FILE_NAME)
}

fn fingerprint(path: &std::path::Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// Loads versions with the process's runtimes and the server's defaults.
pub struct Loader {
    runtimes: Runtimes,
    runtime: RuntimeConfig,
    default_policy: VersionPolicy,
    drift: DriftConfig,
    pub repository: PathBuf,
}

impl Loader {
    pub fn new(
        runtime: &RuntimeConfig,
        repository: &RepositoryConfig,
        drift: &DriftConfig,
    ) -> Loader {
        Loader {
            runtimes: Runtimes::new(runtime),
            runtime: runtime.clone(),
            default_policy: repository.version_policy.clone(),
            drift: drift.clone(),
            repository: repository.path.clone(),
        }
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// The versions of `model` its version policy keeps loaded, highest first.
    pub fn versions_to_load(&self, model: &ModelDir) -> Vec<u64> {
        model
            .config
            .version_policy
            .as_ref()
            .unwrap_or(&self.default_policy)
            .select(&model.versions)
    }

    /// Loads one version. CPU-heavy work runs on the blocking pool, never on the reactor.
    pub async fn load(
        self: &Arc<Self>,
        model: &ModelDir,
        version: u64,
    ) -> Result<Arc<LoadedVersion>, LoadError> {
        let loader = Arc::clone(self);
        let model = model.clone();
        tokio::task::spawn_blocking(move || loader.load_blocking(&model, version))
            .await
            .map_err(|e| LoadError(format!("load task failed: {e}")))?
    }

    /// One runnable instance of a version for offline work (`sluice profile`): built with the
    /// model's runtime choice unless `runtime` overrides it and checked against `model.toml`;
    /// no warm-up, no worker threads.
    pub fn build_one(
        &self,
        model: &ModelDir,
        version: u64,
        runtime: Option<RuntimeChoice>,
    ) -> Result<(ModelSignature, Box<dyn Backend>), LoadError> {
        let path = version_file(model, version)?;
        let choice = runtime
            .or(model.config.runtime)
            .unwrap_or(self.runtime.default);
        let declared = model.config.declared_inputs();
        let mut built = self.runtimes.build(&path, choice, 1, &declared)?;
        model
            .config
            .check_inputs(&built.signature.inputs)
            .map_err(LoadError)?;
        let backend = built
            .instances
            .pop()
            .ok_or_else(|| LoadError("the runtime built no instance".into()))?;
        Ok((built.signature, backend))
    }

    /// The version's drift monitor. A profile that cannot be used is reported and the version
    /// serves without drift: a stale profile must not keep a good model from serving.
    fn drift_monitor(
        &self,
        model: &ModelDir,
        version: u64,
        signature: &ModelSignature,
    ) -> Option<Arc<DriftMonitor>> {
        match drift::monitor_for(&model.version_dir(version), signature, &self.drift) {
            Ok(monitor) => monitor.map(Arc::new),
            Err(error) => {
                tracing::warn!(model = %model.name, version, %error, "drift is off for this version");
                None
            }
        }
    }

    fn load_blocking(
        &self,
        model: &ModelDir,
        version: u64,
    ) -> Result<Arc<LoadedVersion>, LoadError> {
        let started = Instant::now();
        let path = version_file(model, version)?;
        let instances = model.config.instances.unwrap_or(self.runtime.instances);
        let choice = model.config.runtime.unwrap_or(self.runtime.default);
        let profile_fingerprint = fingerprint(&profile_file(&path));
        let fingerprint = fingerprint(&path);
        let declared = model.config.declared_inputs();
        let mut built = self.runtimes.build(&path, choice, instances, &declared)?;
        model
            .config
            .check_inputs(&built.signature.inputs)
            .map_err(LoadError)?;
        let expectations = expectations(model, version, &built.signature)?;
        for backend in &mut built.instances {
            warm_up(backend.as_mut(), &built.signature)?;
        }
        let measured = built
            .instances
            .first_mut()
            .map(|backend| time_run(backend.as_mut(), &built.signature))
            .transpose()?
            .unwrap_or(Duration::MAX);
        let mut batching = Some(model.config.batching.unwrap_or(self.runtime.batching))
            .filter(sluice_runtime::Batching::enabled);
        if batching.is_some() && !sluice_runtime::signature_batches(&built.signature) {
            // Only worth a warning when model.toml asked for it; the default just does not apply.
            if model.config.batching.is_some() {
                tracing::warn!(
                    model = %model.name,
                    version,
                    "batching requested but an input has a fixed first axis; running unbatched"
                );
            }
            batching = None;
        }
        let drift = self.drift_monitor(model, version, &built.signature);
        let runner = Runner::start(
            built.instances,
            RunnerOptions {
                queue_capacity: self.runtime.queue_capacity,
                name: format!("{}-v{version}", model.name),
                batching,
            },
        )
        .map_err(|e| LoadError(format!("cannot start worker threads: {e}")))?;
        // A batching delay asks requests to wait for company: they must reach the workers; so
        // must an engine that runs badly on the I/O threads (`RuntimeKind::runs_inline`).
        let inline_budget = match batching {
            Some(b) if b.max_queue_delay_us > 0 => Duration::ZERO,
            _ if !built.kind.runs_inline() => Duration::ZERO,
            _ => Duration::from_micros(self.runtime.inline_max_us),
        };
        let runner = runner.with_inline(measured, inline_budget);
        tracing::info!(
            model = %model.name,
            version,
            runtime = built.kind.as_str(),
            reason = %built.reason,
            instances,
            batching = ?batching,
            run_us = measured.as_micros() as u64,
            inline_rows = runner.inline_rows(),
            drift = drift.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model version loaded"
        );
        count_built();
        Ok(Arc::new(LoadedVersion {
            model: model.name.clone(),
            version,
            signature: built.signature,
            runtime: built.kind,
            runner,
            path,
            loaded_at: SystemTime::now(),
            fingerprint,
            settings: model.config.clone(),
            windows: Default::default(),
            quality: Arc::new(crate::telemetry::quality::VersionQuality::new(
                &model.name,
                version,
            )),
            baseline_accuracy: drift::profile::baseline_accuracy(&model.version_dir(version)),
            metrics: crate::telemetry::metrics::VersionMetrics::new(&model.name, version),
            drift,
            expectations,
            profile_fingerprint,
        }))
    }
}

/// The median of a few batch-1 runs of a warmed-up instance: what decides whether requests
/// run inline (`runtime.inline_max_us`).
fn time_run(backend: &mut dyn Backend, signature: &ModelSignature) -> Result<Duration, LoadError> {
    let mut times = Vec::with_capacity(9);
    for _ in 0..9 {
        let inputs = warm_up_inputs(signature)?;
        let started = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(inputs)));
        times.push(started.elapsed());
        ran.map_err(|_| LoadError("warm-up inference panicked".into()))?
            .map_err(|e| LoadError(format!("warm-up inference failed: {e}")))?;
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn warm_up_inputs(signature: &ModelSignature) -> Result<Vec<Tensor>, LoadError> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape = spec.warmup_shape();
            let count = shape.iter().product();
            Tensor::new(
                spec.name.clone(),
                shape,
                TensorData::zeros(spec.datatype, count),
            )
            .map_err(|e| LoadError(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()
}

/// One real inference on zeros shaped like the inputs (dynamic dimensions as 1): it fails
/// a model that cannot run before it can answer a client, and pays first-run costs up front.
fn warm_up(backend: &mut dyn Backend, signature: &ModelSignature) -> Result<(), LoadError> {
    let inputs = warm_up_inputs(signature)?;
    let outputs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(inputs)))
        .map_err(|_| LoadError("warm-up inference panicked".into()))?
        .map_err(|e| LoadError(format!("warm-up inference failed: {e}")))?;
    if outputs.len() != signature.outputs.len() {
        return Err(LoadError(format!(
            "warm-up inference returned {} outputs, the model declares {}",
            outputs.len(),
            signature.outputs.len()
        )));
    }
    Ok(())
}

//! sluice-runtime: model runtimes behind one [`Backend`] trait (the native tree evaluator and
//! tract, pure Rust; ONNX Runtime, loaded at run time), and the [`Runner`] that executes them
//! on dedicated threads, off the async reactor, fed through a bounded queue, with dynamic
//! batching.
//!
//! A leaf over `sluice-core` and `sluice-trees`: it knows tensors and signatures, nothing of
//! routing or serving.
#![forbid(unsafe_code)]

mod batch;
pub mod config;
mod onnxruntime;
mod runner;
#[cfg(test)]
mod tests;
mod tract;
mod trees;

use std::path::{Path, PathBuf};

use sluice_core::tensor::TensorSpec;

pub use batch::{Batching, signature_batches};
pub use onnxruntime::{OrtOptimization, OrtOptions, OrtRuntime, find_ort_library};
pub use runner::{Job, RunOutput, Runner, RunnerOptions};

pub use config::{RuntimeChoice, RuntimeConfig};
use sluice_core::tensor::{ModelSignature, Tensor};

/// One executable instance of a model. A runner owns one per worker thread, so `run` may take
/// `&mut self` (ONNX Runtime sessions are not safe to run concurrently).
pub trait Backend: Send + 'static {
    /// Runs one inference. `inputs` follow the signature's input order and have been validated
    /// against it; the result holds every output in the signature's output order.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError>;
}

/// A model that failed while running a request it had accepted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// A model file that could not be turned into a runnable backend.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// Which engine a loaded version runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    Trees,
    Tract,
    Ort,
}

impl RuntimeKind {
    /// The v2 metadata `platform` string.
    pub fn platform(self) -> &'static str {
        match self {
            RuntimeKind::Trees => "sluice_trees",
            RuntimeKind::Tract => "tract_onnx",
            RuntimeKind::Ort => "onnxruntime_onnx",
        }
    }

    /// Whether this engine's fast versions may run on the I/O thread that received the
    /// request (within `inline_max_us`). ONNX Runtime's sessions cost twice the CPU per
    /// request when called from the I/O threads (bench mlp: ~110 vs ~50 us,
    /// `loadtest/scenarios/batching.sh`), so its versions always use their workers; the
    /// native trees and tract run inline.
    pub fn runs_inline(self) -> bool {
        match self {
            RuntimeKind::Trees | RuntimeKind::Tract => true,
            RuntimeKind::Ort => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Trees => "trees",
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort => "ort",
        }
    }
}

/// A model file turned into runnable instances.
pub struct Built {
    pub signature: ModelSignature,
    pub kind: RuntimeKind,
    /// Why this runtime was chosen, for the start-up log.
    pub reason: String,
    pub instances: Vec<Box<dyn Backend>>,
}

/// The runtimes available to this process: the tree evaluator and tract always, ONNX Runtime
/// when its library loads (and `runtime.allow_ort` permits it).
pub struct Runtimes {
    ort: Result<OrtRuntime, String>,
    settings: RuntimeConfig,
}

/// Why `auto` keeps the tree evaluator ahead of ONNX Runtime (README, "Runtimes").
const TREES_FIRST: &str = "auto: the native tree evaluator runs this graph exactly, \
     and faster than ONNX Runtime (cargo bench -p sluice-trees)";

impl Runtimes {
    pub fn new(settings: &RuntimeConfig) -> Runtimes {
        let ort = if !settings.allow_ort {
            Err("ONNX Runtime disabled (runtime.allow_ort = false)".to_string())
        } else {
            match find_ort_library(settings.ort_library.as_deref()) {
                Some(path) => OrtRuntime::init(&path),
                None => Err("no ONNX Runtime library found (set ORT_DYLIB_PATH, \
                     runtime.ort_library, or run scripts/fetch-ort.sh)"
                    .to_string()),
            }
        };
        Runtimes {
            ort,
            settings: settings.clone(),
        }
    }

    /// Where ONNX Runtime came from, or why it is unavailable.
    pub fn ort_status(&self) -> Result<&Path, &str> {
        match &self.ort {
            Ok(ort) => Ok(ort.library()),
            Err(reason) => Err(reason),
        }
    }

    /// Builds `instances` runnable copies of the model file at `path` with the chosen runtime.
    /// `declared` are the inputs `model.toml` declares: native tree files (`model.txt`,
    /// `model.json`) take their signature from them.
    pub fn build(
        &self,
        path: &Path,
        choice: RuntimeChoice,
        instances: usize,
        declared: &[TensorSpec],
    ) -> Result<Built, LoadError> {
        let format = ModelFormat::of(path);
        if format != ModelFormat::Onnx {
            return match choice {
                RuntimeChoice::Auto | RuntimeChoice::Trees => {
                    let reason = format!(
                        "{} is {}: only trees runs it",
                        format.file_name(),
                        format.describe()
                    );
                    let model = trees::TreesModel::load(path, format, declared)
                        .map_err(trees::Refusal::into_load_error)?;
                    Ok(build_trees(model, instances, reason))
                }
                pinned => Err(LoadError(format!(
                    "{} is {}, which only runtime 'trees' runs, but model.toml pins '{}' \
                     (set runtime = \"trees\" or \"auto\")",
                    format.file_name(),
                    format.describe(),
                    pinned.as_str()
                ))),
            };
        }
        let pinned = "pinned by model.toml";
        match choice {
            RuntimeChoice::Trees => trees::TreesModel::load(path, format, declared)
                .map(|model| build_trees(model, instances, pinned.into()))
                .map_err(|refusal| {
                    LoadError(format!(
                        "runtime 'trees' pinned: {}",
                        refusal.into_load_error()
                    ))
                }),
            RuntimeChoice::Tract => self.build_tract(path, instances, pinned),
            RuntimeChoice::Ort => match &self.ort {
                Ok(ort) => self.build_ort(ort, path, instances, pinned.into()),
                Err(reason) => Err(LoadError(format!(
                    "runtime 'ort' requested but unavailable: {reason}"
                ))),
            },
            RuntimeChoice::Auto => {
                let refused = match trees::TreesModel::load(path, format, declared) {
                    Ok(model) => return Ok(build_trees(model, instances, TREES_FIRST.into())),
                    Err(trees::Refusal::Invalid(why)) => return Err(LoadError(why)),
                    Err(trees::Refusal::Unsupported(why)) => why,
                };
                match &self.ort {
                    Ok(ort) => {
                        let reason = format!(
                            "auto: {refused}; ONNX Runtime found at {}",
                            ort.library().display()
                        );
                        self.build_ort(ort, path, instances, reason)
                            .or_else(|ort_error| {
                                let why = format!(
                                    "auto: {refused}; ONNX Runtime could not load the model \
                                     ({ort_error}), using tract"
                                );
                                self.build_tract(path, instances, &why)
                            })
                    }
                    Err(reason) => self.build_tract(
                        path,
                        instances,
                        &format!("auto: {refused}; {reason}; using tract"),
                    ),
                }
            }
        }
    }

    fn build_ort(
        &self,
        ort: &OrtRuntime,
        path: &Path,
        instances: usize,
        reason: String,
    ) -> Result<Built, LoadError> {
        let mut backends: Vec<Box<dyn Backend>> = Vec::with_capacity(instances);
        let mut signature = None;
        for _ in 0..instances {
            let backend = ort.load(path, &self.settings.ort)?;
            signature.get_or_insert_with(|| backend.signature().clone());
            backends.push(Box::new(backend));
        }
        Ok(Built {
            signature: signature.ok_or_else(|| LoadError("zero instances".into()))?,
            kind: RuntimeKind::Ort,
            reason,
            instances: backends,
        })
    }

    fn build_tract(&self, path: &Path, instances: usize, reason: &str) -> Result<Built, LoadError> {
        // One optimised plan shared by every worker: tract's plan is immutable and thread-safe.
        let backend = tract::TractBackend::load(path)?;
        let signature = backend.signature().clone();
        let backends = (0..instances)
            .map(|_| Box::new(backend.clone()) as Box<dyn Backend>)
            .collect();
        Ok(Built {
            signature,
            kind: RuntimeKind::Tract,
            reason: reason.to_string(),
            instances: backends,
        })
    }
}

/// One shared tree model, one set of output buffers per worker.
fn build_trees(model: trees::TreesModel, instances: usize, reason: String) -> Built {
    let instances = (0..instances)
        .map(|_| Box::new(model.backend()) as Box<dyn Backend>)
        .collect();
    Built {
        signature: model.signature,
        kind: RuntimeKind::Trees,
        reason,
        instances,
    }
}

/// What kind of model file a version folder holds, told by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// `model.onnx`: any runtime.
    Onnx,
    /// `model.txt`: a LightGBM text model (`Booster.save_model`), trees only.
    LightGbm,
    /// `model.json`: an XGBoost JSON model (`Booster.save_model("model.json")`), trees only.
    XgBoost,
}

impl ModelFormat {
    /// The file names a version folder may hold, in precedence order: when several are there,
    /// the first one found is the model.
    pub const PRECEDENCE: [ModelFormat; 3] = [
        ModelFormat::Onnx,
        ModelFormat::LightGbm,
        ModelFormat::XgBoost,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "model.onnx",
            ModelFormat::LightGbm => "model.txt",
            ModelFormat::XgBoost => "model.json",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "an ONNX model",
            ModelFormat::LightGbm => "a LightGBM text model",
            ModelFormat::XgBoost => "an XGBoost JSON model",
        }
    }

    /// The format of a model file, by its name; anything else is taken as ONNX.
    pub fn of(path: &Path) -> ModelFormat {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        ModelFormat::PRECEDENCE
            .into_iter()
            .find(|f| f.file_name() == name)
            .unwrap_or(ModelFormat::Onnx)
    }
}

/// The model file inside a version folder: `model.onnx`, else `model.txt` (LightGBM), else
/// `model.json` (XGBoost); `None` when it holds none of them.
pub fn model_file(version_dir: &Path) -> Option<PathBuf> {
    ModelFormat::PRECEDENCE
        .into_iter()
        .map(|f| version_dir.join(f.file_name()))
        .find(|p| p.is_file())
}

/// The model file names, for messages: "model.onnx, model.txt or model.json".
pub const MODEL_FILES: &str = "model.onnx, model.txt or model.json";

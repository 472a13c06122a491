//! sluice-runtime: model runtimes behind one [`Backend`] trait (tract, pure Rust; ONNX Runtime,
//! loaded at run time), and the [`Runner`] that executes them on dedicated threads, off the
//! async reactor, fed through a bounded queue, with dynamic batching.
//!
//! A leaf over `sluice-core`: it knows tensors and signatures, nothing of routing or serving.
#![forbid(unsafe_code)]

mod batch;
pub mod config;
mod onnxruntime;
mod runner;
mod tract;

use std::path::{Path, PathBuf};

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
    Tract,
    Ort,
}

impl RuntimeKind {
    /// The v2 metadata `platform` string.
    pub fn platform(self) -> &'static str {
        match self {
            RuntimeKind::Tract => "tract_onnx",
            RuntimeKind::Ort => "onnxruntime_onnx",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
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

/// The runtimes available to this process: tract always, ONNX Runtime when its library loads.
pub struct Runtimes {
    ort: Result<OrtRuntime, String>,
    settings: RuntimeConfig,
}

impl Runtimes {
    pub fn new(settings: &RuntimeConfig) -> Runtimes {
        let ort = match find_ort_library(settings.ort_library.as_deref()) {
            Some(path) => OrtRuntime::init(&path),
            None => Err("no ONNX Runtime library found (set ORT_DYLIB_PATH, \
                 runtime.ort_library, or run scripts/fetch-ort.sh)"
                .to_string()),
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

    /// Builds `instances` runnable copies of the model at `path` with the chosen runtime.
    pub fn build(
        &self,
        path: &Path,
        choice: RuntimeChoice,
        instances: usize,
    ) -> Result<Built, LoadError> {
        match choice {
            RuntimeChoice::Tract => self.build_tract(path, instances, "pinned by model.toml"),
            RuntimeChoice::Ort => match &self.ort {
                Ok(ort) => self.build_ort(ort, path, instances, "pinned by model.toml".into()),
                Err(reason) => Err(LoadError(format!(
                    "runtime 'ort' requested but unavailable: {reason}"
                ))),
            },
            RuntimeChoice::Auto => match &self.ort {
                Ok(ort) => {
                    let reason = format!("auto: ONNX Runtime found at {}", ort.library().display());
                    self.build_ort(ort, path, instances, reason)
                        .or_else(|ort_error| {
                            let why = format!(
                                "auto: ONNX Runtime could not load the model ({ort_error}), using tract"
                            );
                            self.build_tract(path, instances, &why)
                        })
                }
                Err(reason) => self.build_tract(path, instances, &format!("auto: {reason}")),
            },
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

/// The model file inside a version folder.
pub fn model_file(version_dir: &Path) -> PathBuf {
    version_dir.join("model.onnx")
}

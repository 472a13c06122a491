//! The `[runtime]` config section: which engine runs a model, how many workers, how sessions
//! are built and how requests are batched.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Batching, OrtOptions};

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    /// The native tree evaluator for graphs it runs exactly, else ONNX Runtime when its
    /// library can be found, else tract.
    #[default]
    Auto,
    /// ONNX Runtime (through `ORT_DYLIB_PATH`, `runtime.ort_library` or `.ort/`).
    Ort,
    /// tract, pure Rust: always available.
    Tract,
    /// The native tree evaluator (`sluice-trees`), pure Rust: tree-ensemble ONNX graphs, and
    /// the only runtime for LightGBM `model.txt` and XGBoost `model.json` files.
    Trees,
}

impl RuntimeChoice {
    pub const ALL: [RuntimeChoice; 4] = [
        RuntimeChoice::Auto,
        RuntimeChoice::Ort,
        RuntimeChoice::Tract,
        RuntimeChoice::Trees,
    ];

    /// The config and command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeChoice::Auto => "auto",
            RuntimeChoice::Ort => "ort",
            RuntimeChoice::Tract => "tract",
            RuntimeChoice::Trees => "trees",
        }
    }
}

impl std::str::FromStr for RuntimeChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<RuntimeChoice, String> {
        RuntimeChoice::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| format!("'{text}' is not one of auto, ort, tract, trees"))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Runtime for models whose `model.toml` does not pin one.
    pub default: RuntimeChoice,
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` wins over it, `.ort/` is tried last.
    pub ort_library: Option<PathBuf>,
    /// Whether ONNX Runtime may be loaded at all. `false` keeps the process pure Rust (trees
    /// and tract serve everything they can; `ort` pins fail to load) even where the library
    /// would be found.
    pub allow_ort: bool,
    /// Worker threads (each with its own session) per loaded model version.
    pub instances: usize,
    /// Requests that may wait for a worker, per loaded version; beyond it requests get 503.
    pub queue_capacity: usize,
    /// How ONNX Runtime sessions are built (`[runtime.ort]`).
    pub ort: OrtOptions,
    /// Dynamic batching for models whose `model.toml` does not set it.
    pub batching: Batching,
    /// Microseconds a request may run on the thread that received it instead of being handed
    /// to the model's workers: a request runs inline when its rows times the version's
    /// batch-1 run (timed at load) fit in this, and an instance is free. For models that run
    /// in a few microseconds the hand-off costs more than the run. 0 hands every request to
    /// the workers. ONNX Runtime versions always use their workers (measured: twice the CPU
    /// per request when called from the I/O threads).
    pub inline_max_us: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            default: RuntimeChoice::Auto,
            ort_library: None,
            allow_ort: true,
            instances: default_instances(),
            queue_capacity: 1024,
            ort: Default::default(),
            batching: Default::default(),
            inline_max_us: default_inline_max_us(),
        }
    }
}

/// Measured on the bench models (README, "Runtimes"): the hand-off to a worker and back costs
/// ~5-8 us of CPU, so a run of up to a few times that is cheaper inline; beyond ~20 us a
/// reactor thread would be held long enough to delay other connections' reads.
fn default_inline_max_us() -> u64 {
    20
}

/// One worker per core, up to 4: small models are latency-bound, not compute-bound.
fn default_instances() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}

impl RuntimeConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.instances == 0 {
            problems.push("runtime.instances must be at least 1".into());
        }
        if self.inline_max_us > 1_000 {
            problems.push("runtime.inline_max_us must be at most 1000 (1 ms)".into());
        }
        if self.queue_capacity == 0 {
            problems.push("runtime.queue_capacity must be at least 1".into());
        }
        problems.extend(self.batching.problems("runtime.batching"));
        if self.ort.intra_threads == 0 {
            problems.push("runtime.ort.intra_threads must be at least 1".into());
        }
        if let Some(lib) = &self.ort_library
            && !lib.is_file()
        {
            problems.push(format!(
                "runtime.ort_library: {} does not exist",
                lib.display()
            ));
        }
        problems
    }
}

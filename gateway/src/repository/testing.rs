//! Loaded versions without model files, for unit tests of routing, control and the guard:
//! each runs a fake backend that answers every row with a fixed label.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{LoadedVersion, ModelConfig};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};
use sluice_runtime::{Backend, BackendError, Runner, RunnerOptions, RuntimeKind};

/// Answers every row with `label` (INT64 `[N]`) and a one-hot `probabilities` (FP32 `[N, 2]`).
pub struct FixedLabel(pub i64);

impl Backend for FixedLabel {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        let hot = usize::from(self.0 != 0);
        let probabilities = (0..rows * 2)
            .map(|i| f32::from(u8::from(i % 2 == hot)))
            .collect();
        let tensor = |name: &str, shape, data| {
            Tensor::new(name, shape, data).map_err(|e| BackendError(e.to_string()))
        };
        Ok(vec![
            tensor("label", vec![rows], TensorData::I64(vec![self.0; rows]))?,
            tensor(
                "probabilities",
                vec![rows, 2],
                TensorData::F32(probabilities),
            )?,
        ])
    }
}

/// The signature [`FixedLabel`] serves: `input` FP32 `[-1, 2]`.
pub fn signature() -> ModelSignature {
    let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
        name: name.into(),
        datatype,
        shape,
    };
    ModelSignature {
        inputs: vec![spec("input", DataType::F32, vec![-1, 2])],
        outputs: vec![
            spec("label", DataType::I64, vec![-1]),
            spec("probabilities", DataType::F32, vec![-1, 2]),
        ],
    }
}

/// Version `version` of `model`, answering `label` on one worker thread.
pub fn version(model: &str, version: u64, label: i64) -> Arc<LoadedVersion> {
    let runner = Runner::start(
        vec![Box::new(FixedLabel(label))],
        RunnerOptions {
            queue_capacity: 16,
            name: format!("test-{model}-v{version}"),
            batching: None,
        },
    )
    .expect("worker thread starts");
    LoadedVersion::assemble(
        model,
        version,
        signature(),
        RuntimeKind::Tract,
        runner,
        PathBuf::from(format!("/nonexistent/{model}/{version}/model.onnx")),
        ModelConfig::default(),
    )
}

impl LoadedVersion {
    /// A version with no files behind it and no drift monitor.
    fn assemble(
        model: &str,
        version: u64,
        signature: ModelSignature,
        runtime: RuntimeKind,
        runner: Runner,
        path: PathBuf,
        settings: ModelConfig,
    ) -> Arc<LoadedVersion> {
        super::loader::count_built();
        Arc::new(LoadedVersion {
            model: model.to_string(),
            version,
            signature,
            runtime,
            runner,
            path,
            loaded_at: SystemTime::now(),
            fingerprint: None,
            settings,
            windows: Default::default(),
            quality: Arc::new(crate::telemetry::quality::VersionQuality::new(
                model, version,
            )),
            baseline_accuracy: None,
            metrics: crate::telemetry::metrics::VersionMetrics::new(model, version),
            drift: None,
            expectations: None,
            profile_fingerprint: None,
        })
    }
}

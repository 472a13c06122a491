//! The native tree-ensemble runtime: [`sluice_trees`] behind the [`Backend`] trait. One loaded
//! model is shared by every worker (it is immutable and `Sync`); each worker keeps its own
//! output buffers, so a call allocates only the output tensors it hands back.

use std::path::Path;
use std::sync::Arc;

use sluice_trees::{DType, NativeInput, OutputKind, Outputs, TreeModel};

use super::{Backend, BackendError, LoadError, ModelFormat};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

/// Why a file could not be loaded by the tree evaluator.
#[derive(Debug)]
pub enum Refusal {
    /// A valid model that this evaluator cannot run exactly: another runtime may.
    Unsupported(String),
    /// The file, or the signature it needs, is wrong: no runtime should serve it.
    Invalid(String),
}

impl Refusal {
    pub fn into_load_error(self) -> LoadError {
        match self {
            Refusal::Unsupported(why) | Refusal::Invalid(why) => LoadError(why),
        }
    }
}

impl From<sluice_trees::LoadError> for Refusal {
    fn from(e: sluice_trees::LoadError) -> Refusal {
        // An undecodable ONNX file may still be something ONNX Runtime reads (or explains
        // better); a malformed ensemble must not be handed to anyone.
        match e {
            sluice_trees::LoadError::Invalid(_) => Refusal::Invalid(format!("trees: {e}")),
            _ => Refusal::Unsupported(format!("trees: {e}")),
        }
    }
}

/// A shared model and this worker's reusable buffers.
pub struct TreesBackend {
    model: Arc<TreeModel>,
    /// The input dtype callers send: FP64 takes `predict_f64`.
    input: DataType,
    out: Outputs,
}

/// A loaded model, ready to hand one backend to each worker.
pub struct TreesModel {
    model: Arc<TreeModel>,
    input: DataType,
    pub signature: ModelSignature,
}

impl TreesModel {
    /// Loads `path` in `format`. Native files (LightGBM, XGBoost) carry no signature: it comes
    /// from `declared`, the inputs `model.toml` declares (exactly one, `[-1, F]`, FP32 or FP64).
    pub fn load(
        path: &Path,
        format: ModelFormat,
        declared: &[TensorSpec],
    ) -> Result<TreesModel, Refusal> {
        let read_error = |e: std::io::Error| {
            Refusal::Invalid(format!("trees: cannot read {}: {e}", path.display()))
        };
        let (model, input) = match format {
            ModelFormat::Onnx => {
                let model = TreeModel::from_onnx(&std::fs::read(path).map_err(read_error)?)?;
                let input = match model.signature().input.dtype {
                    DType::F64 => DataType::F64,
                    _ => DataType::F32,
                };
                (model, input)
            }
            ModelFormat::LightGbm | ModelFormat::XgBoost => {
                let (native, input) = native_input(format, declared)?;
                let text = std::fs::read_to_string(path).map_err(read_error)?;
                let model = match format {
                    ModelFormat::LightGbm => TreeModel::from_lightgbm_text(&text, native)?,
                    _ => TreeModel::from_xgboost_json(&text, native)?,
                };
                (model, input)
            }
        };
        let signature = signature_of(&model, input);
        Ok(TreesModel {
            model: Arc::new(model),
            input,
            signature,
        })
    }

    /// One worker's backend: the shared model and fresh buffers.
    pub fn backend(&self) -> TreesBackend {
        TreesBackend {
            model: Arc::clone(&self.model),
            input: self.input,
            out: Outputs::new(),
        }
    }
}

/// The one `[-1, F]` float input a native model file needs declared.
fn native_input(
    format: ModelFormat,
    declared: &[TensorSpec],
) -> Result<(NativeInput, DataType), Refusal> {
    let example = "inputs = [{ name = \"input\", datatype = \"FP32\", shape = [-1, 12] }]";
    let bad = |why: String| {
        Refusal::Invalid(format!(
            "{} ({}) carries no input signature; {why} (model.toml, e.g. {example})",
            format.file_name(),
            format.describe()
        ))
    };
    let [spec] = declared else {
        return Err(bad(format!(
            "declare exactly one input, {} declared",
            declared.len()
        )));
    };
    if !matches!(spec.datatype, DataType::F32 | DataType::F64) {
        return Err(bad(format!(
            "input '{}' must be FP32 or FP64, declared {}",
            spec.name, spec.datatype
        )));
    }
    let features = match spec.shape.as_slice() {
        [-1, f] if *f >= 1 => *f as usize,
        _ => {
            return Err(bad(format!(
                "input '{}' must have shape [-1, features], declared {}",
                spec.name,
                sluice_core::tensor::format_dims(&spec.shape)
            )));
        }
    };
    Ok((
        NativeInput {
            name: spec.name.clone(),
            features,
        },
        spec.datatype,
    ))
}

/// The model's signature in sluice's terms: the input `[-1, F]`, labels `[-1]` (INT64, or
/// BYTES for string labels), scores `[-1, C]` FP32, under the names the file declares.
fn signature_of(model: &TreeModel, input: DataType) -> ModelSignature {
    let signature = model.signature();
    let inputs = vec![TensorSpec {
        name: signature.input.name.clone(),
        datatype: input,
        shape: vec![-1, signature.input.features as i64],
    }];
    let outputs = signature
        .outputs
        .iter()
        .map(|o| TensorSpec {
            name: o.name.clone(),
            datatype: match o.dtype {
                DType::String => DataType::Bytes,
                DType::I64 => DataType::I64,
                DType::F64 => DataType::F64,
                DType::F32 => DataType::F32,
            },
            shape: match o.kind {
                OutputKind::Label => vec![-1],
                OutputKind::Scores => vec![-1, o.columns as i64],
            },
        })
        .collect();
    ModelSignature { inputs, outputs }
}

impl Backend for TreesBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let fail = |e: sluice_trees::PredictError| BackendError(format!("trees: {e}"));
        let Some(tensor) = inputs.into_iter().next() else {
            return Err(BackendError("trees: no input".into()));
        };
        let rows = tensor.shape.first().copied().unwrap_or(0);
        match (&tensor.data, self.input) {
            (TensorData::F32(v), DataType::F32) => {
                self.model.predict(v, rows, &mut self.out).map_err(fail)?
            }
            (TensorData::F64(v), DataType::F64) => self
                .model
                .predict_f64(v, rows, &mut self.out)
                .map_err(fail)?,
            (data, want) => {
                return Err(BackendError(format!(
                    "trees: input '{}' expects {want}, got {}",
                    tensor.name,
                    data.datatype()
                )));
            }
        }
        self.model
            .signature()
            .outputs
            .iter()
            .map(|spec| {
                let data = match (spec.kind, spec.dtype) {
                    (OutputKind::Label, DType::String) => TensorData::Bytes(
                        self.out
                            .string_labels
                            .iter()
                            .map(|s| s.as_bytes().to_vec())
                            .collect(),
                    ),
                    (OutputKind::Label, _) => TensorData::I64(self.out.labels.clone()),
                    (OutputKind::Scores, _) => TensorData::F32(self.out.scores.clone()),
                };
                let shape = spec.shape(rows).into_iter().map(|d| d as usize).collect();
                Tensor::new(spec.name.clone(), shape, data)
                    .map_err(|e| BackendError(format!("trees: {e}")))
            })
            .collect()
    }
}

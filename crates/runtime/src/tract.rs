//! tract-onnx: pure Rust, needs nothing installed. Models are optimised into a typed plan with a
//! symbolic batch dimension, so one plan serves any batch size.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{Backend, BackendError, LoadError};
use sluice_core::tensor::{
    DataType, ModelSignature, Tensor as SluiceTensor, TensorData, TensorSpec,
};

type Plan = TypedSimplePlan<TypedModel>;

/// A shared optimised plan; cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct TractBackend {
    plan: Arc<Plan>,
    signature: Arc<ModelSignature>,
}

impl TractBackend {
    pub fn load(path: &Path) -> Result<TractBackend, LoadError> {
        let fail = |stage: &str, e: TractError| LoadError(format!("tract: {stage}: {e:#}"));
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| fail("cannot read model", e))?;
        refuse_known_miscomputations(&proto)?;
        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| fail("cannot read model", e))?;
        pin_input_facts(&mut model).map_err(|e| fail("cannot type inputs", e))?;
        // Optimisation may rename the graph's input and output nodes (e.g. fuse a Cast into
        // the input): the names clients use are the ones the ONNX file declares.
        let input_names = outlet_names(&model, &model.inputs);
        let output_names = outlet_names(&model, &model.outputs);
        let typed = model
            .into_optimized()
            .map_err(|e| fail("cannot optimise", e))?;
        let signature = signature_of(&typed, input_names, output_names).map_err(LoadError)?;
        let plan = typed.into_runnable().map_err(|e| fail("cannot plan", e))?;
        Ok(TractBackend {
            plan: Arc::new(plan),
            signature: Arc::new(signature),
        })
    }

    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }
}

impl Backend for TractBackend {
    fn run(&mut self, inputs: Vec<SluiceTensor>) -> Result<Vec<SluiceTensor>, BackendError> {
        let values: TVec<TValue> = inputs.into_iter().map(to_tract).collect::<Result<_, _>>()?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| BackendError(format!("tract: {e:#}")))?;
        outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| from_tract(value, spec))
            .collect()
    }
}

/// Graphs that tract runs without error but answers wrongly. Better to refuse them with the
/// reason than to serve wrong predictions.
fn refuse_known_miscomputations(proto: &tract_onnx::pb::ModelProto) -> Result<(), LoadError> {
    let nodes = proto
        .graph
        .as_ref()
        .map(|g| g.node.as_slice())
        .unwrap_or_default();
    for node in nodes {
        if node.op_type != "TreeEnsembleClassifier" {
            continue;
        }
        let classes = node
            .attribute
            .iter()
            .filter(|a| a.name == "classlabels_int64s" || a.name == "classlabels_strings")
            .map(|a| a.ints.len() + a.strings.len())
            .sum::<usize>();
        // tract-onnx 0.21 takes the binary label from the single raw score column instead of
        // the two-column probabilities (measured: the bench churn model's labels come back
        // inverted while its probabilities match onnxruntime's).
        if classes == 2 {
            return Err(LoadError(
                "tract: two-class TreeEnsembleClassifier is mislabelled by tract-onnx 0.21; \
                 serve this model with runtime = \"trees\" (or \"auto\", which picks it)"
                    .to_string(),
            ));
        }
    }
    Ok(())
}

/// Exporters often leave input dimensions unnamed (`[None, 12]`); tract needs them typed. The
/// first unknown axis becomes the batch symbol `N`, others get their own symbols.
fn pin_input_facts(model: &mut InferenceModel) -> TractResult<()> {
    for ix in 0..model.inputs.len() {
        let fact = model.input_fact(ix)?.clone();
        let Some(datum_type) = fact.datum_type.concretize() else {
            anyhow::bail!("input {ix} has no element type");
        };
        let Some(rank) = fact.shape.rank().concretize() else {
            anyhow::bail!("input {ix} has no fixed rank");
        };
        let dims: Vec<TDim> = (0..rank as usize)
            .map(|axis| {
                fact.shape
                    .dim(axis)
                    .and_then(|d| d.concretize())
                    .unwrap_or_else(|| {
                        let name = if axis == 0 {
                            "N".to_string()
                        } else {
                            format!("d{ix}_{axis}")
                        };
                        model.symbols.sym(&name).to_dim()
                    })
            })
            .collect();
        model.set_input_fact(ix, InferenceFact::dt_shape(datum_type, dims))?;
    }
    Ok(())
}

fn outlet_names(model: &InferenceModel, outlets: &[OutletId]) -> Vec<String> {
    outlets
        .iter()
        .map(|&o| {
            model
                .outlet_label(o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect()
}

fn signature_of(
    model: &TypedModel,
    input_names: Vec<String>,
    output_names: Vec<String>,
) -> Result<ModelSignature, String> {
    let spec = |outlet: OutletId, name: String| -> Result<TensorSpec, String> {
        let fact = model.outlet_fact(outlet).map_err(|e| e.to_string())?;
        let datatype = datatype_of(fact.datum_type)
            .ok_or_else(|| format!("tensor '{name}' has unsupported type {:?}", fact.datum_type))?;
        let shape = fact
            .shape
            .iter()
            .map(|d| d.to_i64().unwrap_or(-1))
            .collect();
        Ok(TensorSpec {
            name,
            datatype,
            shape,
        })
    };
    let inputs = model
        .inputs
        .iter()
        .zip(input_names)
        .map(|(&o, name)| spec(o, name))
        .collect::<Result<_, _>>()?;
    let outputs = model
        .outputs
        .iter()
        .zip(output_names)
        .map(|(&o, name)| spec(o, name))
        .collect::<Result<_, _>>()?;
    Ok(ModelSignature { inputs, outputs })
}

fn datatype_of(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        // tract computes some integer outputs (e.g. tree labels) as symbolic dims.
        DatumType::I64 | DatumType::TDim => DataType::I64,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn to_tract(tensor: SluiceTensor) -> Result<TValue, BackendError> {
    fn array<T: Datum>(shape: &[usize], v: Vec<T>) -> Result<TValue, BackendError> {
        tract_ndarray::ArrayD::from_shape_vec(shape, v)
            .map(|a| a.into_tvalue())
            .map_err(|e| BackendError(format!("tract: input shape: {e}")))
    }
    let shape = tensor.shape;
    match tensor.data {
        TensorData::Bool(v) => array(&shape, v),
        TensorData::U8(v) => array(&shape, v),
        TensorData::U16(v) => array(&shape, v),
        TensorData::U32(v) => array(&shape, v),
        TensorData::U64(v) => array(&shape, v),
        TensorData::I8(v) => array(&shape, v),
        TensorData::I16(v) => array(&shape, v),
        TensorData::I32(v) => array(&shape, v),
        TensorData::I64(v) => array(&shape, v),
        TensorData::F32(v) => array(&shape, v),
        TensorData::F64(v) => array(&shape, v),
        TensorData::Bytes(v) => {
            let strings = v
                .into_iter()
                .map(|b| {
                    String::from_utf8(b)
                        .map_err(|_| BackendError("tract: BYTES input is not UTF-8".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            array(&shape, strings)
        }
    }
}

fn from_tract(value: &TValue, spec: &TensorSpec) -> Result<SluiceTensor, BackendError> {
    fn slice<T: Datum + Clone>(value: &TValue) -> Result<Vec<T>, BackendError> {
        value
            .as_slice::<T>()
            .map(|s| s.to_vec())
            .map_err(|e| BackendError(format!("tract: output: {e}")))
    }
    let data = match value.datum_type() {
        DatumType::Bool => TensorData::Bool(slice(value)?),
        DatumType::U8 => TensorData::U8(slice(value)?),
        DatumType::U16 => TensorData::U16(slice(value)?),
        DatumType::U32 => TensorData::U32(slice(value)?),
        DatumType::U64 => TensorData::U64(slice(value)?),
        DatumType::I8 => TensorData::I8(slice(value)?),
        DatumType::I16 => TensorData::I16(slice(value)?),
        DatumType::I32 => TensorData::I32(slice(value)?),
        DatumType::I64 => TensorData::I64(slice(value)?),
        DatumType::TDim => TensorData::I64(
            value
                .as_slice::<TDim>()
                .map_err(|e| BackendError(format!("tract: output: {e}")))?
                .iter()
                .map(|d| {
                    d.to_i64()
                        .map_err(|e| BackendError(format!("tract: output: {e}")))
                })
                .collect::<Result<_, _>>()?,
        ),
        DatumType::F32 => TensorData::F32(slice(value)?),
        DatumType::F64 => TensorData::F64(slice(value)?),
        DatumType::String => TensorData::Bytes(
            slice::<String>(value)?
                .into_iter()
                .map(String::into_bytes)
                .collect(),
        ),
        other => {
            return Err(BackendError(format!(
                "tract: output '{}' has unsupported type {other:?}",
                spec.name
            )));
        }
    };
    SluiceTensor::new(spec.name.clone(), value.shape().to_vec(), data)
        .map_err(|e| BackendError(e.to_string()))
}

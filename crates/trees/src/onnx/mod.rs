//! ONNX models: decode the protobuf, follow the graph from its one input through the ensemble
//! op to its outputs, and refuse any node whose effect is not reproduced exactly.
//!
//! Accepted around the ensemble: `Identity`; `Cast` of the input to float/double, of labels
//! to int64, of scores to float; `Mul` of the scores by a one-element float constant
//! (onnxmltools' LightGBM converter multiplies by 1); `Constant`. `ZipMap` is refused: its
//! output is a sequence of maps, not a tensor (convert with `zipmap=False`), and the gateway
//! refuses such outputs from every runtime alike.

mod ensemble;
pub mod proto;
mod tensor;

use std::collections::HashMap;

use prost::Message;

use crate::error::LoadError;
use crate::model::{
    DType, Engine, InputSpec, OutputKind, OutputSpec, Signature, TreeModel, features_needed,
};
use proto::{ModelProto, NodeProto, TensorProto, ValueInfoProto, data_type, type_proto};

/// What a graph value is, symbolically.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    /// The graph input, possibly cast: `dtype` is its current type; `narrowed` records a cast
    /// of a double input to float on the way.
    Input {
        dtype: DType,
        narrowed: bool,
    },
    Label,
    /// The scores, times these constants in order.
    Scores(Vec<f32>),
    Constant(f32),
}

impl TreeModel {
    /// Loads an ONNX model whose graph is one `TreeEnsembleClassifier`/`TreeEnsembleRegressor`
    /// (ai.onnx.ml) with the `Cast`/`Identity`/`Mul` nodes converters put around it.
    pub fn from_onnx(bytes: &[u8]) -> Result<TreeModel, LoadError> {
        load(bytes)
    }
}

pub fn load(bytes: &[u8]) -> Result<TreeModel, LoadError> {
    let model = ModelProto::decode(bytes).map_err(|e| LoadError::Decode(e.to_string()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| LoadError::invalid("the model has no graph"))?;
    let ml_opset = model
        .opset_import
        .iter()
        .find(|o| o.domain == "ai.onnx.ml")
        .map(|o| o.version);

    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains_key(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(LoadError::unsupported(format!(
            "the graph has {} inputs; exactly one is supported",
            inputs.len()
        )));
    };
    let (input_dtype, declared_features) = input_type(input)?;

    let mut values: HashMap<String, Value> = HashMap::new();
    values.insert(
        input.name.clone(),
        Value::Input {
            dtype: input_dtype,
            narrowed: false,
        },
    );
    for (name, t) in &initializers {
        if let Ok(v) = tensor::reals(t, name)
            && v.len() == 1
            && t.data_type == data_type::FLOAT
        {
            values.insert(name.to_string(), Value::Constant(v[0] as f32));
        }
    }

    let mut found: Option<(ensemble::Ensemble, bool)> = None;
    for node in &graph.node {
        let args: Vec<Value> = node
            .input
            .iter()
            .map(|name| {
                values.get(name).cloned().ok_or_else(|| {
                    LoadError::unsupported(format!(
                        "{} node '{}' reads '{name}', which is not the input, the ensemble's output or a float constant",
                        node.op_type, node.name
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let outputs = step(node, &args, ml_opset, &mut found)?;
        for (name, value) in node.output.iter().zip(outputs) {
            if !name.is_empty() {
                values.insert(name.clone(), value);
            }
        }
    }
    let Some((ensemble, double)) = found else {
        return Err(LoadError::unsupported(
            "the graph has no TreeEnsembleClassifier or TreeEnsembleRegressor",
        ));
    };

    let needed = features_needed(&ensemble.trees);
    let features = declared_features.unwrap_or(needed);
    crate::tree::validate(&ensemble.trees, features, ensemble.outputs)?;

    let string_labels = match &ensemble.kind {
        ensemble::Kind::Classifier {
            labels: ensemble::Labels::String(v),
            ..
        } => Some(v.clone()),
        _ => None,
    };
    let mut scales: Option<Vec<f32>> = None;
    let mut outputs = Vec::new();
    for out in &graph.output {
        let kind = match values.get(&out.name) {
            Some(Value::Label) => OutputKind::Label,
            Some(Value::Scores(factors)) => {
                if scales.get_or_insert_with(|| factors.clone()) != factors {
                    return Err(LoadError::unsupported(
                        "graph outputs carry the scores scaled differently",
                    ));
                }
                OutputKind::Scores
            }
            _ => {
                return Err(LoadError::unsupported(format!(
                    "graph output '{}' is not the ensemble's label or scores",
                    out.name
                )));
            }
        };
        let dtype = match kind {
            OutputKind::Label if string_labels.is_some() => DType::String,
            OutputKind::Label => DType::I64,
            OutputKind::Scores => DType::F32,
        };
        outputs.push(OutputSpec {
            name: out.name.clone(),
            dtype,
            kind,
            columns: if kind == OutputKind::Label {
                1
            } else {
                ensemble.outputs
            },
        });
    }
    if outputs.is_empty() {
        return Err(LoadError::invalid("the graph has no outputs"));
    }
    let engine = if double {
        Engine::F64(ensemble.compile::<f64>())
    } else {
        Engine::F32(ensemble.compile::<f32>())
    };
    Ok(TreeModel {
        signature: Signature {
            input: InputSpec {
                name: input.name.clone(),
                dtype: input_dtype,
                features,
            },
            outputs,
        },
        engine,
        columns: ensemble.outputs,
        string_labels,
        scales: scales
            .unwrap_or_default()
            .into_iter()
            .filter(|&s| s != 1.0)
            .collect(),
        any_float_input: false,
    })
}

/// The input's element type and, when declared, its width.
fn input_type(input: &ValueInfoProto) -> Result<(DType, Option<usize>), LoadError> {
    let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => {
            return Err(LoadError::unsupported(format!(
                "input '{}' is not a tensor",
                input.name
            )));
        }
    };
    let dtype = match tensor.elem_type {
        data_type::FLOAT => DType::F32,
        data_type::DOUBLE => DType::F64,
        other => {
            return Err(LoadError::unsupported(format!(
                "input '{}' has element type {other}; float and double are supported",
                input.name
            )));
        }
    };
    let dims = tensor
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or(&[]);
    if dims.len() != 2 {
        return Err(LoadError::unsupported(format!(
            "input '{}' has rank {}; [N, features] is supported",
            input.name,
            dims.len()
        )));
    }
    use proto::tensor_shape_proto::dimension::Value as Dim;
    let features = match &dims[1].value {
        Some(Dim::DimValue(v)) if *v > 0 => Some(*v as usize),
        Some(Dim::DimValue(v)) => {
            return Err(LoadError::invalid(format!(
                "input '{}' has {v} features",
                input.name
            )));
        }
        _ => None,
    };
    Ok((dtype, features))
}

/// One node's effect on the symbolic values.
fn step(
    node: &NodeProto,
    args: &[Value],
    _ml_opset: Option<i64>,
    found: &mut Option<(ensemble::Ensemble, bool)>,
) -> Result<Vec<Value>, LoadError> {
    let refuse = |why: String| Err(LoadError::unsupported(why));
    let domain = node.domain.as_str();
    match (domain, node.op_type.as_str()) {
        ("" | "ai.onnx", "Identity") if args.len() == 1 => Ok(vec![args[0].clone()]),
        ("" | "ai.onnx", "Cast") if args.len() == 1 => {
            let to = node
                .attribute
                .iter()
                .find(|a| a.name == "to")
                .map(|a| a.i as i32);
            match (&args[0], to) {
                (Value::Input { dtype, narrowed }, Some(data_type::FLOAT)) => {
                    Ok(vec![Value::Input {
                        dtype: DType::F32,
                        narrowed: *narrowed || *dtype == DType::F64,
                    }])
                }
                (Value::Input { narrowed, .. }, Some(data_type::DOUBLE)) => {
                    Ok(vec![Value::Input {
                        dtype: DType::F64,
                        narrowed: *narrowed,
                    }])
                }
                (Value::Label, Some(data_type::INT64)) => Ok(vec![Value::Label]),
                (Value::Scores(f), Some(data_type::FLOAT)) => Ok(vec![Value::Scores(f.clone())]),
                (v, to) => refuse(format!("Cast of {v:?} to element type {to:?}")),
            }
        }
        ("" | "ai.onnx", "Mul") if args.len() == 2 => match (&args[0], &args[1]) {
            (Value::Scores(f), Value::Constant(c)) | (Value::Constant(c), Value::Scores(f)) => {
                let mut f = f.clone();
                f.push(*c);
                Ok(vec![Value::Scores(f)])
            }
            _ => refuse("Mul of anything but the scores and a float constant".into()),
        },
        ("" | "ai.onnx", "Constant") => {
            let t = node
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref());
            match t.map(|t| (t.data_type, tensor::reals(t, "Constant"))) {
                Some((data_type::FLOAT, Ok(v))) if v.len() == 1 => {
                    Ok(vec![Value::Constant(v[0] as f32)])
                }
                _ => refuse("a Constant that is not a one-element float".into()),
            }
        }
        ("ai.onnx.ml", op @ ("TreeEnsembleClassifier" | "TreeEnsembleRegressor")) => {
            if found.is_some() {
                return refuse("more than one tree ensemble in the graph".into());
            }
            let [Value::Input { dtype, narrowed }] = args else {
                return refuse(format!("{op} reads something other than the graph input"));
            };
            let double = *dtype == DType::F64;
            if double && *narrowed {
                return refuse("the input is cast from double to float and back".into());
            }
            let e = ensemble::read(node, double)?;
            let outputs = if op == "TreeEnsembleClassifier" {
                vec![Value::Label, Value::Scores(Vec::new())]
            } else {
                vec![Value::Scores(Vec::new())]
            };
            *found = Some((e, double));
            Ok(outputs)
        }
        ("ai.onnx.ml", "TreeEnsemble") => {
            refuse("the TreeEnsemble op (ai.onnx.ml opset 5) is not implemented yet".into())
        }
        ("ai.onnx.ml", "ZipMap") => {
            refuse("ZipMap (its output is a sequence of maps; convert with zipmap=False)".into())
        }
        (domain, op) => refuse(format!(
            "operator {op} (domain '{domain}') in node '{}'",
            node.name
        )),
    }
}

#[cfg(test)]
mod tests;

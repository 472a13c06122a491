//! Malformed or unsupported ONNX ensembles are refused at load with a reason, never a panic.

use prost::Message;

use super::proto::*;
use crate::error::LoadError;
use crate::model::{Outputs, TreeModel};

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOATS,
        floats: v.to_vec(),
        ..Default::default()
    }
}

fn strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRINGS,
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn tensor(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension::Value as Dim};
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                Dim::DimParam("N".into())
                            } else {
                                Dim::DimValue(d)
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
    }
}

/// A valid binary classifier: one tree, root 0 splits feature 0 at 0.5 into leaves 1 and 2.
fn attributes() -> Vec<AttributeProto> {
    vec![
        ints("nodes_treeids", &[0, 0, 0]),
        ints("nodes_nodeids", &[0, 1, 2]),
        ints("nodes_featureids", &[0, 0, 0]),
        floats("nodes_values", &[0.5, 0.0, 0.0]),
        strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
        ints("nodes_truenodeids", &[1, 0, 0]),
        ints("nodes_falsenodeids", &[2, 0, 0]),
        ints("class_treeids", &[0, 0]),
        ints("class_nodeids", &[1, 2]),
        ints("class_ids", &[0, 0]),
        floats("class_weights", &[-1.0, 1.0]),
        ints("classlabels_int64s", &[0, 1]),
        string("post_transform", "LOGISTIC"),
    ]
}

fn with(name: &str, replacement: AttributeProto) -> Vec<AttributeProto> {
    let mut a: Vec<_> = attributes()
        .into_iter()
        .filter(|a| a.name != name)
        .collect();
    a.push(replacement);
    a
}

fn graph(nodes: Vec<NodeProto>, outputs: Vec<ValueInfoProto>) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: "ai.onnx.ml".into(),
            version: 3,
        }],
        graph: Some(GraphProto {
            node: nodes,
            input: vec![tensor("input", data_type::FLOAT, &[-1, 2])],
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn classifier(attribute: Vec<AttributeProto>) -> Vec<u8> {
    let node = NodeProto {
        input: vec!["input".into()],
        output: vec!["label".into(), "probabilities".into()],
        op_type: "TreeEnsembleClassifier".into(),
        domain: "ai.onnx.ml".into(),
        attribute,
        ..Default::default()
    };
    graph(
        vec![node],
        vec![
            tensor("label", data_type::INT64, &[-1]),
            tensor("probabilities", data_type::FLOAT, &[-1, 2]),
        ],
    )
}

fn refused(bytes: &[u8]) -> LoadError {
    match TreeModel::from_onnx(bytes) {
        Ok(_) => panic!("loaded a model that should be refused"),
        Err(e) => e,
    }
}

fn assert_refused(bytes: &[u8], reason: &str) {
    let e = refused(bytes);
    assert!(
        e.to_string().contains(reason),
        "expected '{reason}', got: {e}"
    );
}

#[test]
fn the_valid_model_loads_and_predicts() {
    let model = TreeModel::from_onnx(&classifier(attributes())).unwrap();
    let mut out = Outputs::new();
    model
        .predict(&[0.0, 0.0, 1.0, 0.0, f32::NAN, 0.0], 3, &mut out)
        .unwrap();
    // Binary case, mixed signs: label by score > 0; [logistic(-s), logistic(s)]. NaN is not
    // <= 0.5 and nothing tracks it: the false branch.
    assert_eq!(out.labels, vec![0, 1, 1]);
    assert!((out.scores[1] - 1.0 / (1.0 + 1f32.exp())).abs() < 1e-7);
    let e = model.predict(&[0.0; 5], 3, &mut out).unwrap_err();
    assert!(e.to_string().contains("expects 6 values"), "{e}");
    let e = model.predict_f64(&[0.0; 6], 3, &mut out).unwrap_err();
    assert!(e.to_string().contains("expects FP32"), "{e}");
}

#[test]
fn truncated_protobuf() {
    let bytes = classifier(attributes());
    for cut in [1, bytes.len() / 3, bytes.len() - 1] {
        let e = refused(&bytes[..cut]);
        assert!(
            matches!(e, LoadError::Decode(_) | LoadError::Invalid(_)),
            "{e}"
        );
    }
    assert!(matches!(
        refused(b"not a model at all"),
        LoadError::Decode(_) | LoadError::Invalid(_)
    ));
}

#[test]
fn child_out_of_range_or_missing() {
    assert_refused(
        &classifier(with(
            "nodes_truenodeids",
            ints("nodes_truenodeids", &[7, 0, 0]),
        )),
        "has no node 7",
    );
}

#[test]
fn child_pointing_to_itself() {
    assert_refused(
        &classifier(with(
            "nodes_falsenodeids",
            ints("nodes_falsenodeids", &[0, 0, 0]),
        )),
        "points to itself",
    );
}

#[test]
fn cycle() {
    // 0 -> (1, 2); 1 is a branch whose children are 0 and 2: a cycle and a shared node.
    let mut a = with(
        "nodes_modes",
        strings("nodes_modes", &["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"]),
    );
    a.retain(|x| x.name != "nodes_truenodeids" && x.name != "nodes_falsenodeids");
    a.push(ints("nodes_truenodeids", &[1, 0, 0]));
    a.push(ints("nodes_falsenodeids", &[2, 2, 0]));
    let e = refused(&classifier(a));
    assert!(e.to_string().contains("reached twice"), "{e}");
}

#[test]
fn unreachable_node() {
    let mut a: Vec<_> = attributes()
        .into_iter()
        .filter(|x| !x.name.starts_with("nodes_"))
        .collect();
    a.extend([
        ints("nodes_treeids", &[0, 0, 0, 0]),
        ints("nodes_nodeids", &[0, 1, 2, 3]),
        ints("nodes_featureids", &[0, 0, 0, 0]),
        floats("nodes_values", &[0.5, 0.0, 0.0, 0.0]),
        strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF", "LEAF"]),
        ints("nodes_truenodeids", &[1, 0, 0, 0]),
        ints("nodes_falsenodeids", &[2, 0, 0, 0]),
    ]);
    a.retain(|x| {
        !x.name.starts_with("class_") || x.name == "class_ids" || x.name == "class_weights"
    });
    a.retain(|x| x.name != "class_ids" && x.name != "class_weights");
    a.extend([
        ints("class_treeids", &[0, 0, 0]),
        ints("class_nodeids", &[1, 2, 3]),
        ints("class_ids", &[0, 0, 0]),
        floats("class_weights", &[-1.0, 1.0, 2.0]),
    ]);
    assert_refused(&classifier(a), "node 3 is unreachable");
}

#[test]
fn duplicate_node() {
    let a = with("nodes_nodeids", ints("nodes_nodeids", &[0, 1, 1]));
    assert_refused(&classifier(a), "defined twice");
}

#[test]
fn nan_threshold() {
    let a = with(
        "nodes_values",
        floats("nodes_values", &[f32::NAN, 0.0, 0.0]),
    );
    assert_refused(&classifier(a), "NaN threshold");
}

#[test]
fn class_id_out_of_range() {
    let a = with("class_ids", ints("class_ids", &[0, 2]));
    assert_refused(&classifier(a), "class_ids has 2");
}

#[test]
fn mismatched_attribute_lengths() {
    let a = with("nodes_featureids", ints("nodes_featureids", &[0, 0]));
    assert_refused(&classifier(a), "nodes_featureids has 2 entries");
    let a = with("class_weights", floats("class_weights", &[1.0]));
    assert_refused(&classifier(a), "class_weights has 1 entries");
    let a = with(
        "nodes_missing_value_tracks_true",
        ints("nodes_missing_value_tracks_true", &[1]),
    );
    assert_refused(&classifier(a), "nodes_missing_value_tracks_true has 1");
}

#[test]
fn unknown_mode_transform_and_attribute() {
    let a = with(
        "nodes_modes",
        strings("nodes_modes", &["BRANCH_MEMBER", "LEAF", "LEAF"]),
    );
    assert_refused(&classifier(a), "unknown mode 'BRANCH_MEMBER'");
    let a = with("post_transform", string("post_transform", "TANH"));
    assert_refused(&classifier(a), "unknown post_transform 'TANH'");
    let mut a = attributes();
    a.push(floats("nodes_something_new", &[1.0]));
    assert!(refused(&classifier(a)).is_unsupported());
}

#[test]
fn feature_beyond_the_input() {
    let a = with("nodes_featureids", ints("nodes_featureids", &[5, 0, 0]));
    assert_refused(&classifier(a), "reads feature 5 but the input has 2");
}

#[test]
fn leaf_without_weight() {
    let a = with("class_nodeids", ints("class_nodeids", &[1, 1]));
    assert_refused(&classifier(a), "leaf 2 has no weight");
}

#[test]
fn zipmap_and_unknown_operators_are_unsupported() {
    let ensemble = NodeProto {
        input: vec!["input".into()],
        output: vec!["label".into(), "probabilities".into()],
        op_type: "TreeEnsembleClassifier".into(),
        domain: "ai.onnx.ml".into(),
        attribute: attributes(),
        ..Default::default()
    };
    let zipmap = NodeProto {
        input: vec!["probabilities".into()],
        output: vec!["output_probability".into()],
        op_type: "ZipMap".into(),
        domain: "ai.onnx.ml".into(),
        ..Default::default()
    };
    let e = refused(&graph(vec![ensemble.clone(), zipmap], vec![]));
    assert!(
        e.is_unsupported() && e.to_string().contains("ZipMap"),
        "{e}"
    );
    let softmax = NodeProto {
        input: vec!["probabilities".into()],
        output: vec!["p".into()],
        op_type: "Softmax".into(),
        ..Default::default()
    };
    let e = refused(&graph(
        vec![ensemble, softmax],
        vec![tensor("p", data_type::FLOAT, &[-1, 2])],
    ));
    assert!(
        e.is_unsupported() && e.to_string().contains("Softmax"),
        "{e}"
    );
}

#[test]
fn probit_with_an_unwritten_column_is_unsupported() {
    let a = with("post_transform", string("post_transform", "PROBIT"));
    let e = refused(&classifier(a));
    assert!(
        e.is_unsupported() && e.to_string().contains("unwritten"),
        "{e}"
    );
}

#[test]
fn base_values_of_the_wrong_length() {
    let mut a = attributes();
    a.push(floats("base_values", &[0.1, 0.2, 0.3]));
    assert_refused(&classifier(a), "3 base values for 2 outputs");
}

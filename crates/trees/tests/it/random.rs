//! Random ensembles, encoded as ONNX with the crate's own protobuf structs, evaluated by
//! onnxruntime and by sluice-trees: every node mode, NaN inputs, missing-value tracking,
//! binary/multiclass classifiers with int and string labels, regressors with every
//! aggregate, every post transform, float and double inputs.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use sluice_trees::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto, attribute_type, data_type, tensor_shape_proto, type_proto,
};
use sluice_trees::{LoadError, TreeModel};

use crate::harness::{Rng, Rows, agree, ort, ort_session, run_ort, run_trees};

const MODES: [&str; 6] = [
    "BRANCH_LEQ",
    "BRANCH_LT",
    "BRANCH_GTE",
    "BRANCH_GT",
    "BRANCH_EQ",
    "BRANCH_NEQ",
];
const TRANSFORMS: [&str; 5] = ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"];
const AGGREGATES: [&str; 4] = ["SUM", "AVERAGE", "MIN", "MAX"];
/// Thresholds and inputs share this grid so that equality and ties happen.
const GRID: [f64; 7] = [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0];
const FEATURES: usize = 4;
const ROWS: usize = 24;

/// Flat ONNX node attributes for one ensemble.
#[derive(Default, Debug, Clone)]
pub struct Nodes {
    pub treeids: Vec<i64>,
    pub nodeids: Vec<i64>,
    pub featureids: Vec<i64>,
    pub values: Vec<f32>,
    pub modes: Vec<String>,
    pub truenodeids: Vec<i64>,
    pub falsenodeids: Vec<i64>,
    pub missing: Vec<i64>,
    pub w_treeids: Vec<i64>,
    pub w_nodeids: Vec<i64>,
    pub w_ids: Vec<i64>,
    pub w_values: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Case {
    classifier: bool,
    outputs: usize,
    string_labels: bool,
    nodes: Nodes,
    base: Vec<f32>,
    transform: &'static str,
    aggregate: &'static str,
    double: bool,
    rows: Vec<f64>,
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn chance(rng: &mut Rng, p: f64) -> bool {
    (rng.unit() + 1.0) / 2.0 < p
}

/// Grows one tree: node ids in creation order, listed root first.
fn grow(rng: &mut Rng, tree: i64, case: &mut Nodes, outputs: usize, shape: &Shape) {
    let depth_max = 1 + rng.next_u64() % 5;
    // (node id, depth), breadth first; ids are assigned as nodes are created.
    let mut queue = vec![(0i64, 0u64)];
    let mut next_id = 1;
    let mut at = 0;
    while at < queue.len() {
        let (id, depth) = queue[at];
        at += 1;
        case.treeids.push(tree);
        case.nodeids.push(id);
        let branch = depth < depth_max && (depth == 0 || chance(rng, 0.7));
        if branch {
            let (t, f) = (next_id, next_id + 1);
            next_id += 2;
            queue.push((t, depth + 1));
            queue.push((f, depth + 1));
            case.featureids
                .push((rng.next_u64() % FEATURES as u64) as i64);
            case.values.push(if chance(rng, 0.7) {
                pick(rng, &GRID) as f32
            } else {
                rng.unit() as f32
            });
            case.modes.push(shape.mode(rng).to_string());
            case.truenodeids.push(t);
            case.falsenodeids.push(f);
            case.missing.push(chance(rng, shape.missing) as i64);
        } else {
            case.featureids.push(0);
            case.values.push(0.0);
            case.modes.push("LEAF".into());
            case.truenodeids.push(0);
            case.falsenodeids.push(0);
            case.missing.push(0);
            let weights = shape.weights(rng, outputs);
            for (class, w) in weights {
                case.w_treeids.push(tree);
                case.w_nodeids.push(id);
                case.w_ids.push(class as i64);
                case.w_values.push(w);
            }
        }
    }
}

/// Ensemble-wide choices that make the special cases likely.
struct Shape {
    /// One mode for every branch (the fast paths), or any.
    mode: Option<&'static str>,
    missing: f64,
    /// Classes leaves may carry weights for.
    classes: Vec<usize>,
    positive: bool,
}

impl Shape {
    fn mode(&self, rng: &mut Rng) -> &'static str {
        self.mode.unwrap_or_else(|| pick(rng, &MODES))
    }

    fn weights(&self, rng: &mut Rng, _outputs: usize) -> Vec<(usize, f32)> {
        let mut w = Vec::new();
        for &c in &self.classes {
            if w.is_empty() || chance(rng, 0.5) {
                let v = rng.unit() as f32 * 2.0;
                w.push((c, if self.positive { v.abs() } else { v }));
            }
        }
        // Sometimes two weights for the same output on one leaf.
        if chance(rng, 0.1) {
            w.push((w[0].0, rng.unit() as f32));
        }
        w
    }
}

fn generate(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let classifier = chance(&mut rng, 0.6);
    let outputs = if classifier {
        if chance(&mut rng, 0.6) {
            2
        } else {
            3 + (rng.next_u64() % 3) as usize
        }
    } else {
        1 + (rng.next_u64() % 3) as usize
    };
    let all: Vec<usize> = (0..outputs).collect();
    let classes = if classifier && outputs == 2 {
        // The binary case (one class carries every weight), either class, or both.
        match rng.next_u64() % 3 {
            0 => vec![0],
            1 => vec![1],
            _ => all,
        }
    } else {
        all
    };
    let shape = Shape {
        mode: if chance(&mut rng, 0.5) {
            Some(pick(&mut rng, &MODES[..2]))
        } else {
            None
        },
        missing: pick(&mut rng, &[0.0, 0.3, 1.0]),
        classes,
        positive: chance(&mut rng, 0.4),
    };
    let mut nodes = Nodes::default();
    let trees = 1 + rng.next_u64() % 6;
    for t in 0..trees {
        grow(&mut rng, t as i64, &mut nodes, outputs, &shape);
    }
    let base_len = if classifier {
        pick(&mut rng, &[0, 1, outputs])
    } else {
        pick(&mut rng, &[0, outputs])
    };
    let base = (0..base_len).map(|_| rng.unit() as f32).collect();
    let rows = (0..ROWS * FEATURES)
        .map(|_| match rng.next_u64() % 10 {
            0 => f64::NAN,
            1..=5 => pick(&mut rng, &GRID),
            _ => rng.unit() * 1.2,
        })
        .collect();
    Case {
        classifier,
        outputs,
        string_labels: classifier && chance(&mut rng, 0.3),
        nodes,
        base,
        transform: pick(&mut rng, &TRANSFORMS),
        aggregate: pick(&mut rng, &AGGREGATES),
        double: chance(&mut rng, 0.25),
        rows,
    }
}

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

fn strings(name: &str, v: &[String]) -> AttributeProto {
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

pub fn tensor_value(name: &str, elem: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension::Value as Dim};
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => Dim::DimValue(*v),
                                None => Dim::DimParam("N".into()),
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
    }
}

/// The node attributes every TreeEnsemble op shares.
pub fn node_attributes(n: &Nodes, prefix: &str) -> Vec<AttributeProto> {
    vec![
        ints("nodes_treeids", &n.treeids),
        ints("nodes_nodeids", &n.nodeids),
        ints("nodes_featureids", &n.featureids),
        floats("nodes_values", &n.values),
        strings("nodes_modes", &n.modes),
        ints("nodes_truenodeids", &n.truenodeids),
        ints("nodes_falsenodeids", &n.falsenodeids),
        ints("nodes_missing_value_tracks_true", &n.missing),
        ints(&format!("{prefix}_treeids"), &n.w_treeids),
        ints(&format!("{prefix}_nodeids"), &n.w_nodeids),
        ints(&format!("{prefix}_ids"), &n.w_ids),
        floats(&format!("{prefix}_weights"), &n.w_values),
    ]
}

/// A one-node model around `node`, reading `input` [N, features].
pub fn model(node: NodeProto, elem: i32, features: usize, outputs: Vec<ValueInfoProto>) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 15,
            },
            OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            },
        ],
        producer_name: "sluice-trees-tests".into(),
        producer_version: String::new(),
        graph: Some(GraphProto {
            node: vec![node],
            name: "ensemble".into(),
            initializer: vec![],
            input: vec![tensor_value("input", elem, &[None, Some(features as i64)])],
            output: outputs,
        }),
    }
    .encode_to_vec()
}

fn encode(case: &Case) -> Vec<u8> {
    let elem = if case.double {
        data_type::DOUBLE
    } else {
        data_type::FLOAT
    };
    let prefix = if case.classifier { "class" } else { "target" };
    let mut attribute = node_attributes(&case.nodes, prefix);
    attribute.push(string("post_transform", case.transform));
    if !case.base.is_empty() {
        attribute.push(floats("base_values", &case.base));
    }
    let n = case.outputs as i64;
    let (op, outputs) = if case.classifier {
        if case.string_labels {
            let labels: Vec<String> = (0..n).map(|i| format!("class_{i}")).collect();
            attribute.push(strings("classlabels_strings", &labels));
        } else {
            let labels: Vec<i64> = (0..n).map(|i| 10 + 3 * i).collect();
            attribute.push(ints("classlabels_int64s", &labels));
        }
        let label_type = if case.string_labels {
            data_type::STRING
        } else {
            data_type::INT64
        };
        (
            "TreeEnsembleClassifier",
            vec![
                tensor_value("label", label_type, &[None]),
                tensor_value("probabilities", data_type::FLOAT, &[None, Some(n)]),
            ],
        )
    } else {
        attribute.push(AttributeProto {
            name: "n_targets".into(),
            r#type: attribute_type::INT,
            i: n,
            ..Default::default()
        });
        attribute.push(string("aggregate_function", case.aggregate));
        (
            "TreeEnsembleRegressor",
            vec![tensor_value("variable", data_type::FLOAT, &[None, Some(n)])],
        )
    };
    let node = NodeProto {
        input: vec!["input".into()],
        output: outputs.iter().map(|o| o.name.clone()).collect(),
        name: "ensemble".into(),
        op_type: op.into(),
        domain: "ai.onnx.ml".into(),
        attribute,
    };
    model(node, elem, FEATURES, outputs)
}

/// One case: `Ok(true)` compared, `Ok(false)` refused by both sides or by us for a documented
/// reason, `Err` a disagreement.
fn check(env: &ort::environment::Environment, case: &Case) -> Result<bool, String> {
    let bytes = encode(case);
    let ours = TreeModel::from_onnx(&bytes);
    let session = ort::session::Session::builder(env)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_memory(&bytes);
    let model = match (ours, session) {
        (Ok(m), Ok(_)) => m,
        (Err(LoadError::Unsupported(why)), Ok(_)) if why.contains("unwritten") => {
            return Ok(false);
        }
        (Err(e), Ok(_)) => return Err(format!("we refuse what onnxruntime loads: {e}")),
        (Ok(_), Err(e)) => return Err(format!("onnxruntime refuses what we load: {e}")),
        (Err(_), Err(_)) => return Ok(false),
    };
    let mut session = ort_session(env, &bytes);
    let f32_rows: Vec<f32> = case.rows.iter().map(|&v| v as f32).collect();
    let rows = |k: std::ops::Range<usize>| {
        if case.double {
            Rows::F64(&case.rows[k.start * FEATURES..k.end * FEATURES])
        } else {
            Rows::F32(&f32_rows[k.start * FEATURES..k.end * FEATURES])
        }
    };
    for range in [0..ROWS, 0..1, 5..6] {
        let n = range.len();
        let reference = run_ort(&mut session, rows(range.clone()), n, FEATURES);
        let got = run_trees(&model, rows(range.clone()), n);
        agree(&got, &reference).map_err(|e| format!("rows {range:?}: {e}"))?;
    }
    Ok(true)
}

#[test]
fn random_ensembles_agree_with_onnxruntime() {
    let Some(env) = ort() else { return };
    // TREES_CASES=5000 for a longer hunt.
    let cases: u32 = std::env::var("TREES_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let compared = std::cell::Cell::new(0);
    runner
        .run(&any::<u64>(), |seed| {
            let case = generate(seed);
            match check(env, &case) {
                Ok(done) => {
                    compared.set(compared.get() + done as usize);
                    Ok(())
                }
                Err(why) => Err(TestCaseError::fail(format!(
                    "seed {seed}: {why}\n(classifier {}, outputs {}, transform {}, aggregate {}, base {:?}, double {})",
                    case.classifier, case.outputs, case.transform, case.aggregate, case.base, case.double
                ))),
            }
        })
        .unwrap();
    // Refusals are the documented exception, not the rule.
    eprintln!("{} of {cases} random ensembles compared", compared.get());
    assert!(
        compared.get() * 4 > cases as usize * 3,
        "only {} of {cases} cases compared",
        compared.get()
    );
}

/// `TREES_SEED=<seed> cargo test -p sluice-trees --test it replay -- --ignored --nocapture`
#[test]
#[ignore]
fn replay() {
    let Some(env) = ort() else { return };
    let seed: u64 = std::env::var("TREES_SEED").unwrap().parse().unwrap();
    let case = generate(seed);
    eprintln!("{case:?}");
    let bytes = encode(&case);
    let model = TreeModel::from_onnx(&bytes).unwrap();
    let mut session = ort_session(env, &bytes);
    let rows: Vec<f32> = case.rows.iter().map(|&v| v as f32).collect();
    let reference = run_ort(&mut session, Rows::F32(&rows), ROWS, FEATURES);
    let got = run_trees(&model, Rows::F32(&rows), ROWS);
    eprintln!("ours {got:?}\nreference {reference:?}");
}

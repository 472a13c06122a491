//! sluice-trees against ONNX Runtime and tract in-process, on the same ONNX files: nanoseconds
//! per call at batch 1 and per row at batch 64, for the bench churn model (100 trees, 15 leaves) and a
//! large ensemble (500 full trees of depth 8 over 50 features, built here deterministically:
//! as an ONNX file it would be ~12 MB, too big to commit).
//!
//!     ORT_DYLIB_PATH=.ort/libonnxruntime.so cargo bench -p sluice-trees --bench trees_vs_ort
//!
//! ONNX Runtime runs one intra-op thread (sluice's default), so both sides use one core.
//! tract gets a plan optimised for each batch size (its best case) and runs the two-class
//! graphs as tract-onnx 0.21 computes them (sluice refuses them on tract: inverted labels);
//! it is far slower, so it gets 3 rounds bounded by time instead of a call count.
//! Each side is measured in rounds interleaved with the others and the median round reported.
//! Under `cargo test --all-targets` (no `--bench` flag) it only runs a few calls as a smoke test.

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use prost::Message;
use sluice_trees::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto, attribute_type, data_type, tensor_shape_proto, type_proto,
};
use sluice_trees::{Outputs, TreeModel};
use tract_onnx::prelude::*;

fn effort() -> (usize, usize) {
    if std::env::args().any(|a| a == "--bench") {
        (7, 3_000)
    } else {
        (1, 5)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v,
        ..Default::default()
    }
}

fn floats(name: &str, v: Vec<f32>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOATS,
        floats: v,
        ..Default::default()
    }
}

fn value(name: &str, elem: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension::Value as Dim};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(d.map_or_else(|| Dim::DimParam("N".into()), Dim::DimValue)),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

/// A LightGBM-like binary classifier: `trees` full trees of `depth`, BRANCH_LEQ, missing
/// values tracked on a third of the nodes, LOGISTIC.
fn large_ensemble(trees: usize, depth: u32, features: usize) -> Vec<u8> {
    let mut rng = Rng(2024);
    let (mut t_ids, mut n_ids, mut f_ids, mut vals, mut modes) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_true, mut t_false, mut missing) = (vec![], vec![], vec![]);
    let (mut w_t, mut w_n, mut w_c, mut w_v) = (vec![], vec![], vec![], vec![]);
    let internal = (1i64 << depth) - 1;
    for t in 0..trees as i64 {
        for id in 0..(2 * internal + 1) {
            t_ids.push(t);
            n_ids.push(id);
            if id < internal {
                f_ids.push((rng.next() % features as u64) as i64);
                vals.push(rng.unit());
                modes.push(b"BRANCH_LEQ".to_vec());
                t_true.push(2 * id + 1);
                t_false.push(2 * id + 2);
                missing.push(rng.next().is_multiple_of(3) as i64);
            } else {
                f_ids.push(0);
                vals.push(0.0);
                modes.push(b"LEAF".to_vec());
                t_true.push(0);
                t_false.push(0);
                missing.push(0);
                w_t.push(t);
                w_n.push(id);
                w_c.push(0);
                w_v.push(rng.unit() * 0.1);
            }
        }
    }
    let attribute = vec![
        ints("nodes_treeids", t_ids),
        ints("nodes_nodeids", n_ids),
        ints("nodes_featureids", f_ids),
        floats("nodes_values", vals),
        AttributeProto {
            name: "nodes_modes".into(),
            r#type: attribute_type::STRINGS,
            strings: modes,
            ..Default::default()
        },
        ints("nodes_truenodeids", t_true),
        ints("nodes_falsenodeids", t_false),
        ints("nodes_missing_value_tracks_true", missing),
        ints("class_treeids", w_t),
        ints("class_nodeids", w_n),
        ints("class_ids", w_c),
        floats("class_weights", w_v),
        ints("classlabels_int64s", vec![0, 1]),
        AttributeProto {
            name: "post_transform".into(),
            r#type: attribute_type::STRING,
            s: b"LOGISTIC".to_vec(),
            ..Default::default()
        },
    ];
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
        producer_name: "trees_vs_ort".into(),
        producer_version: String::new(),
        graph: Some(GraphProto {
            node: vec![NodeProto {
                input: vec!["input".into()],
                output: vec!["label".into(), "probabilities".into()],
                name: "ensemble".into(),
                op_type: "TreeEnsembleClassifier".into(),
                domain: "ai.onnx.ml".into(),
                attribute,
            }],
            name: "large".into(),
            initializer: vec![],
            input: vec![value(
                "input",
                data_type::FLOAT,
                &[None, Some(features as i64)],
            )],
            output: vec![
                value("label", data_type::INT64, &[None]),
                value("probabilities", data_type::FLOAT, &[None, Some(2)]),
            ],
        }),
    }
    .encode_to_vec()
}

type Plan = TypedSimplePlan<TypedModel>;

fn tract_plan(bytes: &[u8], batch: usize, features: usize) -> Plan {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact([batch, features]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the model")
}

/// Nanoseconds per call, after one warm-up call: at least `min_calls`, and until ~0.2 s have
/// passed.
fn time_tract(plan: &Plan, input: &Tensor, min_calls: usize) -> f64 {
    let run = || black_box(plan.run(tvec!(input.clone().into_tvalue())).unwrap());
    run();
    let started = Instant::now();
    let mut calls = 0;
    while calls < min_calls || started.elapsed().as_secs_f64() < 0.2 {
        run();
        calls += 1;
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (rounds, calls) = effort();
    // The smoke test skips tract: unoptimised, it would take minutes on the large ensemble.
    let measuring = rounds > 1;
    let churn = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/churn.onnx"),
    )
    .expect("churn fixture");
    let models = [
        ("churn", churn, 12usize),
        ("large-500x8", large_ensemble(500, 8, 50), 50),
    ];
    let env = std::env::var("ORT_DYLIB_PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .and_then(|p| {
            let env = ort::init_from(&p).ok()?.with_name("trees_vs_ort").build();
            env.map_err(|e| eprintln!("onnxruntime unavailable: {e}"))
                .ok()
        });
    if env.is_none() {
        eprintln!("ORT_DYLIB_PATH not set or not loadable: measuring sluice-trees alone");
    }
    println!(
        "{:12} {:>5} {:>14} {:>14} {:>8} {:>14} {:>10}",
        "model", "batch", "trees ns", "ort ns", "ort/trees", "tract ns", "tract/trees"
    );
    for (name, bytes, features) in &models {
        let model = TreeModel::from_onnx(bytes).expect("sluice-trees loads the model");
        let mut session = env.as_ref().map(|env| {
            Session::builder(env)
                .unwrap()
                .with_intra_threads(1)
                .unwrap()
                .with_inter_threads(1)
                .unwrap()
                .commit_from_memory(bytes)
                .expect("onnxruntime loads the model")
        });
        let mut rng = Rng(7);
        for batch in [1usize, 64] {
            let rows: Vec<f32> = (0..batch * features)
                .map(|i| {
                    if i % 23 == 0 {
                        f32::NAN
                    } else {
                        rng.unit() * 2.0
                    }
                })
                .collect();
            let mut out = Outputs::new();
            let mut trees_rounds = Vec::new();
            let mut ort_rounds = Vec::new();
            let mut tract_rounds = Vec::new();
            let plan = measuring.then(|| tract_plan(bytes, batch, *features));
            let tract_input =
                tract_ndarray::Array2::from_shape_vec((batch, *features), rows.clone())
                    .unwrap()
                    .into_tensor();
            for _ in 0..rounds {
                for _ in 0..calls / 10 + 1 {
                    model.predict(&rows, batch, &mut out).unwrap();
                }
                let started = Instant::now();
                for _ in 0..calls {
                    model.predict(black_box(&rows), batch, &mut out).unwrap();
                    black_box(&out.scores);
                }
                trees_rounds.push(started.elapsed().as_nanos() as f64 / calls as f64);
                if let Some(session) = session.as_mut() {
                    let run = |session: &mut Session| {
                        let input = TensorRef::from_array_view((
                            vec![batch as i64, *features as i64],
                            rows.as_slice(),
                        ))
                        .unwrap();
                        let feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                            vec![(Cow::Borrowed("input"), input.into())];
                        let outputs = session.run(feeds).unwrap();
                        black_box(outputs.len());
                    };
                    for _ in 0..calls / 10 + 1 {
                        run(session);
                    }
                    let started = Instant::now();
                    for _ in 0..calls {
                        run(session);
                    }
                    ort_rounds.push(started.elapsed().as_nanos() as f64 / calls as f64);
                }
                // tract takes 0.2 s per row on the large ensemble: 3 rounds of it are plenty.
                if let Some(plan) = plan.as_ref().filter(|_| tract_rounds.len() < 3) {
                    tract_rounds.push(time_tract(plan, &tract_input, 1));
                }
            }
            // Per call at batch 1, per row at batch 64.
            let per = batch as f64;
            let trees_ns = median(trees_rounds) / per;
            let (ort_ns, ratio) = if ort_rounds.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                let o = median(ort_rounds) / per;
                (format!("{o:.0}"), format!("{:.2}", o / trees_ns))
            };
            let (tract_ns, tract_ratio) = if tract_rounds.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                let t = median(tract_rounds) / per;
                (format!("{t:.0}"), format!("{:.1}", t / trees_ns))
            };
            println!(
                "{name:12} {batch:>5} {trees_ns:>14.0} {ort_ns:>14} {ratio:>8} {tract_ns:>14} {tract_ratio:>10}"
            );
        }
    }
}

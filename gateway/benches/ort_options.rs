//! What ONNX Runtime's session options do to one inference, on the bench models: per-call time
//! at batch 1 and 64 rows for each option changed alone from the defaults, plus two
//! intra-op threads, so that `[runtime.ort]`'s defaults rest on measurements. tract runs the
//! same inputs where it can (it refuses the two-class churn trees), for the runtime choice.
//!
//!     scripts/fetch-ort.sh && cargo bench -p sluice --bench ort_options
//!
//! Each variant is measured in rounds interleaved with the others, and the median round is
//! reported, so that a noisy neighbour skews every variant alike.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sluice_core::tensor::{Tensor, TensorData};
use sluice_runtime::{
    Backend, OrtOptimization, OrtOptions, OrtRuntime, Runtimes, find_ort_library,
};
use sluice_runtime::{RuntimeChoice, RuntimeConfig};

/// Rounds and calls per round: the full measurement under `cargo bench`, a smoke run under
/// `cargo test --all-targets` (which runs benches without `--bench`).
fn effort() -> (usize, usize) {
    if std::env::args().any(|a| a == "--bench") {
        (7, 2_000)
    } else {
        (1, 20)
    }
}

fn variants() -> Vec<(&'static str, OrtOptions)> {
    let base = OrtOptions::default();
    vec![
        ("defaults", base.clone()),
        (
            "optimization=basic",
            OrtOptions {
                optimization: OrtOptimization::Basic,
                ..base.clone()
            },
        ),
        (
            "optimization=disable",
            OrtOptions {
                optimization: OrtOptimization::Disable,
                ..base.clone()
            },
        ),
        (
            "memory_pattern=false",
            OrtOptions {
                memory_pattern: false,
                ..base.clone()
            },
        ),
        (
            "cpu_arena=false",
            OrtOptions {
                cpu_arena: false,
                ..base.clone()
            },
        ),
        (
            "intra_threads=2",
            OrtOptions {
                intra_threads: 2,
                ..base.clone()
            },
        ),
        (
            "intra_threads=2 spinning",
            OrtOptions {
                intra_threads: 2,
                spinning: true,
                ..base
            },
        ),
    ]
}

/// `rows` rows of the model's sample, as the model's input.
fn input(sample: &Path, rows: usize) -> Vec<Tensor> {
    let sample = sluice::drift::sample::read(sample).expect("bench sample");
    let data = sample.values[..rows * sample.columns]
        .iter()
        .map(|&v| v as f32)
        .collect();
    vec![Tensor::new("input", vec![rows, sample.columns], TensorData::F32(data)).unwrap()]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench");
    let Some(library) = find_ort_library(None) else {
        eprintln!("no ONNX Runtime library: run scripts/fetch-ort.sh first");
        return;
    };
    let ort = OrtRuntime::init(&library).expect("ONNX Runtime loads");
    let (rounds_wanted, calls_per_round) = effort();
    let tract = Runtimes::new(&RuntimeConfig::default());
    println!(
        "{:6} {:>4}  {:26} {:>12} {:>10}",
        "model", "rows", "options", "us per call", "vs default"
    );
    for model in ["churn", "mlp"] {
        let path: PathBuf = root.join(format!("repo/{model}/1/model.onnx"));
        let sample = root.join(format!("{model}_sample.npy"));
        for rows in [1, 64] {
            let inputs = input(&sample, rows);
            let mut sessions: Vec<(&str, Box<dyn Backend>)> = variants()
                .into_iter()
                .map(|(name, options)| {
                    let session = ort.load(&path, &options).expect("model loads");
                    (name, Box::new(session) as Box<dyn Backend>)
                })
                .collect();
            if let Ok(mut tract) = tract.build(&path, RuntimeChoice::Tract, 1, &[]) {
                sessions.push(("runtime=tract", tract.instances.remove(0)));
            }
            let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
            for _ in 0..rounds_wanted {
                for (i, (_, session)) in sessions.iter_mut().enumerate() {
                    // Warm the caches with this variant before timing it.
                    for _ in 0..100 {
                        session.run(inputs.clone()).unwrap();
                    }
                    let started = Instant::now();
                    for _ in 0..calls_per_round {
                        session.run(inputs.clone()).unwrap();
                    }
                    rounds[i].push(started.elapsed().as_secs_f64() * 1e6 / calls_per_round as f64);
                }
            }
            let medians: Vec<f64> = rounds
                .iter_mut()
                .map(|r| {
                    r.sort_by(f64::total_cmp);
                    r[r.len() / 2]
                })
                .collect();
            for ((name, _), us) in sessions.iter().zip(&medians) {
                println!(
                    "{model:6} {rows:>4}  {name:26} {us:>12.2} {:>10.2}",
                    us / medians[0]
                );
            }
        }
    }
}

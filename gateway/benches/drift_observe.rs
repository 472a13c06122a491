//! What inline drift costs per request: `DriftMonitor::observe_inputs` on the bench samples
//! (churn: 12 features, mlp: 64), batch-1 and batch-8 requests, one thread and every core at
//! once, with varied rows and with one row repeated (all threads bumping the same counters,
//! the worst case for cache-line sharing).
//!
//!     cargo bench -p sluice --bench drift_observe

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sluice::config::DriftConfig;
use sluice::drift::profile::{Continuous, FeatureProfile, Profile, SCHEMA, SampleInfo};
use sluice::drift::{DriftMonitor, sample};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

/// Requests per measurement: the full count under `cargo bench`, a smoke run under
/// `cargo test --all-targets` (which runs benches without `--bench`).
fn requests_per_run() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        400_000
    } else {
        2_000
    }
}

fn monitor(sample: &sample::Sample) -> DriftMonitor {
    let profile = Profile {
        schema: SCHEMA.into(),
        model: "bench".into(),
        version: 1,
        input: "input".into(),
        sample: SampleInfo {
            file: "sample.npy".into(),
            rows: sample.rows,
        },
        features: (0..sample.columns)
            .map(|j| FeatureProfile {
                name: format!("f{j}"),
                distribution: Continuous::from_values(sample.column(j), 200).expect("values"),
                nan_rows: None,
                distinct_values: None,
            })
            .collect(),
        prediction: None,
        quality: None,
    };
    let signature = ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::F32,
            shape: vec![-1, sample.columns as i64],
        }],
        outputs: vec![],
    };
    DriftMonitor::new(&profile, &signature, &DriftConfig::default()).expect("monitor")
}

fn requests(sample: &sample::Sample, batch: usize, repeat_one: bool) -> Vec<Tensor> {
    let c = sample.columns;
    (0..sample.rows / batch)
        .map(|i| {
            let start = if repeat_one { 0 } else { i * batch };
            let values = (0..batch)
                .flat_map(|r| {
                    let row = if repeat_one { start } else { start + r };
                    sample.values[row * c..(row + 1) * c]
                        .iter()
                        .map(|&v| v as f32)
                })
                .collect();
            Tensor::new("input", vec![batch, c], TensorData::F32(values)).expect("tensor")
        })
        .collect()
}

/// Nanoseconds per request with `threads` threads observing concurrently.
fn run(monitor: &Arc<DriftMonitor>, requests: &Arc<Vec<Tensor>>, threads: usize) -> f64 {
    let count = requests_per_run();
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (monitor, requests) = (Arc::clone(monitor), Arc::clone(requests));
            std::thread::spawn(move || {
                for i in 0..count {
                    let request = &requests[(i + t * 7) % requests.len()];
                    monitor.observe_inputs(std::slice::from_ref(request));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    started.elapsed().as_nanos() as f64 / count as f64
}

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{cores} cores; ns per request (per thread) for observe_inputs");
    for name in ["churn", "mlp"] {
        let sample = sample::read(&fixtures.join(format!("{name}_sample.npy"))).expect("sample");
        for batch in [1, 8] {
            for repeat_one in [false, true] {
                let requests = Arc::new(requests(&sample, batch, repeat_one));
                let rows = if repeat_one { "one row" } else { "varied" };
                let mut line =
                    format!("{name:5} {:2} features  b{batch}  {rows:7}", sample.columns);
                for threads in [1, cores] {
                    let monitor = Arc::new(monitor(&sample));
                    let ns = run(&monitor, &requests, threads);
                    line += &format!(
                        "  {threads:2} thread(s): {ns:7.0} ns ({:5.1} ns/value)",
                        ns / (batch * sample.columns) as f64
                    );
                }
                println!("{line}");
            }
        }
    }
}

//! What data expectations cost per request: `Expectations::check` with rules derived from a
//! profile of the bench samples (churn: 12 features, mlp: 64), batch-1 and batch-8 requests of
//! the samples' own rows (they pass, the usual case), on one thread; and with the mlp's
//! integer pixels as categorical columns (a binary search per value).
//!
//!     cargo bench -p sluice --bench expectations_check

use std::path::Path;
use std::time::Instant;

use sluice::drift::profile::{FeatureProfile, Profile, SCHEMA};
use sluice::drift::sample::{self, Sample};
use sluice::expectations::{Expectations, ExpectationsConfig, Flagged};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

/// Requests per measurement: the full count under `cargo bench`, a smoke run under
/// `cargo test --all-targets` (which runs benches without `--bench`).
fn requests_per_run() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        2_000_000
    } else {
        2_000
    }
}

fn profile(sample: &Sample) -> Profile {
    let features: Vec<FeatureProfile> = (0..sample.columns)
        .map(|j| {
            let column: Vec<f64> = sample.column(j).collect();
            FeatureProfile::from_values(format!("f{j}"), &column, 200).expect("values")
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "schema": SCHEMA, "model": "bench", "version": 1, "input": "input",
        "sample": {"file": "sample.npy", "rows": sample.rows}, "features": features,
    }))
    .expect("profile")
}

fn expectations(sample: &Sample, table: &str) -> Expectations {
    let config: ExpectationsConfig = toml::from_str(table).expect("table");
    let signature = ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::F32,
            shape: vec![-1, sample.columns as i64],
        }],
        outputs: vec![],
    };
    Expectations::build("bench", 1, &config, Some(&profile(sample)), &signature, &[])
        .expect("expectations")
}

fn requests(sample: &Sample, batch: usize) -> Vec<Tensor> {
    let c = sample.columns;
    (0..sample.rows / batch)
        .map(|i| {
            let values = sample.values[i * batch * c..(i + 1) * batch * c]
                .iter()
                .map(|&v| v as f32)
                .collect();
            Tensor::new("input", vec![batch, c], TensorData::F32(values)).expect("tensor")
        })
        .collect()
}

/// Nanoseconds per request, and the violations seen.
fn run(expectations: &Expectations, requests: &[Tensor]) -> (f64, u64) {
    let count = requests_per_run();
    let mut violations = 0;
    let started = Instant::now();
    for i in 0..count {
        let mut flagged = Flagged::default();
        let request = &requests[i % requests.len()];
        let _ = expectations.check(std::slice::from_ref(request), &mut flagged);
        violations += flagged.violations;
    }
    let ns = started.elapsed().as_nanos() as f64 / count as f64;
    (ns, violations)
}

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench");
    println!("ns per request for Expectations::check (one thread; rows from the training sample)");
    let ranges = "on_violation = \"flag\"\nderive = \"profile\"\ncategorical_values = 0\n";
    let categorical = "on_violation = \"flag\"\nderive = \"profile\"\ncategorical_values = 32\n";
    for name in ["churn", "mlp"] {
        let sample = sample::read(&fixtures.join(format!("{name}_sample.npy"))).expect("sample");
        for (rules, table) in [("ranges+nan", ranges), ("+categorical", categorical)] {
            let expectations = expectations(&sample, table);
            for batch in [1, 8] {
                let requests = requests(&sample, batch);
                let (ns, violations) = run(&expectations, &requests);
                println!(
                    "{name:5} {:2} features  {rules:12}  b{batch}: {ns:6.1} ns ({:4.2} ns/value, \
                     {violations} violations)",
                    sample.columns,
                    ns / (batch * sample.columns) as f64
                );
            }
        }
    }
}

//! What the outcome join costs a request: `PredictionIndex::begin` and `answer` (with the
//! answer's `Predicted::from_outputs`) for batch-1 answers of a two-class and a ten-class
//! model, on an index that is already full (every insert also evicts, the steady state of a
//! busy server), and `join` of an outcome. One thread; the request path runs these on
//! whichever runtime thread serves the request.
//!
//!     cargo bench -p sluice --bench outcome_join

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice::outcomes::index::{PredictionIndex, Served, Truthful};
use sluice::telemetry::quality::{Predicted, Truth, VersionQuality};
use sluice_core::Variant;
use sluice_core::tensor::{Tensor, TensorData};

/// Requests per measurement: the full count under `cargo bench`, a smoke run under
/// `cargo test --all-targets` (which runs benches without `--bench`).
fn requests_per_run() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        2_000
    }
}

fn answer(classes: usize) -> Vec<Tensor> {
    let p = 1.0 / classes as f32;
    vec![
        Tensor::new("label", vec![1], TensorData::I64(vec![1])).unwrap(),
        Tensor::new(
            "probabilities",
            vec![1, classes],
            TensorData::F32(vec![p; classes]),
        )
        .unwrap(),
    ]
}

fn ids(n: usize) -> Vec<String> {
    // The shape of the ids sluice makes: a random prefix and a counter.
    (0..n)
        .map(|i| format!("5f0c2a9e31d47b86-{i:012x}"))
        .collect()
}

fn main() {
    let n = requests_per_run();
    let capacity = 100_000.min(n / 2).max(16);
    let quality = Arc::new(VersionQuality::new("bench", 1));
    for classes in [2, 10] {
        let outputs = answer(classes);
        let index = PredictionIndex::new(capacity, Duration::from_secs(3600));
        let ids = ids(n + capacity);
        let served = || Served {
            quality: Arc::clone(&quality),
            variant: Variant::Primary,
            at: SystemTime::now(),
        };
        // Fill it, so that what is timed is the steady state.
        for id in &ids[..capacity] {
            let t = index.begin(id, served());
            index.answer(t, Predicted::from_outputs(&outputs, 1));
        }
        let started = Instant::now();
        for id in &ids[capacity..] {
            let t = index.begin(id, served());
            index.answer(t, Predicted::from_outputs(&outputs, 1));
        }
        let per_request = started.elapsed().as_secs_f64() / n as f64;
        let started = Instant::now();
        let outcome = Truthful {
            row: 0,
            truth: Truth::Label(1),
        };
        let recent = &ids[n + capacity - capacity / 2..];
        for id in recent {
            let _ = index.join("bench", id, outcome);
        }
        let per_join = started.elapsed().as_secs_f64() / recent.len() as f64;
        println!(
            "{classes:>2} classes, index of {capacity}: begin + answer {:.0} ns a request; join \
             {:.0} ns an outcome; {} held, {} evicted",
            per_request * 1e9,
            per_join * 1e9,
            index.len(),
            index.evictions().capacity
        );
    }
}

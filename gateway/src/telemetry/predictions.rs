//! What a version predicted, as two small histograms the guard compares between canary and
//! primary: the predicted label (from the first integer or string output with one value per
//! row) and the confidence (the row's largest value in the first floating-point output, e.g.
//! the top class probability, in 20 bins over [0, 1]).
//!
//! Counting is a couple of relaxed atomic adds per row, and only while a rollout watches the
//! version: the guard turns [`PredictionWatch::set_active`] on for the versions it compares.
//! Counters only grow; the guard takes a [`PredictionCounts`] mark when a step starts and
//! compares what was added since.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use sluice_core::Variant;
use sluice_core::request::stable_hash;
use sluice_core::tensor::{Tensor, TensorData};

/// Label bins: labels 0..=30 have their own bin; any other label (negative, larger, or a
/// string) is hashed into one of them. Classifiers with up to 31 classes are counted exactly.
pub const LABEL_BINS: usize = 32;
/// Confidence bins of width 0.05 over [0, 1]; values outside are clamped into the end bins.
pub const CONFIDENCE_BINS: usize = 20;

/// Monotonic prediction counters of one (version, variant).
pub struct PredictionHistogram {
    labels: [AtomicU64; LABEL_BINS],
    confidence: [AtomicU64; CONFIDENCE_BINS],
}

impl Default for PredictionHistogram {
    fn default() -> Self {
        PredictionHistogram {
            labels: std::array::from_fn(|_| AtomicU64::new(0)),
            confidence: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A copy of the counters at one moment, or the difference of two copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PredictionCounts {
    pub labels: [u64; LABEL_BINS],
    pub confidence: [u64; CONFIDENCE_BINS],
}

impl Default for PredictionCounts {
    fn default() -> Self {
        PredictionCounts {
            labels: [0; LABEL_BINS],
            confidence: [0; CONFIDENCE_BINS],
        }
    }
}

impl PredictionCounts {
    /// What was counted after `mark` was taken.
    pub fn since(&self, mark: &PredictionCounts) -> PredictionCounts {
        PredictionCounts {
            labels: std::array::from_fn(|i| self.labels[i].saturating_sub(mark.labels[i])),
            confidence: std::array::from_fn(|i| {
                self.confidence[i].saturating_sub(mark.confidence[i])
            }),
        }
    }

    pub fn label_rows(&self) -> u64 {
        self.labels.iter().sum()
    }

    pub fn confidence_rows(&self) -> u64 {
        self.confidence.iter().sum()
    }
}

fn label_bin(label: i64) -> usize {
    match usize::try_from(label) {
        Ok(l) if l < LABEL_BINS - 1 => l,
        _ => (stable_hash(&label.to_le_bytes()) % (LABEL_BINS as u64 - 1)) as usize,
    }
}

fn confidence_bin(value: f64) -> usize {
    if value.is_nan() {
        return 0;
    }
    ((value.clamp(0.0, 1.0) * CONFIDENCE_BINS as f64) as usize).min(CONFIDENCE_BINS - 1)
}

impl PredictionHistogram {
    fn bump_label(&self, label: i64) {
        self.labels[label_bin(label)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer's rows.
    pub fn record(&self, outputs: &[Tensor]) {
        let labels = outputs.iter().find(|t| {
            let one_per_row = t.shape.len() == 1 || (t.shape.len() == 2 && t.shape[1] == 1);
            one_per_row
                && matches!(
                    t.data,
                    TensorData::I64(_) | TensorData::I32(_) | TensorData::Bytes(_)
                )
        });
        if let Some(labels) = labels {
            match &labels.data {
                TensorData::I64(v) => v.iter().for_each(|&l| self.bump_label(l)),
                TensorData::I32(v) => v.iter().for_each(|&l| self.bump_label(i64::from(l))),
                TensorData::Bytes(v) => v.iter().for_each(|b| {
                    let bin = stable_hash(b) % (LABEL_BINS as u64 - 1);
                    self.labels[bin as usize].fetch_add(1, Ordering::Relaxed);
                }),
                _ => {}
            }
        }
        let scores = outputs
            .iter()
            .find(|t| matches!(t.data, TensorData::F32(_) | TensorData::F64(_)));
        if let Some(scores) = scores {
            let width = if scores.shape.len() >= 2 {
                scores.shape[1..].iter().product::<usize>().max(1)
            } else {
                1
            };
            let bump = |row_max: f64| {
                self.confidence[confidence_bin(row_max)].fetch_add(1, Ordering::Relaxed);
            };
            match &scores.data {
                TensorData::F32(v) => v.chunks(width).for_each(|row| {
                    bump(
                        row.iter()
                            .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x))),
                    )
                }),
                TensorData::F64(v) => v
                    .chunks(width)
                    .for_each(|row| bump(row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x)))),
                _ => {}
            }
        }
    }

    pub fn counts(&self) -> PredictionCounts {
        PredictionCounts {
            labels: std::array::from_fn(|i| self.labels[i].load(Ordering::Relaxed)),
            confidence: std::array::from_fn(|i| self.confidence[i].load(Ordering::Relaxed)),
        }
    }
}

/// A version's prediction histograms for the two sides of a split, and whether anyone is
/// watching (outside a rollout nothing is counted, so the request path pays one load).
#[derive(Default)]
pub struct PredictionWatch {
    active: AtomicBool,
    primary: PredictionHistogram,
    canary: PredictionHistogram,
}

impl PredictionWatch {
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts an answer given as `variant`; only primary and canary answers are compared.
    pub fn record(&self, variant: Variant, outputs: &[Tensor]) {
        if !self.is_active() {
            return;
        }
        match variant {
            Variant::Primary => self.primary.record(outputs),
            Variant::Canary => self.canary.record(outputs),
            Variant::Direct | Variant::Shadow => {}
        }
    }

    /// The counters of `variant` now (all zero for direct and shadow).
    pub fn counts(&self, variant: Variant) -> PredictionCounts {
        match variant {
            Variant::Primary => self.primary.counts(),
            Variant::Canary => self.canary.counts(),
            Variant::Direct | Variant::Shadow => PredictionCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(labels: Vec<i64>, probabilities: Vec<f32>) -> Vec<Tensor> {
        let rows = labels.len();
        vec![
            Tensor::new("label", vec![rows], TensorData::I64(labels)).unwrap(),
            Tensor::new(
                "probabilities",
                vec![rows, probabilities.len() / rows],
                TensorData::F32(probabilities),
            )
            .unwrap(),
        ]
    }

    #[test]
    fn counts_labels_and_top_probability_only_while_watched() {
        let watch = PredictionWatch::default();
        let answer = outputs(vec![1, 0, 99], vec![0.2, 0.8, 0.97, 0.03, 0.5, 0.5]);
        watch.record(Variant::Canary, &answer);
        assert_eq!(watch.counts(Variant::Canary), PredictionCounts::default());
        watch.set_active(true);
        watch.record(Variant::Canary, &answer);
        watch.record(Variant::Direct, &answer);
        let counts = watch.counts(Variant::Canary);
        assert_eq!((counts.labels[0], counts.labels[1]), (1, 1));
        assert_eq!(counts.label_rows(), 3, "label 99 lands in some bin");
        assert_eq!(counts.confidence[16], 1, "0.8");
        assert_eq!(counts.confidence[19], 1, "0.97");
        assert_eq!(counts.confidence[10], 1, "0.5");
        assert_eq!(watch.counts(Variant::Primary).label_rows(), 0);
        let mark = counts.clone();
        watch.record(Variant::Canary, &answer);
        assert_eq!(watch.counts(Variant::Canary).since(&mark), mark);
    }
}

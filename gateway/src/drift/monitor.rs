//! [`DriftMonitor`]: one version's reference profile turned into binning tables, and the live
//! window its served rows are counted into. Built when the version loads, off the request
//! path; on the request path it only bins values and bumps counters.

use std::sync::Mutex;

use serde::Serialize;

use super::alert::Latches;
use super::profile::Profile;
use super::series::{ContinuousSeries, PredictionSeries, rows};
use super::window::DriftWindow;
use crate::drift::DriftConfig;
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData};

/// Live drift of one model version against its profile.
pub struct DriftMonitor {
    input: String,
    features: Vec<ContinuousSeries>,
    prediction: Option<PredictionSeries>,
    window: DriftWindow,
    /// Which thresholds are currently crossed; touched by the evaluator only.
    pub(crate) latches: Mutex<Latches>,
}

/// Drift of one series (a feature or the prediction) over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesDrift {
    pub name: String,
    /// Values counted (rows with a NaN in this feature are left out).
    pub rows: u64,
    /// `None` while the window is empty.
    pub psi: Option<f64>,
    /// `None` while the window is empty, and always for a class prediction.
    pub ks: Option<f64>,
}

/// Drift of a version over the window, as the stats endpoint shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    /// Input rows in the window.
    pub window_rows: u64,
    pub window_seconds: u64,
    pub features: Vec<SeriesDrift>,
    pub prediction: Option<SeriesDrift>,
}

/// Raw bin counts of one series over the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesCounts {
    pub name: String,
    /// Per fine bin (continuous series) or per class plus one for unseen classes.
    pub bins: Vec<u64>,
    /// Per PSI bin: the 10 decile bins, or the classes plus one.
    pub psi_bins: Vec<u64>,
}

/// Every series' counts over the window, e.g. for the rollout guard to compare canary and
/// primary predictions binned by one profile with [`super::stats::psi_between`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftSnapshot {
    pub rows: u64,
    pub features: Vec<SeriesCounts>,
    pub prediction: Option<SeriesCounts>,
}

impl DriftMonitor {
    /// Builds the monitor for a version with `signature` from its profile. Fails, naming the
    /// mismatch, when the profile does not fit the model (another model's profile, a changed
    /// input width).
    pub fn new(
        profile: &Profile,
        signature: &ModelSignature,
        config: &DriftConfig,
    ) -> Result<DriftMonitor, String> {
        let spec = signature
            .inputs
            .iter()
            .find(|s| s.name == profile.input)
            .ok_or_else(|| format!("the model has no input '{}'", profile.input))?;
        if !matches!(spec.datatype, DataType::F32 | DataType::F64) || spec.shape.len() != 2 {
            return Err(format!(
                "input '{}' is {} {:?}; drift needs a 2-D float input",
                spec.name, spec.datatype, spec.shape
            ));
        }
        let width = spec.shape[1];
        if width >= 0 && width as usize != profile.features.len() {
            return Err(format!(
                "input '{}' has {width} features, the profile {}",
                spec.name,
                profile.features.len()
            ));
        }
        let mut offset = 0;
        let mut features = Vec::with_capacity(profile.features.len());
        for feature in &profile.features {
            let series = ContinuousSeries::new(feature.name.clone(), offset, &feature.distribution);
            offset += series.bins();
            features.push(series);
        }
        let prediction = match &profile.prediction {
            None => None,
            Some(p) => {
                let (series, bins) = PredictionSeries::new(p, signature, offset)?;
                offset += bins;
                Some(series)
            }
        };
        let series = features.len() + usize::from(prediction.is_some());
        Ok(DriftMonitor {
            input: profile.input.clone(),
            features,
            prediction,
            window: DriftWindow::new(config.window, config.bucket, offset),
            latches: Mutex::new(Latches::new(series)),
        })
    }

    /// Counts every row of the request's feature input into the window: per row and feature,
    /// a binary search over the fine edges and one relaxed atomic add. `inputs` need not be
    /// in signature order. Call it with inputs that passed validation.
    pub fn observe_inputs(&self, inputs: &[Tensor]) {
        let Some(t) = inputs.iter().find(|t| t.name == self.input) else {
            return;
        };
        let width = self.features.len();
        if t.shape.len() != 2 || t.shape[1] != width || width == 0 {
            return;
        }
        let counter = self.window.counter();
        match &t.data {
            TensorData::F32(values) => {
                for row in values.chunks_exact(width) {
                    for (series, &x) in self.features.iter().zip(row) {
                        series.count(&counter, f64::from(x));
                    }
                }
            }
            TensorData::F64(values) => {
                for row in values.chunks_exact(width) {
                    for (series, &x) in self.features.iter().zip(row) {
                        series.count(&counter, x);
                    }
                }
            }
            _ => return,
        }
        counter.add_rows(rows(t) as u64);
    }

    /// Counts the prediction of every row; `outputs` are the model's outputs in signature
    /// order (before a request's output selection).
    pub fn observe_outputs(&self, outputs: &[Tensor]) {
        if let Some(prediction) = &self.prediction {
            prediction.observe(&self.window.counter(), outputs);
        }
    }

    /// PSI and KS of every series over the window now.
    pub fn report(&self) -> DriftReport {
        let totals = self.window.totals();
        DriftReport {
            window_rows: totals.rows,
            window_seconds: self.window.span().as_secs(),
            features: self.features.iter().map(|s| s.drift(&totals)).collect(),
            prediction: self.prediction.as_ref().map(|p| p.drift(&totals)),
        }
    }

    /// The raw counts behind [`DriftMonitor::report`].
    pub fn snapshot(&self) -> DriftSnapshot {
        let totals = self.window.totals();
        DriftSnapshot {
            rows: totals.rows,
            features: self.features.iter().map(|s| s.snapshot(&totals)).collect(),
            prediction: self.prediction.as_ref().map(|p| p.snapshot(&totals)),
        }
    }

    /// Feature names, in column order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|s| s.name.as_str())
    }
}

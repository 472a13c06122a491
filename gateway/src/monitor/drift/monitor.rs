//! [`DriftMonitor`]: one version's reference profile turned into binning tables, and the live
//! window its served rows are counted into. Built when the version loads, off the request
//! path; on the request path it only bins values and bumps counters.

use std::sync::Mutex;

use serde::Serialize;

use super::alert::Latches;
use super::profile::{ClassSource, Continuous, PredictionProfile, Profile};
use super::stats::{ks_at_edges, psi};
use super::window::{Counter, DriftWindow, WindowCounts};
use crate::config::DriftConfig;
use crate::tensor::{DataType, ModelSignature, Tensor, TensorData};

/// Live drift of one model version against its profile.
pub struct DriftMonitor {
    input: String,
    features: Vec<ContinuousSeries>,
    prediction: Option<PredictionSeries>,
    window: DriftWindow,
    /// Which thresholds are currently crossed; touched by the evaluator only.
    pub(super) latches: Mutex<Latches>,
}

/// A continuous reference, ready for binning: the fine edges with the reference CDF at each,
/// and which PSI bin each fine bin belongs to.
struct ContinuousSeries {
    name: String,
    /// Where this series' counters start in the window.
    offset: usize,
    edges: Box<[f64]>,
    cdf: Box<[f64]>,
    psi_bin: Box<[usize]>,
    psi_expected: Box<[f64]>,
}

enum PredictionSeries {
    Score {
        output: usize,
        column: usize,
        series: ContinuousSeries,
    },
    Class {
        name: String,
        output: usize,
        source: ClassSource,
        /// Sorted; a class not in the list counts in one extra bin after them.
        classes: Box<[i64]>,
        expected: Box<[f64]>,
        offset: usize,
    },
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

impl ContinuousSeries {
    fn new(name: String, offset: usize, d: &Continuous) -> ContinuousSeries {
        let edges: Box<[f64]> = d.quantiles.clone().into();
        // A value in fine bin b > 0 lies in (edges[b-1], edges[b]]; every PSI edge is one of
        // the fine edges, so its PSI bin is the number of PSI edges <= edges[b-1].
        let psi_bin = (0..=edges.len())
            .map(|b| match b {
                0 => 0,
                b => d.psi.edges.partition_point(|&e| e <= edges[b - 1]),
            })
            .collect();
        ContinuousSeries {
            name,
            offset,
            edges,
            cdf: d.cdf.clone().into(),
            psi_bin,
            psi_expected: d.psi.proportions.clone().into(),
        }
    }

    fn bins(&self) -> usize {
        self.edges.len() + 1
    }

    /// The fine bin of `value`: how many edges lie strictly below it (a binary search).
    #[inline]
    fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|&e| e < value)
    }

    #[inline]
    fn count(&self, counter: &Counter<'_>, value: f64) {
        // A missing value (NaN) belongs to no bin; it is left out of this feature.
        if !value.is_nan() {
            counter.count(self.offset + self.bin(value));
        }
    }

    fn counts<'a>(&self, totals: &'a WindowCounts) -> &'a [u64] {
        totals
            .counts
            .get(self.offset..self.offset + self.bins())
            .unwrap_or(&[])
    }

    fn psi_counts(&self, fine: &[u64]) -> Vec<u64> {
        let mut psi = vec![0; self.psi_expected.len()];
        for (&n, &bin) in fine.iter().zip(self.psi_bin.iter()) {
            if let Some(sum) = psi.get_mut(bin) {
                *sum += n;
            }
        }
        psi
    }

    fn drift(&self, totals: &WindowCounts) -> SeriesDrift {
        let fine = self.counts(totals);
        SeriesDrift {
            name: self.name.clone(),
            rows: fine.iter().sum(),
            psi: psi(&self.psi_expected, &self.psi_counts(fine)),
            ks: ks_at_edges(&self.cdf, fine),
        }
    }

    fn snapshot(&self, totals: &WindowCounts) -> SeriesCounts {
        let fine = self.counts(totals);
        SeriesCounts {
            name: self.name.clone(),
            bins: fine.to_vec(),
            psi_bins: self.psi_counts(fine),
        }
    }
}

/// A float tensor's elements, whichever float type it holds.
enum Floats<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Floats<'_> {
    fn of(data: &TensorData) -> Option<Floats<'_>> {
        match data {
            TensorData::F32(v) => Some(Floats::F32(v)),
            TensorData::F64(v) => Some(Floats::F64(v)),
            _ => None,
        }
    }

    #[inline]
    fn at(&self, i: usize) -> Option<f64> {
        match self {
            Floats::F32(v) => v.get(i).map(|&x| f64::from(x)),
            Floats::F64(v) => v.get(i).copied(),
        }
    }
}

/// Elements per row (everything after the batch axis).
fn row_width(t: &Tensor) -> usize {
    t.shape.iter().skip(1).product()
}

fn rows(t: &Tensor) -> usize {
    t.shape.first().copied().unwrap_or(0)
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
                let (series, bins) = prediction_series(p, signature, offset)?;
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
        let Some(prediction) = &self.prediction else {
            return;
        };
        match prediction {
            PredictionSeries::Score {
                output,
                column,
                series,
            } => {
                let Some(t) = outputs.get(*output) else {
                    return;
                };
                let Some(values) = Floats::of(&t.data) else {
                    return;
                };
                let width = row_width(t);
                let counter = self.window.counter();
                for row in 0..rows(t) {
                    if let Some(v) = values.at(row * width + column) {
                        series.count(&counter, v);
                    }
                }
            }
            PredictionSeries::Class {
                output,
                source,
                classes,
                offset,
                ..
            } => {
                let Some(t) = outputs.get(*output) else {
                    return;
                };
                let counter = self.window.counter();
                let slot =
                    |class: i64| offset + classes.binary_search(&class).unwrap_or(classes.len());
                match source {
                    ClassSource::Argmax => {
                        let width = row_width(t);
                        if let (Some(values), true) = (Floats::of(&t.data), width > 0) {
                            for row in 0..rows(t) {
                                if let Some(class) = argmax(&values, row * width, width) {
                                    counter.count(slot(class as i64));
                                }
                            }
                        }
                    }
                    ClassSource::Label => {
                        for_each_label(&t.data, |class| counter.count(slot(class)))
                    }
                }
            }
        }
    }

    /// PSI and KS of every series over the window now.
    pub fn report(&self) -> DriftReport {
        let totals = self.window.totals();
        DriftReport {
            window_rows: totals.rows,
            window_seconds: self.window.span().as_secs(),
            features: self.features.iter().map(|s| s.drift(&totals)).collect(),
            prediction: self.prediction.as_ref().map(|p| match p {
                PredictionSeries::Score { series, .. } => series.drift(&totals),
                PredictionSeries::Class {
                    name,
                    expected,
                    offset,
                    ..
                } => {
                    let counts = class_counts(&totals, *offset, expected.len());
                    SeriesDrift {
                        name: name.clone(),
                        rows: counts.iter().sum(),
                        psi: psi(expected, counts),
                        ks: None,
                    }
                }
            }),
        }
    }

    /// The raw counts behind [`DriftMonitor::report`].
    pub fn snapshot(&self) -> DriftSnapshot {
        let totals = self.window.totals();
        DriftSnapshot {
            rows: totals.rows,
            features: self.features.iter().map(|s| s.snapshot(&totals)).collect(),
            prediction: self.prediction.as_ref().map(|p| match p {
                PredictionSeries::Score { series, .. } => series.snapshot(&totals),
                PredictionSeries::Class {
                    name,
                    expected,
                    offset,
                    ..
                } => {
                    let counts = class_counts(&totals, *offset, expected.len()).to_vec();
                    SeriesCounts {
                        name: name.clone(),
                        bins: counts.clone(),
                        psi_bins: counts,
                    }
                }
            }),
        }
    }

    /// Feature names, in column order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|s| s.name.as_str())
    }
}

fn class_counts(totals: &WindowCounts, offset: usize, bins: usize) -> &[u64] {
    totals.counts.get(offset..offset + bins).unwrap_or(&[])
}

/// Index of the largest of `width` values starting at `start`; NaNs never win.
fn argmax(values: &Floats<'_>, start: usize, width: usize) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in 0..width {
        let v = values.at(start + i)?;
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Calls `f` with each value of an integer label tensor; other types yield nothing.
fn for_each_label(data: &TensorData, mut f: impl FnMut(i64)) {
    match data {
        TensorData::I64(v) => v.iter().for_each(|&x| f(x)),
        TensorData::I32(v) => v.iter().for_each(|&x| f(i64::from(x))),
        TensorData::I16(v) => v.iter().for_each(|&x| f(i64::from(x))),
        TensorData::I8(v) => v.iter().for_each(|&x| f(i64::from(x))),
        TensorData::U8(v) => v.iter().for_each(|&x| f(i64::from(x))),
        TensorData::U16(v) => v.iter().for_each(|&x| f(i64::from(x))),
        TensorData::U32(v) => v.iter().for_each(|&x| f(i64::from(x))),
        TensorData::U64(v) => v.iter().filter_map(|&x| i64::try_from(x).ok()).for_each(f),
        _ => {}
    }
}

/// The prediction series for `profile` on a model with `signature`, and its bin count.
fn prediction_series(
    profile: &PredictionProfile,
    signature: &ModelSignature,
    offset: usize,
) -> Result<(PredictionSeries, usize), String> {
    let name = profile.output();
    let output = signature
        .outputs
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| format!("the model has no output '{name}'"))?;
    let spec = &signature.outputs[output];
    let float = matches!(spec.datatype, DataType::F32 | DataType::F64);
    let width: Option<i64> = spec
        .shape
        .iter()
        .skip(1)
        .try_fold(1i64, |w, &d| (d >= 0).then_some(w * d));
    match profile {
        PredictionProfile::Score {
            column,
            distribution,
            ..
        } => {
            if !float || width.is_some_and(|w| *column as i64 >= w) {
                return Err(format!(
                    "output '{name}' ({} {:?}) has no float column {column}",
                    spec.datatype, spec.shape
                ));
            }
            let series = ContinuousSeries::new(profile.describe(), offset, distribution);
            let bins = series.bins();
            Ok((
                PredictionSeries::Score {
                    output,
                    column: *column,
                    series,
                },
                bins,
            ))
        }
        PredictionProfile::Class {
            source, classes, ..
        } => {
            let fits = match source {
                ClassSource::Argmax => float,
                ClassSource::Label => !float && spec.datatype != DataType::Bytes,
            };
            if !fits {
                return Err(format!(
                    "output '{name}' is {}; a {source:?} prediction cannot come from it",
                    spec.datatype
                ));
            }
            // Unseen classes share the last bin; the reference has none there.
            let expected: Box<[f64]> = classes.iter().map(|c| c.proportion).chain([0.0]).collect();
            let bins = expected.len();
            Ok((
                PredictionSeries::Class {
                    name: profile.describe(),
                    output,
                    source: *source,
                    classes: classes.iter().map(|c| c.class).collect(),
                    expected,
                    offset,
                },
                bins,
            ))
        }
    }
}

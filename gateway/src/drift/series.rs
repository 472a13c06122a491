//! The binning tables of one tracked series (a feature, or the prediction): how a request's
//! values are counted into the window, and read back as PSI and KS.

use super::monitor::{SeriesCounts, SeriesDrift};
use super::profile::{ClassSource, Continuous, PredictionProfile};
use super::stats::{ks_at_edges, psi};
use super::window::{Counter, WindowCounts};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData};

/// A continuous reference, ready for binning: the fine edges with the reference CDF at each,
/// and which PSI bin each fine bin belongs to.
pub(super) struct ContinuousSeries {
    pub(super) name: String,
    /// Where this series' counters start in the window.
    offset: usize,
    edges: Box<[f64]>,
    cdf: Box<[f64]>,
    psi_bin: Box<[usize]>,
    psi_expected: Box<[f64]>,
}

/// What of the model's output is counted, and where.
pub(super) enum PredictionSeries {
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

impl ContinuousSeries {
    pub(super) fn new(name: String, offset: usize, d: &Continuous) -> ContinuousSeries {
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

    pub(super) fn bins(&self) -> usize {
        self.edges.len() + 1
    }

    /// The fine bin of `value`: how many edges lie strictly below it (a binary search).
    #[inline]
    fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|&e| e < value)
    }

    #[inline]
    pub(super) fn count(&self, counter: &Counter<'_>, value: f64) {
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

    pub(super) fn drift(&self, totals: &WindowCounts) -> SeriesDrift {
        let fine = self.counts(totals);
        SeriesDrift {
            name: self.name.clone(),
            rows: fine.iter().sum(),
            psi: psi(&self.psi_expected, &self.psi_counts(fine)),
            ks: ks_at_edges(&self.cdf, fine),
        }
    }

    pub(super) fn snapshot(&self, totals: &WindowCounts) -> SeriesCounts {
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

pub(super) fn rows(t: &Tensor) -> usize {
    t.shape.first().copied().unwrap_or(0)
}

impl PredictionSeries {
    /// The series for `profile` on a model with `signature`, counted from `offset` on, and
    /// how many bins it takes. Fails when the output it names is missing or of another kind.
    pub(super) fn new(
        profile: &PredictionProfile,
        signature: &ModelSignature,
        offset: usize,
    ) -> Result<(PredictionSeries, usize), String> {
        prediction_series(profile, signature, offset)
    }

    /// Counts the prediction of every row of `outputs` (signature order).
    pub(super) fn observe(&self, counter: &Counter<'_>, outputs: &[Tensor]) {
        match self {
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
                for row in 0..rows(t) {
                    if let Some(v) = values.at(row * width + column) {
                        series.count(counter, v);
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

    pub(super) fn drift(&self, totals: &WindowCounts) -> SeriesDrift {
        match self {
            PredictionSeries::Score { series, .. } => series.drift(totals),
            PredictionSeries::Class {
                name,
                expected,
                offset,
                ..
            } => {
                let counts = class_counts(totals, *offset, expected.len());
                SeriesDrift {
                    name: name.clone(),
                    rows: counts.iter().sum(),
                    psi: psi(expected, counts),
                    ks: None,
                }
            }
        }
    }

    pub(super) fn snapshot(&self, totals: &WindowCounts) -> SeriesCounts {
        match self {
            PredictionSeries::Score { series, .. } => series.snapshot(totals),
            PredictionSeries::Class {
                name,
                expected,
                offset,
                ..
            } => {
                let counts = class_counts(totals, *offset, expected.len()).to_vec();
                SeriesCounts {
                    name: name.clone(),
                    bins: counts.clone(),
                    psi_bins: counts,
                }
            }
        }
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

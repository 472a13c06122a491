//! `profile.json`: a version's reference distributions, written by `sluice profile` from a
//! sample of training data and read when the version loads. The schema is versioned
//! (`"schema": "sluice.profile.v1"`) so other tools may write or read it.
//!
//! Per input feature (a column of the model's `[-1, F]` float input):
//! - `quantiles`: the sample's quantiles at levels `i/K`, `i = 0..=K` (numpy's default linear
//!   interpolation), the fine bin edges KS is evaluated at; `cdf`: the sample's exact CDF at
//!   each of them (the share of rows `<=` it);
//! - `psi`: the 10 quantile bins PSI uses: the deciles as edges (bin `k` is
//!   `(edges[k-1], edges[k]]`, open-ended at both ends) and the sample's share in each bin.
//!   The deciles are always among `quantiles`, which lets the live window count each row
//!   once, into a fine bin, and derive both statistics from those counts.
//!
//! And the same for the model's prediction (see [`PredictionProfile`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "sluice.profile.v1";
/// The profile's file name inside a version folder.
pub const FILE_NAME: &str = "profile.json";
/// Bins PSI uses: the reference's deciles.
pub const PSI_BINS: usize = 10;
/// A column with at most this many distinct integer values keeps them in its profile
/// (`distinct_values`), for the data expectations' allowed-values rule.
pub const MAX_DISTINCT: usize = 32;

/// A version's reference profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Always [`SCHEMA`]; a reader refuses other values.
    pub schema: String,
    pub model: String,
    pub version: u64,
    /// The 2-D float input whose columns are the features.
    pub input: String,
    /// The sample the profile was built from.
    pub sample: SampleInfo,
    /// One entry per column of `input`, in column order.
    pub features: Vec<FeatureProfile>,
    /// The prediction's reference distribution; absent when the model could not be run on the
    /// sample alone (more than one input) or has no output sluice knows how to track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionProfile>,
    /// How right the version was on the sample, from `sluice profile --labels`: the live
    /// accuracy alert's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<OfflineQuality>,
}

/// A version's quality on its labelled profile sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineQuality {
    /// The labels file, for the reader's information.
    pub labels: String,
    pub rows: usize,
    pub accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
}

/// The baseline accuracy in a version folder's `profile.json`, if it has one. Read on its own
/// (not through drift), so that the alert works with drift off; a profile that does not parse
/// has none, and drift reports why.
pub fn baseline_accuracy(version_dir: &std::path::Path) -> Option<f64> {
    #[derive(Deserialize)]
    struct QualityOnly {
        quality: Option<OfflineQuality>,
    }
    let text = std::fs::read(version_dir.join(FILE_NAME)).ok()?;
    let parsed: QualityOnly = serde_json::from_slice(&text).ok()?;
    parsed.quality.map(|q| q.accuracy)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleInfo {
    /// The sample file's name, for the reader's information.
    pub file: String,
    pub rows: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    /// From `model.toml` (`inputs = [{ ..., features = [...] }]`), else `f0`, `f1`, ...
    pub name: String,
    pub distribution: Continuous,
    /// Rows of the sample whose value was NaN (missing); NaNs are left out of `distribution`.
    /// Absent in profiles written before sluice recorded it: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nan_rows: Option<u64>,
    /// The column's distinct values, sorted, when they are at most [`MAX_DISTINCT`] integers
    /// (a categorical or count column); absent otherwise, and in older profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_values: Option<Vec<f64>>,
}

/// A continuous reference distribution: fine quantiles for KS, decile bins for PSI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Continuous {
    /// Quantiles at levels `i/K`, `i = 0..=K`: the minimum, K-1 inner quantiles, the maximum.
    pub quantiles: Vec<f64>,
    /// The reference CDF at each quantile: the share of sample values `<=` it.
    pub cdf: Vec<f64>,
    pub psi: PsiBins,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiBins {
    /// The 9 inner deciles; bin `k` holds values in `(edges[k-1], edges[k]]`.
    pub edges: Vec<f64>,
    /// The sample's share in each of the 10 bins.
    pub proportions: Vec<f64>,
}

/// What sluice tracks of a model's output, chosen from the signature (first match wins):
/// 1. the first float output shaped `[-1]` or `[-1, 1]`: its value (a score or regression);
///    shaped `[-1, 2]`: column 1, a binary classifier's positive-class probability;
///    shaped `[-1, C]` with `C > 2`: the argmax class, a categorical distribution;
/// 2. else the first integer output shaped `[-1]` or `[-1, 1]`: the label's frequencies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PredictionProfile {
    /// One float per row.
    Score {
        output: String,
        /// Which element of the row (1 for a positive-class probability).
        column: usize,
        distribution: Continuous,
    },
    /// One class per row; PSI over the classes (unseen classes share one extra bin), no KS.
    Class {
        output: String,
        source: ClassSource,
        /// Sorted by class.
        classes: Vec<ClassShare>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassSource {
    /// The index of the largest value in the row of a `[-1, C]` float output.
    Argmax,
    /// The value of an integer label output.
    Label,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassShare {
    pub class: i64,
    pub proportion: f64,
}

impl PredictionProfile {
    pub fn output(&self) -> &str {
        match self {
            PredictionProfile::Score { output, .. } | PredictionProfile::Class { output, .. } => {
                output
            }
        }
    }

    /// A short description for humans and the stats endpoint, e.g. `probabilities[:,1]`.
    pub fn describe(&self) -> String {
        match self {
            PredictionProfile::Score { output, column, .. } => format!("{output}[:,{column}]"),
            PredictionProfile::Class {
                output,
                source: ClassSource::Argmax,
                ..
            } => format!("argmax({output})"),
            PredictionProfile::Class { output, .. } => output.clone(),
        }
    }
}

/// A profile that cannot be read, built or used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid profile: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Sample(#[from] super::sample::SampleError),
    #[error("{0}")]
    Model(String),
}

impl Profile {
    /// Reads and validates a profile file.
    pub fn read(path: &Path) -> Result<Profile, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: shown.clone(),
            source,
        })?;
        let invalid = |message: String| ProfileError::Invalid {
            path: shown.clone(),
            message,
        };
        let profile: Profile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let problems = profile.problems();
        if problems.is_empty() {
            Ok(profile)
        } else {
            Err(invalid(problems.join("; ")))
        }
    }

    /// Writes the profile as pretty JSON, through a temporary file and a rename so that a
    /// server polling the repository never reads half a profile.
    pub fn write(&self, path: &Path) -> Result<(), ProfileError> {
        let failed = |source| ProfileError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut text =
            serde_json::to_string_pretty(self).map_err(|e| failed(std::io::Error::other(e)))?;
        text.push('\n');
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// Every inconsistency, each naming where it is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.schema != SCHEMA {
            problems.push(format!("schema is '{}', expected '{SCHEMA}'", self.schema));
        }
        if self.features.is_empty() {
            problems.push("no features".into());
        }
        for feature in &self.features {
            if let Some(values) = &feature.distinct_values
                && (values.is_empty()
                    || values.iter().any(|v| !v.is_finite())
                    || values.windows(2).any(|w| w[0] >= w[1]))
            {
                problems.push(format!(
                    "feature '{}': distinct_values must be finite, sorted and distinct",
                    feature.name
                ));
            }
            problems.extend(
                feature
                    .distribution
                    .problems()
                    .into_iter()
                    .map(|p| format!("feature '{}': {p}", feature.name)),
            );
        }
        match &self.prediction {
            Some(PredictionProfile::Score { distribution, .. }) => problems.extend(
                distribution
                    .problems()
                    .into_iter()
                    .map(|p| format!("prediction: {p}")),
            ),
            Some(PredictionProfile::Class { classes, .. }) => {
                if classes.is_empty() {
                    problems.push("prediction: no classes".into());
                }
                if classes.windows(2).any(|w| w[0].class >= w[1].class) {
                    problems.push("prediction: classes must be sorted and distinct".into());
                }
            }
            None => {}
        }
        problems
    }
}

impl FeatureProfile {
    /// The profile of one column of a sample: its distribution (`fine` quantile bins), how many
    /// of its values were NaN, and its distinct values when they are few integers. `None` when
    /// every value is NaN.
    pub fn from_values(name: String, values: &[f64], fine: usize) -> Option<FeatureProfile> {
        let distribution = Continuous::from_values(values.iter().copied(), fine)?;
        let nan_rows = values.iter().filter(|v| v.is_nan()).count() as u64;
        Some(FeatureProfile {
            name,
            distribution,
            nan_rows: Some(nan_rows),
            distinct_values: few_integers(values),
        })
    }

    /// The smallest and largest non-NaN value of the sample.
    pub fn range(&self) -> (f64, f64) {
        let q = &self.distribution.quantiles;
        (q[0], q[q.len() - 1])
    }
}

/// The sorted distinct non-NaN values when all are integers and at most [`MAX_DISTINCT`].
fn few_integers(values: &[f64]) -> Option<Vec<f64>> {
    let mut distinct: Vec<f64> = Vec::with_capacity(MAX_DISTINCT + 1);
    for &v in values.iter().filter(|v| !v.is_nan()) {
        if v.fract() != 0.0 || !v.is_finite() {
            return None;
        }
        if let Err(at) = distinct.binary_search_by(|d| d.total_cmp(&v)) {
            if distinct.len() == MAX_DISTINCT {
                return None;
            }
            distinct.insert(at, v);
        }
    }
    // -0.0 and 0.0 are one value.
    distinct.dedup_by(|a, b| a == b);
    (!distinct.is_empty()).then_some(distinct)
}

impl Continuous {
    /// The reference distribution of `values` (NaNs are left out) with `fine` quantile bins;
    /// `fine` must be a multiple of [`PSI_BINS`] so that the deciles are among the quantiles.
    /// `None` when no value is left.
    pub fn from_values(values: impl IntoIterator<Item = f64>, fine: usize) -> Option<Continuous> {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() || fine == 0 || !fine.is_multiple_of(PSI_BINS) {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let quantiles: Vec<f64> = (0..=fine)
            .map(|i| quantile(&sorted, i as f64 / fine as f64))
            .collect();
        let cdf = quantiles
            .iter()
            .map(|&q| sorted.partition_point(|&v| v <= q) as f64 / n)
            .collect();
        // The deciles, taken from the quantiles themselves: level (fine/10 * k)/fine is k/10.
        let step = fine / PSI_BINS;
        let edges: Vec<f64> = (1..PSI_BINS).map(|k| quantiles[k * step]).collect();
        let mut counts = [0u64; PSI_BINS];
        for &v in &sorted {
            counts[edges.partition_point(|&e| e < v)] += 1;
        }
        Some(Continuous {
            quantiles,
            cdf,
            psi: PsiBins {
                edges,
                proportions: counts.iter().map(|&c| c as f64 / n).collect(),
            },
        })
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let q = &self.quantiles;
        if q.len() < 2 {
            problems.push("needs at least 2 quantiles".into());
        }
        if q.iter().any(|v| !v.is_finite()) || q.windows(2).any(|w| w[0] > w[1]) {
            problems.push("quantiles must be finite and sorted".into());
        }
        if self.cdf.len() != q.len() {
            problems.push(format!(
                "{} cdf values for {} quantiles",
                self.cdf.len(),
                q.len()
            ));
        }
        if self.cdf.iter().any(|p| !(0.0..=1.0).contains(p))
            || self.cdf.windows(2).any(|w| w[0] > w[1])
        {
            problems.push("cdf must rise from 0 to 1".into());
        }
        if self.psi.edges.len() + 1 != self.psi.proportions.len() {
            problems.push(format!(
                "{} psi edges for {} proportions",
                self.psi.edges.len(),
                self.psi.proportions.len()
            ));
        }
        // The live window counts rows into the fine bins only; a PSI edge that is not one of
        // the quantiles could not be told apart from its neighbours.
        if self.psi.edges.iter().any(|e| !q.contains(e)) {
            problems.push("every psi edge must also be one of the quantiles".into());
        }
        let total: f64 = self.psi.proportions.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            problems.push(format!("psi proportions sum to {total}, not 1"));
        }
        problems
    }
}

/// numpy's default (`method="linear"`) quantile of sorted values, with its interpolation
/// formula, so that profiles agree with numpy to the last bit.
pub fn quantile(sorted: &[f64], level: f64) -> f64 {
    let last = sorted.len() - 1;
    let position = last as f64 * level;
    if position >= last as f64 {
        return sorted[last];
    }
    let below = position.floor().max(0.0);
    let (a, b) = (sorted[below as usize], sorted[below as usize + 1]);
    let t = position - below;
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        // np.quantile([1, 2, 4, 8], [0, .1, .5, .9, 1]) -> [1, 1.3, 3, 6.8, 8]
        let s = [1.0, 2.0, 4.0, 8.0];
        for (level, want) in [(0.0, 1.0), (0.1, 1.3), (0.5, 3.0), (0.9, 6.8), (1.0, 8.0)] {
            assert!((quantile(&s, level) - want).abs() < 1e-12, "{level}");
        }
    }

    #[test]
    fn continuous_reference_of_a_uniform_grid() {
        let d = Continuous::from_values((0..1000).map(f64::from), 200).unwrap();
        assert_eq!(d.quantiles.len(), 201);
        assert_eq!(d.quantiles[0], 0.0);
        assert_eq!(d.quantiles[200], 999.0);
        assert!((d.cdf[100] - 0.5).abs() < 0.002, "{}", d.cdf[100]);
        assert_eq!(d.psi.edges.len(), 9);
        assert!(d.psi.proportions.iter().all(|p| (p - 0.1).abs() < 0.002));
        assert!(d.problems().is_empty(), "{:?}", d.problems());
    }

    #[test]
    fn ties_land_in_one_bin() {
        // 70 % zeros, 30 % ones: every edge below the 0.7 level is 0.
        let values = (0..1000).map(|i| if i < 700 { 0.0 } else { 1.0 });
        let d = Continuous::from_values(values, 100).unwrap();
        assert!(d.problems().is_empty(), "{:?}", d.problems());
        assert_eq!(d.psi.proportions[0], 0.7);
        assert!((d.psi.proportions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(d.cdf[0], 0.7);
    }

    #[test]
    fn a_feature_keeps_its_nans_and_few_integer_values() {
        let values = [2.0, 0.0, f64::NAN, 1.0, 2.0, -0.0];
        let f = FeatureProfile::from_values("plan".into(), &values, 10).unwrap();
        assert_eq!(f.nan_rows, Some(1));
        assert_eq!(f.distinct_values, Some(vec![0.0, 1.0, 2.0]));
        assert_eq!(f.range(), (0.0, 2.0));
        let continuous = FeatureProfile::from_values("x".into(), &[0.5, 1.0], 10).unwrap();
        assert_eq!(continuous.distinct_values, None);
        let many: Vec<f64> = (0..=MAX_DISTINCT as i32).map(f64::from).collect();
        let counts = FeatureProfile::from_values("n".into(), &many, 10).unwrap();
        assert_eq!(counts.distinct_values, None);
        assert_eq!(counts.nan_rows, Some(0));
    }

    #[test]
    fn profiles_without_the_newer_fields_still_read() {
        let d = Continuous::from_values((0..100).map(f64::from), 10).unwrap();
        let mut feature = serde_json::to_value(FeatureProfile {
            name: "f0".into(),
            distribution: d,
            nan_rows: None,
            distinct_values: None,
        })
        .unwrap();
        assert!(feature.get("nan_rows").is_none());
        feature["nan_rows"] = 0.into();
        let back: FeatureProfile = serde_json::from_value(feature).unwrap();
        assert_eq!(back.nan_rows, Some(0));
    }

    #[test]
    fn problems_are_named() {
        let mut d = Continuous::from_values((0..100).map(f64::from), 10).unwrap();
        d.psi.edges[0] = 0.5;
        d.cdf.pop();
        let problems = d.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(Continuous::from_values([f64::NAN], 10).is_none());
        assert!(Continuous::from_values([1.0], 15).is_none());
    }
}

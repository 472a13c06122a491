//! The `[expectations]` table of `model.toml`: what each feature of a model's input must look
//! like, declared per feature or derived from the version's `profile.json`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Data expectations for every version of a model. Off unless the table is present.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectationsConfig {
    /// What a request with a violating value gets: "reject" (400 naming the input, row,
    /// feature and rule; the model does not run) or "flag" (served; counted in
    /// `sluice_expectation_violations_total` and marked in its prediction-log record).
    #[serde(default)]
    pub on_violation: OnViolation,
    /// The input whose columns are the features; default: the profile's input when bounds
    /// are derived from it, else the input `model.toml` names features for, else the first
    /// 2-D FP32/FP64/integer input.
    pub input: Option<String>,
    /// "profile": derive every feature's rules from the version's `profile.json` (training
    /// range widened by `margin`, NaN allowed only when training had NaNs, allowed values for
    /// columns with few distinct integer values). A version without a profile is refused.
    pub derive: Option<Derive>,
    /// Fraction of a feature's training range added below its minimum and above its maximum
    /// when bounds are derived; default 0.1 (a common tolerance for "near the training data").
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// A column whose training sample held at most this many distinct integer values is
    /// treated as categorical when rules are derived: its values are the allowed ones.
    /// Default 10 (flags, small codes, counts); 0 turns the rule off.
    #[serde(default = "default_categorical_values")]
    pub categorical_values: usize,
    /// Per-feature rules, by feature name; each replaces the derived rule it names.
    #[serde(default)]
    pub features: BTreeMap<String, FeatureExpectation>,
}

// `ModelConfig` (which holds this) is compared for equality to tell whether a version must be
// reloaded; validation refuses NaN anywhere in the table, so equality is total here.
impl Eq for ExpectationsConfig {}

/// What one feature must look like; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureExpectation {
    /// The smallest value expected (inclusive); `-inf` removes a derived minimum.
    pub min: Option<f64>,
    /// The largest value expected (inclusive); `inf` removes a derived maximum.
    pub max: Option<f64>,
    /// Whether NaN (a missing value) is acceptable. Default: true when declared here, as
    /// training had it when derived.
    pub allow_nan: Option<bool>,
    /// The only values expected (a categorical column), e.g. `[0, 1, 2]`; `[]` removes a
    /// derived set.
    pub allowed: Option<Vec<f64>>,
}

/// What a violation does to the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// Refuse the request with a 400 before the model runs.
    Reject,
    /// Serve it, count the violation, mark the log record.
    #[default]
    Flag,
}

/// Where derived rules come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derive {
    /// The version's `profile.json`.
    Profile,
}

/// 10 % of the training range on either side.
fn default_margin() -> f64 {
    0.1
}

/// Up to 10 distinct integers reads as a code or a flag rather than a measurement.
fn default_categorical_values() -> usize {
    10
}

impl ExpectationsConfig {
    /// Every problem that can be seen without the model (feature names are checked at load
    /// time, against the input's columns), each with its field path under `expectations`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.margin.is_finite() || self.margin < 0.0 {
            problems.push(format!(
                "expectations.margin: must be a non-negative number, got {}",
                self.margin
            ));
        }
        if self.derive.is_none() && self.features.is_empty() {
            problems.push(
                "expectations: nothing to check; set derive = \"profile\" or add \
                 [expectations.features.<name>] tables"
                    .to_string(),
            );
        }
        for (name, rule) in &self.features {
            let at = format!("expectations.features.{name}");
            if rule.min.is_some_and(f64::is_nan) || rule.max.is_some_and(f64::is_nan) {
                problems.push(format!("{at}: min and max must be numbers, not nan"));
            }
            if let (Some(min), Some(max)) = (rule.min, rule.max)
                && min > max
            {
                problems.push(format!("{at}: min {min} is above max {max}"));
            }
            if let Some(allowed) = &rule.allowed
                && allowed.iter().any(|v| !v.is_finite())
            {
                problems.push(format!("{at}.allowed: values must be finite numbers"));
            }
            if rule.min.is_none()
                && rule.max.is_none()
                && rule.allow_nan.is_none()
                && rule.allowed.is_none()
            {
                problems.push(format!("{at}: empty; set min, max, allow_nan or allowed"));
            }
        }
        problems
    }
}

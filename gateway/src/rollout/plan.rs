//! What a rollout does: the `[rollout]` config section (server-wide defaults), the overrides a
//! request body or a model's `model.toml` may give, and the validated plan the two make.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use sluice_core::units::{human_duration, optional_duration};

/// The `[rollout]` section: how the guard runs, and the defaults of every rollout.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// How often the guard compares canary with primary and acts, e.g. "200ms". Sub-second,
    /// so that a breach is acted on well within a second of being provable.
    #[serde(with = "human_duration")]
    pub tick: Duration,
    /// Canary weights in percent, one per step, increasing (0.01 resolution). The canary is
    /// promoted once the last step passes.
    pub steps: Vec<f64>,
    /// Least time a step lasts before the next; a step also waits for `min_requests`.
    #[serde(with = "human_duration")]
    pub step_duration: Duration,
    /// Requests the canary (and, separately, the primary) must have answered in a step before
    /// the guard judges it either way: below it nothing is promoted or rolled back.
    pub min_requests: u64,
    /// Largest tolerated rise of the canary's server-side error rate over the primary's, as a
    /// fraction (0.01 = one percentage point), judged by a one-sided test at `confidence`.
    pub max_error_rate_increase: f64,
    /// Largest tolerated ratio of the canary's p99 latency to the primary's, judged by a
    /// binomial test at `confidence` on the canary requests slower than that bound.
    pub max_p99_ratio: f64,
    /// Least p99 rise that counts as slower, e.g. "1ms": a canary request is slow only when it
    /// is above both bounds. Keeps scheduler jitter on sub-millisecond models from deciding.
    #[serde(with = "human_duration")]
    pub min_p99_increase: Duration,
    /// Largest tolerated population stability index between canary and primary predictions
    /// (labels and top-score bins), beyond what sampling noise explains at `confidence`.
    pub max_prediction_psi: f64,
    /// Confidence of every test (0.999: a healthy canary is wrongly failed by a given look with
    /// probability at most 0.1%). The guard looks every tick, so keep it high.
    pub confidence: f64,
    /// After promotion, how long the old primary stays the instant rollback target while the
    /// new primary is judged against the numbers the old one had; "0s" turns the watch off.
    #[serde(with = "human_duration")]
    pub watch_period: Duration,
    /// Run the candidate as a shadow before its first canary step; unset: no shadow stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_stage: Option<ShadowStage>,
    /// Outcomes (labels, rewards) each side must have joined in a step before the guard
    /// judges correctness; with fewer, the rollout is judged as without outcomes.
    pub min_outcomes: u64,
    /// Largest tolerated fall of the canary's accuracy below the primary's (0.02 = two
    /// points), judged by a one-sided test at `confidence`.
    pub max_accuracy_decrease: f64,
    /// Largest tolerated fall of the canary's mean reward below the primary's, in the
    /// reward's own units.
    pub max_reward_decrease: f64,
    /// "steps" (the default): promote when the last step passes. "probability": also promote
    /// at once, before the last step, when the posterior probability that the canary is more
    /// accurate (or rewarding) than the primary reaches `min_probability_better`, and roll back
    /// when the probability that it is worse by more than the margin does.
    pub promote_on: PromoteOn,
    pub min_probability_better: f64,
}

/// When a rollout may end in promotion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoteOn {
    #[default]
    Steps,
    Probability,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            tick: Duration::from_millis(200),
            // Flagger's and Argo's usual ladder: a small first exposure, then doubling.
            steps: vec![5.0, 25.0, 50.0, 100.0],
            step_duration: Duration::from_secs(30),
            min_requests: 200,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            min_p99_increase: Duration::from_millis(1),
            // 0.2 is the customary "significant shift" mark for PSI.
            max_prediction_psi: 0.2,
            confidence: 0.999,
            watch_period: Duration::from_secs(60),
            shadow_stage: None,
            min_outcomes: default_min_outcomes(),
            max_accuracy_decrease: default_margin(),
            max_reward_decrease: default_margin(),
            promote_on: PromoteOn::Steps,
            min_probability_better: default_min_probability(),
        }
    }
}

fn default_min_outcomes() -> u64 {
    100
}

fn default_margin() -> f64 {
    0.02
}

fn default_min_probability() -> f64 {
    0.95
}

/// A shadow stage: the candidate sees copies of requests and answers nobody.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowStage {
    /// Least time the stage lasts; it also waits for `min_requests` compared rows. "0s" turns
    /// the stage off (to override a configured default).
    #[serde(with = "human_duration")]
    pub duration: Duration,
    /// Fraction of answered requests copied to the candidate, 0 to 1.
    pub sample_rate: f64,
    /// Least share of rows on which the candidate's label must agree with the primary's.
    pub min_agreement: f64,
}

impl Default for ShadowStage {
    fn default() -> Self {
        ShadowStage {
            duration: Duration::from_secs(30),
            sample_rate: 1.0,
            min_agreement: 0.9,
        }
    }
}

/// A rollout's settings as a request body or a `[rollout]` table in `model.toml` gives them;
/// every field left out takes the `[rollout]` config default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "rollout settings: an object of rollout fields (steps, step_duration, ...)"
)]
pub struct RolloutOverrides {
    /// The version to roll out ("2" or 2). Required in the API; not allowed in `model.toml`,
    /// where the new version folder is the candidate.
    #[serde(default, deserialize_with = "version_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// See [`RolloutConfig::steps`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    /// See [`RolloutConfig::step_duration`].
    #[serde(default, with = "optional_duration")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_duration: Option<Duration>,
    /// See [`RolloutConfig::min_requests`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// See [`RolloutConfig::max_error_rate_increase`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<f64>,
    /// See [`RolloutConfig::max_p99_ratio`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// See [`RolloutConfig::min_p99_increase`].
    #[serde(default, with = "optional_duration")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p99_increase: Option<Duration>,
    /// See [`RolloutConfig::max_prediction_psi`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prediction_psi: Option<f64>,
    /// See [`RolloutConfig::confidence`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// See [`RolloutConfig::watch_period`].
    #[serde(default, with = "optional_duration")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_period: Option<Duration>,
    /// See [`RolloutConfig::shadow_stage`]; replaces the configured stage as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_stage: Option<ShadowStage>,
    /// See [`RolloutConfig::min_outcomes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_outcomes: Option<u64>,
    /// See [`RolloutConfig::max_accuracy_decrease`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accuracy_decrease: Option<f64>,
    /// See [`RolloutConfig::max_reward_decrease`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reward_decrease: Option<f64>,
    /// See [`RolloutConfig::promote_on`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_on: Option<PromoteOn>,
    /// See [`RolloutConfig::min_probability_better`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_probability_better: Option<f64>,
}

// `ModelConfig` (which holds these) is compared for equality to tell whether a version must be
// reloaded; the floats come from validated TOML, never NaN, so equality is total here.
impl Eq for RolloutOverrides {}

fn version_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a version: a non-negative integer or a string of one"
    )]
    enum Raw {
        Number(u64),
        Text(String),
    }
    Ok(Some(match Raw::deserialize(d)? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(text) => text,
    }))
}

/// A checked rollout plan: the defaults with the overrides applied. The control topic carries it
/// whole, so every replica judges a rollout by the same plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    pub steps: Vec<f64>,
    #[serde(with = "human_duration")]
    pub step_duration: Duration,
    pub min_requests: u64,
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
    #[serde(with = "human_duration")]
    pub min_p99_increase: Duration,
    pub max_prediction_psi: f64,
    pub confidence: f64,
    #[serde(with = "human_duration")]
    pub watch_period: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_stage: Option<ShadowStage>,
    // Defaults, so that plans written before outcomes existed still read.
    #[serde(default = "default_min_outcomes")]
    pub min_outcomes: u64,
    #[serde(default = "default_margin")]
    pub max_accuracy_decrease: f64,
    #[serde(default = "default_margin")]
    pub max_reward_decrease: f64,
    #[serde(default)]
    pub promote_on: PromoteOn,
    #[serde(default = "default_min_probability")]
    pub min_probability_better: f64,
}

impl RolloutConfig {
    /// The plan these defaults and `overrides` make, or every problem, each naming its field.
    pub fn plan(&self, overrides: &RolloutOverrides) -> Result<RolloutPlan, Vec<String>> {
        let o = overrides;
        let plan = RolloutPlan {
            steps: o.steps.clone().unwrap_or_else(|| self.steps.clone()),
            step_duration: o.step_duration.unwrap_or(self.step_duration),
            min_requests: o.min_requests.unwrap_or(self.min_requests),
            max_error_rate_increase: o
                .max_error_rate_increase
                .unwrap_or(self.max_error_rate_increase),
            max_p99_ratio: o.max_p99_ratio.unwrap_or(self.max_p99_ratio),
            min_p99_increase: o.min_p99_increase.unwrap_or(self.min_p99_increase),
            max_prediction_psi: o.max_prediction_psi.unwrap_or(self.max_prediction_psi),
            confidence: o.confidence.unwrap_or(self.confidence),
            watch_period: o.watch_period.unwrap_or(self.watch_period),
            shadow_stage: o
                .shadow_stage
                .clone()
                .or_else(|| self.shadow_stage.clone())
                .filter(|s| !s.duration.is_zero()),
            min_outcomes: o.min_outcomes.unwrap_or(self.min_outcomes),
            max_accuracy_decrease: o
                .max_accuracy_decrease
                .unwrap_or(self.max_accuracy_decrease),
            max_reward_decrease: o.max_reward_decrease.unwrap_or(self.max_reward_decrease),
            promote_on: o.promote_on.unwrap_or(self.promote_on),
            min_probability_better: o
                .min_probability_better
                .unwrap_or(self.min_probability_better),
        };
        let problems = plan.problems();
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(problems)
        }
    }

    /// Every problem with the section, each with its field path under `rollout.`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .plan(&RolloutOverrides::default())
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| format!("rollout.{p}"))
            .collect();
        if self.tick < Duration::from_millis(10) || self.tick > Duration::from_secs(10) {
            problems.push("rollout.tick must be between 10ms and 10s".into());
        }
        problems
    }
}

impl RolloutPlan {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        check(
            !self.steps.is_empty(),
            "steps: at least one step is needed".into(),
        );
        for (i, &w) in self.steps.iter().enumerate() {
            check(
                w > 0.0 && w <= 100.0,
                format!("steps[{i}]: {w} is not a percentage above 0 and at most 100"),
            );
            if i > 0 {
                let before = self.steps[i - 1];
                check(
                    w > before,
                    format!("steps[{i}]: {w} does not increase on {before}"),
                );
            }
        }
        check(
            !self.step_duration.is_zero(),
            "step_duration must be greater than 0".into(),
        );
        check(
            self.min_requests >= 1,
            "min_requests must be at least 1".into(),
        );
        let e = self.max_error_rate_increase;
        check(
            (0.0..=1.0).contains(&e),
            format!("max_error_rate_increase: {e} is not a fraction from 0 to 1"),
        );
        let r = self.max_p99_ratio;
        check(
            r >= 1.0 && r.is_finite(),
            format!("max_p99_ratio: {r} must be at least 1"),
        );
        let psi = self.max_prediction_psi;
        check(
            psi > 0.0 && psi.is_finite(),
            format!("max_prediction_psi: {psi} must be greater than 0"),
        );
        let c = self.confidence;
        check(
            (0.5..1.0).contains(&c),
            format!("confidence: {c} must be at least 0.5 and below 1"),
        );
        check(
            self.min_outcomes >= 1,
            "min_outcomes must be at least 1".into(),
        );
        let a = self.max_accuracy_decrease;
        check(
            (0.0..=1.0).contains(&a),
            format!("max_accuracy_decrease: {a} is not a fraction from 0 to 1"),
        );
        let r = self.max_reward_decrease;
        check(
            r >= 0.0 && r.is_finite(),
            format!("max_reward_decrease: {r} must be 0 or more"),
        );
        let p = self.min_probability_better;
        check(
            (0.5..1.0).contains(&p),
            format!("min_probability_better: {p} must be at least 0.5 and below 1"),
        );
        if let Some(stage) = &self.shadow_stage {
            let rate = stage.sample_rate;
            check(
                rate > 0.0 && rate <= 1.0,
                format!("shadow_stage.sample_rate: {rate} is not a fraction above 0 and at most 1"),
            );
            let a = stage.min_agreement;
            check(
                (0.0..=1.0).contains(&a),
                format!("shadow_stage.min_agreement: {a} is not a fraction from 0 to 1"),
            );
        }
        problems
    }

    /// The canary weight of step `index`, in percent.
    pub fn weight(&self, index: usize) -> f64 {
        self.steps.get(index).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_fill_from_defaults_and_every_problem_is_named() {
        let defaults = RolloutConfig::default();
        let body: RolloutOverrides =
            serde_json::from_str(r#"{"version": 2, "steps": [10, 100], "step_duration": "1s"}"#)
                .unwrap();
        assert_eq!(body.version.as_deref(), Some("2"));
        let plan = defaults.plan(&body).unwrap();
        assert_eq!(plan.steps, vec![10.0, 100.0]);
        assert_eq!(plan.step_duration, Duration::from_secs(1));
        assert_eq!(plan.min_requests, 200);
        let bad: RolloutOverrides = serde_json::from_str(
            r#"{"steps": [50, 20, 120], "confidence": 1.0, "shadow_stage": {"sample_rate": 0}}"#,
        )
        .unwrap();
        let problems = defaults.plan(&bad).unwrap_err().join("; ");
        for want in [
            "steps[1]: 20 does not increase",
            "steps[2]: 120 is not a percentage",
            "confidence: 1",
            "shadow_stage.sample_rate: 0",
        ] {
            assert!(problems.contains(want), "{want} missing from {problems}");
        }
        let unknown = serde_json::from_str::<RolloutOverrides>(r#"{"stpes": [1]}"#).unwrap_err();
        assert!(unknown.to_string().contains("stpes"), "{unknown}");
    }

    #[test]
    fn the_documented_config_shows_the_defaults() {
        let text = include_str!("../../../config/sluice.toml");
        let config: crate::config::Config = toml::from_str(text).unwrap();
        assert_eq!(config.rollout, RolloutConfig::default());
    }

    #[test]
    fn a_zero_shadow_stage_turns_a_configured_one_off() {
        let defaults = RolloutConfig {
            shadow_stage: Some(ShadowStage::default()),
            ..RolloutConfig::default()
        };
        assert!(
            defaults
                .plan(&RolloutOverrides::default())
                .unwrap()
                .shadow_stage
                .is_some()
        );
        let off: RolloutOverrides =
            serde_json::from_str(r#"{"shadow_stage": {"duration": "0s"}}"#).unwrap();
        assert_eq!(defaults.plan(&off).unwrap().shadow_stage, None);
    }
}

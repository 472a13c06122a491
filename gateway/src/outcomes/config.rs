//! `[outcomes]`: the join of ground-truth outcomes with recent predictions.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sluice_core::units::human_duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// Keep recent predictions for outcomes to join (on by default: a few hundred bytes per
    /// prediction, bounded by `max_predictions`).
    pub enabled: bool,
    /// Predictions kept for the join; beyond it the oldest leave first (counted in
    /// `sluice_outcome_index_evictions_total{reason="capacity"}`).
    pub max_predictions: usize,
    /// How long a prediction waits for its outcome.
    #[serde(with = "human_duration")]
    pub max_age: Duration,
    /// Records one `POST .../outcomes` may carry.
    pub max_batch: usize,
    /// Bearer token for the outcomes endpoint, so that applications need not hold the admin
    /// token. `SLUICE_OUTCOMES_TOKEN` overrides it; `token_file` is read when neither is set.
    /// With none, outcomes are accepted from loopback clients only.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The live-accuracy alert: raised when a version's accuracy over `alert_window` falls
    /// more than `baseline_margin` (absolute) below the accuracy `sluice profile --labels`
    /// stored for it, once `alert_min_outcomes` labels are in the window.
    pub baseline_margin: f64,
    pub alert_min_outcomes: u64,
    #[serde(with = "human_duration")]
    pub alert_window: Duration,
    /// Outcomes also read from a Kafka topic (`sluice.outcome.v1` records); off unless a
    /// topic is set.
    pub kafka: OutcomesKafkaConfig,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        OutcomesConfig {
            enabled: true,
            max_predictions: 100_000,
            max_age: Duration::from_secs(3600),
            max_batch: 10_000,
            token: None,
            token_file: None,
            baseline_margin: 0.02,
            alert_min_outcomes: 100,
            alert_window: Duration::from_secs(300),
            kafka: OutcomesKafkaConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesKafkaConfig {
    /// The topic to read; empty (the default) reads none.
    pub topic: String,
    /// Bootstrap brokers; empty uses `prediction_log.kafka.brokers`.
    pub brokers: String,
    /// Further librdkafka properties (e.g. `security.protocol`), for the reader and for the
    /// producer that forwards outcomes this replica did not serve.
    pub consumer: std::collections::BTreeMap<String, String>,
}

impl OutcomesConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.enabled && self.max_predictions == 0 {
            problems.push("outcomes.max_predictions must be at least 1".into());
        }
        if self.max_age.is_zero() {
            problems.push("outcomes.max_age must be above zero".into());
        }
        if self.max_batch == 0 {
            problems.push("outcomes.max_batch must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.baseline_margin) {
            problems.push("outcomes.baseline_margin must be within 0..1".into());
        }
        if self.alert_window > Duration::from_secs(300)
            || self.alert_window < Duration::from_secs(10)
        {
            problems.push(
                "outcomes.alert_window must be between 10s and 5m (the quality windows' span)"
                    .into(),
            );
        }
        problems
    }
}

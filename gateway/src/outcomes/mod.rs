//! Ground-truth outcomes: the labels, target values and rewards that arrive after an answer,
//! joined with the prediction they judge.
//!
//! The request path enters each prediction in the [`index`] under its request id (two short
//! shard locks: one when the run starts, one when it answers). Outcomes come in through
//! `POST /v2/models/{m}/outcomes` or a Kafka topic ([`kafka`]); each is joined with its
//! prediction, scored into the version's quality window (what the guard compares and the stats
//! endpoint shows) and written to the prediction log as a `sluice.joined.v1` record, next to
//! the prediction it joins, under the same key.

pub mod config;
pub mod index;
pub mod kafka;
pub mod record;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

pub use config::OutcomesConfig;
use index::{Join, Joined, PredictionIndex, Served, Ticket};
use record::OutcomeRecord;

use crate::predlog::PredictionLog;
use crate::repository::LoadedVersion;
use crate::telemetry::metrics;
use crate::telemetry::quality::{Predicted, Truth};
use sluice_core::Variant;
use sluice_core::tensor::Tensor;

pub const JOINED_SCHEMA: &str = "sluice.joined.v1";

/// How one batch of outcomes fared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinCounts {
    /// Joined with their prediction now.
    pub matched: u64,
    /// No prediction with that id for this model: never served here, failed, or evicted.
    pub unknown: u64,
    /// The row already had its outcome (or the batch named it twice).
    pub duplicate: u64,
    /// Their request was still running: held, and joined the moment it answers.
    pub late: u64,
    /// The kind does not fit the prediction (a `value` for a classifier's label).
    pub mismatched: u64,
    /// Of the unknown ones, how many were passed on to the outcomes topic, for the replica
    /// that served them to join (only with `outcomes.kafka.topic` set).
    pub forwarded: u64,
}

/// Where outcomes came in, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Http,
    Kafka,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Kafka => "kafka",
        }
    }
}

pub struct Outcomes {
    config: OutcomesConfig,
    index: PredictionIndex,
    log: PredictionLog,
    /// Where outcomes this replica cannot join go, when an outcomes topic is configured.
    forwarder: std::sync::OnceLock<kafka::Forwarder>,
    /// This process, in the records it forwards.
    origin: String,
}

impl Outcomes {
    pub fn new(config: OutcomesConfig, log: PredictionLog) -> Outcomes {
        let index = PredictionIndex::new(config.max_predictions, config.max_age);
        Outcomes {
            config,
            index,
            log,
            forwarder: std::sync::OnceLock::new(),
            origin: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Passes outcomes posted here that this replica did not serve on to the outcomes topic,
    /// where the replica that served them joins them: in a fleet behind a load balancer, an
    /// outcome rarely reaches the replica that answered.
    pub fn forward_unknown(&self, forwarder: kafka::Forwarder) {
        let _ = self.forwarder.set(forwarder);
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub fn config(&self) -> &OutcomesConfig {
        &self.config
    }

    /// Enters a request about to run on `target` as `variant`; `None` when the join is off,
    /// or for shadow runs (their answers reach no client, so no outcome judges them).
    pub fn begin(&self, id: &str, target: &LoadedVersion, variant: Variant) -> Option<Ticket> {
        if !self.config.enabled || variant == Variant::Shadow {
            return None;
        }
        Some(self.index.begin(
            id,
            Served {
                quality: Arc::clone(&target.quality),
                variant,
                at: SystemTime::now(),
            },
        ))
    }

    /// The run ended: its answer (every output, signature order) or its failure.
    pub fn finish(&self, ticket: Ticket, outputs: Option<&[Tensor]>, rows: usize) {
        match outputs {
            Some(outputs) => {
                let joined = self
                    .index
                    .answer(ticket, Predicted::from_outputs(outputs, rows));
                for j in joined {
                    self.joined(&j);
                }
            }
            None => self.index.fail(ticket),
        }
    }

    /// Joins a checked batch for `model`.
    pub fn apply(&self, model: &str, records: &[OutcomeRecord], source: Source) -> JoinCounts {
        let mut counts = JoinCounts::default();
        for (i, r) in records.iter().enumerate() {
            // The same row named twice in one batch: the first one counts.
            let repeated = records[..i]
                .iter()
                .any(|o| o.id == r.id && o.outcome.row == r.outcome.row);
            if repeated {
                counts.duplicate += 1;
                continue;
            }
            match self.index.join(model, &r.id, r.outcome) {
                Join::Matched(j) => {
                    counts.matched += 1;
                    self.joined(&j);
                }
                Join::Late => counts.late += 1,
                Join::Duplicate => counts.duplicate += 1,
                Join::Unknown => {
                    counts.unknown += 1;
                    let forwarder = self.forwarder.get().filter(|_| source == Source::Http);
                    if forwarder.is_some_and(|f| f.send(model, r, &self.origin)) {
                        counts.forwarded += 1;
                    }
                }
                Join::Mismatched => counts.mismatched += 1,
            }
        }
        metrics::record_outcomes(model, source.as_str(), &counts.by_result());
        counts
    }

    /// One joined outcome: its metrics and its record.
    fn joined(&self, j: &Joined) {
        metrics::record_joined_outcome(
            &j.model,
            j.version,
            j.variant,
            truth_kind(j.truth),
            j.scored.correct,
        );
        if self.log.enabled() {
            self.log
                .prediction(j.id.to_string(), joined_record(j, SystemTime::now()));
        }
    }

    /// Ages out old predictions and publishes the index's size (the quality controller calls
    /// it every few seconds).
    pub fn upkeep(&self) {
        self.index.sweep();
        let evictions = self.index.evictions();
        metrics::record_outcome_index(self.index.len(), evictions.capacity, evictions.age);
    }

    pub fn index(&self) -> &PredictionIndex {
        &self.index
    }
}

impl JoinCounts {
    fn by_result(&self) -> [(&'static str, u64); 6] {
        [
            ("matched", self.matched),
            ("unknown", self.unknown),
            ("duplicate", self.duplicate),
            ("late", self.late),
            ("mismatched", self.mismatched),
            ("forwarded", self.forwarded),
        ]
    }
}

fn truth_kind(truth: Truth) -> &'static str {
    match truth {
        Truth::Label(_) => "label",
        Truth::Value(_) => "value",
        Truth::Reward(_) => "reward",
    }
}

#[derive(Serialize)]
struct JoinedPrediction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
}

#[derive(Serialize)]
struct JoinedRecord<'a> {
    schema: &'static str,
    timestamp: String,
    request_id: &'a str,
    model: &'a str,
    version: u64,
    variant: Variant,
    /// When the prediction was answered.
    predicted_at: String,
    row: usize,
    prediction: JoinedPrediction<'a>,
    outcome: Truth,
    #[serde(flatten)]
    scored: crate::telemetry::quality::Scored,
    late: bool,
}

/// The `sluice.joined.v1` record: the prediction, its outcome and how it scored.
fn joined_record(j: &Joined, now: SystemTime) -> Vec<u8> {
    let record = JoinedRecord {
        schema: JOINED_SCHEMA,
        timestamp: humantime::format_rfc3339_micros(now).to_string(),
        request_id: &j.id,
        model: &j.model,
        version: j.version,
        variant: j.variant,
        predicted_at: humantime::format_rfc3339_micros(j.served_at).to_string(),
        row: j.row,
        prediction: JoinedPrediction {
            label: j.label,
            probabilities: j.probabilities.as_deref(),
            value: j.value,
        },
        outcome: j.truth,
        scored: j.scored,
        late: j.late,
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::quality::Scored;
    use std::time::Duration;

    #[test]
    fn a_joined_record_has_the_documented_fields() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let j = Joined {
            id: "r-1".into(),
            model: "churn".into(),
            version: 2,
            variant: Variant::Canary,
            served_at: at,
            row: 0,
            label: Some(1),
            probabilities: Some(vec![0.25, 0.75]),
            value: None,
            truth: Truth::Label(0),
            scored: Scored {
                correct: Some(false),
                log_loss: Some(0.25),
                brier: Some(0.5625),
                error: None,
            },
            late: false,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&joined_record(&j, at + Duration::from_secs(5))).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "schema": "sluice.joined.v1",
                "timestamp": "2023-11-14T22:13:25.000000Z",
                "request_id": "r-1",
                "model": "churn",
                "version": 2,
                "variant": "canary",
                "predicted_at": "2023-11-14T22:13:20.000000Z",
                "row": 0,
                "prediction": {"label": 1, "probabilities": [0.25, 0.75]},
                "outcome": {"label": 0},
                "correct": false,
                "log_loss": 0.25,
                "brier": 0.5625,
                "late": false,
            })
        );
    }
}

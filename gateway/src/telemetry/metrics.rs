//! Prometheus metrics. Every metric is described once here, with its unit; the request path
//! reports through [`VersionMetrics::record`] only, so names and labels live in one file.
//! Labels come from bounded sets: model and version names from the repository, the protocol,
//! and the error kind.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Histogram, Label, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::telemetry::compare::Comparison;
use sluice_core::error::ErrorKind;
use sluice_core::{Protocol, Variant};

pub const REQUESTS: &str = "sluice_requests_total";
pub const REQUEST_DURATION: &str = "sluice_request_duration_seconds";
pub const QUEUE_DURATION: &str = "sluice_queue_duration_seconds";
pub const INFERENCE_DURATION: &str = "sluice_inference_duration_seconds";
pub const BATCH_ROWS: &str = "sluice_request_rows";
pub const STACKED_ROWS: &str = "sluice_batch_rows";
pub const LOADED_VERSIONS: &str = "sluice_model_versions_loaded";
pub const ALIVE_VERSIONS: &str = "sluice_model_versions_alive";
pub const CANARY_WEIGHT: &str = "sluice_canary_weight_percent";
pub const SHADOW_SAMPLE_RATE: &str = "sluice_shadow_sample_rate";
pub const SHADOW_DROPPED: &str = "sluice_shadow_dropped_total";
pub const SHADOW_ROWS: &str = "sluice_shadow_label_rows_total";
pub const SHADOW_AGREEING_ROWS: &str = "sluice_shadow_label_rows_agreeing_total";
pub const SHADOW_MAX_ABS_DIFF: &str = "sluice_shadow_max_abs_diff";
pub const PREDLOG_BACKLOG_RECORDS: &str = "sluice_predlog_backlog_records";
pub const PREDLOG_BACKLOG_BYTES: &str = "sluice_predlog_backlog_bytes";
pub const PREDLOG_DELIVERED: &str = "sluice_predlog_delivered_total";
pub const PREDLOG_DROPPED: &str = "sluice_predlog_dropped_total";
pub const PREDLOG_FAILED: &str = "sluice_predlog_failed_total";
pub const LIFECYCLE_EVENTS: &str = "sluice_lifecycle_events_total";
pub const ROLLOUT_WEIGHT: &str = "sluice_rollout_canary_weight_percent";
pub const ROLLOUT_STATE: &str = "sluice_rollout_state";
pub const ROLLOUT_DECISIONS: &str = "sluice_rollout_decisions_total";
pub const DRIFT_PSI: &str = "sluice_drift_psi";
pub const DRIFT_KS: &str = "sluice_drift_ks";
pub const PREDICTION_DRIFT_PSI: &str = "sluice_prediction_drift_psi";
pub const PREDICTION_DRIFT_KS: &str = "sluice_prediction_drift_ks";
pub const DRIFT_WINDOW_ROWS: &str = "sluice_drift_window_rows";
pub const EXPECTATION_VIOLATIONS: &str = "sluice_expectation_violations_total";
pub const FLEET_RECORDS: &str = "sluice_fleet_records_total";
pub const CONNECTIONS_OPEN: &str = "sluice_connections_open";
pub const CONNECTIONS_CLOSED: &str = "sluice_connections_closed_total";
pub const SOURCE_UP: &str = "sluice_source_up";
pub const SOURCE_ERRORS: &str = "sluice_source_errors_total";
pub const SOURCE_REFUSED: &str = "sluice_source_refused_versions_total";

/// Latency buckets from 50 us to 10 s: small models answer in tens of microseconds, and the
/// tail under overload reaches seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
const DIFF_BUCKETS: &[f64] = &[
    1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const ROW_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (tests start several servers in one process) and
/// returns the handle that renders the exposition text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), ROW_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(STACKED_ROWS.into()), ROW_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(SHADOW_MAX_ABS_DIFF.into()),
                        DIFF_BUCKETS,
                    )
                });
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => handle,
                Err(error) => {
                    // Another recorder is installed (an embedding application's): keep serving,
                    // with a private recorder whose output stays empty.
                    tracing::warn!(%error, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample until it is drained, and only a scrape or an
/// upkeep drains it: with no Prometheus scraping, memory would grow with every request. One
/// thread (not a task: the recorder outlives any runtime) drains it on a clock.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("sluice-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "metrics upkeep thread not started; histograms drain on scrape only");
    }
}

fn describe() {
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Inference requests by model, version, variant, protocol and outcome (ok or the error kind)"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Inference time from decoded request to result, queueing included"
    );
    describe_histogram!(
        QUEUE_DURATION,
        Unit::Seconds,
        "Time a request waited for a model worker"
    );
    describe_histogram!(
        INFERENCE_DURATION,
        Unit::Seconds,
        "Time the model itself ran"
    );
    describe_histogram!(BATCH_ROWS, Unit::Count, "Rows per inference request");
    describe_histogram!(
        STACKED_ROWS,
        Unit::Count,
        "Rows per stacked model run, for requests that dynamic batching stacked"
    );
    describe_gauge!(LOADED_VERSIONS, Unit::Count, "Versions loaded per model");
    describe_gauge!(
        CANARY_WEIGHT,
        Unit::Percent,
        "Share of unversioned requests sent to the canary"
    );
    describe_gauge!(
        SHADOW_SAMPLE_RATE,
        Unit::Count,
        "Fraction of answered requests copied to the shadow"
    );
    describe_counter!(
        SHADOW_DROPPED,
        Unit::Count,
        "Shadow copies dropped because the shadow queue was full"
    );
    describe_counter!(
        SHADOW_ROWS,
        Unit::Count,
        "Label rows compared between shadow and primary"
    );
    describe_counter!(
        SHADOW_AGREEING_ROWS,
        Unit::Count,
        "Label rows on which shadow and primary agreed"
    );
    describe_histogram!(
        SHADOW_MAX_ABS_DIFF,
        Unit::Count,
        "Largest absolute difference between shadow and primary float outputs, per request"
    );
    describe_gauge!(
        PREDLOG_BACKLOG_RECORDS,
        Unit::Count,
        "Prediction-log records waiting inside sluice for the sink"
    );
    describe_gauge!(
        PREDLOG_BACKLOG_BYTES,
        Unit::Bytes,
        "Memory held by prediction-log records waiting for the sink"
    );
    describe_counter!(
        PREDLOG_DELIVERED,
        Unit::Count,
        "Prediction-log records the sink acknowledged (Kafka) or wrote (file), by stream"
    );
    describe_counter!(
        PREDLOG_DROPPED,
        Unit::Count,
        "Prediction-log records dropped by sluice, by stream and reason (backlog_full, shutdown, closed)"
    );
    describe_counter!(
        PREDLOG_FAILED,
        Unit::Count,
        "Prediction-log records the sink refused or could not write, by stream"
    );
    describe_counter!(
        LIFECYCLE_EVENTS,
        Unit::Count,
        "Lifecycle events (load, unload, swap, traffic, rollout steps, rollbacks) by model and kind"
    );
    describe_gauge!(
        ROLLOUT_WEIGHT,
        Unit::Percent,
        "Share of unversioned requests a rollout's candidate answers: the step's weight, 100 once \
         promoted, 0 after a rollback or abort"
    );
    describe_gauge!(
        ROLLOUT_STATE,
        Unit::Count,
        "1 for the state a model's latest rollout is in (progressing, paused, promoted, \
         rolled_back, aborted), 0 for the others"
    );
    describe_counter!(
        ROLLOUT_DECISIONS,
        Unit::Count,
        "Rollout decisions by model and decision (step, promote, rollback, abort)"
    );
    describe_counter!(
        FLEET_RECORDS,
        Unit::Count,
        "Control-topic records read, by outcome: applied, duplicate (the state in force \
         already), stale (lost a race with another change), failed (could not be applied \
         here), invalid (not a sluice.control.v1 record)"
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        Unit::Count,
        "Open client connections per listener (http, grpc, metrics)"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Client connections closed per listener, by reason: client (closed by the client or \
         ended normally), idle, header_timeout, body_timeout, over_limit (refused at once: \
         server.connections.max_connections were open), error, shutdown"
    );
    describe_gauge!(
        DRIFT_PSI,
        "Population stability index of an input feature over the drift window against the \
         version's profile (10 reference decile bins); NaN while the window is empty"
    );
    describe_gauge!(
        DRIFT_KS,
        "Kolmogorov-Smirnov statistic of an input feature over the drift window against the \
         version's profile, evaluated at the profile's fine quantile edges"
    );
    describe_gauge!(
        PREDICTION_DRIFT_PSI,
        "Population stability index of the model's prediction over the drift window"
    );
    describe_gauge!(
        PREDICTION_DRIFT_KS,
        "Kolmogorov-Smirnov statistic of the model's prediction over the drift window \
         (NaN for class predictions)"
    );
    describe_gauge!(
        DRIFT_WINDOW_ROWS,
        Unit::Count,
        "Input rows in the drift window"
    );
    describe_counter!(
        EXPECTATION_VIOLATIONS,
        Unit::Count,
        "Input values that broke a model's data expectations, by model, version, feature and \
         rule (min, max, nan, allowed); with on_violation = \"reject\", the one value each \
         refused request was refused for"
    );
    describe_gauge!(
        ALIVE_VERSIONS,
        Unit::Count,
        "Model versions in memory (loaded, or swapped out with requests still in flight)"
    );
    describe_sources();
    describe_quality();
}

/// The model sources' metrics (object storage, registries): labelled by the source's name
/// from the config.
fn describe_sources() {
    describe_gauge!(
        SOURCE_UP,
        "1 when the model source's last check got an answer, 0 while it fails (serving goes \
         on with what is loaded)"
    );
    describe_counter!(
        SOURCE_ERRORS,
        Unit::Count,
        "Failed checks or downloads of a model source (unreachable, denied, timed out)"
    );
    describe_counter!(
        SOURCE_REFUSED,
        Unit::Count,
        "Versions a model source refused (corrupt, not a model, over the cache bound)"
    );
}

/// A model source's check: up or failed.
pub fn record_source_check(source: &str, ok: bool) {
    gauge!(SOURCE_UP, "source" => source.to_string()).set(if ok { 1.0 } else { 0.0 });
    if !ok {
        counter!(SOURCE_ERRORS, "source" => source.to_string()).increment(1);
    }
}

pub fn record_source_refusal(source: &str) {
    counter!(SOURCE_REFUSED, "source" => source.to_string()).increment(1);
}

/// One finished inference on a resolved version.
pub struct InferenceEvent {
    pub variant: Variant,
    pub protocol: Protocol,
    pub outcome: Result<(), ErrorKind>,
    pub total: Duration,
    pub queue: Option<Duration>,
    pub compute: Option<Duration>,
    pub rows: usize,
    /// Rows of the stacked run the request joined, when dynamic batching stacked it.
    pub batch_rows: Option<usize>,
}

// Every `Variant` and every `Protocol` indexes `VersionMetrics::served`.
const VARIANTS: usize = Variant::Shadow as usize + 1;
const PROTOCOLS: usize = Protocol::Grpc as usize + 1;

/// One loaded version's request metrics. Each series is registered on its first use (so a
/// version exports only the variants and protocols it served) and then recorded through its
/// handle: looking a series up by its labels costs a registry search and five label strings,
/// more than the recording itself.
pub struct VersionMetrics {
    model: String,
    version: String,
    /// Successful requests and latency, per variant and protocol.
    served: [[OnceLock<ServedSeries>; PROTOCOLS]; VARIANTS],
    per_version: OnceLock<VersionSeries>,
    /// Only versions that batch export stacked sizes.
    stacked_rows: OnceLock<Histogram>,
}

struct ServedSeries {
    ok: Counter,
    duration: Histogram,
}

struct VersionSeries {
    queue: Histogram,
    inference: Histogram,
    request_rows: Histogram,
}

impl VersionMetrics {
    pub fn new(model: &str, version: u64) -> VersionMetrics {
        VersionMetrics {
            model: model.to_string(),
            version: version.to_string(),
            served: Default::default(),
            per_version: OnceLock::new(),
            stacked_rows: OnceLock::new(),
        }
    }

    fn served(&self, variant: Variant, protocol: Protocol) -> &ServedSeries {
        self.served[variant as usize][protocol as usize].get_or_init(|| {
            let labels = self.labels(variant, protocol);
            ServedSeries {
                duration: histogram!(REQUEST_DURATION, labels.iter()),
                ok: counter!(REQUESTS, with_outcome(labels, "ok")),
            }
        })
    }

    fn per_version(&self) -> &VersionSeries {
        self.per_version.get_or_init(|| {
            let labels = [
                Label::new("model", self.model.clone()),
                Label::new("version", self.version.clone()),
            ];
            VersionSeries {
                queue: histogram!(QUEUE_DURATION, labels.iter()),
                inference: histogram!(INFERENCE_DURATION, labels.iter()),
                request_rows: histogram!(BATCH_ROWS, labels.iter()),
            }
        })
    }

    fn labels(&self, variant: Variant, protocol: Protocol) -> Vec<Label> {
        vec![
            Label::new("model", self.model.clone()),
            Label::new("version", self.version.clone()),
            Label::from_static_parts("variant", variant.as_str()),
            Label::from_static_parts("protocol", protocol.as_str()),
        ]
    }

    pub fn record(&self, event: &InferenceEvent) {
        let served = self.served(event.variant, event.protocol);
        match event.outcome {
            Ok(()) => served.ok.increment(1),
            // Failures are rare and their kinds many: looked up by label each time.
            Err(kind) => {
                let labels = self.labels(event.variant, event.protocol);
                counter!(REQUESTS, with_outcome(labels, kind.as_str())).increment(1);
            }
        }
        served.duration.record(event.total.as_secs_f64());
        let series = self.per_version();
        if let Some(queue) = event.queue {
            series.queue.record(queue.as_secs_f64());
        }
        if let Some(compute) = event.compute {
            series.inference.record(compute.as_secs_f64());
        }
        if let Some(stacked) = event.batch_rows {
            self.stacked_rows
                .get_or_init(|| {
                    histogram!(STACKED_ROWS, "model" => self.model.clone(), "version" => self.version.clone())
                })
                .record(stacked as f64);
        }
        series.request_rows.record(event.rows as f64);
    }
}

fn with_outcome(mut labels: Vec<Label>, outcome: &'static str) -> Vec<Label> {
    labels.push(Label::from_static_parts("outcome", outcome));
    labels
}

pub fn record_shadow_dropped(model: &str, version: u64) {
    counter!(SHADOW_DROPPED, "model" => model.to_string(), "version" => version.to_string())
        .increment(1);
}

pub fn record_shadow_comparison(model: &str, version: u64, c: &Comparison) {
    let (model, version) = (model.to_string(), version.to_string());
    if c.label_rows > 0 {
        counter!(SHADOW_ROWS, "model" => model.clone(), "version" => version.clone())
            .increment(c.label_rows);
        counter!(SHADOW_AGREEING_ROWS, "model" => model.clone(), "version" => version.clone())
            .increment(c.agreeing_rows);
    }
    if c.values > 0 {
        histogram!(SHADOW_MAX_ABS_DIFF, "model" => model, "version" => version)
            .record(c.max_abs_diff);
    }
}

/// Blanks the drift gauges of a version that is no longer served.
pub fn clear_drift(model: &str, version: u64, features: &[String], prediction: bool) {
    let (model, version) = (model.to_string(), version.to_string());
    for feature in features {
        let labels = [
            ("model", model.clone()),
            ("version", version.clone()),
            ("feature", feature.clone()),
        ];
        gauge!(DRIFT_PSI, &labels).set(f64::NAN);
        gauge!(DRIFT_KS, &labels).set(f64::NAN);
    }
    let labels = [("model", model), ("version", version)];
    if prediction {
        gauge!(PREDICTION_DRIFT_PSI, &labels).set(f64::NAN);
        gauge!(PREDICTION_DRIFT_KS, &labels).set(f64::NAN);
    }
    gauge!(DRIFT_WINDOW_ROWS, &labels).set(0.0);
}

/// The violation counter of one feature's rule, registered (at 0) when a version with data
/// expectations loads and then incremented through the handle.
pub fn expectation_violations(
    model: &str,
    version: u64,
    feature: &str,
    rule: &'static str,
) -> Counter {
    counter!(
        EXPECTATION_VIOLATIONS,
        "model" => model.to_string(),
        "version" => version.to_string(),
        "feature" => feature.to_string(),
        "rule" => rule
    )
}

pub fn record_version_built() {
    gauge!(ALIVE_VERSIONS).increment(1.0);
}

pub fn record_version_freed() {
    gauge!(ALIVE_VERSIONS).decrement(1.0);
}

/// One control-topic record handled, by outcome.
pub fn connections_open(listener: &'static str, open: usize) {
    gauge!(CONNECTIONS_OPEN, "listener" => listener).set(open as f64);
}

pub fn connection_closed(listener: &'static str, reason: &'static str) {
    counter!(CONNECTIONS_CLOSED, "listener" => listener, "reason" => reason).increment(1);
}

pub fn record_fleet_record(outcome: &'static str) {
    counter!(FLEET_RECORDS, "outcome" => outcome).increment(1);
}

pub fn record_rollout_decision(model: &str, decision: &'static str) {
    counter!(ROLLOUT_DECISIONS, "model" => model.to_string(), "decision" => decision).increment(1);
}

pub fn record_predlog_delivered(stream: &'static str, n: u64) {
    counter!(PREDLOG_DELIVERED, "stream" => stream).increment(n);
}

pub fn record_predlog_failed(stream: &'static str, n: u64) {
    counter!(PREDLOG_FAILED, "stream" => stream).increment(n);
}

pub fn record_predlog_dropped(stream: &'static str, reason: &'static str) {
    counter!(PREDLOG_DROPPED, "stream" => stream, "reason" => reason).increment(1);
}

/// Creates the prediction-log counters at 0, so that `rate()` and `increase()` see the first
/// drop or failure (a series that appears at 1 has no increase).
pub fn zero_predlog_counters() {
    for stream in ["predictions", "events"] {
        counter!(PREDLOG_DELIVERED, "stream" => stream).increment(0);
        counter!(PREDLOG_FAILED, "stream" => stream).increment(0);
        for reason in ["backlog_full", "shutdown", "closed"] {
            counter!(PREDLOG_DROPPED, "stream" => stream, "reason" => reason).increment(0);
        }
    }
}

pub fn record_predlog_backlog(records: usize, bytes: usize) {
    gauge!(PREDLOG_BACKLOG_RECORDS).set(records as f64);
    gauge!(PREDLOG_BACKLOG_BYTES).set(bytes as f64);
}

pub fn record_lifecycle_event(model: &str, kind: &'static str) {
    counter!(LIFECYCLE_EVENTS, "model" => model.to_string(), "kind" => kind).increment(1);
}

pub const OUTCOMES: &str = "sluice_outcomes_total";
pub const JOINED_OUTCOMES: &str = "sluice_quality_outcomes_total";
pub const CORRECT_OUTCOMES: &str = "sluice_quality_correct_total";
pub const OUTCOME_INDEX_ENTRIES: &str = "sluice_outcome_index_predictions";
pub const OUTCOME_INDEX_EVICTIONS: &str = "sluice_outcome_index_evictions_total";
pub const QUALITY_ACCURACY: &str = "sluice_quality_accuracy";
pub const QUALITY_LOG_LOSS: &str = "sluice_quality_log_loss";
pub const QUALITY_BRIER: &str = "sluice_quality_brier";
pub const QUALITY_ROC_AUC: &str = "sluice_quality_roc_auc";
pub const QUALITY_MAE: &str = "sluice_quality_mae";
pub const QUALITY_RMSE: &str = "sluice_quality_rmse";
pub const QUALITY_REWARD_MEAN: &str = "sluice_quality_reward_mean";
pub const QUALITY_BASELINE: &str = "sluice_quality_baseline_accuracy";
pub const QUALITY_BELOW_BASELINE: &str = "sluice_quality_below_baseline";

/// Outcomes and live quality (the `outcomes` module and the quality controller).
fn describe_quality() {
    describe_counter!(
        OUTCOMES,
        Unit::Count,
        "Outcome records received, by model, source (http, kafka) and result: matched, late \
         (held until their request answered), duplicate, unknown (never served here, failed, \
         or evicted), mismatched (a kind that does not fit the prediction), invalid (topic \
         records that are not sluice.outcome.v1)"
    );
    describe_counter!(
        JOINED_OUTCOMES,
        Unit::Count,
        "Outcomes joined with their prediction, by model, version, variant and kind (label, \
         value, reward)"
    );
    describe_counter!(
        CORRECT_OUTCOMES,
        Unit::Count,
        "Label outcomes whose prediction was right, by model, version and variant"
    );
    describe_gauge!(
        OUTCOME_INDEX_ENTRIES,
        Unit::Count,
        "Recent predictions held for outcomes to join"
    );
    describe_counter!(
        OUTCOME_INDEX_EVICTIONS,
        Unit::Count,
        "Predictions that left the join index, by reason: capacity (outcomes.max_predictions) \
         or age (outcomes.max_age)"
    );
    for (name, what) in [
        (
            QUALITY_ACCURACY,
            "Share of label outcomes the prediction got right",
        ),
        (
            QUALITY_LOG_LOSS,
            "Mean log loss of label outcomes (class probabilities needed)",
        ),
        (
            QUALITY_BRIER,
            "Mean Brier score of label outcomes (class probabilities needed)",
        ),
        (
            QUALITY_ROC_AUC,
            "ROC AUC of two-class label outcomes (binned)",
        ),
        (QUALITY_MAE, "Mean absolute error of value outcomes"),
        (QUALITY_RMSE, "Root mean squared error of value outcomes"),
        (QUALITY_REWARD_MEAN, "Mean reward"),
    ] {
        describe_gauge!(
            name,
            format!(
                "{what}, per model, version and variant, over outcomes.alert_window; absent \
                 without outcomes"
            )
        );
    }
    describe_gauge!(
        QUALITY_BASELINE,
        "Offline accuracy of a version on its profile sample (sluice profile --labels)"
    );
    describe_gauge!(
        QUALITY_BELOW_BASELINE,
        "1 while a version's live accuracy is more than outcomes.baseline_margin below its \
         baseline, else 0"
    );
}

pub fn record_outcomes(model: &str, source: &'static str, counts: &[(&'static str, u64)]) {
    for &(result, n) in counts {
        if n > 0 {
            counter!(OUTCOMES, "model" => model.to_string(), "source" => source, "result" => result)
                .increment(n);
        }
    }
}

pub fn record_joined_outcome(
    model: &str,
    version: u64,
    variant: Variant,
    kind: &'static str,
    correct: Option<bool>,
) {
    let labels = [
        Label::new("model", model.to_string()),
        Label::new("version", version.to_string()),
        Label::new("variant", variant.as_str()),
    ];
    let mut with_kind = labels.to_vec();
    with_kind.push(Label::new("kind", kind));
    counter!(JOINED_OUTCOMES, with_kind).increment(1);
    if let Some(correct) = correct {
        counter!(CORRECT_OUTCOMES, labels.to_vec()).increment(u64::from(correct));
    }
}

pub fn record_outcome_index(entries: usize, capacity_evictions: u64, age_evictions: u64) {
    gauge!(OUTCOME_INDEX_ENTRIES).set(entries as f64);
    counter!(OUTCOME_INDEX_EVICTIONS, "reason" => "capacity").absolute(capacity_evictions);
    counter!(OUTCOME_INDEX_EVICTIONS, "reason" => "age").absolute(age_evictions);
}

/// A version's live quality over the alert window, and its baseline; each gauge is set only
/// when it has a value.
pub fn record_quality(
    model: &str,
    version: u64,
    variant: Variant,
    view: &crate::telemetry::quality::QualityView,
) {
    let labels = vec![
        Label::new("model", model.to_string()),
        Label::new("version", version.to_string()),
        Label::new("variant", variant.as_str()),
    ];
    for (name, value) in [
        (QUALITY_ACCURACY, view.accuracy),
        (QUALITY_LOG_LOSS, view.log_loss),
        (QUALITY_BRIER, view.brier),
        (QUALITY_ROC_AUC, view.roc_auc),
        (QUALITY_MAE, view.mae),
        (QUALITY_RMSE, view.rmse),
        (QUALITY_REWARD_MEAN, view.reward_mean),
    ] {
        if let Some(value) = value {
            gauge!(name, labels.clone()).set(value);
        }
    }
}

pub fn record_quality_baseline(model: &str, version: u64, accuracy: f64, below: bool) {
    let labels = vec![
        Label::new("model", model.to_string()),
        Label::new("version", version.to_string()),
    ];
    gauge!(QUALITY_BASELINE, labels.clone()).set(accuracy);
    gauge!(QUALITY_BELOW_BASELINE, labels).set(if below { 1.0 } else { 0.0 });
}

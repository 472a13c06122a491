//! `[prediction_log]`: where prediction records and lifecycle events go, and how much memory
//! may hold them while the sink is slow or away.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sluice_core::units::{byte_size, human_duration};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictionLogConfig {
    /// Where records go: "file" (local JSON lines, the default, so a plain `sluice serve`
    /// keeps its log), "kafka", or "none".
    pub sink: SinkChoice,
    /// Which requests' inputs are written: "all", "none", or "sample" (see
    /// `inputs_sample_rate`). Outputs are always written.
    pub inputs: InputLogging,
    /// With `inputs = "sample"`, the fraction of records that carry their inputs.
    pub inputs_sample_rate: f64,
    /// Memory for records waiting inside sluice for the sink, e.g. "32MiB". When it is full,
    /// new records are dropped and counted (`sluice_predlog_dropped_total`), and the request
    /// that made them is answered as usual.
    #[serde(with = "byte_size")]
    pub backlog_bytes: u64,
    /// Records that may wait inside sluice, whatever their size.
    pub backlog_records: usize,
    /// The local JSON-lines sink.
    pub file: FileSinkConfig,
    /// The Kafka sink.
    pub kafka: KafkaSinkConfig,
}

impl Default for PredictionLogConfig {
    fn default() -> Self {
        PredictionLogConfig {
            sink: SinkChoice::File,
            inputs: InputLogging::All,
            inputs_sample_rate: 0.1,
            backlog_bytes: 32 << 20,
            backlog_records: 100_000,
            file: FileSinkConfig::default(),
            kafka: KafkaSinkConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkChoice {
    #[default]
    File,
    Kafka,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputLogging {
    #[default]
    All,
    Sample,
    None,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// Prediction records, one JSON object per line.
    pub path: PathBuf,
    /// Lifecycle events, one JSON object per line.
    pub events_path: PathBuf,
    /// A file is rotated (`predictions.jsonl` -> `predictions.jsonl.1` -> ...) once it
    /// reaches this size.
    #[serde(with = "byte_size")]
    pub max_file_size: u64,
    /// Rotated files kept besides the live one; older ones are deleted.
    pub max_files: usize,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            path: PathBuf::from("logs/predictions.jsonl"),
            events_path: PathBuf::from("logs/events.jsonl"),
            max_file_size: 64 << 20,
            max_files: 4,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, "host:port[,host:port...]". `--kafka-brokers` /
    /// `SLUICE_KAFKA_BROKERS` override it (and select the Kafka sink).
    pub brokers: String,
    /// Topic for prediction records.
    pub topic: String,
    /// Topic for lifecycle events (load, unload, swap, traffic, rollout steps).
    pub events_topic: String,
    /// Memory librdkafka may hold for records it has not yet had acknowledged, on top of
    /// `backlog_bytes`. While the brokers are away records wait here first, then in the
    /// backlog; an outage shorter than both together loses nothing.
    #[serde(with = "byte_size")]
    pub producer_buffer_bytes: u64,
    /// How long the producer waits to fill a batch: a few milliseconds buys large,
    /// well-compressed batches at a latency nobody waits on.
    #[serde(with = "human_duration")]
    pub linger: Duration,
    /// Batch compression: "lz4" (the default: cheap on CPU), "zstd", "snappy", "gzip", "none".
    pub compression: String,
    /// Further librdkafka producer properties, e.g. `{ "security.protocol" = "ssl" }`. They
    /// win over sluice's own settings, except that idempotence and acks=all stay on.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "sluice.predictions".into(),
            events_topic: "sluice.events".into(),
            producer_buffer_bytes: 64 << 20,
            linger: Duration::from_millis(5),
            compression: "lz4".into(),
            producer: BTreeMap::new(),
        }
    }
}

impl PredictionLogConfig {
    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.inputs_sample_rate) {
            problems.push("prediction_log.inputs_sample_rate must be within 0..1".into());
        }
        if self.backlog_bytes < 64 << 10 {
            problems.push("prediction_log.backlog_bytes must be at least 64KiB".into());
        }
        if self.backlog_records == 0 {
            problems.push("prediction_log.backlog_records must be at least 1".into());
        }
        match self.sink {
            SinkChoice::File => {
                if self.file.max_file_size < 4 << 10 {
                    problems.push("prediction_log.file.max_file_size must be at least 4KiB".into());
                }
                if self.file.path == self.file.events_path {
                    problems.push(
                        "prediction_log.file.path and events_path must be different files".into(),
                    );
                }
            }
            SinkChoice::Kafka => {
                let k = &self.kafka;
                if k.brokers.trim().is_empty() {
                    problems.push("prediction_log.kafka.brokers is empty".into());
                }
                if k.topic.is_empty() || k.events_topic.is_empty() {
                    problems.push("prediction_log.kafka.topic and events_topic must be set".into());
                }
                if k.topic == k.events_topic {
                    problems.push(
                        "prediction_log.kafka.topic and events_topic must be different".into(),
                    );
                }
                if !["lz4", "zstd", "snappy", "gzip", "none"].contains(&k.compression.as_str()) {
                    problems.push(format!(
                        "prediction_log.kafka.compression: '{}' is not one of lz4, zstd, snappy, gzip, none",
                        k.compression
                    ));
                }
                if k.producer_buffer_bytes < 1 << 20 {
                    problems.push(
                        "prediction_log.kafka.producer_buffer_bytes must be at least 1MiB".into(),
                    );
                }
            }
            SinkChoice::None => {}
        }
        problems
    }
}

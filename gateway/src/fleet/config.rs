//! `[fleet]`: replicas that agree on their models through a Kafka control topic. Off (a single
//! node, exactly as without the section) until `control_topic` is set.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sluice_core::units::human_duration;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Compacted Kafka topic carrying the desired state of every model, e.g. "sluice.control".
    /// Unset: this process is a single node and applies admin calls itself. `--control-topic`
    /// / `SLUICE_CONTROL_TOPIC` set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_topic: Option<String>,
    /// Bootstrap brokers of the control topic, "host:port[,...]". Unset: the prediction log's
    /// (`prediction_log.kafka.brokers`, or `--kafka-brokers`), so one Kafka serves both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// This replica's name in control records (`origin`) and logs. Unset: the host name (the
    /// pod name on Kubernetes), else a random id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// How long an admin call waits for its change to reach the control topic and to be applied
    /// here, e.g. "5s". Past it the call answers 503 (not written: the topic is unavailable) or
    /// 504 (written, not yet applied here; it will be).
    #[serde(with = "human_duration")]
    pub apply_timeout: Duration,
    /// Further librdkafka properties for the control producer and consumer, e.g.
    /// `{ "security.protocol" = "ssl" }`. acks=all and one request in flight stay whatever
    /// they say.
    pub kafka: BTreeMap<String, String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            control_topic: None,
            brokers: None,
            replica_id: None,
            apply_timeout: default_apply_timeout(),
            kafka: BTreeMap::new(),
        }
    }
}

/// A few seconds: longer than a Kafka leader election usually takes, short enough that an
/// operator (or a script) is not left hanging when the topic is really away.
fn default_apply_timeout() -> Duration {
    Duration::from_secs(5)
}

impl FleetConfig {
    /// Whether fleet mode is on.
    pub fn enabled(&self) -> bool {
        self.control_topic.is_some()
    }

    /// The brokers to use, falling back on the prediction log's.
    pub fn brokers_or<'a>(&'a self, prediction_log: &'a str) -> &'a str {
        self.brokers.as_deref().unwrap_or(prediction_log)
    }

    /// The replica id to use: the configured one, else the host name, else a random id.
    pub fn replica_id(&self) -> String {
        if let Some(id) = &self.replica_id {
            return id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("sluice-{:08x}", rand::random::<u32>()))
    }

    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(topic) = &self.control_topic
            && !valid_topic(topic)
        {
            problems.push(format!(
                "fleet.control_topic: '{topic}' is not a Kafka topic name (letters, digits, \
                 '.', '_' and '-', at most 249)"
            ));
        }
        if self.brokers.as_deref().is_some_and(|b| b.trim().is_empty()) {
            problems.push("fleet.brokers is empty: remove it or name the brokers".into());
        }
        if self.replica_id.as_deref().is_some_and(str::is_empty) {
            problems.push("fleet.replica_id is empty: remove it or name the replica".into());
        }
        if self.apply_timeout < Duration::from_millis(100) {
            problems.push("fleet.apply_timeout must be at least 100ms".into());
        }
        problems
    }
}

/// Kafka's own rule for topic names.
fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        let config = FleetConfig::default();
        assert!(!config.enabled());
        assert!(config.problems().is_empty());
        let bad: FleetConfig = toml::from_str(
            "control_topic = \"sluice control\"\napply_timeout = \"10ms\"\nreplica_id = \"\"\n",
        )
        .unwrap();
        let problems = bad.problems().join("; ");
        for want in [
            "fleet.control_topic",
            "fleet.apply_timeout",
            "fleet.replica_id",
        ] {
            assert!(problems.contains(want), "{want} missing from {problems}");
        }
        assert_eq!(config.brokers_or("kafka:9092"), "kafka:9092");
    }

    #[test]
    fn the_documented_config_shows_the_defaults() {
        let text = include_str!("../../../config/sluice.toml");
        let config: crate::config::Config = toml::from_str(text).unwrap();
        assert_eq!(config.fleet, FleetConfig::default());
    }
}

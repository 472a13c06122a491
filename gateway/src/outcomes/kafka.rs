//! Outcomes from a Kafka topic: delayed labels from a batch job, a conversion stream.
//!
//! Every replica reads every partition (assigned, not subscribed: no consumer group forms), so
//! each joins the outcomes of what it served; a replica counts the others' as unknown. Reading
//! starts at the records written since this process started: older outcomes can only be for
//! predictions made before it, which it never held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use super::record::{OutcomeRecord, TopicRecord, parse_topic_record};
use super::{Outcomes, Source};

/// Starts the reader thread; it runs until `stop` is set.
pub fn consume(
    outcomes: Arc<Outcomes>,
    brokers: &str,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let settings = &outcomes.config().kafka;
    let topic = settings.topic.clone();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "sluice-outcomes")
        .set("group.id", "sluice-outcomes-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &settings.consumer {
        c.set(key, value);
    }
    let consumer: BaseConsumer = c
        .create()
        .map_err(|e| format!("cannot create the outcomes consumer: {e}"))?;
    let started = SystemTime::now();
    std::thread::Builder::new()
        .name("sluice-outcomes".into())
        .spawn(move || read_loop(&consumer, &topic, started, &outcomes, &stop))
        .map_err(|e| format!("cannot start the outcomes consumer: {e}"))
}

fn read_loop(
    consumer: &BaseConsumer,
    topic: &str,
    started: SystemTime,
    outcomes: &Outcomes,
    stop: &AtomicBool,
) {
    let Some(partitions) = wait_for_partitions(consumer, topic, stop) else {
        return;
    };
    let since_ms = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut wanted = TopicPartitionList::new();
    for &p in &partitions {
        let _ = wanted.add_partition_offset(topic, p, Offset::Offset(since_ms));
    }
    // Each partition's first offset at or after the start time (its end when there is none).
    let assignment = match consumer.offsets_for_times(wanted, Duration::from_secs(10)) {
        Ok(offsets) => offsets,
        Err(error) => {
            tracing::warn!(%error, topic, "outcomes topic: offsets by time unavailable; reading new records only");
            let mut end = TopicPartitionList::new();
            for &p in &partitions {
                let _ = end.add_partition_offset(topic, p, Offset::End);
            }
            end
        }
    };
    if let Err(error) = consumer.assign(&assignment) {
        tracing::error!(%error, topic, "outcomes topic: cannot assign its partitions");
        return;
    }
    tracing::info!(topic, partitions = partitions.len(), "reading outcomes");
    let mut quiet = Quiet::default();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => match parse_topic_record(message.payload().unwrap_or_default()) {
                // What this replica forwarded itself it already failed to join.
                Ok(r) if r.origin.as_deref() == Some(outcomes.origin()) => {}
                Ok(r) => {
                    outcomes.apply(&r.model, std::slice::from_ref(&r.record), Source::Kafka);
                }
                Err(reason) => {
                    crate::telemetry::metrics::record_outcomes(
                        "",
                        Source::Kafka.as_str(),
                        &[("invalid", 1)],
                    );
                    if quiet.speak() {
                        tracing::warn!(
                            partition = message.partition(),
                            offset = message.offset(),
                            %reason,
                            "outcomes topic: record skipped"
                        );
                    }
                }
            },
            Some(Err(error)) if quiet.speak() => {
                tracing::warn!(%error, "outcomes consumer: Kafka error (it retries)");
            }
            Some(Err(_)) | None => {}
        }
    }
}

/// The topic's partitions once the brokers answer and the topic exists; `None` if stopped.
fn wait_for_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    stop: &AtomicBool,
) -> Option<Vec<i32>> {
    let mut quiet = Quiet::default();
    while !stop.load(Ordering::Relaxed) {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())
            .map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<i32>>())
                    .filter(|p| !p.is_empty())
            });
        match found {
            Ok(Some(partitions)) => return Some(partitions),
            other => {
                if quiet.speak() {
                    let reason = match other {
                        Err(e) => e,
                        _ => "the topic does not exist yet".into(),
                    };
                    tracing::warn!(topic, %reason, "outcomes topic not readable yet; waiting");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// One warning per ten seconds: while brokers are away, errors repeat every poll.
#[derive(Default)]
struct Quiet(Option<Instant>);

impl Quiet {
    fn speak(&mut self) -> bool {
        if self
            .0
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return false;
        }
        self.0 = Some(Instant::now());
        true
    }
}

/// Writes the outcomes this replica could not join to the outcomes topic.
pub struct Forwarder {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl Forwarder {
    pub fn connect(outcomes: &Outcomes, brokers: &str) -> Result<Forwarder, String> {
        let settings = &outcomes.config().kafka;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("client.id", "sluice-outcomes-forwarder")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        // The same cluster as the reader: its connection settings (security.protocol, SASL,
        // certificates) apply here too. librdkafka ignores, with a warning, consumer-only ones.
        for (key, value) in &settings.consumer {
            c.set(key, value);
        }
        let producer = c
            .create()
            .map_err(|e| format!("cannot create the outcomes forwarder: {e}"))?;
        Ok(Forwarder {
            producer,
            topic: settings.topic.clone(),
        })
    }

    /// Queues one outcome (keyed by its request id); false when the producer's queue is full.
    pub fn send(&self, model: &str, record: &OutcomeRecord, origin: &str) -> bool {
        let payload = TopicRecord {
            model: model.to_string(),
            record: record.clone(),
            origin: Some(origin.to_string()),
        }
        .to_json();
        self.producer
            .send(
                BaseRecord::to(&self.topic)
                    .key(&record.id)
                    .payload(&payload),
            )
            .is_ok()
    }
}

//! The control topic's two ends: a producer that tells each writer when the brokers have its
//! record, and a consumer thread that reads the topic from the beginning, in order, forever.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::record::ControlRecord;

/// Where the control topic is and how long a write may take.
#[derive(Clone, Debug)]
pub struct Settings {
    pub brokers: String,
    pub topic: String,
    /// Client id for the brokers' logs.
    pub client_id: String,
    /// How long the producer keeps trying to deliver a record before it reports a failure.
    pub write_timeout: Duration,
    /// Properties from `fleet.kafka`.
    pub extra: std::collections::BTreeMap<String, String>,
}

/// A write's fate: `Err` says why the brokers do not have it.
pub type Delivered = Result<(), String>;

/// Writes control records with acks=all (a record acknowledged is on every in-sync replica)
/// and one request in flight (a replica's records stay in the order it wrote them). Unlike
/// the prediction log's producer it is not idempotent and it gives up after `write_timeout`
/// (an admin call is waiting on the answer). Idempotence is not needed: a record retried
/// into the topic twice asks for the same state twice, which every replica reads as a
/// duplicate. And it would hurt: after a record times out, an idempotent producer must
/// renew its producer epoch, which brokers handle unevenly (tansu's storage fails on it).
pub struct Publisher {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
}

impl Publisher {
    pub fn connect(settings: &Settings) -> Result<Publisher, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &settings.brokers)
            .set("client.id", &settings.client_id)
            // A change waits on this record: send it now, not in a batch.
            .set("linger.ms", "0")
            .set(
                "message.timeout.ms",
                settings.write_timeout.as_millis().max(1).to_string(),
            )
            .set("reconnect.backoff.max.ms", "1000");
        for (key, value) in &settings.extra {
            c.set(key, value);
        }
        c.set("enable.idempotence", "false")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1");
        let producer = ThreadedProducer::from_config_and_context(&c, Deliveries::default())
            .map_err(|e| format!("cannot create the control topic producer: {e}"))?;
        Ok(Publisher {
            producer,
            topic: settings.topic.clone(),
        })
    }

    /// Hands a record to the producer; the answer comes when the brokers acknowledged it, or
    /// when the producer gave up.
    pub fn send(&self, key: &str, payload: &[u8]) -> oneshot::Receiver<Delivered> {
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(&self.topic, Box::new(Some(tx)))
            .key(key)
            .payload(payload);
        if let Err((error, record)) = self.producer.send(record)
            && let Some(tx) = *record.delivery_opaque
        {
            let _ = tx.send(Err(error.to_string()));
        }
        rx
    }
}

/// Passes each delivery report to the writer waiting for it.
#[derive(Default)]
struct Deliveries {
    quiet: Quiet,
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        if self.quiet.speak() {
            tracing::warn!(%error, reason, "control topic producer: Kafka client error");
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Option<oneshot::Sender<Delivered>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.to_string()),
        };
        if let Some(tx) = *waiting {
            let _ = tx.send(outcome);
        }
    }
}

/// What the consumer thread passes on, in the topic's order.
pub enum Incoming {
    Record(Box<ControlRecord>),
    /// Every partition was read to the end once: what the topic held at start-up has been
    /// passed on.
    CaughtUp,
}

/// Starts the consumer thread. It reads every partition of the topic from the beginning
/// (creating the topic, compacted, if it does not exist) and passes each record on until
/// `stop` is set or the receiver is gone. While the brokers are away it waits and says so.
pub fn consume(
    settings: Settings,
    out: mpsc::Sender<Incoming>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers)
        .set("client.id", &settings.client_id)
        // Partitions are assigned, never subscribed: no consumer group forms, and no offset
        // is committed (every start reads the whole compacted topic).
        .set("group.id", format!("{}-unused", settings.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // A change should reach every replica well within a second.
        .set("fetch.wait.max.ms", "100")
        .set("fetch.error.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &settings.extra {
        c.set(key, value);
    }
    let consumer: BaseConsumer = c
        .create()
        .map_err(|e| format!("cannot create the control topic consumer: {e}"))?;
    std::thread::Builder::new()
        .name("sluice-fleet".into())
        .spawn(move || read_loop(&consumer, &settings, &out, &stop))
        .map_err(|e| format!("cannot start the control topic consumer: {e}"))
}

fn read_loop(
    consumer: &BaseConsumer,
    settings: &Settings,
    out: &mpsc::Sender<Incoming>,
    stop: &AtomicBool,
) {
    let Some(partitions) = partitions(consumer, settings, stop) else {
        return;
    };
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        if let Err(error) = assignment.add_partition_offset(&settings.topic, p, Offset::Beginning) {
            tracing::error!(%error, "control topic: cannot assign partition {p}");
        }
    }
    if let Err(error) = consumer.assign(&assignment) {
        tracing::error!(%error, "control topic: cannot assign its partitions");
        return;
    }
    let mut unread: BTreeSet<i32> = partitions.into_iter().collect();
    let quiet = Quiet::default();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let payload = message.payload().unwrap_or_default();
                match ControlRecord::parse(payload) {
                    Ok(record) => {
                        if out
                            .blocking_send(Incoming::Record(Box::new(record)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(reason) => {
                        crate::telemetry::metrics::record_fleet_record("invalid");
                        tracing::warn!(
                            offset = message.offset(),
                            partition = message.partition(),
                            %reason,
                            "control topic: record skipped"
                        );
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if unread.remove(&p) && unread.is_empty() => {
                tracing::info!(topic = %settings.topic, "control topic read to its end");
                if out.blocking_send(Incoming::CaughtUp).is_err() {
                    return;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) if quiet.speak() => {
                tracing::warn!(%error, "control topic consumer: Kafka error (it retries)");
            }
            Some(Err(_)) => {}
        }
    }
}

/// The topic's partitions, waiting for the brokers and creating the topic if it is missing;
/// `None` when stopped meanwhile.
fn partitions(consumer: &BaseConsumer, settings: &Settings, stop: &AtomicBool) -> Option<Vec<i32>> {
    let quiet = Quiet::default();
    let mut created = false;
    while !stop.load(Ordering::Relaxed) {
        let found = consumer
            .fetch_metadata(Some(&settings.topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == settings.topic && t.error().is_none())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<i32>>())
                    .filter(|p| !p.is_empty())
            });
        match found {
            Ok(Some(partitions)) => return Some(partitions),
            Ok(None) if !created => {
                created = true;
                create_topic(settings);
                continue;
            }
            Ok(None) => {
                if quiet.speak() {
                    tracing::warn!(topic = %settings.topic, "control topic does not exist yet; waiting for it");
                }
            }
            Err(error) => {
                if quiet.speak() {
                    tracing::warn!(
                        brokers = %settings.brokers,
                        %error,
                        "control topic unreachable; not ready until it has been read"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// Creates the topic as the fleet needs it: one partition (one order for every change) and
/// compaction (the latest record per model is kept forever). Operators may create it
/// themselves the same way; a failure here is logged and the consumer waits for the topic.
fn create_topic(settings: &Settings) {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.extra {
        c.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = match c.create() {
        Ok(admin) => admin,
        Err(error) => {
            tracing::warn!(%error, "cannot create a Kafka admin client to create the control topic");
            return;
        }
    };
    let topic = NewTopic::new(&settings.topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = admin.create_topics([&topic], &options);
    // The admin client runs on its own thread; this one only waits for the answer.
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime.block_on(created),
        Err(error) => {
            tracing::warn!(%error, "cannot wait for the control topic creation");
            return;
        }
    };
    match result.map(|mut results| results.pop()) {
        Ok(Some(Ok(name))) => {
            tracing::info!(topic = %name, "control topic created (compacted, one partition)")
        }
        Ok(Some(Err((name, error)))) => {
            tracing::warn!(topic = %name, %error, "control topic not created")
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "control topic not created"),
    }
}

/// One warning per ten seconds: while brokers are away, errors repeat every retry.
#[derive(Default)]
struct Quiet {
    last: std::sync::Mutex<Option<Instant>>,
}

impl Quiet {
    fn speak(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

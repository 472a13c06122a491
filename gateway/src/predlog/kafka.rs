//! The Kafka sink: an idempotent librdkafka producer (acks=all, so a record acknowledged is
//! on every in-sync replica, and retries never duplicate), batching for a few milliseconds
//! with lz4 compression. Records never time out inside the producer: while brokers are away
//! they wait in its buffer, and when that is full the writer thread holds them in sluice's
//! backlog. Deliveries and failures are counted in the delivery callback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::config::KafkaSinkConfig;
use super::{Counters, Entry, Sink, Stream};

pub struct KafkaSink {
    /// The writer thread sends through the same handle as the request path.
    direct: Direct,
}

/// The producer as the request path uses it: librdkafka's producer is thread-safe and copies
/// each record, so a prediction record is handed over on the request's own thread while the
/// cache still holds it, instead of crossing to the writer thread through the backlog
/// (profiled, batch-1 churn: the writer thread's copy of records another core had written
/// was most of its ~2 us per record). The backlog and the writer thread take over whenever
/// the producer is full or the backlog holds records, so a record queued there is not
/// overtaken while it waits (only the one the writer holds out of the queue can be).
#[derive(Clone)]
pub struct Direct {
    producer: Arc<ThreadedProducer<Delivery>>,
    topics: Arc<[String; 2]>,
}

impl Direct {
    /// Hands one record to the producer; false when it is full (the caller queues the record
    /// in the backlog instead). A record refused for good is counted as failed.
    pub fn send(&self, stream: Stream, key: &str, payload: &[u8]) -> bool {
        let record = BaseRecord::with_opaque_to(&self.topics[stream as usize], stream as usize)
            .key(key)
            .payload(payload);
        match self.producer.send(record) {
            Ok(()) => true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => false,
            Err((error, _)) => {
                // Refused for good (too large, unknown topic in the local config): counted.
                self.producer.context().failed(stream, &error);
                true
            }
        }
    }
}

impl KafkaSink {
    pub fn connect(config: &KafkaSinkConfig, counters: Arc<Counters>) -> Result<KafkaSink, String> {
        let producer = ThreadedProducer::from_config_and_context(
            &producer_config(config),
            Delivery {
                counters,
                last_error_log: AtomicU64::new(0),
                started: Instant::now(),
            },
        )
        .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        tracing::info!(
            brokers = %config.brokers,
            topic = %config.topic,
            events_topic = %config.events_topic,
            "prediction log writes to Kafka"
        );
        Ok(KafkaSink {
            direct: Direct {
                producer: Arc::new(producer),
                topics: Arc::new([config.topic.clone(), config.events_topic.clone()]),
            },
        })
    }

    pub fn direct(&self) -> Direct {
        self.direct.clone()
    }
}

/// The producer's settings: sluice's choices, then the user's extra properties, then the
/// guarantees that must hold whatever the user wrote.
fn producer_config(config: &KafkaSinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    let buffer_kib = (config.producer_buffer_bytes / 1024).clamp(1024, 2_097_151);
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "sluice")
        .set("compression.type", &config.compression)
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("batch.size", (1 << 20).to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", buffer_kib.to_string())
        // The byte bound is the real one; the message count only has to stay out of its way.
        .set("queue.buffering.max.messages", "2000000")
        // Never give up on a record while the brokers are away; the buffers bound memory.
        .set("message.timeout.ms", "0")
        .set("reconnect.backoff.max.ms", "1000")
        // One produce request in flight per broker. With librdkafka's default of five, its
        // broker thread spun on poll() whenever the limit was reached (perf, batch-1 churn at
        // 50k req/s: that thread alone took 43 % of sluice's CPU); with one, batches simply
        // grow while the broker answers, and per-partition order is kept trivially.
        .set("max.in.flight.requests.per.connection", "1");
    for (key, value) in &config.producer {
        c.set(key, value);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

impl Sink for KafkaSink {
    fn offer(&mut self, entry: Entry) -> Result<(), Entry> {
        if self.direct.send(entry.stream, &entry.key, &entry.payload) {
            Ok(())
        } else {
            Err(entry)
        }
    }

    fn idle(&mut self) {}

    fn close(&mut self, deadline: Instant) -> u64 {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .direct
            .producer
            .flush(left.max(Duration::from_millis(1)));
        let undelivered = self.direct.producer.in_flight_count().max(0) as u64;
        if undelivered > 0 {
            // Purge so the callbacks report them now rather than when the process ends.
            self.direct
                .producer
                .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            self.direct.producer.poll(Duration::from_millis(100));
        }
        undelivered
    }
}

/// Counts each record's fate as librdkafka reports it.
pub struct Delivery {
    counters: Arc<Counters>,
    /// Milliseconds since `started` of the last error logged: errors repeat every retry while
    /// brokers are away, and the log should say so once, not thousands of times.
    last_error_log: AtomicU64,
    started: Instant,
}

impl Delivery {
    fn quiet(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_error_log.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 10_000 {
            return true;
        }
        self.last_error_log.store(now.max(1), Ordering::Relaxed);
        false
    }

    fn failed(&self, stream: Stream, error: &KafkaError) {
        self.counters.failed(stream, 1);
        if !self.quiet() {
            tracing::warn!(stream = stream.as_str(), %error, "prediction log record not delivered");
        }
    }
}

impl ClientContext for Delivery {
    fn error(&self, error: KafkaError, reason: &str) {
        if !self.quiet() {
            tracing::warn!(%error, reason, "Kafka client error (records wait and are retried)");
        }
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, stream: usize) {
        let stream = Stream::from_index(stream);
        match result {
            Ok(_) => self.counters.delivered(stream, 1),
            Err((error, _)) => self.failed(stream, error),
        }
    }
}

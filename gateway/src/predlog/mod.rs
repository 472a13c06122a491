//! The prediction log: one record per prediction and one per lifecycle event, written to a
//! sink (Kafka, or a local rotating JSON-lines file) by a dedicated thread.
//!
//! The request path only enqueues: it serialises the record and pushes it into a bounded
//! backlog without waiting (with Kafka, while the backlog is empty, it hands the record to
//! the producer's own buffer directly, which is just as non-blocking: `kafka::Direct`). The
//! backlog is bounded in records and in bytes; when either is full the record is dropped
//! and counted (metric and rate-limited log line), never silently lost and never a delay for
//! the client. The writer thread hands records to the sink, and
//! when the sink cannot take more (Kafka away, its buffer full) it holds on and retries, so
//! records pile up in the backlog rather than being thrown away; an outage shorter than what
//! the buffers hold loses nothing. On shutdown the backlog is flushed within a deadline and
//! what could not be delivered is reported.

pub mod config;
mod file;
mod kafka;
pub mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use serde::Serialize;

pub use config::{InputLogging, PredictionLogConfig, SinkChoice};
pub use record::{Event, EventKind};

use crate::telemetry::metrics;

/// The two record streams; each has its own topic or file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Predictions = 0,
    Events = 1,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Predictions => "predictions",
            Stream::Events => "events",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_index(i: usize) -> Stream {
        if i == 1 {
            Stream::Events
        } else {
            Stream::Predictions
        }
    }
}

/// One serialised record on its way to the sink.
pub struct Entry {
    pub stream: Stream,
    /// Kafka key: the request id (or the model, for events), so that a request's records, or
    /// a model's events, stay in order on one partition.
    pub key: String,
    pub payload: Vec<u8>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.payload.len() + self.key.len() + std::mem::size_of::<Entry>()
    }
}

/// Where the writer thread puts records.
trait Sink: Send {
    /// Takes one record, or gives it back when it cannot take more right now.
    fn offer(&mut self, entry: Entry) -> Result<(), Entry>;
    /// Nothing to offer for a moment: write buffers out.
    fn idle(&mut self);
    /// Delivers what it holds before `deadline`; returns how many records it could not.
    fn close(&mut self, deadline: Instant) -> u64;
}

/// Per-stream totals, shared with the sinks (Kafka counts in its delivery callback).
#[derive(Default)]
pub struct Counters {
    delivered: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    failed: [AtomicU64; 2],
}

impl Counters {
    // Delivered and failed are plain atomics (Kafka's delivery callback runs once per record);
    // the writer thread publishes them as metrics a few times a second.
    fn delivered(&self, stream: Stream, n: u64) {
        self.delivered[stream.index()].fetch_add(n, Ordering::Relaxed);
    }

    fn failed(&self, stream: Stream, n: u64) {
        self.failed[stream.index()].fetch_add(n, Ordering::Relaxed);
    }

    fn dropped(&self, stream: Stream, reason: &'static str) {
        self.dropped[stream.index()].fetch_add(1, Ordering::Relaxed);
        metrics::record_predlog_dropped(stream.as_str(), reason);
    }

    /// Adds what was delivered and failed since the last call to the metrics.
    fn publish(&self, published: &mut [[u64; 2]; 2]) {
        for stream in [Stream::Predictions, Stream::Events] {
            let i = stream.index();
            let delivered = self.delivered[i].load(Ordering::Relaxed);
            let failed = self.failed[i].load(Ordering::Relaxed);
            metrics::record_predlog_delivered(stream.as_str(), delivered - published[0][i]);
            metrics::record_predlog_failed(stream.as_str(), failed - published[1][i]);
            published[0][i] = delivered;
            published[1][i] = failed;
        }
    }
}

/// What the log has done so far, for the admin API and the shutdown report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogStats {
    pub sink: &'static str,
    pub backlog_records: usize,
    pub backlog_bytes: usize,
    pub delivered: u64,
    pub dropped: u64,
    pub failed: u64,
    pub events_delivered: u64,
    pub events_dropped: u64,
    pub events_failed: u64,
}

/// What the request path and the writer thread both touch.
#[derive(Default)]
struct Shared {
    /// Bytes of the records in the backlog (and the one the writer holds).
    backlog_bytes: AtomicUsize,
    counters: Arc<Counters>,
}

impl Shared {
    fn backlog_bytes(&self) -> usize {
        self.backlog_bytes.load(Ordering::Relaxed)
    }

    fn release(&self, cost: usize) {
        self.backlog_bytes.fetch_sub(cost, Ordering::Relaxed);
    }
}

struct Inner {
    config: PredictionLogConfig,
    sink_name: &'static str,
    queue: Option<Sender<Entry>>,
    /// The Kafka producer, for prediction records handed over on the request's thread.
    direct: Option<kafka::Direct>,
    shared: Arc<Shared>,
    closed: AtomicBool,
    /// Last time a drop was logged, in ms since `started`; drops are logged once a second.
    last_drop_log: AtomicU64,
    started: Instant,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread's answer to a close request.
    closing: std::sync::Mutex<Option<crossbeam_channel::Receiver<u64>>>,
    close_request: std::sync::Mutex<Option<Sender<Instant>>>,
}

/// A cheap handle on the prediction log; clones share one backlog and sink.
#[derive(Clone)]
pub struct PredictionLog {
    inner: Arc<Inner>,
}

impl PredictionLog {
    /// A log that writes nothing (`sink = "none"`, and tests).
    pub fn disabled() -> PredictionLog {
        PredictionLog::with_sink(PredictionLogConfig::default(), "none", None, None)
    }

    /// Opens the configured sink and starts the writer thread. Fails only on a sink that
    /// cannot be created at all (bad Kafka settings, an unwritable log folder); a broker
    /// that is down is not a failure: records wait for it.
    pub fn start(config: &PredictionLogConfig) -> Result<PredictionLog, String> {
        let counters = Arc::new(Counters::default());
        let mut direct = None;
        let sink: Box<dyn Sink> = match config.sink {
            SinkChoice::None => return Ok(PredictionLog::disabled()),
            SinkChoice::File => {
                Box::new(file::FileSink::open(&config.file, Arc::clone(&counters))?)
            }
            SinkChoice::Kafka => {
                let sink = kafka::KafkaSink::connect(&config.kafka, Arc::clone(&counters))?;
                direct = Some(sink.direct());
                Box::new(sink)
            }
        };
        let name = match config.sink {
            SinkChoice::Kafka => "kafka",
            _ => "file",
        };
        metrics::zero_predlog_counters();
        Ok(PredictionLog::with_sink(
            config.clone(),
            name,
            Some((sink, counters)),
            direct,
        ))
    }

    fn with_sink(
        config: PredictionLogConfig,
        sink_name: &'static str,
        sink: Option<(Box<dyn Sink>, Arc<Counters>)>,
        direct: Option<kafka::Direct>,
    ) -> PredictionLog {
        let (queue, shared, writer, closing, close_request) = match sink {
            Some((sink, counters)) => {
                let shared = Arc::new(Shared {
                    backlog_bytes: AtomicUsize::new(0),
                    counters,
                });
                let (tx, rx) = crossbeam_channel::bounded(config.backlog_records);
                let (close_tx, close_rx) = crossbeam_channel::bounded(1);
                let (done_tx, done_rx) = crossbeam_channel::bounded(1);
                let writer_shared = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("sluice-predlog".into())
                    .spawn(move || write_loop(sink, rx, close_rx, done_tx, writer_shared))
                    .ok();
                (Some(tx), shared, handle, Some(done_rx), Some(close_tx))
            }
            None => (None, Arc::default(), None, None, None),
        };
        PredictionLog {
            inner: Arc::new(Inner {
                config,
                sink_name,
                queue,
                direct,
                shared,
                closed: AtomicBool::new(false),
                last_drop_log: AtomicU64::new(0),
                started: Instant::now(),
                writer: std::sync::Mutex::new(writer),
                closing: std::sync::Mutex::new(closing),
                close_request: std::sync::Mutex::new(close_request),
            }),
        }
    }

    /// Whether prediction records are wanted at all; when not, callers skip building them.
    pub fn enabled(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// Whether this record should carry its inputs (decided per record).
    pub fn wants_inputs(&self) -> bool {
        match self.inner.config.inputs {
            InputLogging::All => true,
            InputLogging::None => false,
            InputLogging::Sample => rand::random::<f64>() < self.inner.config.inputs_sample_rate,
        }
    }

    /// Queues one serialised prediction record without waiting.
    pub fn prediction(&self, key: String, payload: Vec<u8>) {
        let inner = &self.inner;
        // Straight to the Kafka producer (see `kafka::Direct`) while the backlog is empty;
        // a closed log refuses in `submit`.
        if let (Some(direct), Some(queue)) = (&inner.direct, &inner.queue)
            && queue.is_empty()
            && !inner.closed.load(Ordering::Relaxed)
            && direct.send(Stream::Predictions, &key, &payload)
        {
            return;
        }
        self.submit(Entry {
            stream: Stream::Predictions,
            key,
            payload,
        });
    }

    /// Logs the event (a `tracing` line) and queues it for the events stream.
    pub fn event(&self, event: Event) {
        tracing::info!(
            kind = event.kind.as_str(),
            model = %event.model,
            version = ?event.version,
            actor = %event.actor,
            reason = %event.reason,
            "lifecycle event"
        );
        metrics::record_lifecycle_event(&event.model, event.kind.as_str());
        if self.enabled() {
            self.submit(Entry {
                stream: Stream::Events,
                key: event.model.clone(),
                payload: event.to_json(),
            });
        }
    }

    fn submit(&self, entry: Entry) {
        let inner = &self.inner;
        let Some(queue) = &inner.queue else {
            return;
        };
        let stream = entry.stream;
        if inner.closed.load(Ordering::Relaxed) {
            self.drop_record(stream, "closed");
            return;
        }
        let cost = entry.cost();
        let limit = usize::try_from(inner.config.backlog_bytes).unwrap_or(usize::MAX);
        let held = inner
            .shared
            .backlog_bytes
            .fetch_add(cost, Ordering::Relaxed);
        // Events are rare and are the audit trail: a flood of predictions must not crowd
        // them out, so only the record count bounds them.
        if stream == Stream::Predictions && held + cost > limit {
            inner
                .shared
                .backlog_bytes
                .fetch_sub(cost, Ordering::Relaxed);
            self.drop_record(stream, "backlog_full");
            return;
        }
        match queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                inner
                    .shared
                    .backlog_bytes
                    .fetch_sub(cost, Ordering::Relaxed);
                self.drop_record(stream, "backlog_full");
            }
            Err(TrySendError::Disconnected(_)) => {
                inner
                    .shared
                    .backlog_bytes
                    .fetch_sub(cost, Ordering::Relaxed);
                self.drop_record(stream, "closed");
            }
        }
    }

    fn drop_record(&self, stream: Stream, reason: &'static str) {
        let inner = &self.inner;
        inner.shared.counters.dropped(stream, reason);
        // One line a second at most: a full backlog under load must not flood the log too.
        let now = u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = inner.last_drop_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && inner
                .last_drop_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let stats = self.stats();
            tracing::warn!(
                stream = stream.as_str(),
                reason,
                dropped_total = stats.dropped + stats.events_dropped,
                backlog_records = stats.backlog_records,
                backlog_bytes = stats.backlog_bytes,
                "prediction log record dropped: the sink is not keeping up"
            );
        }
    }

    pub fn stats(&self) -> LogStats {
        let inner = &self.inner;
        let c = &inner.shared.counters;
        let get = |a: &[AtomicU64; 2], s: Stream| a[s.index()].load(Ordering::Relaxed);
        LogStats {
            sink: inner.sink_name,
            backlog_records: inner.queue.as_ref().map_or(0, |q| q.len()),
            backlog_bytes: inner.shared.backlog_bytes.load(Ordering::Relaxed),
            delivered: get(&c.delivered, Stream::Predictions),
            dropped: get(&c.dropped, Stream::Predictions),
            failed: get(&c.failed, Stream::Predictions),
            events_delivered: get(&c.delivered, Stream::Events),
            events_dropped: get(&c.dropped, Stream::Events),
            events_failed: get(&c.failed, Stream::Events),
        }
    }

    /// Stops taking records, delivers the backlog within `timeout`, and reports what could
    /// not be delivered (also counted as dropped with reason "shutdown"). Blocks: call it from
    /// a blocking context. A second call returns at once.
    pub fn close(&self, timeout: Duration) -> CloseReport {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let request = inner.close_request.lock().ok().and_then(|mut r| r.take());
        let answer = inner.closing.lock().ok().and_then(|mut r| r.take());
        let undelivered = match (request, answer) {
            (Some(request), Some(answer)) => {
                let _ = request.send(deadline);
                // The writer answers by the deadline; a little slack for its last flush.
                answer
                    .recv_timeout(timeout + Duration::from_secs(1))
                    .unwrap_or_else(|_| inner.queue.as_ref().map_or(0, |q| q.len() as u64))
            }
            _ => 0,
        };
        if let Some(handle) = inner.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
        let stats = self.stats();
        let report = CloseReport {
            delivered: stats.delivered + stats.events_delivered,
            undelivered,
            dropped: stats.dropped + stats.events_dropped,
            failed: stats.failed + stats.events_failed,
        };
        if inner.queue.is_some() {
            if report.undelivered > 0 {
                tracing::warn!(
                    sink = inner.sink_name,
                    delivered = report.delivered,
                    undelivered = report.undelivered,
                    dropped = report.dropped,
                    failed = report.failed,
                    "prediction log closed with records not delivered"
                );
            } else {
                tracing::info!(
                    sink = inner.sink_name,
                    delivered = report.delivered,
                    dropped = report.dropped,
                    failed = report.failed,
                    "prediction log flushed and closed"
                );
            }
        }
        report
    }
}

/// Drift alerts (raised and cleared) become `drift` lifecycle events, so that whatever reads
/// the events stream (a retraining job, an audit) learns of them.
impl crate::drift::DriftAlertSink for PredictionLog {
    fn alert(&self, alert: &crate::drift::DriftAlert) {
        let what = if alert.prediction {
            "prediction"
        } else {
            "input feature"
        };
        let state = match alert.state {
            crate::drift::alert::AlertState::Raised => "drifting",
            crate::drift::alert::AlertState::Cleared => "back within bounds",
        };
        self.event(
            Event::new(
                EventKind::Drift,
                &alert.model,
                "drift monitor",
                format!("{what} '{}' {state}", alert.series),
            )
            .version(alert.version)
            .details(serde_json::to_value(alert).unwrap_or_default()),
        );
    }
}

/// What a shutdown flush achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// Records delivered over the process's life.
    pub delivered: u64,
    /// Records still held at the deadline: lost.
    pub undelivered: u64,
    pub dropped: u64,
    pub failed: u64,
}

/// How long the writer sleeps once it has drained the backlog.
const POLL_PAUSE: Duration = Duration::from_millis(2);
/// How long the writer waits before offering a refused record again.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Longest a written record waits in the sink's buffers under steady load.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often the writer publishes the backlog gauges.
const GAUGE_EVERY: Duration = Duration::from_millis(250);

fn write_loop(
    mut sink: Box<dyn Sink>,
    records: Receiver<Entry>,
    close: Receiver<Instant>,
    done: Sender<u64>,
    shared: Arc<Shared>,
) {
    let mut published = [[0; 2]; 2];
    let mut gauges_at = Instant::now();
    let mut flushed_at = Instant::now();
    let mut held: Option<Entry> = None;
    let deadline = 'serve: loop {
        if let Ok(deadline) = close.try_recv() {
            break deadline;
        }
        if gauges_at.elapsed() >= GAUGE_EVERY {
            metrics::record_predlog_backlog(records.len(), shared.backlog_bytes());
            shared.counters.publish(&mut published);
            gauges_at = Instant::now();
        }
        // Under steady load the queue is never empty for long: flush on a clock too, so that
        // records reach the disk (and count as delivered) within a fraction of a second.
        if flushed_at.elapsed() >= FLUSH_EVERY {
            sink.idle();
            flushed_at = Instant::now();
        }
        // Drain what has arrived, then pause. Polling (rather than blocking on the queue)
        // means a request never has to wake this thread: pushing a record is a plain queue
        // write, and the writer takes records in batches.
        loop {
            let entry = match held.take() {
                Some(entry) => entry,
                None => match records.try_recv() {
                    Ok(entry) => entry,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'serve Instant::now(),
                },
            };
            let cost = entry.cost();
            match sink.offer(entry) {
                Ok(()) => shared.release(cost),
                Err(back) => {
                    // The sink is full (brokers away): hold the record and let the backlog
                    // fill behind it; only a full backlog drops.
                    held = Some(back);
                    sink.idle();
                    break;
                }
            }
        }
        std::thread::sleep(if held.is_some() {
            RETRY_PAUSE
        } else {
            POLL_PAUSE
        });
    };
    // Shutdown: deliver what is queued until the deadline, then let the sink flush.
    let mut undelivered = 0;
    let queued: Vec<Entry> = held.into_iter().chain(records.try_iter()).collect();
    for mut entry in queued {
        let stream = entry.stream;
        let cost = entry.cost();
        loop {
            if Instant::now() >= deadline {
                undelivered += 1;
                shared.counters.dropped(stream, "shutdown");
                break;
            }
            match sink.offer(entry) {
                Ok(()) => break,
                Err(back) => {
                    entry = back;
                    sink.idle();
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
        shared.release(cost);
    }
    undelivered += sink.close(deadline);
    metrics::record_predlog_backlog(0, shared.backlog_bytes());
    shared.counters.publish(&mut published);
    let _ = done.send(undelivered);
}

//! Fleet control: replicas that agree on their models through a compacted Kafka topic.
//!
//! Every change of a model (a load or unload, a traffic policy, a rollout's start, step,
//! promotion, rollback or abort) is written to the control topic as the model's whole desired
//! state ([`record::ControlRecord`]), and every replica, the one that wrote it included, reads
//! the topic in order and applies what it reads ([`apply`]). Nothing changes a replica's models
//! except what it reads there, so all replicas go through the same states in the same order.
//!
//! - **Where it runs.** One consumer thread per replica reads the topic from the beginning and
//!   hands records, in order, to one applier task; the applier is the only writer of the
//!   routing snapshot for model changes.
//! - **Read your writes.** A change asked of this replica is written with a unique `op`; the
//!   call waits until this replica's applier has applied that very record (bounded by
//!   `fleet.apply_timeout`), then answers from the state now in force here.
//! - **Races and duplicates.** A change carries the model's next generation. Of two records
//!   with the same generation the first in the topic wins everywhere; the second is a
//!   duplicate when it asks for the same state (two guards deciding the same rollout step),
//!   else stale: skipped by every replica, its writer answers 409, and re-asserts the winning
//!   state so that the latest record of the model (what compaction keeps) is the state in
//!   force.
//! - **Start-up.** A replica reads the whole topic before it reports ready, then loads each
//!   model as its latest record says (models the topic never mentioned load as a single node
//!   would).

pub mod apply;
pub mod config;
mod control;
pub mod kafka;
pub mod record;
pub mod rollout_record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

pub use config::FleetConfig;
pub use record::{ControlRecord, SCHEMA};

use crate::lifecycle::{Actor, ModelManager};
use crate::routing::{Phase, RolloutState};
use kafka::{Incoming, Publisher, Settings};
use rollout_record::RolloutRecord;
use sluice_core::error::{ErrorKind, ServeError};

/// What became of a record this replica wrote, once its applier read it back.
#[derive(Debug)]
enum Outcome {
    Applied(apply::Applied),
    /// The state in force already.
    Duplicate,
    /// Another change of the model came first.
    Stale,
    Failed(ServeError),
}

/// A rollout decision's identity: which rollout, its state and phase after the decision.
type DecisionKey = (u64, RolloutState, Phase);

/// What the applier and the writers share; never held across an await.
#[derive(Default)]
struct Ledger {
    /// The latest accepted record of each model.
    accepted: BTreeMap<String, ControlRecord>,
    /// The load request (`ControlRecord::load`) each model was last loaded for here.
    loads: HashMap<String, u64>,
    /// Writers waiting for their record to come back, by op.
    waiters: HashMap<String, oneshot::Sender<Outcome>>,
    /// Guard decisions written and not yet read back, by model: the guard decides again every
    /// tick, and one record per decision is enough.
    proposals: HashMap<String, (DecisionKey, Instant)>,
    /// Ops of records this replica wrote to undo its own failed change: never undone again.
    reverts: HashSet<String>,
}

/// One replica's end of the fleet.
pub struct Fleet {
    replica: String,
    /// Prefix of this process's ops: the replica id and a random nonce, so that two processes
    /// with one replica id (same host name) never take each other's records for their own.
    instance: String,
    topic: String,
    apply_timeout: Duration,
    publisher: Publisher,
    models: Arc<ModelManager>,
    ops: AtomicU64,
    ledger: Mutex<Ledger>,
    /// Held by the applier while it applies a record and by a writer while it builds one: a
    /// change is always built on a state that is the outcome of whole records.
    applying: tokio::sync::Mutex<()>,
    stop: Arc<AtomicBool>,
}

/// The consumer's output, waiting for [`Fleet::catch_up`] and then [`Fleet::run`].
pub struct Feed(mpsc::Receiver<Incoming>);

/// Records the consumer thread may have read ahead of the applier.
const FEED_CAPACITY: usize = 256;

impl Fleet {
    /// Connects to the control topic and starts reading it (see [`Fleet::catch_up`]); `None`
    /// without `fleet.control_topic`.
    /// `brokers` are the ones the server resolved for the fleet (`fleet.brokers`, else the
    /// prediction log's).
    pub fn connect(
        config: &FleetConfig,
        brokers: &str,
        models: Arc<ModelManager>,
    ) -> Result<Option<(Arc<Fleet>, Feed)>, String> {
        let Some(topic) = config.control_topic.clone() else {
            return Ok(None);
        };
        let replica = config.replica_id();
        let instance = format!("{replica}:{:08x}", rand::random::<u32>());
        let settings = Settings {
            brokers: brokers.to_string(),
            topic: topic.clone(),
            client_id: format!("sluice-fleet-{replica}"),
            write_timeout: config.apply_timeout,
            extra: config.kafka.clone(),
        };
        let publisher = Publisher::connect(&settings)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        tracing::info!(
            brokers = %settings.brokers,
            topic = %topic,
            replica = %replica,
            "fleet mode: models follow the control topic"
        );
        kafka::consume(settings, tx, Arc::clone(&stop))?;
        let fleet = Fleet {
            replica,
            instance,
            topic,
            apply_timeout: config.apply_timeout,
            publisher,
            models,
            ops: AtomicU64::new(0),
            ledger: Mutex::default(),
            applying: tokio::sync::Mutex::new(()),
            stop,
        };
        Ok(Some((Arc::new(fleet), Feed(rx))))
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the ledger cannot leave it half-written in a way that matters
        // more than stopping every admin call would.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the control topic to its end, then brings every model to its latest record (and
    /// loads the models the topic never mentioned from the repository, as a single node
    /// does). Waits for the brokers as long as it takes: a replica must not serve a state the
    /// fleet has left behind.
    pub async fn catch_up(&self, feed: &mut Feed) -> Result<(), String> {
        tracing::info!(topic = %self.topic, "reading the control topic before serving");
        loop {
            match feed.0.recv().await {
                Some(Incoming::Record(record)) => {
                    let mut ledger = self.ledger();
                    let latest = ledger.accepted.get(&record.model);
                    if record.verdict(latest) == record::Verdict::Accept {
                        ledger.accepted.insert(record.model.clone(), *record);
                    }
                }
                Some(Incoming::CaughtUp) => break,
                None => return Err("the control topic consumer stopped".into()),
            }
        }
        let latest: Vec<ControlRecord> = self.ledger().accepted.values().cloned().collect();
        let named: HashSet<String> = latest.iter().map(|r| r.model.clone()).collect();
        self.models
            .load_all_but(|name| named.contains(name))
            .await
            .map_err(|e| e.to_string())?;
        for record in &latest {
            if let Err(error) = self.apply(record).await {
                // Serving the model as a single node would beats not serving it at all.
                tracing::error!(
                    model = %record.model,
                    %error,
                    "cannot apply the model's control record; loading it from the repository"
                );
                if record.loaded {
                    let _ = self
                        .models
                        .load(&record.model, &Actor::new("start-up"))
                        .await;
                }
            }
        }
        tracing::info!(models = latest.len(), "control topic applied");
        Ok(())
    }

    /// Applies records as they come, until shutdown.
    pub async fn run(self: Arc<Self>, mut feed: Feed, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stopping = async {
                let _ = shutdown.wait_for(|stopped| *stopped).await;
            };
            let incoming = tokio::select! {
                incoming = feed.0.recv() => incoming,
                () = stopping => break,
            };
            match incoming {
                Some(Incoming::Record(record)) => self.receive(*record).await,
                Some(Incoming::CaughtUp) => {}
                None => break,
            }
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Writes a record nobody waits for; a failure is only logged.
    fn write_unwaited(&self, record: ControlRecord) {
        let delivered = self.publisher.send(&record.model, &record.to_json());
        let model = record.model;
        tokio::spawn(async move {
            if let Ok(Err(error)) = delivered.await {
                tracing::warn!(%model, %error, "control record not written");
            }
        });
    }

    fn next_op(&self) -> String {
        format!(
            "{}:{}",
            self.instance,
            self.ops.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    fn is_mine(&self, record: &ControlRecord) -> bool {
        record
            .op
            .strip_prefix(self.instance.as_str())
            .is_some_and(|rest| rest.starts_with(':'))
    }

    /// The model's next record as this replica sees it: the state in force here, one
    /// generation on from the latest accepted record.
    fn base(&self, model: &str, actor: &str, reason: String) -> ControlRecord {
        let snapshot = self.models.router().snapshot();
        let routes = snapshot.models.get(model);
        let (generation, load) = {
            let ledger = self.ledger();
            let latest = ledger.accepted.get(model);
            (
                latest.map_or(0, |r| r.generation),
                latest.map_or(0, |r| r.load),
            )
        };
        ControlRecord {
            schema: SCHEMA.into(),
            model: model.into(),
            generation: generation + 1,
            loaded: routes.is_some(),
            versions: routes
                .map(|r| r.versions.keys().rev().copied().collect())
                .unwrap_or_default(),
            load,
            traffic: routes.map(|r| r.traffic.to_policy()).unwrap_or_default(),
            rollout: routes
                .and_then(|r| r.rollout.as_deref())
                .map(RolloutRecord::from_rollout),
            origin: self.replica.clone(),
            op: self.next_op(),
            actor: actor.into(),
            reason,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }

    /// Writes the change `edit` makes to the model's state and waits until this replica has
    /// applied it. 503 when the brokers did not take it within `apply_timeout`, 504 when they
    /// did but this replica has not applied it yet, 409 when another change came first.
    async fn change(
        &self,
        model: &str,
        actor: &Actor,
        reason: String,
        edit: impl FnOnce(&mut ControlRecord) -> Result<(), ServeError>,
    ) -> Result<apply::Applied, ServeError> {
        let deadline = tokio::time::Instant::now() + self.apply_timeout;
        let (delivered, applied, op) = {
            let Ok(_applying) = tokio::time::timeout_at(deadline, self.applying.lock()).await
            else {
                return Err(ServeError::new(
                    ErrorKind::Timeout,
                    format!(
                        "this replica is still applying an earlier change of the fleet (a \
                         model load?) after {}; nothing was written: try again shortly",
                        humantime::format_duration(self.apply_timeout)
                    ),
                ));
            };
            let mut record = self.base(model, &actor.0, reason);
            edit(&mut record)?;
            let (tx, rx) = oneshot::channel();
            self.ledger().waiters.insert(record.op.clone(), tx);
            let delivered = self.publisher.send(model, &record.to_json());
            (delivered, rx, record.op)
        };
        let forget = |fleet: &Fleet| {
            fleet.ledger().waiters.remove(&op);
        };
        let unavailable = |why: String| {
            ServeError::new(
                ErrorKind::Unavailable,
                format!(
                    "control topic unavailable: {why}; the change was not written and this \
                     replica keeps serving its current state"
                ),
            )
        };
        match tokio::time::timeout_at(deadline, delivered).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => {
                forget(self);
                return Err(unavailable(why));
            }
            Ok(Err(_)) | Err(_) => {
                forget(self);
                return Err(unavailable(format!(
                    "no acknowledgement from the brokers within {}",
                    humantime::format_duration(self.apply_timeout)
                )));
            }
        }
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(Outcome::Applied(applied))) => Ok(applied),
            Ok(Ok(Outcome::Duplicate)) => Ok(apply::Applied::default()),
            Ok(Ok(Outcome::Stale)) => Err(ServeError::new(
                ErrorKind::Conflict,
                format!(
                    "model '{model}' was changed meanwhile by another call or replica; nothing \
                     of this call was applied: look at the model and try again"
                ),
            )),
            Ok(Ok(Outcome::Failed(error))) => Err(error),
            Ok(Err(_)) | Err(_) => {
                forget(self);
                Err(ServeError::new(
                    ErrorKind::Timeout,
                    format!(
                        "the change was written to the control topic but not applied on this \
                         replica within {}; every replica applies it as it catches up",
                        humantime::format_duration(self.apply_timeout)
                    ),
                ))
            }
        }
    }
}

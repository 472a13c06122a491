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

use crate::control::{ModelControl, RolloutChange};
use crate::lifecycle::{Actor, LoadReport, ModelManager};
use crate::predlog::{Event, EventKind};
use crate::repository;
use crate::rollout::GUARD;
use crate::routing::{Phase, Rollout, RolloutState, TrafficPolicy};
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

    /// A traffic policy for the whole fleet; answers the policy in force here afterwards.
    async fn set_traffic_everywhere(
        &self,
        model: &str,
        policy: &TrafficPolicy,
        actor: &Actor,
    ) -> Result<TrafficPolicy, ServeError> {
        let router = Arc::clone(self.models.router());
        self.change(model, actor, "traffic policy changed".into(), |record| {
            let snapshot = router.snapshot();
            let routes = snapshot
                .models
                .get(model)
                .ok_or_else(|| ServeError::unknown_model(model))?;
            let traffic = routes.accept_traffic(model, policy)?;
            record.traffic = traffic.to_policy();
            Ok(())
        })
        .await?;
        let in_force = router
            .snapshot()
            .models
            .get(model)
            .map(|r| r.traffic.to_policy())
            .unwrap_or_default();
        self.models.events().event(
            Event::new(EventKind::Traffic, model, actor, "traffic policy changed")
                .details(serde_json::to_value(&in_force).unwrap_or_default()),
        );
        Ok(in_force)
    }

    /// (Re)loads a model on every replica: the versions its policy selects from this replica's
    /// repository (plus what a running rollout compares), re-read from disk everywhere. A
    /// `[rollout]` table in its `model.toml` starts a rollout of a new version, as on a single
    /// node.
    async fn load_everywhere(&self, model: &str, actor: &Actor) -> Result<LoadReport, ServeError> {
        let models = Arc::clone(&self.models);
        let applied = self
            .change(model, actor, "load requested".into(), |record| {
                plan_load(&models, model, &actor.0, record)
            })
            .await?;
        let snapshot = self.models.router().snapshot();
        let versions = snapshot
            .models
            .get(model)
            .map(|r| r.versions.keys().rev().copied().collect())
            .unwrap_or_default();
        Ok(LoadReport {
            model: model.to_string(),
            versions,
            loaded: applied.loaded,
            unloaded: applied.unloaded,
        })
    }

    /// Stops serving a model on every replica.
    async fn unload_everywhere(&self, model: &str, actor: &Actor) -> Result<(), ServeError> {
        let router = Arc::clone(self.models.router());
        self.change(model, actor, "unload requested".into(), |record| {
            if !router.snapshot().models.contains_key(model) {
                return Err(ServeError::unknown_model(model));
            }
            record.loaded = false;
            record.versions.clear();
            record.traffic = TrafficPolicy::default();
            record.rollout = None;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// A rollout change for the whole fleet, built on the state this replica's applier
    /// reached; answers the rollout as this replica holds it afterwards.
    async fn change_rollout_everywhere(
        &self,
        model: &str,
        actor: &Actor,
        change: RolloutChange<'_>,
    ) -> Result<Arc<Rollout>, ServeError> {
        let router = Arc::clone(self.models.router());
        let mut id = 0;
        self.change(model, actor, "rollout changed".into(), |record| {
            let snapshot = router.snapshot();
            let routes = snapshot
                .models
                .get(model)
                .ok_or_else(|| ServeError::unknown_model(model))?;
            let next = change(routes)?;
            id = next.id;
            record.reason.clone_from(&next.reason);
            record.traffic = next.traffic(&routes.traffic).to_policy();
            record.rollout = Some(RolloutRecord::from_rollout(&next));
            Ok(())
        })
        .await?;
        self.rollout_in_force(model, id)
    }

    fn rollout_in_force(&self, model: &str, id: u64) -> Result<Arc<Rollout>, ServeError> {
        self.models
            .router()
            .snapshot()
            .models
            .get(model)
            .and_then(|r| r.rollout.clone())
            .filter(|r| r.id == id)
            .ok_or_else(|| {
                ServeError::new(
                    ErrorKind::Conflict,
                    format!("the rollout of model '{model}' changed meanwhile; look and try again"),
                )
            })
    }

    /// Writes a guard decision without waiting: every replica applies it when it reads it,
    /// this one included (a replica deciding the same is harmless: the records are equal by
    /// rollout, step and outcome). The same decision is written once per `apply_timeout` at
    /// most while it has not come back; if it never does (brokers away), the guard decides it
    /// again.
    fn propose_decision(&self, model: &str, change: RolloutChange<'_>) {
        let snapshot = self.models.router().snapshot();
        let Some(routes) = snapshot.models.get(model) else {
            return;
        };
        let Ok(next) = change(routes) else {
            return;
        };
        let traffic = next.traffic(&routes.traffic);
        let key = (next.id, next.state, next.phase);
        {
            let mut ledger = self.ledger();
            if ledger
                .proposals
                .get(model)
                .is_some_and(|(k, at)| *k == key && at.elapsed() < self.apply_timeout)
            {
                return;
            }
            ledger
                .proposals
                .insert(model.to_string(), (key, Instant::now()));
        }
        // The applier is in the middle of a record: the state this decision was made on may be
        // on its way out. The guard looks again at its next tick.
        let Ok(_applying) = self.applying.try_lock() else {
            self.ledger().proposals.remove(model);
            return;
        };
        let mut record = self.base(model, GUARD, next.reason.clone());
        record.traffic = traffic.to_policy();
        record.rollout = Some(RolloutRecord::from_rollout(&next));
        self.write_unwaited(record);
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
}

/// Fills in a load request: the versions to serve, a rollout a `[rollout]` table starts, and
/// the traffic that goes with them. Checked here (unknown model, no matching version, a bad
/// `[rollout]` table) so that a request that cannot work never reaches the topic.
fn plan_load(
    models: &ModelManager,
    model: &str,
    actor: &str,
    record: &mut ControlRecord,
) -> Result<(), ServeError> {
    let dir = repository::read_model(&models.loader().repository, model).map_err(|e| match e {
        repository::RepositoryError::UnknownModel(_) => ServeError::not_found(e.to_string()),
        other => ServeError::bad_request(other.to_string()),
    })?;
    let wanted = models.loader().versions_to_load(&dir);
    if wanted.is_empty() {
        return Err(ServeError::bad_request(format!(
            "model '{model}': no version folder with a model file ({}) matches its version policy",
            sluice_runtime::MODEL_FILES
        )));
    }
    let plan =
        match &dir.config.rollout {
            Some(overrides) => Some(models.rollout_defaults().plan(overrides).map_err(
                |problems| {
                    ServeError::bad_request(format!(
                        "model '{model}': invalid rollout in model.toml: {}",
                        problems.join("; ")
                    ))
                },
            )?),
            None => None,
        };
    let snapshot = models.router().snapshot();
    let current = snapshot.models.get(model);
    let mut versions: Vec<u64> = wanted.clone();
    let mut traffic = current.map(|r| r.traffic.clone()).unwrap_or_default();
    let mut rollout = current.and_then(|r| r.rollout.clone());
    let active = rollout.as_ref().filter(|r| r.is_active()).cloned();
    // What a running rollout compares stays loaded: the baseline is its rollback target.
    if let Some(r) = &active {
        versions.extend([r.baseline, r.candidate]);
    }
    // A version that is new here (or whose file changed) earns its place step by step when the
    // model has a `[rollout]` table, against the primary serving now.
    let fresh = |v: &u64| {
        !current
            .and_then(|r| r.versions.get(v))
            .is_some_and(|loaded| loaded.is_current(&dir))
    };
    let newest_fresh = wanted.iter().copied().filter(fresh).max();
    let primary = current.and_then(|r| r.primary_version()).map(|v| v.version);
    if let (Some(plan), Some(newest), Some(primary), None) = (plan, newest_fresh, primary, &active)
        && newest > primary
    {
        versions.push(primary);
        let started = Rollout::fresh(newest, primary, plan, actor, Instant::now());
        traffic = started.traffic(&traffic);
        rollout = Some(Arc::new(started));
    }
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions.dedup();
    traffic.retain_loaded(|v| versions.contains(&v));
    record.loaded = true;
    record.versions = versions;
    // Every replica re-reads the files of a model whose load request changed.
    record.load = record.generation;
    record.traffic = traffic.to_policy();
    record.rollout = rollout.as_deref().map(RolloutRecord::from_rollout);
    Ok(())
}

/// The fleet's control: every change goes through the control topic.
#[async_trait::async_trait]
impl ModelControl for Fleet {
    async fn load(&self, model: &str, actor: &Actor) -> Result<LoadReport, ServeError> {
        self.load_everywhere(model, actor).await
    }

    async fn unload(&self, model: &str, actor: &Actor) -> Result<(), ServeError> {
        self.unload_everywhere(model, actor).await
    }

    async fn set_traffic(
        &self,
        model: &str,
        policy: &TrafficPolicy,
        actor: &Actor,
    ) -> Result<TrafficPolicy, ServeError> {
        self.set_traffic_everywhere(model, policy, actor).await
    }

    async fn change_rollout(
        &self,
        model: &str,
        actor: &Actor,
        change: RolloutChange<'_>,
    ) -> Result<Arc<Rollout>, ServeError> {
        self.change_rollout_everywhere(model, actor, change).await
    }

    fn propose_rollout(&self, model: &str, change: RolloutChange<'_>) {
        self.propose_decision(model, change);
    }
}

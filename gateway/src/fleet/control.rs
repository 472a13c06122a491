//! The fleet's side of [`ModelControl`]: each change becomes the model's next control record,
//! written to the topic and answered once this replica has applied it (a guard's decision is
//! written without waiting).

use std::sync::Arc;
use std::time::Instant;

use super::Fleet;
use super::record::ControlRecord;
use super::rollout_record::RolloutRecord;
use crate::control::{ModelControl, RolloutChange};
use crate::lifecycle::{Actor, LoadReport, ModelManager};
use crate::predlog::{Event, EventKind};
use crate::repository;
use crate::rollout::GUARD;
use crate::routing::{Rollout, TrafficPolicy};
use sluice_core::error::{ErrorKind, ServeError};

impl Fleet {
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

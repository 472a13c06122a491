//! Model lifecycle: (re)loading a model's versions from the repository and publishing them in
//! one snapshot store, unloading, and the start-up load of the whole repository.

mod announce;
mod exact;
mod index;

pub use announce::{announce_decision, announce_start, watch_predictions};
pub use index::{IndexEntry, ModelState};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::predlog::{Event, EventKind, PredictionLog};
use crate::repository::{self, Loader};
use crate::rollout::{RolloutConfig, RolloutPlan};
use crate::routing::{ModelRoutes, Rollout, Router};
use sluice_core::error::{ErrorKind, ServeError};

/// Who asked for a lifecycle change, for the audit trail ("admin api: token holder at
/// 10.0.0.7:51234", "repository poller", "start-up").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn new(who: impl Into<String>) -> Actor {
        Actor(who.into())
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Loads and unloads models; one load per model at a time.
pub struct ModelManager {
    loader: Arc<Loader>,
    router: Arc<Router>,
    /// Models with a load or unload in progress.
    busy: Mutex<BTreeSet<String>>,
    /// The last load failure per model, cleared by a successful load.
    failures: Mutex<BTreeMap<String, String>>,
    /// Where lifecycle events go (and their log lines).
    events: PredictionLog,
    /// Defaults for rollouts that a model's `[rollout]` table starts on load.
    rollouts: RolloutConfig,
}

/// What a successful load did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadReport {
    pub model: String,
    /// Versions serving after the load, highest first.
    pub versions: Vec<u64>,
    /// Versions that were newly loaded.
    pub loaded: Vec<u64>,
    /// Versions that were dropped by the version policy.
    pub unloaded: Vec<u64>,
}

/// Releases the per-model busy mark however the operation ends.
struct BusyGuard<'a> {
    busy: &'a Mutex<BTreeSet<String>>,
    model: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.model);
        }
    }
}

impl ModelManager {
    pub fn new(loader: Arc<Loader>, router: Arc<Router>, events: PredictionLog) -> ModelManager {
        ModelManager {
            loader,
            router,
            busy: Mutex::new(BTreeSet::new()),
            failures: Mutex::new(BTreeMap::new()),
            events,
            rollouts: RolloutConfig::default(),
        }
    }

    /// Sets the defaults of rollouts started by loads (the server's `[rollout]` section).
    pub fn with_rollout_defaults(mut self, defaults: RolloutConfig) -> ModelManager {
        self.rollouts = defaults;
        self
    }

    /// The defaults of rollouts that a model's `[rollout]` table starts.
    pub fn rollout_defaults(&self) -> &RolloutConfig {
        &self.rollouts
    }

    /// The events stream, for other parts that change models (traffic, rollouts).
    pub fn events(&self) -> &PredictionLog {
        &self.events
    }

    fn primary_of(&self, model: &str) -> Option<u64> {
        let snapshot = self.router.snapshot();
        let routes = snapshot.models.get(model)?;
        routes.primary_version().map(|v| v.version)
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn loader(&self) -> &Arc<Loader> {
        &self.loader
    }

    /// The last load failure of each model that has one.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn claim(&self, model: &str) -> Result<BusyGuard<'_>, ServeError> {
        let mut busy = self
            .busy
            .lock()
            .map_err(|_| ServeError::new(ErrorKind::Internal, "lifecycle lock poisoned"))?;
        if !busy.insert(model.to_string()) {
            return Err(ServeError::new(
                ErrorKind::Conflict,
                format!("model '{model}' is already being loaded or unloaded"),
            ));
        }
        Ok(BusyGuard {
            busy: &self.busy,
            model: model.to_string(),
        })
    }

    /// After a load: remembers the model's failure (or forgets an old one), and reports a
    /// failure as a `load_failed` event. Successes are reported by the caller, which knows what
    /// changed.
    fn record_outcome<T>(&self, model: &str, actor: &Actor, result: &Result<T, ServeError>) {
        // A name with no model folder was never a model: remembering its failure (or counting
        // an event under it) would leave a ghost entry and a metric series for any name a
        // client sends.
        if let Err(error) = result
            && error.kind == sluice_core::error::ErrorKind::NotFound
        {
            tracing::info!(
                model = %sluice_core::error::truncate(model, sluice_core::error::ECHO_MAX),
                %actor,
                "load refused: no such model folder"
            );
            if let Ok(mut failures) = self.failures.lock() {
                failures.remove(model);
            }
            return;
        }
        if let Ok(mut failures) = self.failures.lock() {
            match result {
                Err(e) => failures.insert(model.to_string(), e.message.clone()),
                Ok(_) => failures.remove(model),
            };
        }
        if let Err(error) = result {
            self.events.event(Event::new(
                EventKind::LoadFailed,
                model,
                actor,
                format!("{}; nothing changed", error.message),
            ));
        }
    }

    /// Re-reads the model's folder, applies its version policy, loads versions that are new
    /// (or whose file changed), and publishes the result in one store. On any failure nothing
    /// changes and the error says why.
    pub async fn load(&self, model: &str, actor: &Actor) -> Result<LoadReport, ServeError> {
        let _guard = self.claim(model)?;
        let primary_before = self.primary_of(model);
        let result = self.load_claimed(model, actor).await;
        self.record_outcome(model, actor, &result);
        if let Ok(report) = &result {
            let reason = if report.loaded.is_empty() && report.unloaded.is_empty() {
                "reload: nothing changed"
            } else {
                "versions published"
            };
            self.events
                .event(Event::new(EventKind::Load, model, actor, reason).details(
                    serde_json::json!({
                        "versions": report.versions,
                        "loaded": report.loaded,
                        "unloaded": report.unloaded,
                    }),
                ));
            let primary_after = self.primary_of(model);
            if let (Some(from), Some(to)) = (primary_before, primary_after)
                && from != to
            {
                self.events.event(
                    Event::new(EventKind::Swap, model, actor, "primary version changed")
                        .version(to)
                        .details(serde_json::json!({ "from": from, "to": to })),
                );
            }
        }
        result
    }

    async fn load_claimed(&self, model: &str, actor: &Actor) -> Result<LoadReport, ServeError> {
        let dir = repository::read_model(&self.loader.repository, model).map_err(|e| match e {
            repository::RepositoryError::UnknownModel(_) => ServeError::not_found(e.to_string()),
            other => ServeError::bad_request(other.to_string()),
        })?;
        let wanted = self.loader.versions_to_load(&dir);
        if wanted.is_empty() {
            return Err(ServeError::bad_request(format!(
                "model '{model}': no version folder with a model file ({}) matches its version policy",
                sluice_runtime::MODEL_FILES
            )));
        }
        let current = self.router.snapshot().models.get(model).cloned();
        let mut versions = BTreeMap::new();
        let mut loaded = Vec::new();
        for &version in &wanted {
            let ready = self
                .reuse_or_load(current.as_ref(), &dir, version, &mut loaded)
                .await?;
            versions.insert(version, ready);
        }
        let unloaded_by_policy: Vec<u64> = current
            .as_ref()
            .map(|routes| {
                routes
                    .versions
                    .keys()
                    .filter(|v| !versions.contains_key(v))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let plan = match &dir.config.rollout {
            Some(overrides) => Some(self.rollouts.plan(overrides).map_err(|problems| {
                ServeError::bad_request(format!(
                    "model '{model}': invalid rollout in model.toml: {}",
                    problems.join("; ")
                ))
            })?),
            None => None,
        };
        let newest_loaded = loaded.iter().max().copied();
        let now = std::time::Instant::now();
        let mut started = None;
        self.router.update(|snapshot| {
            let reload = Reload {
                versions: &versions,
                newest_loaded,
                plan: plan.as_ref(),
                actor: &actor.0,
                now,
            };
            let (routes, rollout) = reload.routes(model, snapshot.models.get(model));
            started = rollout;
            snapshot.with_model(model, routes)
        });
        if let Some(rollout) = &started {
            announce_start(&self.events, &self.router, model, rollout);
        }
        let serving = self.router.snapshot();
        let serving = serving.models.get(model);
        let is_serving = |v: &u64| serving.is_some_and(|r| r.versions.contains_key(v));
        let unloaded = unloaded_by_policy
            .into_iter()
            .filter(|v| !is_serving(v))
            .collect();
        let versions: Vec<u64> = serving
            .map(|r| r.versions.keys().rev().copied().collect())
            .unwrap_or(wanted);
        Ok(LoadReport {
            model: model.to_string(),
            versions,
            loaded,
            unloaded,
        })
    }

    /// The version as it is loaded now when its files have not changed since, else a fresh
    /// load of it (recorded in `loaded`).
    async fn reuse_or_load(
        &self,
        current: Option<&ModelRoutes>,
        dir: &repository::ModelDir,
        version: u64,
        loaded: &mut Vec<u64>,
    ) -> Result<Arc<repository::LoadedVersion>, ServeError> {
        let reusable = current
            .and_then(|routes| routes.versions.get(&version))
            .filter(|v| v.is_current(dir));
        if let Some(existing) = reusable {
            return Ok(Arc::clone(existing));
        }
        let fresh = self.loader.load(dir, version).await.map_err(|e| {
            ServeError::bad_request(format!(
                "model '{}' version {version} failed to load: {e}",
                dir.name
            ))
        })?;
        loaded.push(version);
        Ok(fresh)
    }

    /// Removes the model from routing. In-flight requests finish on the versions they hold.
    pub async fn unload(&self, model: &str, actor: &Actor) -> Result<(), ServeError> {
        let _guard = self.claim(model)?;
        if !self.router.snapshot().models.contains_key(model) {
            return Err(ServeError::unknown_model(model));
        }
        self.router.update(|snapshot| snapshot.without_model(model));
        self.events.event(Event::new(
            EventKind::Unload,
            model,
            actor,
            "removed from serving",
        ));
        Ok(())
    }

    /// Loads every model in the repository. A model that fails is logged and left out; the
    /// rest serve.
    pub async fn load_all(&self) -> Result<(), repository::RepositoryError> {
        self.load_all_but(|_| false).await
    }

    /// Like [`ModelManager::load_all`], leaving out the models `skip` names (a fleet loads
    /// those as its control topic says).
    pub async fn load_all_but(
        &self,
        skip: impl Fn(&str) -> bool,
    ) -> Result<(), repository::RepositoryError> {
        let (models, problems) = repository::scan(&self.loader.repository)?;
        for problem in problems {
            tracing::error!(error = %problem, "model skipped");
        }
        for model in models.iter().filter(|m| !skip(&m.name)) {
            let _ = self.load(&model.name, &Actor::new("start-up")).await;
        }
        Ok(())
    }
}

/// A load's outcome, turned into the model's next routes.
struct Reload<'a> {
    versions: &'a BTreeMap<u64, Arc<repository::LoadedVersion>>,
    /// The highest version this load newly loaded.
    newest_loaded: Option<u64>,
    /// The model's `[rollout]` table, checked.
    plan: Option<&'a RolloutPlan>,
    actor: &'a str,
    now: std::time::Instant,
}

impl Reload<'_> {
    /// The model's routes after the load, given its routes before (`None`: a first load), and
    /// the rollout the load started, if any. Pure: nothing is stored.
    fn routes(
        &self,
        model: &str,
        previous: Option<&ModelRoutes>,
    ) -> (ModelRoutes, Option<Arc<Rollout>>) {
        let mut routes = ModelRoutes {
            versions: self.versions.clone(),
            // The traffic policy survives a reload, less what names versions now gone.
            traffic: previous.map(|r| r.traffic.clone()).unwrap_or_default(),
            rollout: previous.and_then(|r| r.rollout.clone()),
        };
        // What a running rollout compares stays loaded whatever the version policy says:
        // the baseline is its instant rollback target.
        if let Some((previous, rollout)) = previous.zip(routes.rollout.clone())
            && rollout.is_active()
        {
            keep_loaded(
                &mut routes,
                previous,
                &[rollout.baseline, rollout.candidate],
            );
        }
        let mut started = None;
        if let (Some(plan), Some(previous), Some(newest)) =
            (self.plan, previous, self.newest_loaded)
            && let Some(primary) = previous.primary_version().map(|v| v.version)
            && newest > primary
            && !routes.rollout.as_ref().is_some_and(|r| r.is_active())
        {
            // A `[rollout]` table: the new version earns its place step by step, and the
            // primary it is compared with stays loaded and pinned meanwhile.
            keep_loaded(&mut routes, previous, &[primary]);
            routes.traffic.primary = Some(primary);
            match Rollout::begin(model, &routes, newest, plan.clone(), self.actor, self.now) {
                Ok((rollout, traffic)) => {
                    let rollout = Arc::new(rollout);
                    routes.traffic = traffic;
                    routes.rollout = Some(Arc::clone(&rollout));
                    started = Some(rollout);
                }
                Err(error) => {
                    tracing::warn!(model, %error, "rollout not started");
                }
            }
        }
        let kept: Vec<u64> = routes.versions.keys().copied().collect();
        routes.traffic.retain_loaded(|v| kept.contains(&v));
        (routes, started)
    }
}

/// Puts `versions` back into `routes` from `previous` where a reload left them out.
fn keep_loaded(routes: &mut ModelRoutes, previous: &ModelRoutes, versions: &[u64]) {
    for v in versions {
        if let Some(held) = previous.versions.get(v) {
            routes
                .versions
                .entry(*v)
                .or_insert_with(|| Arc::clone(held));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::Snapshot;

    #[tokio::test]
    async fn a_second_load_of_the_same_model_is_refused_while_one_runs() {
        let config = Config::default();
        let manager = ModelManager::new(
            Arc::new(Loader::new(
                &config.runtime,
                &config.repository,
                &config.drift,
            )),
            Arc::new(Router::new(Snapshot::default())),
            PredictionLog::disabled(),
        );
        let actor = Actor::new("test");
        let running = manager.claim("credit").unwrap();
        let err = manager.load("credit", &actor).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(
            err.message.contains("already being loaded"),
            "{}",
            err.message
        );
        let err = manager.unload("credit", &actor).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        // Another model is not blocked, and the claim ends with the load.
        assert_ne!(
            manager.load("digits", &actor).await.unwrap_err().kind,
            ErrorKind::Conflict
        );
        drop(running);
        assert_ne!(
            manager.load("credit", &actor).await.unwrap_err().kind,
            ErrorKind::Conflict
        );
    }
}

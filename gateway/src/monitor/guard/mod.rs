//! The rollout guard: progressive rollouts that promote or roll back by themselves.
//!
//! A rollout lives in the routing snapshot, next to the traffic policy it drives
//! ([`crate::routing::ModelRoutes::rollout`]), so that a step, a promotion or a rollback
//! changes the weights and the rollout's state in one store: a reader never sees a rollback
//! without its weight of zero, or the reverse. The guard is one task that ticks every
//! `rollout.tick`; at each tick it reads the snapshot, compares each running rollout's
//! candidate with its baseline over the current phase (see [`stats`] for the tests), and, when
//! a decision is due, stores the next rollout and traffic with a compare-and-swap that gives
//! way if anything else changed the rollout meanwhile.

mod decide;
pub mod judge;
pub mod plan;
pub mod state;
pub mod stats;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

pub use judge::Assessment;
pub use plan::{RolloutConfig, RolloutOverrides, RolloutPlan, ShadowStage};
pub use state::{Phase, Rollout, RolloutState};
pub use wire::{DecisionRecord, RolloutRecord};

use decide::{Action, transition};

use crate::error::{ErrorKind, ServeError};
use crate::infer::Inference;
use crate::monitor::metrics;
use crate::predlog::{Event, EventKind, PredictionLog};
use crate::routing::{ModelRoutes, Router, Traffic, parse_version};

/// The actor named in the guard's own decisions.
pub(crate) const GUARD: &str = "guard";

/// The rollout changed under the guard's feet (a new rollout, an abort): nothing is stored.
struct Stale;

/// What the guard remembers between ticks; none of it decides routing.
#[derive(Default)]
struct Notes {
    /// The latest comparison per model, with the id of the rollout it was made for.
    latest: HashMap<String, (u64, Assessment)>,
    /// Shadow totals (compared, label rows, agreeing rows) when the guard first saw a
    /// rollout's shadow stage: the shadow totals are kept per version for the life of the
    /// process, so the stage counts what was added since.
    shadow_marks: HashMap<u64, (u64, u64, u64)>,
}

pub struct Guard {
    router: Arc<Router>,
    events: PredictionLog,
    inference: Arc<Inference>,
    config: RolloutConfig,
    notes: Mutex<Notes>,
    /// In a fleet, decisions go to the control topic and come back to be applied here like on
    /// every other replica; alone, the guard stores them itself.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Guard {
    pub fn new(
        router: Arc<Router>,
        events: PredictionLog,
        inference: Arc<Inference>,
        config: RolloutConfig,
    ) -> Guard {
        Guard {
            router,
            events,
            inference,
            config,
            notes: Mutex::default(),
            fleet: None,
        }
    }

    /// Publishes decisions to the fleet's control topic instead of storing them.
    pub fn with_fleet(mut self, fleet: Option<Arc<crate::fleet::Fleet>>) -> Guard {
        self.fleet = fleet;
        self
    }

    /// The `[rollout]` defaults.
    pub fn config(&self) -> &RolloutConfig {
        &self.config
    }

    /// Ticks until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick(),
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// One look at every rollout; acts on those with a decision due.
    pub fn tick(&self) {
        let snapshot = self.router.snapshot();
        let now = Instant::now();
        let mut live = Vec::new();
        for (model, routes) in &snapshot.models {
            let active = routes.rollout.as_ref().filter(|r| r.is_active());
            watch_predictions(routes, active.map(|r| &**r));
            let Some(rollout) = active else {
                continue;
            };
            live.push(rollout.id);
            let agreement = || self.shadow_agreement(model, rollout);
            let (assessment, action) = decide::evaluate(routes, rollout, now, agreement);
            if let Some(a) = &assessment {
                self.note(|n| {
                    n.latest.insert(model.clone(), (rollout.id, a.clone()));
                });
            }
            if let Some(action) = action {
                self.apply(model, rollout, action, assessment, now);
            }
        }
        self.note(|n| {
            n.latest.retain(|m, _| snapshot.models.contains_key(m));
            n.shadow_marks.retain(|id, _| live.contains(id));
        });
    }

    fn note<T>(&self, change: impl FnOnce(&mut Notes) -> T) -> Option<T> {
        self.notes.lock().ok().map(|mut n| change(&mut n))
    }

    /// Compared copies, label rows and agreeing rows since the shadow stage began.
    fn shadow_agreement(&self, model: &str, r: &Rollout) -> (u64, u64, u64) {
        let now = self
            .inference
            .shadow()
            .summaries(model)
            .into_iter()
            .find(|(v, _)| *v == r.candidate)
            .map(|(_, s)| (s.compared, s.label_rows, s.agreeing_rows))
            .unwrap_or_default();
        let mark = self
            .note(|n| *n.shadow_marks.entry(r.id).or_insert(now))
            .unwrap_or(now);
        (
            now.0.saturating_sub(mark.0),
            now.1.saturating_sub(mark.1),
            now.2.saturating_sub(mark.2),
        )
    }

    /// Stores the decision with the traffic it implies, if the rollout is still the one the
    /// decision was made on; then tells the world.
    fn apply(
        &self,
        model: &str,
        seen: &Rollout,
        action: Action,
        numbers: Option<Assessment>,
        now: Instant,
    ) -> Option<Arc<Rollout>> {
        if let Some(fleet) = &self.fleet {
            // Every replica applies the decision when it reads it back, this one included; a
            // replica deciding the same is harmless (the records are equal by rollout, step
            // and outcome).
            let snapshot = self.router.snapshot();
            let routes = snapshot.models.get(model)?;
            let current = routes.rollout.as_ref()?;
            if current.id != seen.id || current.phase != seen.phase || !current.is_active() {
                return None;
            }
            let next = transition(current, routes, &action, numbers, now);
            fleet.propose_decision(model, &next, &next.traffic(&routes.traffic));
            return None;
        }
        let mut stored = None;
        let result = self.router.try_update(|snapshot| {
            let routes = snapshot.models.get(model).ok_or(Stale)?;
            let current = routes.rollout.as_ref().ok_or(Stale)?;
            if current.id != seen.id || current.phase != seen.phase || !current.is_active() {
                return Err(Stale);
            }
            let next = Arc::new(transition(current, routes, &action, numbers.clone(), now));
            let mut snapshot = snapshot.clone();
            if let Some(routes) = snapshot.models.get_mut(model) {
                routes.traffic = next.traffic(&routes.traffic);
                routes.rollout = Some(Arc::clone(&next));
            }
            stored = Some(next);
            Ok(snapshot)
        });
        let next = stored.filter(|_| result.is_ok())?;
        announce_decision(&self.events, &self.router, model, &next);
        Some(next)
    }

    /// Starts a rollout from an API request; the guard takes it from the next tick.
    pub fn start(
        &self,
        model: &str,
        overrides: &RolloutOverrides,
        actor: &str,
    ) -> Result<Arc<Rollout>, ServeError> {
        let (candidate, plan) = self.plan_for(overrides)?;
        let now = Instant::now();
        let mut started = None;
        self.router.try_update(|snapshot| {
            let routes = snapshot
                .models
                .get(model)
                .ok_or_else(|| ServeError::unknown_model(model))?;
            let (rollout, traffic) =
                Rollout::begin(model, routes, candidate, plan.clone(), actor, now)?;
            let rollout = Arc::new(rollout);
            let mut snapshot = snapshot.clone();
            if let Some(routes) = snapshot.models.get_mut(model) {
                routes.traffic = traffic;
                routes.rollout = Some(Arc::clone(&rollout));
            }
            started = Some(rollout);
            Ok::<_, ServeError>(snapshot)
        })?;
        let rollout = started.ok_or_else(|| ServeError::new(ErrorKind::Internal, "no rollout"))?;
        announce_start(&self.events, &self.router, model, &rollout);
        Ok(rollout)
    }

    /// The candidate and the checked plan an API request asks for.
    pub fn plan_for(&self, overrides: &RolloutOverrides) -> Result<(u64, RolloutPlan), ServeError> {
        let text = overrides.version.as_deref().ok_or_else(|| {
            ServeError::bad_request(
                "invalid rollout: version: missing; name the version to roll out",
            )
        })?;
        let candidate = parse_version(text)
            .map_err(|e| ServeError::bad_request(format!("invalid rollout: {}", e.message)))?;
        let plan = self.config.plan(overrides).map_err(|problems| {
            ServeError::bad_request(format!("invalid rollout: {}", problems.join("; ")))
        })?;
        Ok((candidate, plan))
    }

    /// Stops the model's running rollout: all traffic back on the baseline (during a watch,
    /// the watch ends and the promotion stands).
    pub fn abort(&self, model: &str, actor: &str) -> Result<Arc<Rollout>, ServeError> {
        let snapshot = self.router.snapshot();
        let routes = snapshot
            .models
            .get(model)
            .ok_or_else(|| ServeError::unknown_model(model))?;
        let (rollout, action) = abort_action(routes, model, actor)?;
        let latest = self.latest(model, rollout.id);
        self.apply(model, rollout, action, latest, Instant::now())
            .ok_or_else(|| {
                ServeError::new(
                    ErrorKind::Conflict,
                    format!("the rollout of model '{model}' changed meanwhile; try again"),
                )
            })
    }

    /// What an abort by `actor` would make of the model's rollout, with the traffic it
    /// implies; nothing is stored (a fleet publishes it).
    pub fn aborted(
        &self,
        routes: &ModelRoutes,
        model: &str,
        actor: &str,
    ) -> Result<(Rollout, Traffic), ServeError> {
        let (rollout, action) = abort_action(routes, model, actor)?;
        let latest = self.latest(model, rollout.id);
        let next = transition(rollout, routes, &action, latest, Instant::now());
        let traffic = next.traffic(&routes.traffic);
        Ok((next, traffic))
    }

    /// The model's latest rollout (running or ended) and the latest comparison.
    pub fn get(&self, model: &str) -> Result<(Arc<Rollout>, Option<Assessment>), ServeError> {
        let snapshot = self.router.snapshot();
        let routes = snapshot
            .models
            .get(model)
            .ok_or_else(|| ServeError::unknown_model(model))?;
        let rollout = routes.rollout.clone().ok_or_else(|| no_rollout(model))?;
        let latest = rollout
            .is_active()
            .then(|| self.latest(model, rollout.id))
            .flatten();
        Ok((rollout, latest))
    }

    fn latest(&self, model: &str, rollout: u64) -> Option<Assessment> {
        self.note(|n| {
            n.latest
                .get(model)
                .filter(|(id, _)| *id == rollout)
                .map(|(_, a)| a.clone())
        })
        .flatten()
    }
}

/// The model's running rollout and the abort `actor` asks for; refused when there is none.
fn abort_action<'r>(
    routes: &'r ModelRoutes,
    model: &str,
    actor: &str,
) -> Result<(&'r Arc<Rollout>, Action), ServeError> {
    let rollout = routes.rollout.as_ref().ok_or_else(|| no_rollout(model))?;
    if !rollout.is_active() {
        return Err(ServeError::new(
            ErrorKind::Conflict,
            format!(
                "the rollout of version {} of model '{model}' has already ended ({})",
                rollout.candidate,
                rollout.state.as_str()
            ),
        ));
    }
    let reason = match rollout.phase {
        Phase::Watch => format!("watch of version {} stopped by {actor}", rollout.candidate),
        _ => format!(
            "rollout of version {} aborted by {actor}; version {} serves all traffic",
            rollout.candidate, rollout.baseline
        ),
    };
    let action = Action::Abort {
        actor: actor.to_string(),
        reason,
    };
    Ok((rollout, action))
}

fn no_rollout(model: &str) -> ServeError {
    ServeError::not_found(format!("model '{model}' has no rollout"))
}

/// Turns prediction counting on for the versions a running rollout compares, off elsewhere.
fn watch_predictions(routes: &ModelRoutes, rollout: Option<&Rollout>) {
    for version in routes.versions.values() {
        let watched = rollout
            .is_some_and(|r| r.candidate == version.version || r.baseline == version.version);
        if version.windows.predictions.is_active() != watched {
            version.windows.predictions.set_active(watched);
        }
    }
}

fn event_details(r: &Rollout) -> serde_json::Value {
    let last = r.timeline.last();
    serde_json::json!({
        "rollout": r.id,
        "candidate": r.candidate,
        "baseline": r.baseline,
        "state": r.state.as_str(),
        "step": last.and_then(|d| d.step),
        "weight": r.weight(),
        "numbers": last.and_then(|d| d.numbers.as_ref()),
    })
}

/// After a rollout was stored (by the API or by a load that found a `[rollout]` table): count
/// its predictions from now on, and record the start.
pub fn announce_start(events: &PredictionLog, router: &Router, model: &str, rollout: &Rollout) {
    if let Some(routes) = router.snapshot().models.get(model) {
        watch_predictions(routes, Some(rollout));
    }
    let actor = rollout.timeline.first().map_or(GUARD, |d| d.actor.as_str());
    events.event(
        Event::new(EventKind::RolloutStep, model, actor, rollout.reason.clone())
            .version(rollout.candidate)
            .details(serde_json::json!({
                "rollout": rollout.id,
                "candidate": rollout.candidate,
                "baseline": rollout.baseline,
                "state": rollout.state.as_str(),
                "weight": rollout.weight(),
                "plan": rollout.plan,
            })),
    );
}

/// The event, log line and metric for a rollout's latest decision (the last entry of its
/// timeline): called by the guard that decided it, and in a fleet by the replica that decided
/// it once the decision comes back from the control topic (so the fleet records it once).
pub fn announce_decision(events: &PredictionLog, router: &Router, model: &str, r: &Rollout) {
    let Some(last) = r.timeline.last() else {
        return;
    };
    let (kind, metric) = match last.decision {
        "start" => return announce_start(events, router, model, r),
        "promote" => (EventKind::Promote, Some("promote")),
        "rollback" => (EventKind::Rollback, Some("rollback")),
        "abort" => (EventKind::Rollback, Some("abort")),
        "watch_end" => {
            tracing::info!(model, version = r.candidate, reason = %r.reason, "rollout watch ended");
            return;
        }
        _ => (EventKind::RolloutStep, Some("step")),
    };
    if let Some(decision) = metric {
        metrics::record_rollout_decision(model, decision);
    }
    if last.decision == "rollback" {
        tracing::warn!(
            model,
            version = r.candidate,
            baseline = r.baseline,
            reason = %r.reason,
            "rollout rolled back"
        );
    }
    events.event(
        Event::new(kind, model, last.actor.as_str(), r.reason.clone())
            .version(r.candidate)
            .details(event_details(r)),
    );
}

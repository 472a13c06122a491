//! The rollout guard: progressive rollouts that promote or roll back by themselves.
//!
//! A rollout lives in the routing snapshot, next to the traffic policy it drives
//! ([`crate::routing::ModelRoutes::rollout`]), so that a step, a promotion or a rollback
//! changes the weights and the rollout's state in one store: a reader never sees a rollback
//! without its weight of zero, or the reverse. The guard is one task that ticks every
//! `rollout.tick`; at each tick it reads the snapshot, compares each running rollout's
//! candidate with its baseline over the current phase (`decide`; the tests are in
//! [`crate::rollout`]), and, when a decision is due, hands it to the [`ModelControl`], which
//! stores it only if the rollout is still the one the decision was made on.

mod decide;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use decide::{Action, transition};

use crate::control::ModelControl;
use crate::infer::Inference;
use crate::lifecycle::{Actor, watch_predictions};
use crate::rollout::{Assessment, RolloutConfig, RolloutOverrides, RolloutPlan};
use crate::routing::{ModelRoutes, Phase, Rollout, Router, parse_version};
use sluice_core::error::{ErrorKind, ServeError};

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
    control: Arc<dyn ModelControl>,
    inference: Arc<Inference>,
    config: RolloutConfig,
    notes: Mutex<Notes>,
}

impl Guard {
    pub fn new(
        router: Arc<Router>,
        control: Arc<dyn ModelControl>,
        inference: Arc<Inference>,
        config: RolloutConfig,
    ) -> Guard {
        Guard {
            router,
            control,
            inference,
            config,
            notes: Mutex::default(),
        }
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
                self.propose(model, rollout, action, assessment, now);
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

    /// Hands the decision to the control, to be stored with the traffic it implies if the
    /// rollout is still the one it was made on (same id and phase, still running).
    fn propose(
        &self,
        model: &str,
        seen: &Rollout,
        action: Action,
        numbers: Option<Assessment>,
        now: Instant,
    ) {
        let change = |routes: &ModelRoutes| {
            let current = routes
                .rollout
                .as_ref()
                .filter(|c| c.id == seen.id && c.phase == seen.phase && c.is_active())
                .ok_or_else(|| changed_meanwhile(model))?;
            Ok(transition(current, routes, &action, numbers.clone(), now))
        };
        self.control.propose_rollout(model, &change);
    }

    /// Starts a rollout from an API request; the guard takes it from the next tick.
    pub async fn start(
        &self,
        model: &str,
        overrides: &RolloutOverrides,
        actor: &Actor,
    ) -> Result<Arc<Rollout>, ServeError> {
        let (candidate, plan) = self.plan_for(overrides)?;
        let now = Instant::now();
        let change = |routes: &ModelRoutes| {
            let (rollout, _) =
                Rollout::begin(model, routes, candidate, plan.clone(), &actor.0, now)?;
            Ok(rollout)
        };
        self.control.change_rollout(model, actor, &change).await
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
    pub async fn abort(&self, model: &str, actor: &Actor) -> Result<Arc<Rollout>, ServeError> {
        let now = Instant::now();
        let change = |routes: &ModelRoutes| {
            let (rollout, action) = abort_action(routes, model, &actor.0)?;
            let latest = self.latest(model, rollout.id);
            Ok(transition(rollout, routes, &action, latest, now))
        };
        self.control.change_rollout(model, actor, &change).await
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

fn changed_meanwhile(model: &str) -> ServeError {
    ServeError::new(
        ErrorKind::Conflict,
        format!("the rollout of model '{model}' changed meanwhile; try again"),
    )
}

//! Telling the world about a rollout's start and decisions: the lifecycle event, the log line
//! and the decision metric. Called by whoever stored the change (a single node's control), and
//! in a fleet by the replica that decided it, once the decision comes back from the control
//! topic, so that the fleet records it once.

use crate::predlog::{Event, EventKind, PredictionLog};
use crate::rollout::GUARD;
use crate::routing::{ModelRoutes, Rollout, Router};
use crate::telemetry::metrics;

/// Turns prediction counting on for the versions a running rollout compares, off elsewhere.
pub fn watch_predictions(routes: &ModelRoutes, rollout: Option<&Rollout>) {
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

//! A rollout as the routing snapshot holds it: where it is (state and phase), what it compares
//! against, and what it decided so far. Every change builds a new `Rollout` together with the
//! traffic it implies, and both go into the snapshot in one store.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize, Serializer};

use super::traffic::weight_points;
use super::{ModelRoutes, Traffic};
use crate::repository::LoadedVersion;
use crate::rollout::Assessment;
use crate::rollout::RolloutPlan;
use crate::telemetry::predictions::PredictionCounts;
use crate::telemetry::quality::QualityTotals;
use crate::telemetry::window::WindowStats;
use sluice_core::Variant;
use sluice_core::error::{ErrorKind, ServeError};

/// Where a rollout stands, as the API, the events, the control topic and
/// `sluice_rollout_state` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Shadow stage or canary steps under way.
    Progressing,
    /// Reserved for a held rollout; the guard does not pause rollouts yet.
    Paused,
    /// The candidate is primary (and may still be watched).
    Promoted,
    /// The guard found a breach and sent all traffic back to the baseline.
    RolledBack,
    /// Stopped through the API; all traffic back on the baseline.
    Aborted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Progressing,
        RolloutState::Paused,
        RolloutState::Promoted,
        RolloutState::RolledBack,
        RolloutState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// What the guard is doing with the rollout now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The candidate runs as a shadow.
    Shadow,
    /// Canary step (index into the plan's steps).
    Step(usize),
    /// Promoted; the new primary is judged against its predecessor's numbers.
    Watch,
    /// Nothing left to judge.
    Finished,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Shadow => "shadow",
            Phase::Step(_) => "step",
            Phase::Watch => "watch",
            Phase::Finished => "finished",
        }
    }
}

/// Prediction counters when the rollout and the current phase began; what was counted since
/// is what the phase compares.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    /// The baseline's primary answers when the rollout began.
    pub rollout_baseline: PredictionCounts,
    /// The baseline's primary answers when the phase began.
    pub baseline: PredictionCounts,
    /// The candidate's answers when the phase began: as canary in a step, as primary in the
    /// watch.
    pub candidate: PredictionCounts,
    /// The same three marks of the sides' joined outcomes.
    pub outcomes: OutcomeMarks,
}

/// Joined-outcome totals when the rollout and the current phase began.
#[derive(Clone, Debug, Default)]
pub struct OutcomeMarks {
    pub rollout_baseline: QualityTotals,
    pub baseline: QualityTotals,
    pub candidate: QualityTotals,
}

/// A loaded version's joined-outcome totals on one side of the split; empty for a version
/// that is no longer loaded.
pub fn quality_totals(routes: &ModelRoutes, version: u64, variant: Variant) -> QualityTotals {
    routes
        .versions
        .get(&version)
        .map(|v| v.quality.get(variant).totals())
        .unwrap_or_default()
}

/// A loaded version's prediction counts on one side of the split, where marks start from;
/// empty for a version that is no longer loaded.
pub fn prediction_counts(routes: &ModelRoutes, version: u64, variant: Variant) -> PredictionCounts {
    routes
        .versions
        .get(&version)
        .map(|v| v.windows.predictions.counts(variant))
        .unwrap_or_default()
}

/// The predecessor's numbers, frozen at promotion: what the watch compares the new primary with.
#[derive(Clone, Debug)]
pub struct Reference {
    pub stats: WindowStats,
    pub predictions: PredictionCounts,
    pub outcomes: QualityTotals,
}

/// The baseline's numbers over the whole rollout, frozen for the watch.
pub fn predecessor(baseline: &LoadedVersion, r: &Rollout) -> Reference {
    Reference {
        stats: baseline
            .windows
            .get(Variant::Primary)
            .stats_since(r.started),
        predictions: baseline
            .windows
            .predictions
            .counts(Variant::Primary)
            .since(&r.marks.rollout_baseline),
        outcomes: baseline
            .quality
            .get(Variant::Primary)
            .totals()
            .since(&r.marks.outcomes.rollout_baseline),
    }
}

/// One entry of a rollout's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// Seconds since the rollout began.
    pub elapsed_s: f64,
    /// start, step, promote, rollback, abort or watch_end.
    pub decision: &'static str,
    /// The step index after the decision, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The candidate's share of traffic after the decision, in percent.
    pub weight: f64,
    pub actor: String,
    pub reason: String,
    /// The comparison the decision was made on, as the deciding replica saw it (kept as JSON
    /// so that it travels with the rollout through a fleet's control topic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numbers: Option<serde_json::Value>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// One model's rollout: held in its `ModelRoutes`, replaced as a whole on every change.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// Unique across a fleet (random), so that replicas name the same rollout the same way and
    /// the guard never acts on a rollout that was replaced.
    pub id: u64,
    pub candidate: u64,
    /// The primary when the rollout began: the rollback target.
    pub baseline: u64,
    pub plan: RolloutPlan,
    pub state: RolloutState,
    pub phase: Phase,
    pub started: Instant,
    pub started_at: SystemTime,
    pub phase_started: Instant,
    pub marks: Marks,
    pub reference: Option<Arc<Reference>>,
    pub timeline: Vec<Decision>,
    /// Why the last decision was taken.
    pub reason: String,
}

/// A fresh rollout id: random, so that ids from different replicas of a fleet do not collide,
/// and below 2^53 so that JSON readers keep it exact.
pub fn new_id() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

impl Rollout {
    /// Whether the guard still has something to judge.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Shadow | Phase::Step(_) | Phase::Watch)
    }

    /// The candidate's share of unversioned traffic, in percent: the step's weight while
    /// progressing, 100 once promoted, 0 in a shadow stage and after a rollback or abort.
    pub fn weight(&self) -> f64 {
        match (self.state, self.phase) {
            (RolloutState::Progressing, Phase::Step(i)) => self.plan.weight(i),
            (RolloutState::Promoted, _) => 100.0,
            _ => 0.0,
        }
    }

    /// Starts a rollout of `candidate` against the model's current primary. Refused when the
    /// version is not loaded (404), is the primary already (400), or another rollout is
    /// under way (409).
    pub fn begin(
        model: &str,
        routes: &ModelRoutes,
        candidate: u64,
        plan: RolloutPlan,
        actor: &str,
        now: Instant,
    ) -> Result<(Rollout, Traffic), ServeError> {
        if let Some(current) = routes.rollout.as_ref().filter(|r| r.is_active()) {
            return Err(ServeError::new(
                ErrorKind::Conflict,
                format!(
                    "model '{model}' has a rollout of version {} in progress ({}); abort it \
                     first with DELETE /admin/v1/models/{model}/rollout",
                    current.candidate,
                    current.state.as_str()
                ),
            ));
        }
        let Some(target) = routes.versions.get(&candidate) else {
            let loaded: Vec<String> = routes.versions.keys().map(u64::to_string).collect();
            return Err(ServeError::not_found(format!(
                "model '{model}' has no loaded version {candidate} (loaded: {})",
                loaded.join(", ")
            )));
        };
        let Some(primary) = routes.primary_version() else {
            return Err(ServeError::new(
                ErrorKind::Unavailable,
                format!("model '{model}' has no primary version to compare with"),
            ));
        };
        if primary.version == candidate {
            return Err(ServeError::bad_request(format!(
                "version: {candidate} is already the primary of model '{model}'"
            )));
        }
        let mut rollout = Rollout::fresh(candidate, primary.version, plan, actor, now);
        let baseline = primary.windows.predictions.counts(Variant::Primary);
        let baseline_outcomes = primary.quality.get(Variant::Primary).totals();
        rollout.marks = Marks {
            rollout_baseline: baseline.clone(),
            baseline,
            candidate: target.windows.predictions.counts(Variant::Canary),
            outcomes: OutcomeMarks {
                rollout_baseline: baseline_outcomes.clone(),
                baseline: baseline_outcomes,
                candidate: target.quality.get(Variant::Canary).totals(),
            },
        };
        let traffic = rollout.traffic(&routes.traffic);
        Ok((rollout, traffic))
    }

    /// A rollout of `candidate` against `baseline` at its first phase, its start recorded,
    /// with empty marks: [`Rollout::begin`] sets them, or a replica adopting it from the
    /// control topic takes its own.
    pub fn fresh(
        candidate: u64,
        baseline: u64,
        plan: RolloutPlan,
        actor: &str,
        now: Instant,
    ) -> Rollout {
        let phase = if plan.shadow_stage.is_some() {
            Phase::Shadow
        } else {
            Phase::Step(0)
        };
        let mut rollout = Rollout {
            id: new_id(),
            candidate,
            baseline,
            plan,
            state: RolloutState::Progressing,
            phase,
            started: now,
            started_at: SystemTime::now(),
            phase_started: now,
            marks: Marks::default(),
            reference: None,
            timeline: Vec::new(),
            reason: String::new(),
        };
        let reason = match phase {
            Phase::Shadow => format!(
                "rollout of version {candidate} against version {baseline} began with a shadow stage"
            ),
            _ => format!(
                "rollout of version {candidate} against version {baseline} began at {}%",
                rollout.plan.weight(0)
            ),
        };
        rollout.record("start", actor, reason, None, now);
        rollout
    }

    /// The traffic policy this rollout implies, keeping what it does not own (sticky key, an
    /// unrelated shadow).
    pub fn traffic(&self, current: &Traffic) -> Traffic {
        let mut next = current.clone();
        if next.shadow.is_some_and(|(v, _)| v == self.candidate) {
            next.shadow = None;
        }
        next.canary = None;
        match (self.state, self.phase) {
            (RolloutState::Progressing, Phase::Shadow) => {
                next.primary = Some(self.baseline);
                let rate = self
                    .plan
                    .shadow_stage
                    .as_ref()
                    .map_or(1.0, |s| s.sample_rate);
                next.shadow = Some((self.candidate, rate));
            }
            (RolloutState::Progressing, Phase::Step(i)) => {
                next.primary = Some(self.baseline);
                next.canary = Some((self.candidate, weight_points(self.plan.weight(i))));
            }
            (RolloutState::Promoted, _) => next.primary = Some(self.candidate),
            _ => next.primary = Some(self.baseline),
        }
        next
    }

    /// Appends a timeline entry for the state the rollout is now in.
    pub fn record(
        &mut self,
        decision: &'static str,
        actor: &str,
        reason: String,
        numbers: Option<Assessment>,
        now: Instant,
    ) {
        self.timeline.push(Decision {
            at: SystemTime::now(),
            elapsed_s: now.saturating_duration_since(self.started).as_secs_f64(),
            decision,
            step: match self.phase {
                Phase::Step(i) => Some(i),
                _ => None,
            },
            weight: self.weight(),
            actor: actor.to_string(),
            reason: reason.clone(),
            numbers: numbers.and_then(|a| serde_json::to_value(a).ok()),
        });
        self.reason = reason;
    }

    /// The same rollout in another phase (and maybe state), with fresh marks.
    pub fn moved(&self, state: RolloutState, phase: Phase, marks: Marks, now: Instant) -> Rollout {
        Rollout {
            state,
            phase,
            phase_started: now,
            marks,
            ..self.clone()
        }
    }
}

/// A rollout of version 2 against version 1 with the default plan, started by "tester", in
/// the given state: for the guard's tests.
#[cfg(test)]
pub(crate) fn test_rollout(id: u64, state: RolloutState, phase: Phase) -> Rollout {
    let plan = crate::rollout::plan::RolloutConfig::default()
        .plan(&Default::default())
        .unwrap();
    Rollout {
        id,
        state,
        phase,
        ..Rollout::fresh(2, 1, plan, "tester", Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(state: RolloutState, phase: Phase) -> Rollout {
        test_rollout(1, state, phase)
    }

    #[test]
    fn each_state_implies_its_traffic() {
        let current = Traffic {
            sticky_key: Some("x-user".into()),
            shadow: Some((3, 0.5)),
            ..Traffic::default()
        };
        let step = rollout(RolloutState::Progressing, Phase::Step(1)).traffic(&current);
        assert_eq!(step.primary, Some(1));
        assert_eq!(step.canary, Some((2, 2500)));
        assert_eq!(step.shadow, Some((3, 0.5)), "an unrelated shadow stays");
        assert_eq!(step.sticky_key.as_deref(), Some("x-user"));
        let back = rollout(RolloutState::RolledBack, Phase::Finished).traffic(&step);
        assert_eq!((back.primary, back.canary), (Some(1), None));
        let promoted = rollout(RolloutState::Promoted, Phase::Watch);
        assert_eq!(promoted.traffic(&step).primary, Some(2));
        assert_eq!(promoted.weight(), 100.0);
        let mut shadowing = rollout(RolloutState::Progressing, Phase::Shadow);
        shadowing.plan.shadow_stage = Some(Default::default());
        let shadow = shadowing.traffic(&current);
        assert_eq!((shadow.canary, shadow.shadow), (None, Some((2, 1.0))));
        assert_eq!(shadowing.weight(), 0.0);
        let stepped = rollout(RolloutState::Progressing, Phase::Step(0)).traffic(&shadow);
        assert_eq!(stepped.shadow, None, "the stage's shadow goes");
    }
}

//! A rollout as the fleet's control topic carries it ([`RolloutRecord`]), and back.
//!
//! The record holds what every replica must agree on: which rollout (its id), what it compares,
//! its plan, where it stands (state, phase, step), and its timeline. What each replica
//! measures for itself (prediction marks, the predecessor's numbers in a watch) stays out: a
//! replica that adopts a record takes its own marks from the moment it applies it, so its
//! guard judges the phase on the traffic it sees itself.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::rollout::RolloutPlan;
use crate::routing::ModelRoutes;
use crate::routing::rollout::{
    Decision, Marks, OutcomeMarks, Phase, Rollout, RolloutState, predecessor, prediction_counts,
    quality_totals,
};
use sluice_core::Variant;

/// A rollout in a control record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRecord {
    /// Random and fleet-wide: the same rollout has the same id on every replica.
    pub id: u64,
    /// The version being rolled out.
    pub candidate: u64,
    /// The primary it is compared with, and the rollback target.
    pub baseline: u64,
    pub state: RolloutState,
    /// shadow, step, watch or finished.
    pub phase: String,
    /// The step (0-based) while the phase is `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The candidate's share of unversioned traffic, in percent (what `traffic` says too).
    pub weight: f64,
    pub plan: RolloutPlan,
    /// RFC 3339: when the rollout began.
    pub started_at: String,
    /// Why the last decision was taken.
    pub reason: String,
    /// Every decision so far, oldest first.
    #[serde(default)]
    pub timeline: Vec<DecisionRecord>,
}

/// One decision of a rollout's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    pub at: String,
    pub elapsed_s: f64,
    /// start, step, promote, rollback, abort or watch_end.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub weight: f64,
    pub actor: String,
    pub reason: String,
    /// The comparison the decision was made on, on the replica that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbers: Option<serde_json::Value>,
}

/// The timeline's decision names; a record naming another is read as "step".
const DECISIONS: [&str; 6] = ["start", "step", "promote", "rollback", "abort", "watch_end"];

impl RolloutRecord {
    pub fn from_rollout(r: &Rollout) -> RolloutRecord {
        RolloutRecord {
            id: r.id,
            candidate: r.candidate,
            baseline: r.baseline,
            state: r.state,
            phase: r.phase.as_str().to_string(),
            step: match r.phase {
                Phase::Step(i) => Some(i),
                _ => None,
            },
            weight: r.weight(),
            plan: r.plan.clone(),
            started_at: rfc3339(r.started_at),
            reason: r.reason.clone(),
            timeline: r
                .timeline
                .iter()
                .map(|d| DecisionRecord {
                    at: rfc3339(d.at),
                    elapsed_s: d.elapsed_s,
                    decision: d.decision.to_string(),
                    step: d.step,
                    weight: d.weight,
                    actor: d.actor.clone(),
                    reason: d.reason.clone(),
                    numbers: d.numbers.clone(),
                })
                .collect(),
        }
    }

    /// The phase the record names; an unknown phase reads as finished, so that a record from a
    /// newer sluice can never make this one start judging something it does not understand.
    pub fn phase(&self) -> Phase {
        match (self.phase.as_str(), self.step) {
            ("shadow", _) => Phase::Shadow,
            ("step", Some(i)) if i < self.plan.steps.len() => Phase::Step(i),
            ("watch", _) => Phase::Watch,
            _ => Phase::Finished,
        }
    }

    /// What makes two records the same rollout decision: the rollout, where it stands, and the
    /// outcome. Replicas that decide the same step publish records equal by this key.
    pub fn key(&self) -> (u64, RolloutState, Phase) {
        (self.id, self.state, self.phase())
    }

    /// The rollout this record describes, as this replica holds it. A local rollout already
    /// at the record's state is kept as it is (its marks and comparisons go on); otherwise the
    /// phase starts here now, with marks from this replica's counters, and a watch compares
    /// with the baseline's numbers this replica saw over the rollout.
    pub fn adopt(
        &self,
        local: Option<&Arc<Rollout>>,
        routes: &ModelRoutes,
        now: Instant,
    ) -> Arc<Rollout> {
        let phase = self.phase();
        if let Some(local) =
            local.filter(|l| l.id == self.id && l.state == self.state && l.phase == phase)
        {
            return Arc::clone(local);
        }
        let same = local.filter(|l| l.id == self.id);
        let counts = |version, variant| prediction_counts(routes, version, variant);
        let started_at = humantime::parse_rfc3339(&self.started_at)
            .unwrap_or_else(|_| same.map_or_else(SystemTime::now, |l| l.started_at));
        let age = SystemTime::now()
            .duration_since(started_at)
            .unwrap_or(Duration::ZERO);
        let started = same.map_or_else(|| now.checked_sub(age).unwrap_or(now), |l| l.started);
        let candidate_variant = match phase {
            Phase::Watch | Phase::Finished => Variant::Primary,
            Phase::Shadow | Phase::Step(_) => Variant::Canary,
        };
        let mut rollout = Rollout {
            id: self.id,
            candidate: self.candidate,
            baseline: self.baseline,
            plan: self.plan.clone(),
            state: self.state,
            phase,
            started,
            started_at,
            phase_started: now,
            marks: Marks {
                rollout_baseline: same.map_or_else(
                    || counts(self.baseline, Variant::Primary),
                    |l| l.marks.rollout_baseline.clone(),
                ),
                baseline: counts(self.baseline, Variant::Primary),
                candidate: counts(self.candidate, candidate_variant),
                outcomes: OutcomeMarks {
                    rollout_baseline: same.map_or_else(
                        || quality_totals(routes, self.baseline, Variant::Primary),
                        |l| l.marks.outcomes.rollout_baseline.clone(),
                    ),
                    baseline: quality_totals(routes, self.baseline, Variant::Primary),
                    candidate: quality_totals(routes, self.candidate, candidate_variant),
                },
            },
            reference: None,
            timeline: self.timeline.iter().map(DecisionRecord::decision).collect(),
            reason: self.reason.clone(),
        };
        if phase == Phase::Watch {
            rollout.reference = same.and_then(|l| l.reference.clone()).or_else(|| {
                routes
                    .versions
                    .get(&self.baseline)
                    .map(|b| Arc::new(predecessor(b, &rollout)))
            });
        }
        Arc::new(rollout)
    }
}

impl DecisionRecord {
    fn decision(&self) -> Decision {
        Decision {
            at: humantime::parse_rfc3339(&self.at).unwrap_or(SystemTime::UNIX_EPOCH),
            elapsed_s: self.elapsed_s,
            decision: DECISIONS
                .iter()
                .find(|d| **d == self.decision)
                .copied()
                .unwrap_or("step"),
            step: self.step,
            weight: self.weight,
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            numbers: self.numbers.clone(),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rollout::test_rollout;

    fn rollout(state: RolloutState, phase: Phase) -> Rollout {
        test_rollout(42, state, phase)
    }

    #[test]
    fn a_record_round_trips_and_adopting_the_same_state_keeps_the_local_rollout() {
        let local = Arc::new(rollout(RolloutState::Progressing, Phase::Step(1)));
        let record = RolloutRecord::from_rollout(&local);
        let json = serde_json::to_string(&record).unwrap();
        let back: RolloutRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.phase(), Phase::Step(1));
        assert_eq!(back.weight, 25.0);
        let routes = ModelRoutes::default();
        let kept = back.adopt(Some(&local), &routes, Instant::now());
        assert!(Arc::ptr_eq(&kept, &local));

        let mut rolled_back = rollout(RolloutState::RolledBack, Phase::Finished);
        rolled_back.timeline = local.timeline.clone();
        rolled_back.record("rollback", "guard", "breach".into(), None, Instant::now());
        let record = RolloutRecord::from_rollout(&rolled_back);
        let adopted = record.adopt(Some(&local), &routes, Instant::now());
        assert_eq!(
            (adopted.id, adopted.state, adopted.phase),
            (42, RolloutState::RolledBack, Phase::Finished)
        );
        assert_eq!(
            adopted.started, local.started,
            "the same rollout keeps its start"
        );
        let decisions: Vec<&str> = adopted.timeline.iter().map(|d| d.decision).collect();
        assert_eq!(decisions, ["start", "rollback"]);
        assert_eq!(adopted.weight(), 0.0);
    }

    #[test]
    fn an_unknown_phase_reads_as_finished() {
        let mut record =
            RolloutRecord::from_rollout(&rollout(RolloutState::Progressing, Phase::Step(0)));
        record.phase = "hover".into();
        assert_eq!(record.phase(), Phase::Finished);
        record.phase = "step".into();
        record.step = Some(99);
        assert_eq!(record.phase(), Phase::Finished);
    }
}

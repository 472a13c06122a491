//! The guard's decisions: what a rollout's current phase compares, what the comparison calls
//! for, and the rollout (with fresh marks) after each decision.

use std::sync::Arc;
use std::time::Instant;

use crate::repository::LoadedVersion;
use crate::rollout::GUARD;
use crate::rollout::judge::{Assessment, Sample, assess, assess_shadow};
use crate::routing::ModelRoutes;
use crate::routing::rollout::{
    Marks, OutcomeMarks, Phase, Reference, Rollout, RolloutState, predecessor, prediction_counts,
    quality_totals,
};
use crate::telemetry::quality::QualityTotals;
use sluice_core::Variant;

/// What the guard decided for one rollout at one tick.
#[derive(Clone, Debug)]
pub(super) enum Action {
    /// The step passed: on to step `to`.
    Advance {
        to: usize,
    },
    /// The shadow stage passed: on to the first canary step.
    PassShadow,
    /// The last step passed (or, with `promote_on = "probability"`, the candidate proved
    /// better early, `early` saying how): the candidate becomes primary.
    Promote {
        reference: Arc<Reference>,
        early: Option<String>,
    },
    Rollback {
        reason: String,
    },
    /// The watch period ended without a breach.
    EndWatch,
    Abort {
        actor: String,
        reason: String,
    },
}

/// The comparison for the rollout's current phase, and the decision it calls for.
/// `shadow_agreement` gives (compared copies, label rows, agreeing rows) since a shadow stage
/// began.
pub(super) fn evaluate(
    routes: &ModelRoutes,
    r: &Rollout,
    now: Instant,
    shadow_agreement: impl FnOnce() -> (u64, u64, u64),
) -> (Option<Assessment>, Option<Action>) {
    let (Some(candidate), Some(baseline)) = (
        routes.versions.get(&r.candidate),
        routes.versions.get(&r.baseline),
    ) else {
        let reason = format!(
            "version {} or {} is no longer loaded",
            r.candidate, r.baseline
        );
        let actor = GUARD.to_string();
        return (None, Some(Action::Abort { actor, reason }));
    };
    let plan = &r.plan;
    let elapsed = now.saturating_duration_since(r.phase_started);
    match r.phase {
        Phase::Shadow => {
            let Some(stage) = &plan.shadow_stage else {
                return (None, Some(Action::PassShadow));
            };
            let agreement = shadow_agreement();
            let shadow = Sample {
                version: r.candidate,
                stats: candidate
                    .windows
                    .get(Variant::Shadow)
                    .stats_since(r.phase_started),
                predictions: Default::default(),
                outcomes: Default::default(),
                basis: "shadow",
            };
            let primary = primary_sample(baseline, r);
            let last = elapsed >= stage.duration;
            let a = assess_shadow(plan, stage, &shadow, &primary, agreement, last);
            let action = match &a.breach {
                Some(reason) => Some(Action::Rollback {
                    reason: format!("shadow stage: {reason}"),
                }),
                None if a.judged && last => Some(Action::PassShadow),
                None => None,
            };
            (Some(a), action)
        }
        Phase::Step(i) => {
            let canary = candidate_sample(candidate, r, Variant::Canary, "step");
            let primary = primary_sample(baseline, r);
            let a = assess(plan, &canary, &primary);
            let action = match &a.breach {
                Some(reason) => Some(Action::Rollback {
                    reason: format!("step {} at {}%: {reason}", i + 1, plan.weight(i)),
                }),
                None if a.promote_early => Some(Action::Promote {
                    reference: Arc::new(predecessor(baseline, r)),
                    early: a.outcomes.as_ref().map(|t| {
                        format!(
                            "promoted at step {} of {} ({}%): P(more accurate than version {}) = \
                             {:.3} over {} and {} outcomes ({} {:.4} against {:.4})",
                            i + 1,
                            plan.steps.len(),
                            plan.weight(i),
                            r.baseline,
                            t.probability_better.unwrap_or(0.0),
                            t.canary_outcomes,
                            t.primary_outcomes,
                            t.metric,
                            t.canary,
                            t.primary
                        )
                    }),
                }),
                None if a.judged && elapsed >= plan.step_duration => {
                    Some(if i + 1 < plan.steps.len() {
                        Action::Advance { to: i + 1 }
                    } else {
                        Action::Promote {
                            reference: Arc::new(predecessor(baseline, r)),
                            early: None,
                        }
                    })
                }
                None => None,
            };
            (Some(a), action)
        }
        Phase::Watch => {
            let Some(reference) = &r.reference else {
                return (None, Some(Action::EndWatch));
            };
            let promoted = candidate_sample(candidate, r, Variant::Primary, "watch");
            let before = Sample {
                version: r.baseline,
                stats: reference.stats.clone(),
                predictions: reference.predictions.clone(),
                outcomes: reference.outcomes.clone(),
                basis: "predecessor",
            };
            let a = assess(plan, &promoted, &before);
            let action = match &a.breach {
                Some(reason) => Some(Action::Rollback {
                    reason: format!(
                        "watch after promotion: {reason}; version {} is primary again",
                        r.baseline
                    ),
                }),
                None if elapsed >= plan.watch_period => Some(Action::EndWatch),
                None => None,
            };
            (Some(a), action)
        }
        Phase::Finished => (None, None),
    }
}

/// The candidate's numbers as `variant` (canary during steps, primary during the watch) since
/// the phase began.
fn candidate_sample(
    candidate: &LoadedVersion,
    r: &Rollout,
    variant: Variant,
    basis: &'static str,
) -> Sample {
    Sample {
        version: r.candidate,
        stats: candidate.windows.get(variant).stats_since(r.phase_started),
        predictions: candidate
            .windows
            .predictions
            .counts(variant)
            .since(&r.marks.candidate),
        outcomes: candidate
            .quality
            .get(variant)
            .totals()
            .since(&r.marks.outcomes.candidate),
        basis,
    }
}

/// The baseline as primary over the phase, or over the whole rollout when the phase leaves it
/// too little traffic (at 100 % it gets none).
fn primary_sample(baseline: &LoadedVersion, r: &Rollout) -> Sample {
    let window = baseline.windows.get(Variant::Primary);
    let counts = baseline.windows.predictions.counts(Variant::Primary);
    let outcomes = baseline.quality.get(Variant::Primary).totals();
    let step = window.stats_since(r.phase_started);
    // At 100 % the step's primary numbers are a few stragglers from its first second.
    let full = matches!(r.phase, Phase::Step(i) if r.plan.weight(i) >= 100.0);
    if step.requests >= r.plan.min_requests && !full {
        return Sample {
            version: r.baseline,
            stats: step,
            predictions: counts.since(&r.marks.baseline),
            outcomes: step_outcomes(&outcomes, r),
            basis: "step",
        };
    }
    Sample {
        version: r.baseline,
        stats: window.stats_since(r.started),
        predictions: counts.since(&r.marks.rollout_baseline),
        outcomes: outcomes.since(&r.marks.outcomes.rollout_baseline),
        basis: "rollout",
    }
}

/// The baseline's outcomes over the step, or over the whole rollout when the step has fewer
/// than `min_outcomes` (outcomes arrive late: the step's own are often still few).
fn step_outcomes(outcomes: &QualityTotals, r: &Rollout) -> QualityTotals {
    let step = outcomes.since(&r.marks.outcomes.baseline);
    if step.labeled >= r.plan.min_outcomes || step.rewards >= r.plan.min_outcomes {
        step
    } else {
        outcomes.since(&r.marks.outcomes.rollout_baseline)
    }
}

/// The rollout after `action`.
pub(super) fn transition(
    r: &Rollout,
    routes: &ModelRoutes,
    action: &Action,
    numbers: Option<Assessment>,
    now: Instant,
) -> Rollout {
    let counts = |version, variant| prediction_counts(routes, version, variant);
    let totals = |version, variant| quality_totals(routes, version, variant);
    let step_marks = || Marks {
        rollout_baseline: r.marks.rollout_baseline.clone(),
        baseline: counts(r.baseline, Variant::Primary),
        candidate: counts(r.candidate, Variant::Canary),
        outcomes: OutcomeMarks {
            rollout_baseline: r.marks.outcomes.rollout_baseline.clone(),
            baseline: totals(r.baseline, Variant::Primary),
            candidate: totals(r.candidate, Variant::Canary),
        },
    };
    let plan = &r.plan;
    let (mut next, decision, actor, reason) = match action {
        Action::Advance { to } => (
            r.moved(
                RolloutState::Progressing,
                Phase::Step(*to),
                step_marks(),
                now,
            ),
            "step",
            GUARD,
            format!(
                "step {} of {} passed; canary weight {}% -> {}%",
                to,
                plan.steps.len(),
                plan.weight(to - 1),
                plan.weight(*to)
            ),
        ),
        Action::PassShadow => (
            r.moved(RolloutState::Progressing, Phase::Step(0), step_marks(), now),
            "step",
            GUARD,
            format!("shadow stage passed; canary weight {}%", plan.weight(0)),
        ),
        Action::Promote { reference, early } => {
            let marks = Marks {
                candidate: counts(r.candidate, Variant::Primary),
                outcomes: OutcomeMarks {
                    candidate: totals(r.candidate, Variant::Primary),
                    ..r.marks.outcomes.clone()
                },
                ..r.marks.clone()
            };
            let phase = if plan.watch_period.is_zero() {
                Phase::Finished
            } else {
                Phase::Watch
            };
            let mut next = r.moved(RolloutState::Promoted, phase, marks, now);
            next.reference = Some(Arc::clone(reference));
            let watch = if phase == Phase::Watch {
                format!(
                    "; version {} stays loaded as the rollback target for the {} watch",
                    r.baseline,
                    humantime::format_duration(plan.watch_period)
                )
            } else {
                String::new()
            };
            let how = early
                .clone()
                .unwrap_or_else(|| format!("all {} steps passed", plan.steps.len()));
            let reason = format!("{how}; version {} is primary{watch}", r.candidate);
            (next, "promote", GUARD, reason)
        }
        Action::Rollback { reason } => (
            r.moved(
                RolloutState::RolledBack,
                Phase::Finished,
                r.marks.clone(),
                now,
            ),
            "rollback",
            GUARD,
            reason.clone(),
        ),
        Action::EndWatch => (
            r.moved(
                RolloutState::Promoted,
                Phase::Finished,
                r.marks.clone(),
                now,
            ),
            "watch_end",
            GUARD,
            format!(
                "watch over: version {} held up against version {}'s numbers",
                r.candidate, r.baseline
            ),
        ),
        Action::Abort { actor, reason } => {
            let state = if r.phase == Phase::Watch {
                RolloutState::Promoted
            } else {
                RolloutState::Aborted
            };
            let next = r.moved(state, Phase::Finished, r.marks.clone(), now);
            (next, "abort", actor.as_str(), reason.clone())
        }
    };
    next.record(decision, actor, reason, numbers, now);
    next
}

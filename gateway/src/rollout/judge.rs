//! One comparison of a candidate with its baseline: the canary against the primary during a
//! step, the shadow against the primary during a shadow stage, or a promoted version against
//! the numbers its predecessor had. The numbers and the verdict, ready to show and to log.

use serde::Serialize;

use super::bayes::{AccuracyPosterior, probability_above, reward_probability_above};
use super::plan::{PromoteOn, RolloutPlan, ShadowStage};
use super::stats::{
    ErrorTest, LatencyTest, PsiTest, error_rate_test, latency_test, normal_quantile, psi_test,
    reward_test, wilson_upper,
};
use crate::telemetry::predictions::PredictionCounts;
use crate::telemetry::quality::QualityTotals;
use crate::telemetry::window::{WindowStats, quantile};

/// What one side did over the compared span.
#[derive(Clone, Debug)]
pub struct Sample {
    pub version: u64,
    pub stats: WindowStats,
    pub predictions: PredictionCounts,
    /// Outcomes joined for its answers over the same span.
    pub outcomes: QualityTotals,
    /// What the numbers cover: "step" (since the step began), "rollout" (the primary since the
    /// rollout began, when the step leaves it too little traffic, as at 100 %), "watch" (since
    /// promotion), "predecessor" (frozen at promotion), or "shadow" (since the stage began).
    pub basis: &'static str,
}

/// One side's numbers, as the API shows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SideView {
    pub version: u64,
    pub basis: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl From<&Sample> for SideView {
    fn from(s: &Sample) -> SideView {
        SideView {
            version: s.version,
            basis: s.basis,
            requests: s.stats.requests,
            errors: s.stats.errors,
            error_rate: s.stats.error_rate,
            p99_ms: s.stats.p99_ms,
        }
    }
}

/// The shadow stage's label agreement since it began.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowCheck {
    /// Copies compared with the primary's answer.
    pub compared: u64,
    pub label_rows: u64,
    pub agreeing_rows: u64,
    pub agreement: Option<f64>,
    /// The Wilson upper bound of the agreement at the rollout's confidence.
    pub upper_bound: Option<f64>,
    pub min_agreement: f64,
}

/// One comparison: every number, and what they prove.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Assessment {
    /// The candidate (the canary, the shadow, or the promoted version).
    pub canary: SideView,
    /// What it is compared with.
    pub primary: SideView,
    /// Whether both sides had `min_requests`; before that nothing is decided.
    pub judged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorTest>,
    /// Canary p99 over primary p99, for reading; the decision is `latency`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyTest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_psi: Option<PsiTest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_psi: Option<PsiTest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowCheck>,
    /// Correctness, once both sides have `min_outcomes` joined outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<OutcomeTest>,
    /// With `promote_on = "probability"`: the candidate is proven better and may be promoted
    /// now, whatever step it is at.
    pub promote_early: bool,
    /// What the candidate breached, in words; `None` while it passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breach: Option<String>,
    /// One line: waiting, healthy, or the breach.
    pub summary: String,
}

fn percent(rate: Option<f64>) -> String {
    format!("{:.1}%", rate.unwrap_or(0.0) * 100.0)
}

fn base(canary: &Sample, primary: &Sample, min_requests: u64) -> Assessment {
    let (c, p) = (&canary.stats, &primary.stats);
    let judged = c.requests >= min_requests && p.requests >= min_requests;
    Assessment {
        canary: canary.into(),
        primary: primary.into(),
        judged,
        error_rate: None,
        p99_ratio: c.p99_ms.zip(p.p99_ms).map(|(c, p)| c / p),
        latency: None,
        label_psi: None,
        score_psi: None,
        shadow: None,
        outcomes: None,
        promote_early: false,
        breach: None,
        summary: if judged {
            "healthy".into()
        } else {
            format!(
                "waiting for {min_requests} requests a side ({} {}, {} {})",
                c.requests, canary.basis, p.requests, primary.basis
            )
        },
    }
}

fn error_check(a: &mut Assessment, plan: &RolloutPlan, breaches: &mut Vec<String>) {
    let (c, p) = (&a.canary, &a.primary);
    let test = error_rate_test(
        (c.errors, c.requests),
        (p.errors, p.requests),
        plan.max_error_rate_increase,
        plan.confidence,
    );
    if test.breach {
        breaches.push(format!(
            "error rate {} ({}/{}) against {} ({}/{}): {:+.1} points, more than the {:.1} allowed \
             (z = {:.2} > {:.2})",
            percent(c.error_rate),
            c.errors,
            c.requests,
            percent(p.error_rate),
            p.errors,
            p.requests,
            test.increase * 100.0,
            plan.max_error_rate_increase * 100.0,
            test.z,
            test.z_limit
        ));
    }
    a.error_rate = Some(test);
}

/// The correctness comparison: accuracy from label outcomes, else mean reward.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutcomeTest {
    /// "accuracy" or "reward".
    pub metric: &'static str,
    pub canary: f64,
    pub primary: f64,
    pub canary_outcomes: u64,
    pub primary_outcomes: u64,
    /// Primary minus canary (positive: the canary is worse).
    pub decrease: f64,
    pub margin: f64,
    /// The one-sided test (`promote_on = "steps"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z_limit: Option<f64>,
    /// The posteriors (`promote_on = "probability"`): P(canary better), P(canary worse by
    /// more than the margin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability_better: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability_worse: Option<f64>,
    pub breach: bool,
}

impl OutcomeTest {
    /// The two sides' values and outcome counts, before any test.
    fn new(metric: &'static str, canary: (f64, u64), primary: (f64, u64), margin: f64) -> Self {
        OutcomeTest {
            metric,
            canary: canary.0,
            primary: primary.0,
            canary_outcomes: canary.1,
            primary_outcomes: primary.1,
            decrease: primary.0 - canary.0,
            margin,
            z: None,
            z_limit: None,
            probability_better: None,
            probability_worse: None,
            breach: false,
        }
    }
}

/// Judges correctness once both sides have `min_outcomes`: label outcomes first (accuracy),
/// else rewards. Runs before (and apart from) the `min_requests` gate: outcomes are the
/// stronger evidence, and a wrong model must not keep serving while requests accumulate.
fn outcome_check(plan: &RolloutPlan, canary: &Sample, primary: &Sample) -> Option<OutcomeTest> {
    let (c, p) = (&canary.outcomes, &primary.outcomes);
    let enough = |n: u64, m: u64| n >= plan.min_outcomes && m >= plan.min_outcomes;
    let bayesian = plan.promote_on == PromoteOn::Probability;
    if enough(c.labeled, p.labeled) {
        let margin = plan.max_accuracy_decrease;
        let mut t = OutcomeTest::new(
            "accuracy",
            (c.accuracy()?, c.labeled),
            (p.accuracy()?, p.labeled),
            margin,
        );
        if bayesian {
            let (cp, pp) = (
                AccuracyPosterior::new(c.correct, c.labeled),
                AccuracyPosterior::new(p.correct, p.labeled),
            );
            let worse = probability_above(pp, cp, margin);
            t.probability_better = Some(probability_above(cp, pp, 0.0));
            t.probability_worse = Some(worse);
            t.breach = worse >= plan.min_probability_better;
        } else {
            let wrong = |t: &QualityTotals| (t.labeled - t.correct, t.labeled);
            let test = error_rate_test(wrong(c), wrong(p), margin, plan.confidence);
            t.z = Some(test.z);
            t.z_limit = Some(test.z_limit);
            t.breach = test.breach;
        }
        return Some(t);
    }
    if enough(c.rewards, p.rewards) {
        let side = |t: &QualityTotals| {
            (
                t.reward_mean().unwrap_or(0.0),
                t.reward_variance().unwrap_or(0.0),
                t.rewards,
            )
        };
        let (cs, ps) = (side(c), side(p));
        let margin = plan.max_reward_decrease;
        let mut t = OutcomeTest::new("reward", (cs.0, cs.2), (ps.0, ps.2), margin);
        if bayesian {
            let worse = reward_probability_above(ps, cs, margin).unwrap_or(0.0);
            t.probability_better = reward_probability_above(cs, ps, 0.0);
            t.probability_worse = Some(worse);
            t.breach = worse >= plan.min_probability_better;
        } else {
            let (z, z_limit, breach) = reward_test(cs, ps, margin, plan.confidence);
            t.z = Some(z);
            t.z_limit = Some(z_limit);
            t.breach = breach;
        }
        return Some(t);
    }
    None
}

fn describe_outcome_breach(t: &OutcomeTest) -> String {
    let accuracy = t.metric == "accuracy";
    let what = if accuracy { "accuracy" } else { "mean reward" };
    let value = |v: f64| {
        if accuracy {
            format!("{:.1}%", v * 100.0)
        } else {
            format!("{v:.4}")
        }
    };
    let evidence = match (t.z, t.z_limit, t.probability_worse) {
        (Some(z), Some(limit), _) => format!("z = {z:.2} > {limit:.2}"),
        (_, _, Some(p)) => format!("P(worse beyond the margin) = {p:.3}"),
        _ => String::new(),
    };
    let margin = if t.metric == "accuracy" {
        format!("{:.1} points", t.margin * 100.0)
    } else {
        format!("{}", t.margin)
    };
    format!(
        "outcomes: {what} {} over {} outcomes against {} over {}: worse by more than the {margin}          allowed ({evidence})",
        value(t.canary),
        t.canary_outcomes,
        value(t.primary),
        t.primary_outcomes
    )
}

/// Canary against primary (or a promoted version against its predecessor): correctness once
/// both sides have `min_outcomes`; error rate, latency and predictions once both sides have
/// `min_requests`.
pub fn assess(plan: &RolloutPlan, canary: &Sample, primary: &Sample) -> Assessment {
    let mut a = base(canary, primary, plan.min_requests);
    let mut breaches = Vec::new();
    a.outcomes = outcome_check(plan, canary, primary);
    if let Some(t) = &a.outcomes {
        if t.breach {
            breaches.push(describe_outcome_breach(t));
        }
        a.promote_early = a.judged
            && !t.breach
            && t.probability_better
                .is_some_and(|p| p >= plan.min_probability_better);
    }
    if !a.judged {
        conclude(&mut a, breaches);
        return a;
    }
    error_check(&mut a, plan, &mut breaches);
    if let Some(p99) = primary.stats.p99_ms {
        // The primary's p99 is itself an estimate: compare with its upper confidence bound
        // (the quantile 0.99 + z·√(0.99·0.01/n)), so that a primary seen over few requests
        // cannot make a healthy canary look slow.
        let n = primary.stats.requests as f64;
        let level = 0.99 + normal_quantile(plan.confidence) * (0.99 * 0.01 / n).sqrt();
        let upper = quantile(&primary.stats.latency, level.min(1.0)).unwrap_or(p99);
        let floor_ms = plan.min_p99_increase.as_secs_f64() * 1000.0;
        let bound = (upper * plan.max_p99_ratio).max(upper + floor_ms);
        let slower = canary.stats.slower_than(bound);
        let test = latency_test(slower, canary.stats.requests, bound, plan.confidence);
        if test.breach {
            breaches.push(format!(
                "latency: {slower} of {} requests slower than {bound:.2} ms ({}x the p99 it is \
                 compared with: {p99:.2} ms, {upper:.2} ms at its upper confidence bound; p = \
                 {:.1e})",
                canary.stats.requests, plan.max_p99_ratio, test.p_value
            ));
        }
        a.latency = Some(test);
    }
    let (cp, pp) = (&canary.predictions, &primary.predictions);
    a.label_psi = psi_test(
        &cp.labels,
        &pp.labels,
        plan.max_prediction_psi,
        plan.confidence,
    );
    a.score_psi = psi_test(
        &cp.confidence,
        &pp.confidence,
        plan.max_prediction_psi,
        plan.confidence,
    );
    for (what, test) in [("label", &a.label_psi), ("top-score", &a.score_psi)] {
        if let Some(t) = test.as_ref().filter(|t| t.breach) {
            breaches.push(format!(
                "predictions: {what} PSI {:.2} less the noise allowance {:.2} exceeds {}",
                t.psi, t.allowance, plan.max_prediction_psi
            ));
        }
    }
    conclude(&mut a, breaches);
    a
}

/// The shadow stage: the candidate's shadow errors against the primary's errors, and label
/// agreement. `final_look` is set once the stage has run its duration: then the point
/// agreement must reach the minimum; before, the candidate fails only when even the upper
/// bound is below it.
pub fn assess_shadow(
    plan: &RolloutPlan,
    stage: &ShadowStage,
    shadow: &Sample,
    primary: &Sample,
    agreement: (u64, u64, u64),
    final_look: bool,
) -> Assessment {
    let (compared, label_rows, agreeing_rows) = agreement;
    let mut a = base(shadow, primary, plan.min_requests);
    a.judged = a.judged && compared >= plan.min_requests;
    let rate = (label_rows > 0).then(|| agreeing_rows as f64 / label_rows as f64);
    let upper = (label_rows > 0).then(|| wilson_upper(agreeing_rows, label_rows, plan.confidence));
    a.shadow = Some(ShadowCheck {
        compared,
        label_rows,
        agreeing_rows,
        agreement: rate,
        upper_bound: upper,
        min_agreement: stage.min_agreement,
    });
    if !a.judged {
        a.summary = format!(
            "waiting for {} compared copies and requests a side ({compared} compared, {} \
             shadow, {} primary)",
            plan.min_requests, shadow.stats.requests, primary.stats.requests
        );
        return a;
    }
    let mut breaches = Vec::new();
    error_check(&mut a, plan, &mut breaches);
    if let (Some(rate), Some(upper)) = (rate, upper) {
        let short = if final_look {
            rate < stage.min_agreement
        } else {
            upper < stage.min_agreement
        };
        if short {
            breaches.push(format!(
                "shadow agreement {:.1}% ({agreeing_rows}/{label_rows} rows, upper bound \
                 {:.1}%) is below the {:.1}% required",
                rate * 100.0,
                upper * 100.0,
                stage.min_agreement * 100.0
            ));
        }
    }
    conclude(&mut a, breaches);
    a
}

fn conclude(a: &mut Assessment, breaches: Vec<String>) {
    if !breaches.is_empty() {
        let text = breaches.join("; ");
        a.summary = format!("breach: {text}");
        a.breach = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::{PromoteOn, RolloutConfig};
    use crate::telemetry::window::RollingWindow;
    use std::time::Duration;

    fn sample(version: u64, requests: u64, errors: u64, latency: Duration) -> Sample {
        let window = RollingWindow::new();
        for i in 0..requests {
            window.record(latency, i < errors);
        }
        let mut predictions = PredictionCounts::default();
        predictions.labels[(version % 2) as usize] = requests;
        predictions.confidence[19] = requests;
        Sample {
            version,
            stats: window.stats(Duration::from_secs(60)),
            predictions,
            outcomes: QualityTotals::default(),
            basis: "step",
        }
    }

    fn labeled(mut s: Sample, correct: u64, labeled: u64) -> Sample {
        s.outcomes.labeled = labeled;
        s.outcomes.correct = correct;
        s.outcomes.outcomes = labeled;
        s
    }

    #[test]
    fn outcomes_roll_back_a_wrong_canary_and_promote_a_better_one_early() {
        let plan = RolloutConfig::default().plan(&Default::default()).unwrap();
        let primary = labeled(sample(2, 2000, 0, Duration::from_millis(1)), 97, 100);
        // Same predictions, same speed, no requests threshold reached yet: wrong on every row.
        let wrong = labeled(sample(2, 150, 0, Duration::from_millis(1)), 0, 100);
        let a = assess(&plan, &wrong, &primary);
        assert!(!a.judged, "below min_requests");
        let breach = a.breach.expect("a wrong canary is rolled back on outcomes");
        assert!(
            breach.contains("outcomes: accuracy 0.0% over 100 outcomes"),
            "{breach}"
        );
        // Within the two-point margin: healthy, however many outcomes.
        let close = labeled(sample(2, 300, 0, Duration::from_millis(1)), 9_650, 10_000);
        let primary_many = labeled(sample(2, 2000, 0, Duration::from_millis(1)), 9_700, 10_000);
        let a = assess(&plan, &close, &primary_many);
        assert_eq!(a.breach, None, "{:?}", a.outcomes);
        // Too few outcomes: nothing is decided on them.
        let few = labeled(sample(2, 300, 0, Duration::from_millis(1)), 0, 99);
        assert!(assess(&plan, &few, &primary).outcomes.is_none());

        let bayes = RolloutConfig {
            promote_on: PromoteOn::Probability,
            ..RolloutConfig::default()
        }
        .plan(&Default::default())
        .unwrap();
        let weak = labeled(sample(2, 2000, 0, Duration::from_millis(1)), 70, 100);
        let better = labeled(sample(2, 300, 0, Duration::from_millis(1)), 97, 100);
        let a = assess(&bayes, &better, &weak);
        assert!(a.promote_early && a.breach.is_none(), "{a:?}");
        let t = a.outcomes.unwrap();
        assert!(t.probability_better.unwrap() > 0.999);
        let a = assess(&bayes, &wrong, &primary);
        assert!(a.breach.unwrap().contains("P(worse beyond the margin)"));
        // Better but not yet past min_requests: not promoted yet.
        let early = labeled(sample(2, 150, 0, Duration::from_millis(1)), 97, 100);
        assert!(!assess(&bayes, &early, &weak).promote_early);
    }

    #[test]
    fn waits_for_min_requests_then_names_each_breach() {
        let plan = RolloutConfig::default().plan(&Default::default()).unwrap();
        let primary = sample(2, 2000, 0, Duration::from_millis(1));
        let few = sample(1, 150, 60, Duration::from_millis(50));
        let a = assess(&plan, &few, &primary);
        assert!(!a.judged && a.breach.is_none(), "{a:?}");
        assert!(a.summary.starts_with("waiting"), "{}", a.summary);
        // Version 1 predicts label 1 only, version 2 label 0 only: a prediction breach too.
        let bad = sample(1, 300, 90, Duration::from_millis(50));
        let a = assess(&plan, &bad, &primary);
        let breach = a.breach.unwrap();
        for want in [
            "error rate 30.0% (90/300)",
            "latency: 300 of 300",
            "label PSI",
        ] {
            assert!(breach.contains(want), "{want} missing from {breach}");
        }
        let same = sample(2, 300, 0, Duration::from_millis(1));
        let a = assess(&plan, &same, &primary);
        assert_eq!((a.judged, a.breach), (true, None));
    }
}

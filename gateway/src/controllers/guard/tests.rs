//! The guard's decisions on versions with fake backends: traffic is written straight into the
//! versions' rolling windows and prediction counters, so each test sets exactly the numbers a
//! decision is taken on, with no sockets and no machine noise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decide::{Action, evaluate, transition};
use super::*;
use crate::control::LocalControl;
use crate::infer::shadow::Shadower;
use crate::lifecycle::ModelManager;
use crate::predlog::PredictionLog;
use crate::repository::{LoadedVersion, Loader, testing};
use crate::rollout::RolloutOverrides;
use crate::routing::{RolloutState, Snapshot};
use sluice_core::Variant;
use sluice_core::tensor::{Tensor, TensorData};
use sluice_runtime::Backend;

const MODEL: &str = "m";

/// A plan with two steps (10 %, 100 %), a one-second step, 50 requests a side to judge, and
/// `watch` after promotion.
fn plan(watch: Duration) -> RolloutPlan {
    RolloutConfig::default()
        .plan(&RolloutOverrides {
            steps: Some(vec![10.0, 100.0]),
            step_duration: Some(Duration::from_secs(1)),
            min_requests: Some(50),
            watch_period: Some(watch),
            ..RolloutOverrides::default()
        })
        .expect("valid plan")
}

/// Version 1 (primary, answers label 0) and version 2 (the candidate, answers `label`).
fn routes(candidate_label: i64) -> ModelRoutes {
    let versions = BTreeMap::from([
        (1, testing::version(MODEL, 1, 0)),
        (2, testing::version(MODEL, 2, candidate_label)),
    ]);
    let mut routes = ModelRoutes {
        versions,
        ..ModelRoutes::default()
    };
    routes.traffic.primary = Some(1);
    routes
}

/// `routes` with a rollout of version 2 begun now under `plan`.
fn rolling(mut routes: ModelRoutes, plan: RolloutPlan) -> (ModelRoutes, Arc<Rollout>) {
    let (rollout, traffic) =
        Rollout::begin(MODEL, &routes, 2, plan, "tester", Instant::now()).expect("rollout begins");
    let rollout = Arc::new(rollout);
    routes.traffic = traffic;
    routes.rollout = Some(Arc::clone(&rollout));
    watch_predictions(&routes, Some(&rollout));
    (routes, rollout)
}

/// `n` answered requests on `variant` of `version`, `failed` of them server failures, each
/// taking `latency`; their predictions are what the version's backend answers.
fn serve(version: &LoadedVersion, variant: Variant, n: u64, failed: u64, latency: Duration) {
    let outputs = fixed_outputs(version);
    for i in 0..n {
        version.windows.get(variant).record(latency, i < failed);
        version.windows.predictions.record(variant, &outputs);
    }
}

/// The outputs the version's fake backend gives for one row.
fn fixed_outputs(version: &LoadedVersion) -> Vec<Tensor> {
    let label = LABELS.with(|l| l.borrow().get(&version.version).copied().unwrap_or(0));
    let input = Tensor::new("input", vec![1, 2], TensorData::F32(vec![0.0; 2])).unwrap();
    testing::FixedLabel(label).run(vec![input]).unwrap()
}

thread_local! {
    /// The label each version answers in the current test (set by `setup`).
    static LABELS: std::cell::RefCell<BTreeMap<u64, i64>> = Default::default();
}

/// Routes with a rollout begun now; version 2 answers `candidate_label`.
fn setup(candidate_label: i64, watch: Duration) -> (ModelRoutes, Arc<Rollout>) {
    LABELS.with(|l| *l.borrow_mut() = BTreeMap::from([(1, 0), (2, candidate_label)]));
    rolling(routes(candidate_label), plan(watch))
}

fn fast() -> Duration {
    Duration::from_micros(400)
}

fn no_shadow() -> (u64, u64, u64) {
    (0, 0, 0)
}

/// Healthy traffic on both sides of the current step.
fn healthy_step(routes: &ModelRoutes) {
    serve(&routes.versions[&1], Variant::Primary, 400, 0, fast());
    serve(&routes.versions[&2], Variant::Canary, 400, 0, fast());
}

#[test]
fn nothing_is_decided_below_the_minimum_sample() {
    let (routes, rollout) = setup(0, Duration::ZERO);
    serve(&routes.versions[&1], Variant::Primary, 400, 0, fast());
    // A canary failing every request, but only 20 of them: not enough to condemn it.
    serve(&routes.versions[&2], Variant::Canary, 20, 20, fast());
    let later = Instant::now() + Duration::from_secs(5);
    let (assessment, action) = evaluate(&routes, &rollout, later, no_shadow);
    let assessment = assessment.expect("an assessment while the step runs");
    assert!(!assessment.judged, "{assessment:?}");
    assert!(assessment.breach.is_none());
    assert!(action.is_none(), "{action:?}");
}

#[test]
fn a_higher_error_rate_rolls_back() {
    let (routes, rollout) = setup(0, Duration::ZERO);
    serve(&routes.versions[&1], Variant::Primary, 400, 0, fast());
    serve(&routes.versions[&2], Variant::Canary, 200, 40, fast());
    let (assessment, action) = evaluate(&routes, &rollout, Instant::now(), no_shadow);
    let breach = assessment.and_then(|a| a.breach).expect("a breach");
    assert!(breach.contains("error"), "{breach}");
    match action {
        Some(Action::Rollback { reason }) => {
            assert!(reason.starts_with("step 1 at 10%"), "{reason}")
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
}

#[test]
fn a_slower_canary_rolls_back() {
    let (routes, rollout) = setup(0, Duration::ZERO);
    serve(&routes.versions[&1], Variant::Primary, 400, 0, fast());
    serve(
        &routes.versions[&2],
        Variant::Canary,
        200,
        0,
        Duration::from_millis(40),
    );
    let (assessment, action) = evaluate(&routes, &rollout, Instant::now(), no_shadow);
    let breach = assessment.and_then(|a| a.breach).expect("a breach");
    assert!(breach.contains("latency"), "{breach}");
    assert!(
        matches!(action, Some(Action::Rollback { .. })),
        "{action:?}"
    );
}

#[test]
fn shifted_predictions_roll_back() {
    // Version 2 answers label 1 where version 1 answers 0: the label histograms part ways.
    let (routes, rollout) = setup(1, Duration::ZERO);
    healthy_step(&routes);
    let (assessment, action) = evaluate(&routes, &rollout, Instant::now(), no_shadow);
    let breach = assessment.and_then(|a| a.breach).expect("a breach");
    assert!(breach.contains("PSI") || breach.contains("psi"), "{breach}");
    assert!(
        matches!(action, Some(Action::Rollback { .. })),
        "{action:?}"
    );
}

#[test]
fn a_healthy_step_advances_once_its_duration_is_over() {
    let (routes, rollout) = setup(0, Duration::ZERO);
    healthy_step(&routes);
    let (assessment, action) = evaluate(&routes, &rollout, Instant::now(), no_shadow);
    let assessment = assessment.expect("an assessment");
    assert!(
        assessment.judged && assessment.breach.is_none(),
        "{assessment:?}"
    );
    assert!(
        action.is_none(),
        "the step has not run its second yet: {action:?}"
    );
    let later = rollout.phase_started + Duration::from_secs(1);
    let (_, action) = evaluate(&routes, &rollout, later, no_shadow);
    let Some(action @ Action::Advance { to: 1 }) = action else {
        panic!("expected an advance to step 2, got {action:?}");
    };
    let next = transition(&rollout, &routes, &action, None, later);
    assert_eq!(
        (next.state, next.phase),
        (RolloutState::Progressing, Phase::Step(1))
    );
    assert_eq!(next.weight(), 100.0);
    assert_eq!(next.timeline.last().map(|d| d.decision), Some("step"));
}

#[test]
fn the_last_step_promotes_and_the_watch_rolls_back_a_breach() {
    let (routes, rollout) = setup(0, Duration::from_secs(60));
    let last = rollout.moved(
        RolloutState::Progressing,
        Phase::Step(1),
        rollout.marks.clone(),
        Instant::now(),
    );
    healthy_step(&routes);
    let later = Instant::now() + Duration::from_secs(2);
    let (_, action) = evaluate(&routes, &last, later, no_shadow);
    let Some(action @ Action::Promote { .. }) = action else {
        panic!("expected a promotion, got {action:?}");
    };
    let promoted = transition(&last, &routes, &action, None, later);
    assert_eq!(
        (promoted.state, promoted.phase),
        (RolloutState::Promoted, Phase::Watch)
    );
    assert_eq!(promoted.traffic(&routes.traffic).primary, Some(2));
    // As primary, version 2 now fails a fifth of its requests: the watch sends traffic back.
    let watching = Rollout {
        phase_started: Instant::now(),
        ..promoted
    };
    serve(&routes.versions[&2], Variant::Primary, 300, 60, fast());
    let (assessment, action) = evaluate(&routes, &watching, Instant::now(), no_shadow);
    assert!(assessment.and_then(|a| a.breach).is_some());
    let Some(action @ Action::Rollback { .. }) = action else {
        panic!("expected a rollback in the watch, got {action:?}");
    };
    let back = transition(&watching, &routes, &action, None, Instant::now());
    assert_eq!(back.state, RolloutState::RolledBack);
    assert_eq!(back.traffic(&routes.traffic).primary, Some(1));
    assert!(
        back.reason.contains("version 1 is primary again"),
        "{}",
        back.reason
    );
}

#[test]
fn a_quiet_watch_ends_and_the_promotion_stands() {
    let (routes, rollout) = setup(0, Duration::from_secs(1));
    healthy_step(&routes);
    let promote = Action::Promote {
        early: None,
        reference: Arc::new(crate::routing::rollout::predecessor(
            &routes.versions[&1],
            &rollout,
        )),
    };
    let promoted = transition(&rollout, &routes, &promote, None, Instant::now());
    let later = promoted.phase_started + Duration::from_secs(1);
    let (_, action) = evaluate(&routes, &promoted, later, no_shadow);
    assert!(matches!(action, Some(Action::EndWatch)), "{action:?}");
    let ended = transition(&promoted, &routes, &Action::EndWatch, None, later);
    assert_eq!(
        (ended.state, ended.phase),
        (RolloutState::Promoted, Phase::Finished)
    );
    assert!(!ended.is_active());
}

#[test]
fn a_version_that_went_away_aborts_the_rollout() {
    let (mut routes, rollout) = setup(0, Duration::ZERO);
    routes.versions.remove(&2);
    let (assessment, action) = evaluate(&routes, &rollout, Instant::now(), no_shadow);
    assert!(assessment.is_none());
    match action {
        Some(Action::Abort { actor, reason }) => {
            assert_eq!(actor, crate::rollout::GUARD);
            assert!(reason.contains("no longer loaded"), "{reason}");
        }
        other => panic!("expected an abort, got {other:?}"),
    }
}

/// A guard over a real router, deciding through the single-node control.
fn local_guard(routes: ModelRoutes) -> (Arc<Router>, Guard) {
    let config = crate::config::Config::default();
    let router = Arc::new(Router::new(Snapshot::default().with_model(MODEL, routes)));
    let loader = Loader::new(&config.runtime, &config.repository, &config.drift);
    let models = Arc::new(ModelManager::new(
        Arc::new(loader),
        Arc::clone(&router),
        PredictionLog::disabled(),
    ));
    let inference = Arc::new(Inference::new(
        Arc::clone(&router),
        Duration::from_secs(1),
        Shadower::start(1, 1, Duration::from_secs(1), PredictionLog::disabled()),
        PredictionLog::disabled(),
        16,
    ));
    let control = Arc::new(LocalControl::new(models));
    let guard = Guard::new(Arc::clone(&router), control, inference, config.rollout);
    (router, guard)
}

#[tokio::test]
async fn a_tick_stores_the_rollback_with_its_traffic() {
    let (routes, _) = setup(0, Duration::ZERO);
    serve(&routes.versions[&1], Variant::Primary, 400, 0, fast());
    serve(&routes.versions[&2], Variant::Canary, 200, 50, fast());
    let (router, guard) = local_guard(routes);
    guard.tick();
    let snapshot = router.snapshot();
    let stored = &snapshot.models[MODEL];
    let rollout = stored.rollout.as_ref().expect("the rollout stays recorded");
    assert_eq!(rollout.state, RolloutState::RolledBack);
    assert_eq!(
        stored.traffic.canary, None,
        "the weight went to zero in the same store"
    );
    assert_eq!(stored.traffic.primary, Some(1));
    // The rollout is over: another tick changes nothing.
    guard.tick();
    assert!(Arc::ptr_eq(&router.snapshot(), &snapshot));
}

#[tokio::test]
async fn an_abort_through_the_api_ends_the_rollout_and_a_second_is_refused() {
    let (routes, _) = setup(0, Duration::ZERO);
    let (router, guard) = local_guard(routes);
    let actor = Actor::new("operator");
    let aborted = guard.abort(MODEL, &actor).await.expect("abort");
    assert_eq!(aborted.state, RolloutState::Aborted);
    assert_eq!(router.snapshot().models[MODEL].traffic.canary, None);
    let again = guard.abort(MODEL, &actor).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::Conflict);
    assert!(again.message.contains("already ended"), "{}", again.message);
}

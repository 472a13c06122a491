//! The single-node control on a real router, with versions on fake backends: each change is
//! stored whole or not at all, and a refused change leaves the snapshot exactly as it was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::{LocalControl, ModelControl};
use crate::config::Config;
use crate::lifecycle::{Actor, ModelManager};
use crate::predlog::PredictionLog;
use crate::repository::{Loader, testing};
use crate::rollout::{RolloutConfig, RolloutOverrides};
use crate::routing::{ModelRoutes, Rollout, RolloutState, Router, Snapshot, TrafficPolicy};
use sluice_core::error::{ErrorKind, ServeError};

const MODEL: &str = "m";

fn control() -> (Arc<Router>, LocalControl) {
    let config = Config::default();
    let routes = ModelRoutes {
        versions: BTreeMap::from([
            (1, testing::version(MODEL, 1, 0)),
            (2, testing::version(MODEL, 2, 0)),
        ]),
        ..ModelRoutes::default()
    };
    let router = Arc::new(Router::new(Snapshot::default().with_model(MODEL, routes)));
    let loader = Loader::new(&config.runtime, &config.repository, &config.drift);
    let models = ModelManager::new(
        Arc::new(loader),
        Arc::clone(&router),
        PredictionLog::disabled(),
    );
    (router, LocalControl::new(Arc::new(models)))
}

fn policy(json: serde_json::Value) -> TrafficPolicy {
    serde_json::from_value(json).expect("a policy")
}

fn begin(routes: &ModelRoutes) -> Result<Rollout, ServeError> {
    let plan = RolloutConfig::default()
        .plan(&RolloutOverrides::default())
        .expect("default plan");
    Rollout::begin(MODEL, routes, 1, plan, "tester", Instant::now()).map(|(r, _)| r)
}

#[tokio::test]
async fn a_traffic_policy_is_stored_and_answered_as_in_force() {
    let (router, control) = control();
    let actor = Actor::new("tester");
    let asked =
        policy(serde_json::json!({"primary": "1", "canary": {"version": "2", "weight": 12.5}}));
    let in_force = control.set_traffic(MODEL, &asked, &actor).await.unwrap();
    assert_eq!(in_force, asked);
    let traffic = &router.snapshot().models[MODEL].traffic;
    assert_eq!(traffic.primary, Some(1));
    assert_eq!(traffic.canary, Some((2, 1250)));
}

#[tokio::test]
async fn a_refused_policy_changes_nothing() {
    let (router, control) = control();
    let actor = Actor::new("tester");
    let before = router.snapshot();
    let bad =
        policy(serde_json::json!({"primary": "7", "canary": {"version": "2", "weight": 120.0}}));
    let err = control.set_traffic(MODEL, &bad, &actor).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message.contains("primary") && err.message.contains("weight"),
        "{}",
        err.message
    );
    assert!(
        Arc::ptr_eq(&before, &router.snapshot()),
        "nothing was stored"
    );
    let unknown = control
        .set_traffic("nope", &TrafficPolicy::default(), &actor)
        .await;
    assert_eq!(unknown.unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn a_rollout_is_stored_with_its_traffic_and_owns_it_while_it_runs() {
    let (router, control) = control();
    let actor = Actor::new("tester");
    let started = control.change_rollout(MODEL, &actor, &begin).await.unwrap();
    assert_eq!(started.state, RolloutState::Progressing);
    let snapshot = router.snapshot();
    let routes = &snapshot.models[MODEL];
    assert!(
        routes
            .rollout
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &started))
    );
    assert_eq!(
        routes.traffic.primary,
        Some(2),
        "the baseline is pinned as primary"
    );
    assert_eq!(routes.traffic.canary.map(|(v, _)| v), Some(1));
    // While it runs, the rollout owns the traffic: a policy change is a conflict.
    let err = control
        .set_traffic(MODEL, &TrafficPolicy::default(), &actor)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict);
    // And a second rollout is refused, leaving the first in place.
    let again = control
        .change_rollout(MODEL, &actor, &begin)
        .await
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::Conflict);
    assert!(Arc::ptr_eq(&snapshot, &router.snapshot()));
}

#[tokio::test]
async fn a_refused_proposal_stores_nothing() {
    let (router, control) = control();
    let before = router.snapshot();
    control.propose_rollout(MODEL, &|_: &ModelRoutes| {
        Err(ServeError::new(ErrorKind::Conflict, "the rollout moved on"))
    });
    assert!(Arc::ptr_eq(&before, &router.snapshot()));
    // An accepted one is stored at once on a single node.
    control.propose_rollout(MODEL, &begin);
    assert!(router.snapshot().models[MODEL].rollout.is_some());
}

#[test]
fn snapshot_changes_leave_the_original_untouched() {
    let (router, _) = control();
    let snapshot = router.snapshot();
    let (next, traffic) = snapshot
        .with_traffic(MODEL, &policy(serde_json::json!({"primary": "1"})))
        .unwrap();
    assert_eq!(traffic.primary, Some(1));
    assert_eq!(next.models[MODEL].traffic.primary, Some(1));
    assert_eq!(snapshot.models[MODEL].traffic.primary, None);
    let gone = next.without_model(MODEL);
    assert!(gone.models.is_empty() && next.models.contains_key(MODEL));
    let rollout = Arc::new(begin(&snapshot.models[MODEL]).unwrap());
    let rolling = next.with_rollout(MODEL, Arc::clone(&rollout)).unwrap();
    assert_eq!(
        rolling.models[MODEL].traffic,
        rollout.traffic(&next.models[MODEL].traffic)
    );
    assert!(next.models[MODEL].rollout.is_none());
    assert_eq!(
        gone.with_rollout(MODEL, rollout).unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[test]
fn versions_loaded_beside_keep_the_answering_version_primary() {
    let (router, _) = control();
    let snapshot = router.snapshot();
    let previous = &snapshot.models[MODEL];
    let newer = BTreeMap::from([(3, testing::version(MODEL, 3, 0))]);
    let routes = ModelRoutes::beside(Some(previous), &newer);
    assert_eq!(
        routes.versions.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        routes.traffic.primary,
        Some(2),
        "version 2 answered before: it still does"
    );
    let first = ModelRoutes::beside(None, &newer);
    assert_eq!(first.traffic.primary, None);
    assert_eq!(first.primary_version().map(|v| v.version), Some(3));
}

//! The routing state: every loaded version of every model and the traffic policy, together in
//! ONE immutable [`Snapshot`] behind ONE `ArcSwap`. A change builds a whole new snapshot and
//! stores it, so readers never see half an update, and a request keeps the version it resolved
//! (an `Arc`) until it ends, whatever is published meanwhile.

pub mod rollout;
pub mod traffic;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use rollout::{Decision, Phase, Rollout, RolloutState};
pub use traffic::{Traffic, TrafficPolicy};

use crate::telemetry::metrics as m;

use crate::repository::LoadedVersion;
use sluice_core::Variant;
use sluice_core::error::{ServeError, ServeResult};

/// Everything routing needs, as of one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub models: BTreeMap<String, ModelRoutes>,
}

/// One model's loaded versions, its traffic policy and its rollout.
#[derive(Clone, Debug, Default)]
pub struct ModelRoutes {
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Primary (unset: the newest loaded), canary share and shadow sample.
    pub traffic: Traffic,
    /// The latest guarded rollout, running or ended. While it runs it owns `traffic`: every
    /// step, promotion or rollback stores both together.
    pub rollout: Option<Arc<Rollout>>,
}

/// Where one request goes.
pub struct Route {
    pub target: Arc<LoadedVersion>,
    pub variant: Variant,
    /// The version that gets a copy of this request after it is answered.
    pub shadow: Option<Arc<LoadedVersion>>,
}

impl ModelRoutes {
    /// Checks a new traffic policy for this model, the one check admin calls on a single node
    /// and on a fleet both use: every problem named (400), or 409 while a rollout runs. A
    /// running rollout owns the model's traffic; changing it underneath would make the guard
    /// judge a split it did not set, and aborting is one explicit call away.
    pub fn accept_traffic(&self, model: &str, policy: &TrafficPolicy) -> ServeResult<Traffic> {
        if let Some(rollout) = self.rollout.as_ref().filter(|r| r.is_active()) {
            return Err(ServeError::new(
                sluice_core::error::ErrorKind::Conflict,
                format!(
                    "model '{model}' has a rollout of version {} in progress; abort it \
                     first with DELETE /admin/v1/models/{model}/rollout",
                    rollout.candidate
                ),
            ));
        }
        policy.validate(self).map_err(|problems| {
            ServeError::bad_request(format!("invalid traffic policy: {}", problems.join("; ")))
        })
    }

    /// `previous` (or nothing) with `versions` loaded beside what it serves, the version
    /// answering now pinned as primary: a newer version must not become the implicit primary
    /// before the traffic that goes with it is stored (a fleet's exact load).
    pub fn beside(
        previous: Option<&ModelRoutes>,
        versions: &BTreeMap<u64, Arc<LoadedVersion>>,
    ) -> ModelRoutes {
        let mut routes = previous.cloned().unwrap_or_default();
        if routes.traffic.primary.is_none() {
            routes.traffic.primary = previous
                .and_then(ModelRoutes::primary_version)
                .map(|v| v.version);
        }
        for (version, held) in versions {
            routes.versions.insert(*version, Arc::clone(held));
        }
        routes
    }

    /// The version answering unversioned requests outside the canary share.
    pub fn primary_version(&self) -> Option<&Arc<LoadedVersion>> {
        match self.traffic.primary {
            Some(v) => self.versions.get(&v),
            None => self.versions.values().next_back(),
        }
    }
}

impl Snapshot {
    /// Routes a request: a version named in the URL wins; otherwise the traffic policy picks
    /// primary or canary (by `key` when the policy is sticky), and maybe a shadow.
    pub fn route<'k>(
        &self,
        model: &str,
        version: Option<&str>,
        key: impl FnOnce(&str) -> Option<&'k str>,
    ) -> ServeResult<Route> {
        if version.is_some() {
            let target = self.resolve(model, version)?;
            return Ok(Route {
                target,
                variant: Variant::Direct,
                shadow: None,
            });
        }
        let routes = self
            .models
            .get(model)
            .ok_or_else(|| ServeError::unknown_model(model))?;
        let traffic = &routes.traffic;
        let key = traffic.sticky_key.as_deref().and_then(key);
        let canary = traffic
            .picks_canary(key)
            .then(|| traffic.canary.and_then(|(v, _)| routes.versions.get(&v)))
            .flatten();
        let (target, variant) = match canary {
            Some(canary) => (Arc::clone(canary), Variant::Canary),
            None => (self.resolve(model, None)?, Variant::Primary),
        };
        let shadow = traffic
            .samples_shadow()
            .and_then(|v| routes.versions.get(&v))
            .cloned();
        Ok(Route {
            target,
            variant,
            shadow,
        })
    }

    /// The version a request for `model` (and optionally an explicit `version` from the URL)
    /// is served by.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> ServeResult<Arc<LoadedVersion>> {
        let routes = self
            .models
            .get(model)
            .ok_or_else(|| ServeError::unknown_model(model))?;
        match version {
            None => routes.primary_version().cloned().ok_or_else(|| {
                ServeError::new(
                    sluice_core::error::ErrorKind::Unavailable,
                    format!("model '{model}' has no loaded version"),
                )
            }),
            Some(text) => {
                let number = parse_version(text)?;
                routes.versions.get(&number).cloned().ok_or_else(|| {
                    let loaded: Vec<String> = routes.versions.keys().map(u64::to_string).collect();
                    ServeError::not_found(format!(
                        "model '{model}' has no loaded version {number} (loaded: {})",
                        loaded.join(", ")
                    ))
                })
            }
        }
    }
}

/// Changes of the snapshot: each returns the next snapshot and leaves `self` as it is, so that a
/// [`Router::try_update`] can retry it on whatever snapshot is current.
impl Snapshot {
    /// `model` with a new traffic policy, checked as a whole against its loaded versions
    /// (400 naming every problem; 409 while a rollout owns the traffic); also the traffic
    /// stored.
    pub fn with_traffic(
        &self,
        model: &str,
        policy: &TrafficPolicy,
    ) -> ServeResult<(Snapshot, Traffic)> {
        let routes = self
            .models
            .get(model)
            .ok_or_else(|| ServeError::unknown_model(model))?;
        let traffic = routes.accept_traffic(model, policy)?;
        let mut next = self.clone();
        if let Some(routes) = next.models.get_mut(model) {
            routes.traffic = traffic.clone();
        }
        Ok((next, traffic))
    }

    /// `model` with `rollout` as its rollout and the traffic the rollout implies, in one
    /// snapshot: a reader never sees a rollback without its weight of zero.
    pub fn with_rollout(&self, model: &str, rollout: Arc<Rollout>) -> ServeResult<Snapshot> {
        let mut next = self.clone();
        let routes = next
            .models
            .get_mut(model)
            .ok_or_else(|| ServeError::unknown_model(model))?;
        routes.traffic = rollout.traffic(&routes.traffic);
        routes.rollout = Some(rollout);
        Ok(next)
    }

    /// `model` served by `routes`, whatever it was before.
    pub fn with_model(&self, model: &str, routes: ModelRoutes) -> Snapshot {
        let mut next = self.clone();
        next.models.insert(model.to_string(), routes);
        next
    }

    /// The snapshot without `model`.
    pub fn without_model(&self, model: &str) -> Snapshot {
        let mut next = self.clone();
        next.models.remove(model);
        next
    }
}

/// Versions are integers (Triton's rule); anything else in a URL is a client error.
pub fn parse_version(text: &str) -> ServeResult<u64> {
    text.parse().map_err(|_| {
        let shown = sluice_core::error::truncate(text, sluice_core::error::ECHO_MAX);
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            ServeError::bad_request(format!(
                "version '{shown}' is too large: versions are integers up to {}",
                u64::MAX
            ))
        } else {
            ServeError::bad_request(format!("version '{shown}' is not a non-negative integer"))
        }
    })
}

/// The published routing state.
pub struct Router {
    current: ArcSwap<Snapshot>,
}

impl Router {
    pub fn new(snapshot: Snapshot) -> Router {
        Router {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Routes a request against the snapshot in force, without taking any lock.
    pub fn route<'k>(
        &self,
        model: &str,
        version: Option<&str>,
        key: impl FnOnce(&str) -> Option<&'k str>,
    ) -> ServeResult<Route> {
        self.current.load().route(model, version, key)
    }

    /// Resolves a request against the snapshot in force, without taking any lock.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> ServeResult<Arc<LoadedVersion>> {
        self.current.load().resolve(model, version)
    }

    /// Like [`Router::update`], but `change` may refuse; then nothing is stored.
    pub fn try_update<E>(
        &self,
        mut change: impl FnMut(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<(), E> {
        loop {
            let current = self.current.load_full();
            let next = Arc::new(change(&current)?);
            let previous = self.current.compare_and_swap(&current, next);
            if Arc::ptr_eq(&previous, &current) {
                publish_gauges(&current, &self.current.load());
                return Ok(());
            }
        }
    }

    /// Publishes a change atomically: `change` gets the current snapshot and returns the next.
    /// Concurrent updates are retried, never lost.
    pub fn update(&self, mut change: impl FnMut(&Snapshot) -> Snapshot) {
        let previous = self.current.rcu(|current| change(current));
        publish_gauges(&previous, &self.current.load());
    }
}

/// Publishes the loaded-version gauges for a newly stored snapshot.
fn publish_gauges(previous: &Snapshot, next: &Snapshot) {
    for name in previous
        .models
        .keys()
        .filter(|m| !next.models.contains_key(*m))
    {
        metrics::gauge!(m::LOADED_VERSIONS, "model" => name.clone()).set(0.0);
    }
    for (name, routes) in &next.models {
        let weight = routes
            .traffic
            .canary
            .map(|(_, points)| points as f64 / 100.0);
        metrics::gauge!(m::CANARY_WEIGHT, "model" => name.clone()).set(weight.unwrap_or(0.0));
        let rate = routes.traffic.shadow.map(|(_, rate)| rate);
        metrics::gauge!(m::SHADOW_SAMPLE_RATE, "model" => name.clone()).set(rate.unwrap_or(0.0));
        metrics::gauge!(m::LOADED_VERSIONS, "model" => name.clone())
            .set(routes.versions.len() as f64);
        if let Some(rollout) = &routes.rollout {
            metrics::gauge!(m::ROLLOUT_WEIGHT, "model" => name.clone()).set(rollout.weight());
            for state in RolloutState::ALL {
                let current = if state == rollout.state { 1.0 } else { 0.0 };
                metrics::gauge!(m::ROLLOUT_STATE, "model" => name.clone(), "state" => state.as_str())
                    .set(current);
            }
        }
    }
}

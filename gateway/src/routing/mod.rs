//! The routing state: every loaded version of every model and the traffic policy, together in
//! ONE immutable [`Snapshot`] behind ONE `ArcSwap`. A change builds a whole new snapshot and
//! stores it, so readers never see half an update, and a request keeps the version it resolved
//! (an `Arc`) until it ends, whatever is published meanwhile.

pub mod compare;
pub mod shadow;
pub mod traffic;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use traffic::{Traffic, TrafficPolicy, Variant};

use crate::error::{ServeError, ServeResult};
use crate::repository::LoadedVersion;

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
    pub rollout: Option<Arc<crate::monitor::guard::Rollout>>,
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
                crate::error::ErrorKind::Conflict,
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
                    crate::error::ErrorKind::Unavailable,
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

/// Versions are integers (Triton's rule); anything else in a URL is a client error.
pub fn parse_version(text: &str) -> ServeResult<u64> {
    text.parse().map_err(|_| {
        let shown = crate::error::truncate(text, crate::error::ECHO_MAX);
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
                crate::monitor::metrics::record_snapshot(&current, &self.current.load());
                return Ok(());
            }
        }
    }

    /// Publishes a change atomically: `change` gets the current snapshot and returns the next.
    /// Concurrent updates are retried, never lost.
    pub fn update(&self, mut change: impl FnMut(&Snapshot) -> Snapshot) {
        let previous = self.current.rcu(|current| change(current));
        crate::monitor::metrics::record_snapshot(&previous, &self.current.load());
    }
}

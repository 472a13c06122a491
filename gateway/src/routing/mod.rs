//! The routing state: every loaded version of every model and the traffic policy, together in
//! ONE immutable [`Snapshot`] behind ONE `ArcSwap`. A change builds a whole new snapshot and
//! stores it, so readers never see half an update, and a request keeps the version it resolved
//! (an `Arc`) until it ends, whatever is published meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::error::{ServeError, ServeResult};
use crate::repository::LoadedVersion;

/// Everything routing needs, as of one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub models: BTreeMap<String, ModelRoutes>,
}

/// One model's loaded versions and which of them answers unversioned requests.
#[derive(Clone, Debug, Default)]
pub struct ModelRoutes {
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
    /// The version that answers requests without a version; `None` means the newest loaded.
    pub primary: Option<u64>,
}

impl ModelRoutes {
    /// The version answering unversioned requests.
    pub fn primary_version(&self) -> Option<&Arc<LoadedVersion>> {
        match self.primary {
            Some(v) => self.versions.get(&v),
            None => self.versions.values().next_back(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.primary_version().is_some()
    }
}

impl Snapshot {
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
        ServeError::bad_request(format!("version '{text}' is not a non-negative integer"))
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

    /// Resolves a request against the snapshot in force, without taking any lock.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> ServeResult<Arc<LoadedVersion>> {
        self.current.load().resolve(model, version)
    }

    /// Publishes a change atomically: `change` gets the current snapshot and returns the next.
    /// Concurrent updates are retried, never lost.
    pub fn update(&self, mut change: impl FnMut(&Snapshot) -> Snapshot) {
        let previous = self.current.rcu(|current| change(current));
        crate::monitor::metrics::record_snapshot(&previous, &self.current.load());
    }
}

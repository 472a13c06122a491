//! Loading the versions a fleet's control record names, rather than what the version policy
//! picks: every replica then serves the same versions, whatever its own poller or policy saw.

use std::collections::BTreeMap;

use super::{Actor, ModelManager};
use crate::predlog::{Event, EventKind};
use crate::repository;
use crate::routing::ModelRoutes;
use sluice_core::error::ServeError;

impl ModelManager {
    /// Loads exactly `versions` of `model` from its folder (reusing loaded versions whose files
    /// did not change) and publishes them *beside* the versions loaded now, with the version
    /// answering requests pinned as it was: routing is unchanged until the caller stores the
    /// traffic that goes with them and drops what is no longer wanted, in one store. Returns
    /// the versions that were newly loaded. On any failure nothing changes.
    pub async fn load_versions(
        &self,
        model: &str,
        versions: &[u64],
        actor: &Actor,
    ) -> Result<Vec<u64>, ServeError> {
        let _guard = self.claim(model)?;
        let result = self.load_versions_claimed(model, versions).await;
        self.record_outcome(model, actor, &result);
        if let Ok(loaded) = &result {
            self.events.event(
                Event::new(EventKind::Load, model, actor, "versions published")
                    .details(serde_json::json!({ "versions": versions, "loaded": loaded })),
            );
        }
        result
    }

    async fn load_versions_claimed(
        &self,
        model: &str,
        versions: &[u64],
    ) -> Result<Vec<u64>, ServeError> {
        let dir = repository::read_model(&self.loader.repository, model).map_err(|e| match e {
            repository::RepositoryError::UnknownModel(_) => ServeError::not_found(e.to_string()),
            other => ServeError::bad_request(other.to_string()),
        })?;
        let current = self.router.snapshot().models.get(model).cloned();
        let mut ready = BTreeMap::new();
        let mut loaded = Vec::new();
        for &version in versions {
            if !dir.versions.contains(&version) {
                return Err(ServeError::bad_request(format!(
                    "model '{model}' has no version {version} in this replica's repository"
                )));
            }
            let version_ready = self
                .reuse_or_load(current.as_ref(), &dir, version, &mut loaded)
                .await?;
            ready.insert(version, version_ready);
        }
        self.router.update(|snapshot| {
            let routes = ModelRoutes::beside(snapshot.models.get(model), &ready);
            snapshot.with_model(model, routes)
        });
        Ok(loaded)
    }
}

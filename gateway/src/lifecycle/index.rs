//! The repository index: every model folder on disk and every model being served, with its
//! state, as Triton's repository index reports it. Protocol-neutral; gRPC's `RepositoryIndex`
//! (and an HTTP `/v2/repository/index`) encode it.

use std::collections::BTreeMap;

use super::ModelManager;
use crate::repository::{self, RepositoryError};
use sluice_core::error::{ErrorKind, ServeError};

/// Triton's two model states that sluice can be in between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    Ready,
    Unavailable,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One line of the index: a loaded version, or a model with no loaded version and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    /// `None` for a model with no loaded version.
    pub version: Option<u64>,
    pub state: ModelState,
    /// Why the model is unavailable; empty when ready.
    pub reason: String,
}

impl ModelManager {
    /// Every model in the repository folder or in the routing snapshot, sorted by name then
    /// version: each loaded version as READY; a model with none as UNAVAILABLE with its last
    /// load error, its folder problem, or that it is not loaded.
    pub fn index(&self) -> Result<Vec<IndexEntry>, ServeError> {
        let (dirs, problems) = repository::scan(&self.loader.repository).map_err(|error| {
            tracing::error!(%error, "repository index failed");
            ServeError::new(
                ErrorKind::Unavailable,
                "the model repository cannot be read",
            )
        })?;
        let failures = self.failures();
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        for dir in dirs {
            let reason = failures
                .get(&dir.name)
                .cloned()
                .unwrap_or_else(|| "not loaded".to_string());
            reasons.insert(dir.name, reason);
        }
        for problem in problems {
            if let RepositoryError::BadModel { model, .. } = &problem {
                reasons.insert(model.clone(), problem.to_string());
            }
        }
        let snapshot = self.router.snapshot();
        for name in snapshot.models.keys() {
            // Still served after its folder was removed: it is listed by its versions below.
            reasons.entry(name.clone()).or_default();
        }
        let mut entries = Vec::new();
        for (name, reason) in reasons {
            let loaded = snapshot
                .models
                .get(&name)
                .map(|routes| routes.versions.keys().copied().collect::<Vec<_>>())
                .unwrap_or_default();
            if loaded.is_empty() {
                entries.push(IndexEntry {
                    name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason,
                });
                continue;
            }
            for version in loaded {
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: Some(version),
                    state: ModelState::Ready,
                    reason: String::new(),
                });
            }
        }
        Ok(entries)
    }
}

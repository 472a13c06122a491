//! A single node's control: every change is stored in this process's routing snapshot at once.

use std::sync::Arc;

use async_trait::async_trait;

use super::{ModelControl, RolloutChange};
use crate::lifecycle::{Actor, LoadReport, ModelManager, announce_decision};
use crate::predlog::{Event, EventKind};
use crate::routing::{Rollout, TrafficPolicy};
use sluice_core::error::{ServeError, ServeResult};

pub struct LocalControl {
    models: Arc<ModelManager>,
}

impl LocalControl {
    pub fn new(models: Arc<ModelManager>) -> LocalControl {
        LocalControl { models }
    }

    /// Stores the rollout `change` builds from the model's routes in force, with its traffic,
    /// in one compare-and-swap; then tells the world.
    fn store_rollout(&self, model: &str, change: RolloutChange<'_>) -> ServeResult<Arc<Rollout>> {
        let router = self.models.router();
        let mut stored = None;
        router.try_update(|snapshot| {
            let routes = snapshot
                .models
                .get(model)
                .ok_or_else(|| ServeError::unknown_model(model))?;
            let next = Arc::new(change(routes)?);
            stored = Some(Arc::clone(&next));
            snapshot.with_rollout(model, next)
        })?;
        let next = stored.ok_or_else(|| ServeError::unknown_model(model))?;
        announce_decision(self.models.events(), router, model, &next);
        Ok(next)
    }
}

#[async_trait]
impl ModelControl for LocalControl {
    async fn load(&self, model: &str, actor: &Actor) -> ServeResult<LoadReport> {
        self.models.load(model, actor).await
    }

    async fn unload(&self, model: &str, actor: &Actor) -> ServeResult<()> {
        self.models.unload(model, actor).await
    }

    async fn set_traffic(
        &self,
        model: &str,
        policy: &TrafficPolicy,
        actor: &Actor,
    ) -> ServeResult<TrafficPolicy> {
        let mut applied = None;
        self.models.router().try_update(|snapshot| {
            let (next, traffic) = snapshot.with_traffic(model, policy)?;
            applied = Some(traffic);
            Ok::<_, ServeError>(next)
        })?;
        let in_force = applied.map(|t| t.to_policy()).unwrap_or_default();
        self.models.events().event(
            Event::new(EventKind::Traffic, model, actor, "traffic policy changed")
                .details(serde_json::to_value(&in_force).unwrap_or_default()),
        );
        Ok(in_force)
    }

    async fn change_rollout(
        &self,
        model: &str,
        _actor: &Actor,
        change: RolloutChange<'_>,
    ) -> ServeResult<Arc<Rollout>> {
        self.store_rollout(model, change)
    }

    fn propose_rollout(&self, model: &str, change: RolloutChange<'_>) {
        // A refused change is the rollout having moved on under the guard: nothing to store,
        // and the guard looks again at its next tick.
        let _ = self.store_rollout(model, change);
    }
}

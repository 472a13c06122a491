//! The one control interface every change of a model goes through: loads, unloads, traffic
//! policies and rollouts, whoever asks (the admin API, gRPC's repository calls, the repository
//! poller, the guard).
//!
//! "Single node or fleet" is decided once, at start-up, by which implementation the server
//! builds: [`LocalControl`] stores changes in this process's routing snapshot; the fleet's
//! ([`crate::fleet::Fleet`]) writes them to the control topic and answers once this replica has
//! applied them. Callers never ask which one they hold.

mod local;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;

pub use local::LocalControl;

use crate::lifecycle::{Actor, LoadReport};
use crate::routing::{ModelRoutes, Rollout, TrafficPolicy};
use sluice_core::error::ServeResult;

/// Builds a model's next rollout from its routes as they are in force when the change is made
/// (a fleet builds it on the state its applier reached); an error refuses the change.
pub type RolloutChange<'a> = &'a (dyn Fn(&ModelRoutes) -> ServeResult<Rollout> + Send + Sync);

#[async_trait]
pub trait ModelControl: Send + Sync {
    /// (Re)loads a model: the versions its policy selects, published in one swap; a
    /// `[rollout]` table in its `model.toml` starts a rollout of a new version.
    async fn load(&self, model: &str, actor: &Actor) -> ServeResult<LoadReport>;

    /// Stops serving a model; in-flight requests finish on the versions they hold.
    async fn unload(&self, model: &str, actor: &Actor) -> ServeResult<()>;

    /// Sets a model's traffic policy (checked as a whole against its loaded versions) and
    /// answers the policy in force afterwards.
    async fn set_traffic(
        &self,
        model: &str,
        policy: &TrafficPolicy,
        actor: &Actor,
    ) -> ServeResult<TrafficPolicy>;

    /// An operator's rollout change (a start, an abort): stored with the traffic it implies,
    /// and answered with the rollout in force afterwards.
    async fn change_rollout(
        &self,
        model: &str,
        actor: &Actor,
        change: RolloutChange<'_>,
    ) -> ServeResult<Arc<Rollout>>;

    /// The guard's decision: stored at once on a single node; in a fleet written to the
    /// control topic without waiting, to be applied by every replica as it reads it. A change
    /// that refuses (the rollout moved on meanwhile) stores nothing.
    fn propose_rollout(&self, model: &str, change: RolloutChange<'_>);
}

//! What a rollout is asked to do and how its numbers are judged: the `[rollout]` defaults and a
//! model's overrides ([`plan`]), the statistical tests ([`stats`]) and the comparison of a
//! candidate with its baseline ([`judge`]). Pure functions over numbers, no state.
//!
//! A rollout's live state sits next to the traffic policy it drives, in
//! [`crate::routing::rollout`]; the controller that ticks it is [`crate::controllers::guard`].

pub mod bayes;
pub mod judge;
pub mod plan;
pub mod stats;

pub use judge::Assessment;
pub use plan::{PromoteOn, RolloutConfig, RolloutOverrides, RolloutPlan, ShadowStage};

/// The actor named in the guard's own decisions.
pub const GUARD: &str = "guard";

//! Controllers: tasks that watch the served state and act on it. The guard drives rollouts
//! through the [`crate::control::ModelControl`]; the poller turns repository changes into loads
//! and unloads through the same control; the drift evaluator turns drift windows into gauges
//! and alerts.

pub mod drift;
pub mod guard;
pub mod poller;

pub use drift::Evaluator as DriftEvaluator;
pub use guard::Guard;
pub use poller::poll;

//! Controllers: tasks that watch the served state and act on it. The guard drives rollouts
//! through the [`crate::control::ModelControl`]; the poller turns repository changes into loads
//! and unloads through the same control; the drift evaluator turns drift windows into gauges
//! and alerts; the quality controller does the same for the outcomes' live quality.

pub mod drift;
pub mod guard;
pub mod poller;
pub mod quality;

pub use drift::Evaluator as DriftEvaluator;
pub use guard::Guard;
pub use poller::poll;

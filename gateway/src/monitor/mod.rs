//! Watching the traffic: Prometheus metrics, rolling windows of latency and errors, prediction
//! histograms, drift against each version's reference profile, and the rollout guard that
//! decides from the windows.

pub mod drift;
pub mod guard;
pub mod metrics;
pub mod predictions;
pub mod window;

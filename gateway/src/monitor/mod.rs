//! Watching the traffic: Prometheus metrics, rolling windows of latency and errors, prediction
//! histograms, and the rollout guard that decides from them.

pub mod guard;
pub mod metrics;
pub mod predictions;
pub mod window;

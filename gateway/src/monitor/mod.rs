//! Watching the traffic: Prometheus metrics now; rolling windows, drift and the rollout guard
//! build on the same events.

pub mod metrics;
pub mod window;

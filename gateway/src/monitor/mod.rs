//! Watching the traffic: Prometheus metrics, rolling latency windows, and drift against each
//! version's reference profile; the rollout guard builds on the same windows.

pub mod drift;
pub mod metrics;
pub mod window;

//! Request-path recording, at the bottom of the crate: Prometheus metric handles (every metric
//! named and described in [`metrics`]), rolling windows of latency and errors per variant,
//! prediction histograms, and the comparison of a shadow's answer with the primary's.
//!
//! It imports nothing above it; the guard, the stats endpoint and the routing gauges read what
//! it records.

pub mod compare;
pub mod metrics;
pub mod predictions;
pub mod quality;
pub mod window;

//! Load generation for sluice and any KServe v2 server.
//!
//! `sluice-load` is a closed-loop generator: each of N keep-alive connections sends a request,
//! waits for the whole response, records the latency and sends the next. Throughput is then what
//! the server sustains at that concurrency, and latency is what a client at that concurrency sees.
//! `sluice-ceiling` is a server that does nothing but read the request and answer with fixed
//! bytes: pointed at it, `sluice-load` shows the most this machine can do for a request shape,
//! which is the number to compare a real server against.
//!
//! The pieces are split along the seams later protocols and modes need:
//! - [`target`]: what to send (method, path, headers, body), built once and cloned per request;
//! - [`http1`], [`http2`]: one HTTP/1.1 or HTTP/2 (h2c) connection's loop; [`grpc`] sits
//!   beside them and all fill the same [`stats::Recorder`];
//! - [`npy`]: `--npy`, v2 JSON bodies built at start-up from a sample's rows;
//! - [`pace`]: open-loop send schedules and the measured window;
//! - [`run`]: the phases (warm-up, measurement) and the fan-out over connections;
//! - [`stats`]: per-connection recording with no shared state on the hot path;
//! - [`progress`]: the live progress line;
//! - [`report`]: the merged numbers, as a table or as JSON;
//! - [`svg`]: the latency-percentile plot;
//! - [`rollout`]: the `--rollout` scenario, which drives a guarded rollout and prints its
//!   timeline;
//! - [`ceiling`]: the do-nothing server.
#![forbid(unsafe_code)]

pub mod ceiling;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod npy;
pub mod pace;
pub mod progress;
pub mod report;
pub mod rollout;
pub mod run;
pub mod stats;
pub mod svg;
pub mod target;

pub use report::Report;
pub use run::{Config, Summary, Window, run};
pub use target::RequestTemplate;

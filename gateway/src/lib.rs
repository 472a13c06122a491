//! sluice: a model-serving gateway. It serves ONNX models over KServe v2 (HTTP and gRPC) and V1
//! REST, keeps several versions loaded and swaps them atomically, splits traffic for canaries
//! and shadows, logs every prediction, and rolls versions out under a guard of its own.
//!
//! The request path is `sluice_protocol` (decode) -> [`routing`] (pick a version) -> [`infer`]
//! (validate, queue) -> `sluice_runtime` (run on worker threads) -> `sluice_protocol` (encode).
//!
//! Top-level modules, bottom to top (each imports only those before it; CI checks it, see
//! `docs/architecture.md`): [`telemetry`], [`drift`], [`expectations`], [`rollout`],
//! [`repository`],
//! [`routing`], [`predlog`], [`outcomes`], [`infer`], [`lifecycle`], [`control`], [`fleet`],
//! [`controllers`], [`sources`], [`server`], [`config`], [`profiling`], [`app`].
#![forbid(unsafe_code)]

pub mod telemetry;

pub mod drift;
pub mod expectations;
pub mod rollout;

pub mod repository;
pub mod routing;

pub mod infer;
pub mod outcomes;
pub mod predlog;

pub mod control;
pub mod fleet;
pub mod lifecycle;

pub mod controllers;
pub mod server;
pub mod sources;

pub mod config;
pub mod profiling;

pub mod app;

pub use app::Server;
pub use config::Config;

//! sluice: a model-serving gateway. It serves ONNX models over KServe v2 (HTTP) and V1 REST,
//! keeps several versions loaded and swaps them atomically.
//!
//! The request path is `protocol` (decode) -> `routing` (pick a version) -> `infer` (validate,
//! queue) -> `runtime` (run on worker threads) -> `protocol` (encode).
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod fleet;
pub mod infer;
pub mod lifecycle;
pub mod monitor;
pub mod predlog;
pub mod protocol;
pub mod repository;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod tensor;

pub use config::Config;
pub use server::Server;

//! The end-to-end tests: one binary (it links the crate once) with a module per area and the
//! shared harness in [`common`]. Every test talks to a real server over real sockets; the ones
//! that need Kafka, ONNX Runtime, Python or Prometheus say so and skip without them unless
//! `scripts/test.sh` asked for them (`SLUICE_REQUIRE_*`).

mod common;

mod batching;
mod cli;
mod deploy_files;
mod drift;
mod expectations;
mod fleet;
mod grpc_v2;
mod hot_swap;
mod http_binary;
mod http_v1;
mod http_v2;
mod lifecycle;
mod mlflow_source;
mod outcome_rollouts;
mod outcomes;
mod overload;
mod prediction_log;
mod prometheus;
mod reliability;
mod rollout;
mod s3_source;
mod soak;
mod traffic;
mod trees;
mod triton_client;

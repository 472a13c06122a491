//! sluice-trees' integration tests, one binary: agreement with onnxruntime on real and random
//! models, and with LightGBM/XGBoost's own predictions on their native files.

mod harness;
mod native;
mod onnx_files;
mod random;

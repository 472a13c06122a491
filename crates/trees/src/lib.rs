//! Native evaluation of tree ensembles (gradient-boosted trees, random forests) for sluice,
//! without ONNX Runtime: ONNX-ML `TreeEnsembleClassifier`/`TreeEnsembleRegressor` graphs as
//! converters emit them, LightGBM text models and XGBoost JSON models.
//!
//! Results match the reference runtime exactly (ONNX Runtime for ONNX files, LightGBM and
//! XGBoost for their own formats): same comparisons in the same precision, same NaN routes,
//! same summation order, same post transforms and two-class special cases. A model that
//! cannot be evaluated exactly is refused at load with [`LoadError::Unsupported`] saying why,
//! so that the caller can fall through to another runtime.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_trees::{Outputs, TreeModel};
//! let model = TreeModel::from_onnx(&std::fs::read("model.onnx")?)?;
//! let features = model.signature().input.features;
//! let mut out = Outputs::new();
//! model.predict(&vec![0.0; 2 * features], 2, &mut out)?;
//! println!("labels {:?}, scores {:?}", out.labels, out.scores);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod error;
mod finish;
mod forest;
mod lightgbm;
mod model;
pub mod onnx;
mod real;
mod tree;
mod xgboost;

pub use error::{LoadError, PredictError};
pub use model::{
    DType, InputSpec, NativeInput, OutputKind, OutputSpec, Outputs, Signature, TreeModel,
};

//! The public face: a loaded model, its signature, and `predict` into reusable buffers.

use crate::error::{LoadError, PredictError};
use crate::finish::Finish;
use crate::forest::Forest;
use crate::real::{Feature, Real};

/// Element types on the model's boundary (KServe v2 names in [`DType::v2_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    I64,
    String,
}

impl DType {
    /// The KServe v2 datatype name.
    pub fn v2_name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::I64 => "INT64",
            DType::String => "BYTES",
        }
    }
}

/// The one input: `[rows, features]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    /// FP32 models take [`TreeModel::predict`], FP64 ONNX models [`TreeModel::predict_f64`];
    /// LightGBM and XGBoost models take either.
    pub dtype: DType,
    pub features: usize,
}

/// What an output carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// The predicted class, `[rows]`: [`Outputs::labels`] (INT64) or
    /// [`Outputs::string_labels`] (STRING).
    Label,
    /// `[rows, columns]` FP32: class probabilities/scores or regression targets, in
    /// [`Outputs::scores`].
    Scores,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: String,
    pub dtype: DType,
    pub kind: OutputKind,
    /// Score columns (classes or targets); 1 for labels.
    pub columns: usize,
}

impl OutputSpec {
    /// The output's shape for `rows` rows.
    pub fn shape(&self, rows: usize) -> Vec<i64> {
        match self.kind {
            OutputKind::Label => vec![rows as i64],
            OutputKind::Scores => vec![rows as i64, self.columns as i64],
        }
    }
}

/// Inputs and outputs, in the model's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub input: InputSpec,
    pub outputs: Vec<OutputSpec>,
}

/// The signature a LightGBM or XGBoost file lacks: the input's name and width, from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeInput {
    pub name: String,
    /// Columns per row; at least the highest feature index the model reads, plus one.
    pub features: usize,
}

/// Output buffers and scratch, reused across calls: after the first call of a given batch
/// size, `predict` allocates nothing (string labels reuse their `String`s).
#[derive(Debug, Default)]
pub struct Outputs {
    /// One label per row for classifiers: the INT64 label, or for STRING-labelled models the
    /// label's index (the strings are in `string_labels`).
    pub labels: Vec<i64>,
    /// One label per row for STRING-labelled classifiers; empty otherwise.
    pub string_labels: Vec<String>,
    /// `[rows, columns]` row-major.
    pub scores: Vec<f32>,
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    f32: Vec<f32>,
    f64: Vec<f64>,
    has: Vec<bool>,
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }
}

/// Rows evaluated together, tree by tree: enough to amortise bringing a tree into cache,
/// few enough that the rows' features stay in L1/L2.
const BLOCK: usize = 64;

#[derive(Clone, Debug)]
pub(crate) struct Compiled<T> {
    pub forest: Forest<T>,
    pub finish: Finish<T>,
}

#[derive(Clone, Debug)]
pub(crate) enum Engine {
    F32(Compiled<f32>),
    F64(Compiled<f64>),
}

/// A loaded tree ensemble. Immutable and `Sync`: share one across threads, give each thread
/// its own [`Outputs`].
#[derive(Clone, Debug)]
pub struct TreeModel {
    pub(crate) signature: Signature,
    pub(crate) engine: Engine,
    /// Score columns per row.
    pub(crate) columns: usize,
    /// STRING labels, indexed by label code.
    pub(crate) string_labels: Option<Vec<String>>,
    /// Constant factors the graph multiplies the scores by (ONNX `Mul`), in order.
    pub(crate) scales: Vec<f32>,
    /// Whether `predict_f64` is accepted on an FP32 model (native formats) and vice versa.
    pub(crate) any_float_input: bool,
}

/// The constructors live with their formats (`onnx`, `lightgbm`, `xgboost`), which build on
/// this module: `TreeModel::from_onnx`, `from_lightgbm_text`, `from_xgboost_json`.
impl TreeModel {
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        match &self.engine {
            Engine::F32(c) => c.forest.n_trees(),
            Engine::F64(c) => c.forest.n_trees(),
        }
    }

    /// Predicts `n_rows` rows (`rows.len() == n_rows * features`, row-major) into `out`.
    pub fn predict(
        &self,
        rows: &[f32],
        n_rows: usize,
        out: &mut Outputs,
    ) -> Result<(), PredictError> {
        self.check(DType::F32, rows.len(), n_rows)?;
        self.run(rows, n_rows, out);
        Ok(())
    }

    /// As [`TreeModel::predict`], for FP64 input.
    pub fn predict_f64(
        &self,
        rows: &[f64],
        n_rows: usize,
        out: &mut Outputs,
    ) -> Result<(), PredictError> {
        self.check(DType::F64, rows.len(), n_rows)?;
        self.run(rows, n_rows, out);
        Ok(())
    }

    fn check(&self, dtype: DType, len: usize, rows: usize) -> Result<(), PredictError> {
        let input = &self.signature.input;
        if dtype != input.dtype && !self.any_float_input {
            return Err(PredictError::DType {
                name: input.name.clone(),
                expected: input.dtype.v2_name(),
                got: dtype.v2_name(),
            });
        }
        let expected = rows.checked_mul(input.features);
        if expected != Some(len) {
            return Err(PredictError::Shape {
                name: input.name.clone(),
                rows,
                features: input.features,
                expected: expected.unwrap_or(usize::MAX),
                got: len,
            });
        }
        Ok(())
    }

    fn run<X: Feature>(&self, rows: &[X], n_rows: usize, out: &mut Outputs) {
        let Outputs {
            labels,
            string_labels,
            scores,
            scratch,
        } = out;
        labels.resize(n_rows, 0);
        scores.resize(n_rows * self.columns, 0.0);
        match &self.engine {
            Engine::F32(c) => {
                self.run_with(c, rows, labels, scores, &mut scratch.f32, &mut scratch.has)
            }
            Engine::F64(c) => {
                self.run_with(c, rows, labels, scores, &mut scratch.f64, &mut scratch.has)
            }
        }
        for &scale in &self.scales {
            for s in scores.iter_mut() {
                *s *= scale;
            }
        }
        match &self.string_labels {
            Some(names) => {
                string_labels.resize_with(n_rows, String::new);
                for (s, &code) in string_labels.iter_mut().zip(labels.iter()) {
                    s.clone_from(&names[code as usize]);
                }
            }
            None => string_labels.clear(),
        }
    }

    fn run_with<T: Real, X: Feature>(
        &self,
        c: &Compiled<T>,
        rows: &[X],
        labels: &mut [i64],
        scores: &mut [f32],
        acc: &mut Vec<T>,
        has: &mut Vec<bool>,
    ) {
        let features = self.signature.input.features;
        let n = c.forest.outputs();
        let columns = self.columns;
        acc.resize(BLOCK * n, T::ZERO);
        has.resize(BLOCK * n, false);
        let blocks = rows
            .chunks(BLOCK * features)
            .zip(labels.chunks_mut(BLOCK))
            .zip(scores.chunks_mut(BLOCK * columns));
        for ((block, labels), scores) in blocks {
            let m = labels.len();
            let (acc, has) = (&mut acc[..m * n], &mut has[..m * n]);
            c.forest.accumulate(block, features, acc, has);
            for (r, label) in labels.iter_mut().enumerate() {
                *label = c.finish.row(
                    &mut acc[r * n..][..n],
                    &mut has[r * n..][..n],
                    &mut scores[r * columns..][..columns],
                );
            }
        }
    }
}

/// Checks that a model's declared feature count covers every feature its trees read.
pub(crate) fn features_needed(trees: &[crate::tree::Tree]) -> usize {
    trees
        .iter()
        .flat_map(|t| t.nodes.iter())
        .filter_map(|n| match n {
            crate::tree::Node::Branch(b) => Some(b.feature as usize + 1),
            crate::tree::Node::Leaf(_) => None,
        })
        .max()
        .unwrap_or(0)
}

pub(crate) fn check_native_input(input: &NativeInput, needed: usize) -> Result<(), LoadError> {
    if input.features < needed {
        return Err(LoadError::invalid(format!(
            "the model reads feature {} but input '{}' is configured with {} features",
            needed - 1,
            input.name,
            input.features
        )));
    }
    Ok(())
}

//! From aggregated scores to outputs: base values, the post transform and the label, exactly
//! as each reference runtime does it. ONNX Runtime's rules (`tree_ensemble_aggregator.h`,
//! `ml_common.h`) carry several special cases for two classes; they are reproduced here
//! rather than "fixed", and the few that leave an output unwritten are refused at load.

use crate::forest::Aggregate;
use crate::real::Real;

/// ONNX `post_transform`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

/// Finishes one row: `scores`/`has` hold the aggregate per output (modified in place), `out`
/// receives the row's score columns; returns the label code (the int64 label, or the index
/// into string labels) for classifiers, 0 otherwise.
#[derive(Clone, Debug)]
pub enum Finish<T> {
    OrtClassifier(OrtClassifier<T>),
    OrtRegressor(OrtRegressor<T>),
    LightGbm(LightGbmObjective),
    Xgboost(XgboostObjective),
}

impl<T: Real> Finish<T> {
    pub fn row(&self, scores: &mut [T], has: &mut [bool], out: &mut [f32]) -> i64 {
        match self {
            Finish::OrtClassifier(c) => c.row(scores, has, out),
            Finish::OrtRegressor(r) => {
                r.row(scores, has, out);
                0
            }
            Finish::LightGbm(o) => o.row(scores, out),
            Finish::Xgboost(o) => o.row(scores, out),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct OrtClassifier<T> {
    pub base: Vec<T>,
    /// `class_labels_`: the int64 labels, or 0..n for string labels.
    pub labels: Vec<i64>,
    /// Two classes and every weight for the same class.
    pub binary_case: bool,
    pub all_positive: bool,
    pub transform: Transform,
}

impl<T: Real> OrtClassifier<T> {
    fn row(&self, s: &mut [T], h: &mut [bool], out: &mut [f32]) -> i64 {
        let n = s.len();
        if n > 2 {
            for (k, &b) in self.base.iter().enumerate() {
                if h[k] {
                    s[k] = s[k] + b;
                } else {
                    h[k] = true;
                    s[k] = b;
                }
            }
            let mut best: Option<usize> = None;
            for k in 0..n {
                if h[k] && best.is_none_or(|b| s[k] > s[b]) {
                    best = Some(k);
                }
            }
            write_scores(s, h, self.transform, out);
            // Every leaf carries a weight, so some class always has a score.
            return self.labels[best.unwrap_or(0)];
        }
        let mut len = 2;
        let mut add = -1;
        match self.base.len() {
            2 => {
                if h[1] {
                    // ONNX Runtime adds the base to class 0's score here (it assumes the two
                    // base values are equal); reproduced as is.
                    s[1] = self.base[1] + s[0];
                    s[0] = -s[1];
                } else {
                    s[1] = s[1] + self.base[1];
                    s[0] = s[0] + self.base[0];
                }
            }
            1 => {
                s[0] = s[0] + self.base[0];
                if !h[1] {
                    len = 1;
                }
            }
            0 => {
                add = 3;
                if !h[1] {
                    len = 1;
                }
            }
            _ => {}
        }
        let pos = if len == 2 && h[1] {
            s[1]
        } else if h[0] {
            s[0]
        } else {
            T::ZERO
        };
        let half = T::from_f64(0.5);
        let label = if self.binary_case {
            let positive = if self.all_positive {
                pos > half
            } else {
                pos > T::ZERO
            };
            add = match (self.all_positive, positive) {
                (true, true) => 0,
                (true, false) => 1,
                (false, true) => 2,
                (false, false) => 3,
            };
            self.labels[positive as usize]
        } else {
            // Not `class_labels_`: ONNX Runtime's literal positive/negative labels.
            (pos > T::ZERO) as i64
        };
        if len == 2 {
            write_scores(s, h, self.transform, out);
        } else {
            let v0 = if h[0] { s[0] } else { T::ZERO };
            match (add, self.transform) {
                // Refused at load (ONNX Runtime writes one column of two).
                (_, Transform::Probit) | (-1, _) => {
                    out[0] = v0.to_f32();
                    out[1] = 0.0;
                }
                // Seen from onnxruntime 1.32: LOGISTIC wins over the all-positive rule.
                (_, Transform::Logistic) => {
                    out[0] = logistic((-v0).to_f32());
                    out[1] = logistic(v0.to_f32());
                }
                (0 | 1, _) => {
                    out[0] = (T::ONE - v0).to_f32();
                    out[1] = v0.to_f32();
                }
                _ => {
                    out[0] = (-v0).to_f32();
                    out[1] = v0.to_f32();
                }
            }
        }
        label
    }
}

#[derive(Clone, Debug)]
pub struct OrtRegressor<T> {
    pub base: Vec<T>,
    pub aggregate: Aggregate,
    pub n_trees: usize,
    pub transform: Transform,
}

impl<T: Real> OrtRegressor<T> {
    fn row(&self, s: &mut [T], h: &mut [bool], out: &mut [f32]) {
        let n = s.len();
        let trees = T::from_f64(self.n_trees as f64);
        if n == 1 {
            // One target: only PROBIT is applied (ONNX Runtime's FinalizeScores1).
            let origin = if self.base.len() == 1 {
                self.base[0]
            } else {
                T::ZERO
            };
            let v = match self.aggregate {
                Aggregate::Average => s[0] / trees + origin,
                _ => s[0] + origin,
            };
            out[0] = match self.transform {
                Transform::Probit => probit(v.to_f32()),
                _ => v.to_f32(),
            };
            return;
        }
        let use_base = self.base.len() == n;
        for k in 0..n {
            let b = if use_base { self.base[k] } else { T::ZERO };
            s[k] = match self.aggregate {
                Aggregate::Sum if use_base => s[k] + b,
                Aggregate::Sum => s[k],
                Aggregate::Average if use_base => s[k] / trees + b,
                Aggregate::Average => s[k] / trees,
                Aggregate::Min | Aggregate::Max => b + if h[k] { s[k] } else { T::ZERO },
            };
        }
        write_scores(s, h, self.transform, out);
    }
}

/// ONNX Runtime's `write_scores` for two or more scores: a score no leaf touched reads 0.
fn write_scores<T: Real>(s: &mut [T], h: &[bool], transform: Transform, out: &mut [f32]) {
    let value = |k: usize| if h[k] { s[k] } else { T::ZERO };
    match transform {
        Transform::None => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = value(k).to_f32();
            }
        }
        Transform::Logistic => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = logistic(value(k).to_f32());
            }
        }
        Transform::Probit => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = probit(value(k).to_f32());
            }
        }
        Transform::Softmax => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = value(k).to_f32();
            }
            softmax_f32(out);
        }
        Transform::SoftmaxZero => {
            let mut v_max = -f32::MAX;
            for k in 0..s.len() {
                let v = value(k).to_f32();
                if v > v_max {
                    v_max = v;
                }
            }
            let exp_neg_max = (-v_max).exp();
            let mut sum = 0.0f32;
            for k in 0..s.len() {
                let raw = if h[k] { s[k] } else { T::ZERO };
                let v = raw.to_f32();
                // Zeros are scaled, not exponentiated (exp(0) would give them weight).
                s[k] = if !(-0.000_000_1..=0.000_000_1).contains(&v) {
                    let e = (v - v_max).exp();
                    sum += e;
                    T::from_f32(e)
                } else {
                    raw * T::from_f32(exp_neg_max)
                };
            }
            let total = T::from_f32(sum);
            for (k, o) in out.iter_mut().enumerate() {
                *o = (s[k] / total).to_f32();
            }
        }
    }
}

/// `ComputeLogistic`.
pub fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 { 1.0 - e } else { e }
}

/// `ComputeProbit`: ONNX Runtime's approximation of the inverse normal CDF.
pub fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147f32 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

/// `ComputeSoftmax`, in float.
fn softmax_f32(values: &mut [f32]) {
    let mut v_max = -f32::MAX;
    for &v in values.iter() {
        if v > v_max {
            v_max = v;
        }
    }
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - v_max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

// ---------------------------------------------------------------------------------------------
// LightGBM (double throughout, as LightGBM's predictor)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LightGbmObjective {
    /// `binary sigmoid:<s>`: probability `1 / (1 + exp(-s * score))`.
    Binary { sigmoid: f64 },
    /// `multiclass`: softmax over the classes.
    Multiclass,
    /// Regression objectives with an identity link.
    Identity,
}

impl LightGbmObjective {
    fn row<T: Real>(&self, s: &[T], out: &mut [f32]) -> i64 {
        match *self {
            LightGbmObjective::Binary { sigmoid } => {
                let p = 1.0 / (1.0 + (-sigmoid * s[0].to_f64()).exp());
                let q = 1.0 - p;
                out[0] = q as f32;
                out[1] = p as f32;
                // scikit-learn's argmax over [1 - p, p]: ties go to class 0.
                (p > q) as i64
            }
            LightGbmObjective::Multiclass => {
                let max = s.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
                let mut sum = 0.0f64;
                for v in s {
                    sum += (v.to_f64() - max).exp();
                }
                let mut best = 0;
                let mut best_p = f64::NEG_INFINITY;
                for (k, v) in s.iter().enumerate() {
                    let p = (v.to_f64() - max).exp() / sum;
                    out[k] = p as f32;
                    if p > best_p {
                        best = k;
                        best_p = p;
                    }
                }
                best as i64
            }
            LightGbmObjective::Identity => {
                out[0] = s[0].to_f32();
                0
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// XGBoost (float margins; the softmax sums in double, as XGBoost does)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XgboostObjective {
    /// `binary:logistic`: `[1 - p, p]`, label `p > 0.5`.
    BinaryLogistic,
    /// `multi:softprob` / `multi:softmax`: softmax, label the first maximum.
    Softmax,
    /// `reg:logistic`: sigmoid of the margin, one column.
    RegLogistic,
    /// Regression with an identity link (`reg:squarederror`, ...).
    Identity,
}

/// XGBoost's `common::Sigmoid`.
fn xgb_sigmoid(x: f32) -> f32 {
    let x = (-x).min(88.7);
    1.0 / (x.exp() + 1.0 + 1e-16)
}

impl XgboostObjective {
    fn row<T: Real>(&self, s: &[T], out: &mut [f32]) -> i64 {
        match self {
            XgboostObjective::BinaryLogistic => {
                let p = xgb_sigmoid(s[0].to_f32());
                out[0] = 1.0 - p;
                out[1] = p;
                (p > 0.5) as i64
            }
            XgboostObjective::RegLogistic => {
                out[0] = xgb_sigmoid(s[0].to_f32());
                0
            }
            XgboostObjective::Softmax => {
                let mut w_max = s[0].to_f32();
                for v in s {
                    w_max = w_max.max(v.to_f32());
                }
                let mut sum = 0.0f64;
                for (k, v) in s.iter().enumerate() {
                    out[k] = (v.to_f32() - w_max).exp();
                    sum += out[k] as f64;
                }
                let mut best = 0;
                for k in 0..s.len() {
                    out[k] /= sum as f32;
                    if out[k] > out[best] {
                        best = k;
                    }
                }
                best as i64
            }
            XgboostObjective::Identity => {
                out[0] = s[0].to_f32();
                0
            }
        }
    }
}

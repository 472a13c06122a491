//! The two precisions an ensemble runs in. ONNX Runtime compares and accumulates in the input's
//! precision (float for float inputs, double for double inputs); LightGBM works in double,
//! XGBoost in float. A forest is compiled for one `Real` and reads inputs of either `Feature`.

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A threshold/score precision: `f32` or `f64`.
pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const INFINITY: Self;
    /// Rounds to nearest, as C's `static_cast` does.
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn is_nan(self) -> bool;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INFINITY: Self = f32::INFINITY;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INFINITY: Self = f64::INFINITY;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// An input element type the caller may hand over.
pub trait Feature: Copy + Send + Sync + 'static {
    /// Converts to the forest's precision (a `Cast` node's rounding for f64 -> f32).
    fn to<T: Real>(self) -> T;
}

impl Feature for f32 {
    #[inline(always)]
    fn to<T: Real>(self) -> T {
        T::from_f32(self)
    }
}

impl Feature for f64 {
    #[inline(always)]
    fn to<T: Real>(self) -> T {
        T::from_f64(self)
    }
}

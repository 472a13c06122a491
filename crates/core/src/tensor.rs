//! The one in-memory tensor form. Every protocol (v2 JSON, v2 binary, v1, gRPC) decodes into
//! [`Tensor`] and encodes from it; every runtime consumes and produces it.

use std::fmt;

/// Element types, named as the KServe v2 protocol names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 12] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    /// The v2 protocol name (`FP32`, `INT64`, `BYTES`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|dt| dt.as_str() == name)
    }

    /// Bytes per element in the raw little-endian encoding; `None` for BYTES, whose elements
    /// carry their own 4-byte length prefix.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major element storage, one variant per [`DataType`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any [`TensorData`] variant.
#[macro_export]
macro_rules! with_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::TensorData::Bool($v) => $body,
            $crate::tensor::TensorData::U8($v) => $body,
            $crate::tensor::TensorData::U16($v) => $body,
            $crate::tensor::TensorData::U32($v) => $body,
            $crate::tensor::TensorData::U64($v) => $body,
            $crate::tensor::TensorData::I8($v) => $body,
            $crate::tensor::TensorData::I16($v) => $body,
            $crate::tensor::TensorData::I32($v) => $body,
            $crate::tensor::TensorData::I64($v) => $body,
            $crate::tensor::TensorData::F32($v) => $body,
            $crate::tensor::TensorData::F64($v) => $body,
            $crate::tensor::TensorData::Bytes($v) => $body,
        }
    };
}
pub use crate::with_vec;

/// Rebuilds the same variant from the vector `$body` evaluates to.
macro_rules! map_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::U8($v) => TensorData::U8($body),
            TensorData::U16($v) => TensorData::U16($body),
            TensorData::U32($v) => TensorData::U32($body),
            TensorData::U64($v) => TensorData::U64($body),
            TensorData::I8($v) => TensorData::I8($body),
            TensorData::I16($v) => TensorData::I16($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty vector of the given type with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(capacity)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(capacity)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(capacity)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(capacity)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(capacity)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(capacity)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(capacity)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(capacity)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(capacity)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// `count` default elements (zeros, `false`, empty strings): the warm-up input.
    pub fn zeros(datatype: DataType, count: usize) -> TensorData {
        let mut data = TensorData::with_capacity(datatype, count);
        with_vec!(&mut data, v => v.resize(count, Default::default()));
        data
    }

    /// Appends `other`'s elements; `false` (and nothing changes) when the types differ.
    pub fn append(&mut self, other: TensorData) -> bool {
        macro_rules! same {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(mut b)) => { a.append(&mut b); true })*
                    _ => false,
                }
            };
        }
        same!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F32, F64, Bytes)
    }

    /// Elements `start..end` as a new vector of the same type.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        map_vec!(self, v => v[start..end].to_vec())
    }
}

/// A named, shaped tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// A tensor whose shape is too large, or whose element count does not match its shape.
#[derive(Debug, thiserror::Error)]
pub enum ShapeMismatch {
    #[error("tensor '{name}': shape {shape:?} holds {expected} elements, data has {actual}")]
    Count {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error(
        "input '{name}': shape {} is too large (its dimensions multiply to more than 2^40)",
        dims_of(.shape)
    )]
    TooLarge { name: String, shape: Vec<usize> },
}

impl Tensor {
    /// Builds a tensor, checking that the shape is not too large and that the data fills it
    /// exactly.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: TensorData,
    ) -> Result<Tensor, ShapeMismatch> {
        let name = name.into();
        let Some(expected) = checked_element_count(&shape) else {
            return Err(ShapeMismatch::TooLarge { name, shape });
        };
        if expected != data.len() {
            return Err(ShapeMismatch::Count {
                name,
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { name, shape, data })
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// Number of elements a shape holds (1 for a scalar). For shapes already checked with
/// [`checked_element_count`] (every [`Tensor`] built by [`Tensor::new`]); saturates otherwise.
pub fn element_count(shape: &[usize]) -> usize {
    checked_element_count(shape).unwrap_or(usize::MAX)
}

/// The largest product of a client-given shape's dimensions, zeros counted as ones: far above
/// anything a request body can carry, far below where element counts, byte sizes, stacked
/// batches and the runtimes' `i64` dimensions overflow.
pub const MAX_SHAPE_PRODUCT: u64 = 1 << 40;

/// Elements a client-given shape holds, or `None` when the shape is too large to be real: the
/// product of its dimensions (zeros counted as ones, so `[2^62, 0]` is refused too) exceeds
/// [`MAX_SHAPE_PRODUCT`]. Checked multiplication throughout: nothing wraps.
pub fn checked_element_count(shape: &[usize]) -> Option<usize> {
    let mut bound: u64 = 1;
    let mut count: u64 = 1;
    for &d in shape {
        let d = u64::try_from(d).ok()?;
        bound = bound
            .checked_mul(d.max(1))
            .filter(|&b| b <= MAX_SHAPE_PRODUCT)?;
        count = count.checked_mul(d)?;
    }
    usize::try_from(count).ok()
}

fn dims_of(shape: &[usize]) -> String {
    format_dims(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>())
}

/// Declared tensor in a model's signature; `-1` marks a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl serde::Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl TensorSpec {
    /// Checks a concrete shape against the declared one: same rank, and every fixed dimension
    /// equal. Returns a client-facing message on mismatch.
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), String> {
        let fits = shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || want as usize == got);
        if fits {
            Ok(())
        } else {
            Err(format!(
                "input '{}': expected shape {}, got {}",
                self.name,
                format_dims(&self.shape),
                format_dims(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>())
            ))
        }
    }

    /// The concrete shape used for the warm-up inference: dynamic dimensions become 1.
    pub fn warmup_shape(&self) -> Vec<usize> {
        self.shape
            .iter()
            .map(|&d| if d < 0 { 1 } else { d as usize })
            .collect()
    }
}

/// `[-1,12]`: the compact form used in error messages.
pub fn format_dims(dims: &[i64]) -> String {
    let inner: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(","))
}

/// The inputs and outputs a model declares.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
        }
        assert_eq!(DataType::parse("FP16"), None);
    }

    #[test]
    fn tensor_new_checks_element_count() {
        assert!(Tensor::new("x", vec![2, 3], TensorData::F32(vec![0.0; 6])).is_ok());
        let err = Tensor::new("x", vec![2, 3], TensorData::F32(vec![0.0; 5])).unwrap_err();
        assert!(matches!(
            err,
            ShapeMismatch::Count {
                expected: 6,
                actual: 5,
                ..
            }
        ));
        // Shapes whose element count wraps are refused, not taken modulo 2^64.
        for shape in [
            vec![4611686018427387905, 12],
            vec![4611686018427387904, 12],
            vec![1 << 58, 64],
            vec![1 << 62, 0],
        ] {
            assert_eq!(checked_element_count(&shape), None, "{shape:?}");
            let err = Tensor::new("x", shape, TensorData::F32(vec![0.0; 12])).unwrap_err();
            assert!(err.to_string().contains("too large"), "{err}");
        }
        assert_eq!(checked_element_count(&[1 << 20, 0]), Some(0));
        assert_eq!(checked_element_count(&[]), Some(1));
    }

    #[test]
    fn shape_check_allows_dynamic_dims_only() {
        let spec = TensorSpec {
            name: "input".into(),
            datatype: DataType::F32,
            shape: vec![-1, 12],
        };
        assert!(spec.check_shape(&[7, 12]).is_ok());
        assert_eq!(
            spec.check_shape(&[1, 11]).unwrap_err(),
            "input 'input': expected shape [-1,12], got [1,11]"
        );
        assert!(spec.check_shape(&[12]).is_err());
        assert_eq!(spec.warmup_shape(), vec![1, 12]);
    }

    #[test]
    fn slice_keeps_type() {
        let data = TensorData::I64(vec![1, 2, 3, 4]);
        assert_eq!(data.slice(1, 3), TensorData::I64(vec![2, 3]));
        assert_eq!(
            TensorData::zeros(DataType::Bool, 2),
            TensorData::Bool(vec![false; 2])
        );
    }
}

//! Protocol codecs: each turns its wire form into the core [`crate::infer::InferRequest`] and
//! encodes [`crate::infer::InferResponse`] back. No validation or routing lives here.

pub mod binary;
pub mod grpc;
pub mod json_data;
pub mod raw;
pub mod v1;
pub mod v2;

use crate::error::{ServeError, ServeResult};
use crate::tensor::DataType;

/// Integers that travel in a wider type (JSON numbers, gRPC's int_contents) into the declared
/// narrower one; a value out of its range is refused, naming the input.
pub(crate) fn narrow<W: Copy + std::fmt::Display, T: TryFrom<W>>(
    input: &str,
    datatype: DataType,
    values: Vec<W>,
) -> ServeResult<Vec<T>> {
    values
        .into_iter()
        .map(|x| {
            T::try_from(x).map_err(|_| {
                ServeError::bad_request(format!(
                    "input '{input}': value {x} is out of range for {datatype}"
                ))
            })
        })
        .collect()
}

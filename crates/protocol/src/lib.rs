//! sluice-protocol: the wire codecs. Each turns its wire form (KServe v2 JSON, Triton's binary
//! tensor extension, TF-Serving's V1 REST, KServe v2 gRPC) into the core
//! [`sluice_core::InferRequest`] and encodes [`sluice_core::InferResponse`] back, and this crate
//! holds the generated gRPC messages and service (`grpc::proto`) that the server and the load
//! generator share. No validation or routing lives here.
#![forbid(unsafe_code)]

pub mod binary;
pub mod grpc;
pub mod json_data;
pub mod raw;
pub mod v1;
pub mod v2;

use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::DataType;

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

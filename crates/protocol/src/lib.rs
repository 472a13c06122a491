//! sluice-protocol: the wire codecs. Each turns its wire form (KServe v2 JSON, Triton's binary
//! tensor extension, TF-Serving's V1 REST, KServe v2 gRPC) into the core
//! [`sluice_core::InferRequest`] and encodes [`sluice_core::InferResponse`] back, and this crate
//! holds the generated gRPC messages and service (`grpc::proto`) that the server and the load
//! generator share. No validation or routing lives here.
#![forbid(unsafe_code)]

pub mod binary;
#[cfg(test)]
mod fuzz;
pub mod grpc;
pub mod json_data;
pub mod raw;
mod scan;
pub mod v1;
pub mod v2;

use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::DataType;

/// Longest model name accepted: names are folder names, which file systems cap at 255 bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Refuses an empty or over-long model name in `field` (gRPC carries names in messages of up
/// to the body limit; echoing one back would overflow the client's status header limit).
pub fn check_name<'a>(field: &str, value: &'a str) -> ServeResult<&'a str> {
    if value.is_empty() {
        return Err(ServeError::bad_request(format!("{field} is empty")));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ServeError::bad_request(format!(
            "{field} is {} bytes long; model names are at most {MAX_NAME_LEN} bytes",
            value.len()
        )));
    }
    Ok(value)
}

/// The answer to Triton's load `parameters` (config or file overrides), on HTTP and gRPC alike.
pub fn unsupported_load_parameter(key: &str) -> ServeError {
    ServeError::bad_request(format!(
        "load parameter '{}' is not supported: sluice loads the model folder as it is on disk",
        sluice_core::error::truncate(key, sluice_core::error::ECHO_MAX)
    ))
}

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

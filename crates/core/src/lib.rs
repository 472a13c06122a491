//! sluice-core: the types every other sluice crate speaks. Tensors and model signatures, the
//! request-path error (one kind enum mapped once to HTTP and gRPC codes), the decoded request
//! and response every protocol meets in, and the serde forms of durations and sizes.
//!
//! It sits at the bottom of the crate graph and depends on no other sluice crate.
#![forbid(unsafe_code)]

pub mod error;
pub mod request;
pub mod tensor;
pub mod units;

pub use error::{ErrorKind, ServeError, ServeResult};
pub use request::{InferRequest, InferResponse, Protocol, RequestKeys, Variant};

//! Protocol codecs: each turns its wire form into the core [`crate::infer::InferRequest`] and
//! encodes [`crate::infer::InferResponse`] back. No validation or routing lives here.

pub mod binary;
pub mod grpc;
pub mod json_data;
pub mod raw;
pub mod v1;
pub mod v2;

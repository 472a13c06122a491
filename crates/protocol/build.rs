//! Generates the KServe v2 gRPC types and service from `proto/grpc_service.proto`.
//!
//! No `protoc` binary is needed: `protox` parses the `.proto` file in Rust and produces the
//! `FileDescriptorSet` that `tonic-prost-build` would otherwise ask `protoc` for, so a fresh
//! clone builds with cargo alone.

use std::error::Error;

const PROTO: &str = "proto/grpc_service.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        // Tensor payloads as `Bytes`: decoding slices the received buffer instead of copying
        // every raw input, and encoding hands the encoded outputs over without another copy.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        // The client is used by the tests and the load generator; it costs nothing at run time.
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! KServe v2 over gRPC: the messages generated from `proto/grpc_service.proto`, and the codec
//! between them and the core [`InferRequest`] / [`InferResponse`].
//!
//! Inputs arrive either typed (`InferTensorContents`, the field matching the datatype) or raw
//! (`raw_input_contents`, one entry per input, in the layout of [`super::raw`]). Outputs always
//! go back raw in `raw_output_contents`, as Triton answers: it is the cheaper encoding and the
//! only one the official clients read for every datatype.

use bytes::Bytes;

use super::raw;
use super::v2::{parse_datatype, parse_shape};
use sluice_core::Protocol;
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{DataType, Tensor, TensorData, TensorSpec};
use sluice_core::{InferRequest, InferResponse, RequestKeys};

/// Generated from `proto/grpc_service.proto` by `build.rs`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::infer_parameter::ParameterChoice;
use proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::{InferTensorContents, ModelInferRequest, ModelInferResponse};

/// Decodes a `ModelInfer` request for the core path. Empty `model_version` and `id` mean unset,
/// as proto3 cannot tell them apart.
pub fn decode_request(request: ModelInferRequest) -> ServeResult<InferRequest> {
    let ModelInferRequest {
        model_name,
        model_version,
        id,
        inputs,
        outputs,
        raw_input_contents,
        parameters,
    } = request;
    super::check_name("model_name", &model_name)?;
    let inputs = if raw_input_contents.is_empty() {
        inputs
            .into_iter()
            .map(typed_input)
            .collect::<ServeResult<Vec<_>>>()?
    } else {
        if raw_input_contents.len() != inputs.len() {
            return Err(ServeError::bad_request(format!(
                "raw_input_contents has {} entries but the request has {} inputs; give one \
                 per input, in the order of inputs",
                raw_input_contents.len(),
                inputs.len()
            )));
        }
        inputs
            .into_iter()
            .zip(raw_input_contents)
            .map(|(input, bytes)| raw_input(input, &bytes))
            .collect::<ServeResult<Vec<_>>>()?
    };
    let outputs = requested_outputs(outputs)?;
    Ok(InferRequest {
        model: model_name,
        version: Some(model_version).filter(|v| !v.is_empty()),
        id: Some(id).filter(|v| !v.is_empty()),
        inputs,
        inputs_json: Vec::new(),
        outputs,
        protocol: Protocol::Grpc,
        // String parameters can carry the sticky-routing key, as v2 JSON `parameters` do; the
        // server adds the call's metadata as the headers.
        keys: RequestKeys {
            parameters: parameters
                .into_iter()
                .filter_map(|(key, value)| match value.parameter_choice {
                    Some(ParameterChoice::StringParam(s)) => Some((key, s)),
                    _ => None,
                })
                .collect(),
            ..Default::default()
        },
    })
}

fn requested_outputs(outputs: Vec<InferRequestedOutputTensor>) -> ServeResult<Option<Vec<String>>> {
    if outputs.is_empty() {
        return Ok(None);
    }
    outputs
        .into_iter()
        .map(|output| {
            let classification = output.parameters.get("classification").is_some_and(|p| {
                !matches!(
                    p.parameter_choice,
                    None | Some(ParameterChoice::Int64Param(0))
                )
            });
            if classification {
                return Err(ServeError::bad_request(format!(
                    "output '{}': the classification parameter asks for the classification \
                     extension, which sluice does not implement",
                    output.name
                )));
            }
            Ok(output.name)
        })
        .collect::<ServeResult<Vec<_>>>()
        .map(Some)
}

fn shape_and_type(input: &InferInputTensor) -> ServeResult<(Vec<usize>, DataType)> {
    Ok((
        parse_shape(&input.name, &input.shape)?,
        parse_datatype(&input.name, &input.datatype)?,
    ))
}

fn raw_input(input: InferInputTensor, bytes: &[u8]) -> ServeResult<Tensor> {
    if input.contents.as_ref().is_some_and(has_values) {
        return Err(ServeError::bad_request(format!(
            "input '{}' has contents but the request uses raw_input_contents; use one or the \
             other for all inputs",
            input.name
        )));
    }
    let (shape, datatype) = shape_and_type(&input)?;
    let data = raw::decode(&input.name, datatype, &shape, bytes)?;
    Tensor::new(input.name, shape, data).map_err(|e| ServeError::bad_request(e.to_string()))
}

fn has_values(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

fn typed_input(input: InferInputTensor) -> ServeResult<Tensor> {
    let (shape, datatype) = shape_and_type(&input)?;
    let name = input.name;
    let expected = raw::checked_count(&name, &shape)?;
    let c = input.contents.unwrap_or_default();
    let (field, data) = match datatype {
        DataType::Bool => ("bool_contents", TensorData::Bool(c.bool_contents)),
        DataType::I8 => (
            "int_contents",
            TensorData::I8(super::narrow(&name, datatype, c.int_contents)?),
        ),
        DataType::I16 => (
            "int_contents",
            TensorData::I16(super::narrow(&name, datatype, c.int_contents)?),
        ),
        DataType::I32 => ("int_contents", TensorData::I32(c.int_contents)),
        DataType::I64 => ("int64_contents", TensorData::I64(c.int64_contents)),
        DataType::U8 => (
            "uint_contents",
            TensorData::U8(super::narrow(&name, datatype, c.uint_contents)?),
        ),
        DataType::U16 => (
            "uint_contents",
            TensorData::U16(super::narrow(&name, datatype, c.uint_contents)?),
        ),
        DataType::U32 => ("uint_contents", TensorData::U32(c.uint_contents)),
        DataType::U64 => ("uint64_contents", TensorData::U64(c.uint64_contents)),
        DataType::F32 => ("fp32_contents", TensorData::F32(c.fp32_contents)),
        DataType::F64 => ("fp64_contents", TensorData::F64(c.fp64_contents)),
        DataType::Bytes => ("bytes_contents", TensorData::Bytes(c.bytes_contents)),
    };
    if data.len() != expected {
        return Err(ServeError::bad_request(format!(
            "input '{name}': shape {:?} needs {expected} values, contents.{field} has {}",
            input.shape,
            data.len()
        )));
    }
    Tensor::new(name, shape, data).map_err(|e| ServeError::bad_request(e.to_string()))
}

/// Encodes the answer with every output in `raw_output_contents`.
pub fn encode_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        raw.push(Bytes::from(raw::encode(&tensor.data)));
        outputs.push(InferOutputTensor {
            datatype: tensor.datatype().as_str().to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            name: tensor.name,
            ..Default::default()
        });
    }
    ModelInferResponse {
        model_name: response.model,
        model_version: response.version.to_string(),
        id: response.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

/// `ModelMetadata` over gRPC: the same document as the HTTP metadata.
pub fn model_metadata(metadata: crate::v2::ModelMetadata<'_>) -> proto::ModelMetadataResponse {
    let specs = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.datatype.as_str().to_string(),
                shape: s.shape.clone(),
            })
            .collect()
    };
    proto::ModelMetadataResponse {
        name: metadata.name.to_string(),
        versions: metadata.versions,
        platform: metadata.platform.to_string(),
        inputs: specs(metadata.inputs),
        outputs: specs(metadata.outputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_inputs_decode_in_order() {
        let a = raw::encode(&TensorData::F32(vec![1.0, 2.0]));
        let s = raw::encode(&TensorData::Bytes(vec![b"x".to_vec()]));
        let decoded = decode_request(request(
            vec![input("a", "FP32", vec![1, 2]), input("s", "BYTES", vec![1])],
            vec![a, s],
        ))
        .unwrap();
        assert_eq!(decoded.version, None);
        assert_eq!(decoded.outputs, None);
        assert_eq!(decoded.protocol, Protocol::Grpc);
        assert_eq!(decoded.inputs[0].data, TensorData::F32(vec![1.0, 2.0]));
        assert_eq!(
            decoded.inputs[1].data,
            TensorData::Bytes(vec![b"x".to_vec()])
        );
    }

    #[test]
    fn typed_contents_decode_and_narrow() {
        let mut small = input("i", "INT8", vec![2]);
        small.contents = Some(InferTensorContents {
            int_contents: vec![-3, 100],
            ..Default::default()
        });
        let mut flags = input("b", "BOOL", vec![1]);
        flags.contents = Some(InferTensorContents {
            bool_contents: vec![true],
            ..Default::default()
        });
        let decoded = decode_request(request(vec![small, flags], vec![])).unwrap();
        assert_eq!(decoded.inputs[0].data, TensorData::I8(vec![-3, 100]));
        assert_eq!(decoded.inputs[1].data, TensorData::Bool(vec![true]));

        let mut wide = input("i", "INT8", vec![1]);
        wide.contents = Some(InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        });
        let err = decode_request(request(vec![wide], vec![])).unwrap_err();
        assert_eq!(err.message, "input 'i': value 300 is out of range for INT8");
    }

    #[test]
    fn errors_name_the_input() {
        let err = |r| decode_request(r).unwrap_err().message;
        let mut wrong_field = input("x", "FP32", vec![1, 2]);
        wrong_field.contents = Some(InferTensorContents {
            fp64_contents: vec![1.0, 2.0],
            ..Default::default()
        });
        assert_eq!(
            err(request(vec![wrong_field], vec![])),
            "input 'x': shape [1, 2] needs 2 values, contents.fp32_contents has 0"
        );
        assert!(
            err(request(
                vec![input("x", "FP32", vec![1]), input("y", "FP32", vec![1])],
                vec![vec![0; 4]]
            ))
            .contains("raw_input_contents has 1 entries but the request has 2 inputs")
        );
        assert_eq!(
            err(request(
                vec![input("x", "FP32", vec![1, 3])],
                vec![vec![0; 8]]
            )),
            "input 'x': shape [1,3] of FP32 needs 12 bytes (3 elements of 4), raw data has 8"
        );
        let mut both = input("x", "FP32", vec![1]);
        both.contents = Some(InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        });
        assert!(err(request(vec![both], vec![vec![0; 4]])).contains("input 'x' has contents"));
        assert!(err(request(vec![input("x", "FP16", vec![1])], vec![vec![0; 2]])).contains("FP16"));
        assert!(
            err(request(vec![input("x", "FP32", vec![-1])], vec![vec![]])).contains("negative")
        );
    }

    #[test]
    fn responses_are_raw_and_carry_the_version() {
        let encoded = encode_response(InferResponse {
            model: "m".into(),
            version: 3,
            variant: sluice_core::Variant::Primary,
            id: Some("r1".into()),
            outputs: vec![Tensor::new("y", vec![1, 2], TensorData::I64(vec![1, 2])).unwrap()],
        });
        assert_eq!(encoded.model_version, "3");
        assert_eq!(encoded.id, "r1");
        assert_eq!(encoded.outputs[0].datatype, "INT64");
        assert_eq!(encoded.outputs[0].shape, vec![1, 2]);
        assert!(encoded.outputs[0].contents.is_none());
        assert_eq!(
            encoded.raw_output_contents[0].as_ref(),
            raw::encode(&TensorData::I64(vec![1, 2]))
        );
    }
}

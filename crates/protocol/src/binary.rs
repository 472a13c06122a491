//! Triton's binary tensor data extension to v2 over HTTP, which the official Triton client uses
//! by default.
//!
//! A request with `Inference-Header-Content-Length: N` is N bytes of v2 JSON followed by the raw
//! data (see [`super::raw`]) of every input whose `parameters.binary_data_size` is set, in input
//! order. Outputs go back raw when the request asks (`parameters.binary_data` on a requested
//! output, or `parameters.binary_data_output` on the request for every output not saying
//! otherwise): the answer is then the JSON header, with `parameters.binary_data_size` on each raw
//! output, followed by their data, and the length of the JSON in the same response header.
//!
//! A request without the header is plain v2 JSON and takes exactly the same path: inputs without
//! `binary_data_size` are decoded by [`super::v2`]'s JSON decoder either way.

use http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value};

use super::raw;
use super::v2::{self, JsonData, V2Input, V2Request};
use sluice_core::Protocol;
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{DataType, Tensor};
use sluice_core::{InferRequest, InferResponse};

/// Request and response header holding the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The length of the JSON header, when the request uses binary framing.
pub fn header_length(headers: &HeaderMap) -> ServeResult<Option<usize>> {
    // A name made once: looking up by `&str` parses and lower-cases it on every request.
    const NAME: http::HeaderName = http::HeaderName::from_static(HEADER_LENGTH);
    let Some(value) = headers.get(NAME) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ServeError::bad_request(format!(
                "Inference-Header-Content-Length must be a non-negative integer, got {:?}",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// Which outputs to send back raw, decided from the request before it runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutputEncoding {
    /// `parameters.binary_data_output` of the request: the choice for outputs that make none.
    default_binary: bool,
    /// Outputs that set `parameters.binary_data` themselves.
    explicit: Vec<(String, bool)>,
}

impl OutputEncoding {
    /// Whether `output` goes back as raw bytes.
    pub fn is_binary(&self, output: &str) -> bool {
        self.explicit
            .iter()
            .find(|(name, _)| name == output)
            .map_or(self.default_binary, |&(_, binary)| binary)
    }

    fn any_binary(&self) -> bool {
        self.default_binary || self.explicit.iter().any(|&(_, binary)| binary)
    }
}

/// Decodes a v2 infer body, binary-framed (`header_length` given) or plain JSON, into the
/// request for the core path and the encoding its outputs ask for.
pub fn decode_request(
    body: &[u8],
    header_length: Option<usize>,
    model: String,
    version: Option<String>,
) -> ServeResult<(InferRequest, OutputEncoding)> {
    decode_request_with(body, header_length, model, version, true)
}

/// [`decode_request`]; `scan` false keeps a plain JSON body off the one-pass reader (tests
/// compare the two paths).
pub(crate) fn decode_request_with(
    body: &[u8],
    header_length: Option<usize>,
    model: String,
    version: Option<String>,
    scan: bool,
) -> ServeResult<(InferRequest, OutputEncoding)> {
    let (json, mut binary) = match header_length {
        None => (body, None),
        Some(n) if n > body.len() => {
            return Err(ServeError::bad_request(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => {
            let (json, rest) = body.split_at(n);
            (json, Some(Section { rest, used: 0 }))
        }
    };
    if scan
        && binary.is_none()
        && let Some(scanned) = crate::scan::scan(json)
    {
        return decode_scanned(scanned, model, version);
    }
    let parsed = v2::parse_request(json)?;
    let outputs = output_encoding(&parsed)?;
    let keys = sluice_core::RequestKeys::from_json_parameters(parsed.parameters.as_ref());
    let V2Request {
        id,
        inputs: raw_inputs,
        outputs: requested,
        ..
    } = parsed;
    let mut inputs = Vec::with_capacity(raw_inputs.len());
    let mut inputs_json = Vec::new();
    for input in raw_inputs {
        let size = binary_data_size(&input)?;
        let (tensor, text) = match size {
            None => input.into_tensor_and_text()?,
            Some(size) => (binary_input(input, size, binary.as_mut())?, None),
        };
        push_input(&mut inputs, &mut inputs_json, tensor, text);
    }
    if let Some(section) = &binary
        && section.used != section.rest.len()
    {
        return Err(ServeError::bad_request(format!(
            "binary tensor data: the inputs' binary_data_size add up to {} bytes, but {} bytes \
             follow the JSON header",
            section.used,
            section.rest.len()
        )));
    }
    let protocol = if header_length.is_some() || outputs.any_binary() {
        Protocol::V2Binary
    } else {
        Protocol::V2Json
    };
    let request = InferRequest {
        model,
        version,
        id,
        inputs,
        inputs_json,
        outputs: requested.map(|outputs| outputs.into_iter().map(|o| o.name).collect()),
        protocol,
        keys,
    };
    Ok((request, outputs))
}

/// A plain JSON request of the usual shape (see [`crate::scan`]): no binary sections, no
/// parameters, every output in JSON; its inputs decoded as the general path decodes them.
fn decode_scanned(
    scanned: crate::scan::Scanned<'_>,
    model: String,
    version: Option<String>,
) -> ServeResult<(InferRequest, OutputEncoding)> {
    let mut inputs = Vec::with_capacity(scanned.inputs.len());
    let mut inputs_json = Vec::new();
    for input in scanned.inputs {
        let (tensor, keep) = v2::decode_input(
            input.name.to_owned(),
            &input.shape,
            input.datatype,
            Some(input.data),
        )?;
        push_input(
            &mut inputs,
            &mut inputs_json,
            tensor,
            keep.then(|| Box::from(input.data)),
        );
    }
    let request = InferRequest {
        model,
        version,
        id: scanned.id.map(str::to_owned),
        inputs,
        inputs_json,
        outputs: None,
        protocol: Protocol::V2Json,
        keys: sluice_core::RequestKeys::from_json_parameters(None),
    };
    Ok((request, OutputEncoding::default()))
}

/// Adds a decoded input and its data's text, if it has one, to the request's lists. The texts'
/// list is made only once an input has one (binary and nested inputs have none); from then on
/// it has an entry per input.
fn push_input(
    inputs: &mut Vec<Tensor>,
    texts: &mut Vec<Option<Box<str>>>,
    tensor: Tensor,
    text: Option<Box<str>>,
) {
    if text.is_some() || !texts.is_empty() {
        texts.resize_with(inputs.len(), || None);
        texts.push(text);
    }
    inputs.push(tensor);
}

/// The part of the body after the JSON header, consumed input by input.
struct Section<'a> {
    rest: &'a [u8],
    used: usize,
}

fn binary_input(
    input: V2Input,
    size: usize,
    section: Option<&mut Section<'_>>,
) -> ServeResult<Tensor> {
    let name = input.name;
    let Some(section) = section else {
        return Err(ServeError::bad_request(format!(
            "input '{name}' sets parameters.binary_data_size but the request has no \
             Inference-Header-Content-Length header"
        )));
    };
    if input.data.is_some() {
        return Err(ServeError::bad_request(format!(
            "input '{name}' has both data and parameters.binary_data_size; send one"
        )));
    }
    let left = section.rest.len() - section.used;
    if size > left {
        return Err(ServeError::bad_request(format!(
            "input '{name}': binary_data_size is {size} bytes but only {left} bytes of binary \
             data are left in the body"
        )));
    }
    let bytes = &section.rest[section.used..section.used + size];
    section.used += size;
    let shape = v2::parse_shape(&name, &input.shape)?;
    let datatype = v2::parse_datatype(&name, &input.datatype)?;
    let data = raw::decode(&name, datatype, &shape, bytes)?;
    Tensor::new(name, shape, data).map_err(|e| ServeError::bad_request(e.to_string()))
}

fn binary_data_size(input: &V2Input) -> ServeResult<Option<usize>> {
    let Some(value) = param(&input.parameters, "binary_data_size") else {
        return Ok(None);
    };
    value.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some).ok_or_else(|| {
        ServeError::bad_request(format!(
            "input '{}': parameters.binary_data_size must be a non-negative integer, got {value}",
            input.name
        ))
    })
}

fn output_encoding(request: &V2Request) -> ServeResult<OutputEncoding> {
    let default_binary = flag(&request.parameters, "binary_data_output", "the request")?;
    let mut explicit = Vec::new();
    for output in request.outputs.iter().flatten() {
        let place = format!("output '{}'", output.name);
        if param(&output.parameters, "class_count").is_some_and(|v| v.as_u64() != Some(0)) {
            return Err(ServeError::bad_request(format!(
                "{place}: parameters.class_count asks for the classification extension, which \
                 sluice does not implement"
            )));
        }
        if param(&output.parameters, "binary_data").is_some() {
            let binary = flag(&output.parameters, "binary_data", &place)?;
            explicit.push((output.name.clone(), binary));
        }
    }
    Ok(OutputEncoding {
        default_binary,
        explicit,
    })
}

fn param<'a>(parameters: &'a Option<Map<String, Value>>, key: &str) -> Option<&'a Value> {
    parameters.as_ref().and_then(|p| p.get(key))
}

/// A boolean parameter; absent is `false`.
fn flag(parameters: &Option<Map<String, Value>>, key: &str, place: &str) -> ServeResult<bool> {
    match param(parameters, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ServeError::bad_request(format!(
            "{place}: parameters.{key} must be true or false, got {other}"
        ))),
    }
}

/// An encoded answer: the body, and the JSON header's length when outputs follow it raw.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// `Some` when the body is binary-framed: send it as `Inference-Header-Content-Length`
    /// with content type `application/octet-stream`.
    pub header_length: Option<usize>,
}

#[derive(Serialize)]
struct Header<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<HeaderOutput<'a>>,
}

#[derive(Serialize)]
struct HeaderOutput<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// Encodes the answer: plain v2 JSON when no output is wanted raw, else the JSON header
/// followed by the raw outputs in output order.
pub fn encode_response(response: &InferResponse, encoding: &OutputEncoding) -> Encoded {
    let binary: Vec<bool> = response
        .outputs
        .iter()
        .map(|t| encoding.is_binary(&t.name))
        .collect();
    if !binary.contains(&true) {
        return Encoded {
            body: v2::encode_response(response),
            header_length: None,
        };
    }
    let header = Header {
        model_name: &response.model,
        model_version: response.version.to_string(),
        id: response.id.as_deref(),
        outputs: response
            .outputs
            .iter()
            .zip(&binary)
            .map(|(t, &binary)| HeaderOutput {
                name: &t.name,
                datatype: t.datatype(),
                shape: &t.shape,
                parameters: binary.then(|| BinaryParameters {
                    binary_data_size: raw::encoded_len(&t.data),
                }),
                data: (!binary).then_some(JsonData(&t.data)),
            })
            .collect(),
    };
    // Serialising plain structs of numbers and strings into memory cannot fail.
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    let header_length = body.len();
    for (tensor, _) in response.outputs.iter().zip(&binary).filter(|(_, b)| **b) {
        raw::encode_into(&tensor.data, &mut body);
    }
    Encoded {
        body,
        header_length: Some(header_length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::tensor::TensorData;

    fn framed(header: &str, binary: &[u8]) -> Vec<u8> {
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(binary);
        body
    }

    fn decode(header: &str, binary: &[u8]) -> ServeResult<(InferRequest, OutputEncoding)> {
        decode_request(
            &framed(header, binary),
            Some(header.len()),
            "m".into(),
            None,
        )
    }

    fn error(header: &str, binary: &[u8]) -> String {
        decode(header, binary).unwrap_err().message
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        raw::encode(&TensorData::F32(values.to_vec()))
    }

    #[test]
    fn mixes_binary_and_json_inputs_in_order() {
        let header = r#"{"inputs":[
            {"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[1],"datatype":"INT64","data":[7]},
            {"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}}]}"#;
        let mut binary = f32_bytes(&[1.0, 2.5]);
        binary.extend(raw::encode(&TensorData::Bytes(vec![
            b"hi".to_vec(),
            b"you".to_vec(),
        ])));
        let (request, outputs) = decode(header, &binary).unwrap();
        assert_eq!(request.inputs[0].data, TensorData::F32(vec![1.0, 2.5]));
        assert_eq!(request.inputs[1].data, TensorData::I64(vec![7]));
        assert_eq!(
            request.inputs[2].data,
            TensorData::Bytes(vec![b"hi".to_vec(), b"you".to_vec()])
        );
        assert_eq!(request.protocol, Protocol::V2Binary);
        assert!(!outputs.is_binary("y"));
    }

    #[test]
    fn plain_json_takes_the_same_path() {
        let body = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        let (request, _) = decode_request(body, None, "m".into(), Some("2".into())).unwrap();
        assert_eq!(request.version.as_deref(), Some("2"));
        assert_eq!(request.inputs[0].data, TensorData::F32(vec![1.0]));
        assert_eq!(request.protocol, Protocol::V2Json);
    }

    #[test]
    fn malformed_framing_names_the_problem() {
        let one = r#"{"inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        // The header length runs past the body.
        let body = framed(one, &f32_bytes(&[1.0, 2.0]));
        let err = decode_request(&body, Some(body.len() + 1), "m".into(), None).unwrap_err();
        assert!(
            err.message.contains("Inference-Header-Content-Length is"),
            "{}",
            err.message
        );
        // The JSON is cut short by a header length that is too small.
        let err = decode_request(&body, Some(5), "m".into(), None).unwrap_err();
        assert!(
            err.message.contains("invalid inference request JSON"),
            "{}",
            err.message
        );
        // binary_data_size larger than what is left.
        assert_eq!(
            error(one, &f32_bytes(&[1.0])),
            "input 'a': binary_data_size is 8 bytes but only 4 bytes of binary data are left \
             in the body"
        );
        // Bytes left over after every input took its share.
        assert!(
            error(one, &f32_bytes(&[1.0, 2.0, 3.0]))
                .contains("add up to 8 bytes, but 12 bytes follow the JSON header")
        );
        // binary_data_size agrees with the body but not with the shape.
        let short = r#"{"inputs":[{"name":"a","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        assert_eq!(
            error(short, &f32_bytes(&[1.0, 2.0])),
            "input 'a': shape [1,3] of FP32 needs 12 bytes (3 elements of 4), raw data has 8"
        );
        // Truncated BYTES element.
        let strings = r#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
        assert!(
            error(strings, &[9, 0, 0, 0, b'a', b'b'])
                .contains("input 's': BYTES element 0 is truncated")
        );
        // Not a number.
        let bad = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":"4"}}]}"#;
        assert!(error(bad, &[0; 4]).contains("binary_data_size must be a non-negative integer"));
        // Both data and binary.
        let both = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#;
        assert!(error(both, &[0; 4]).contains("has both data and parameters.binary_data_size"));
        // binary_data_size without framing.
        let err = decode_request(one.as_bytes(), None, "m".into(), None).unwrap_err();
        assert!(
            err.message.contains("no Inference-Header-Content-Length"),
            "{}",
            err.message
        );
    }

    #[test]
    fn header_length_must_be_a_number() {
        let mut headers = HeaderMap::new();
        assert_eq!(header_length(&headers).unwrap(), None);
        headers.insert(HEADER_LENGTH, "12".parse().unwrap());
        assert_eq!(header_length(&headers).unwrap(), Some(12));
        headers.insert(HEADER_LENGTH, "-1".parse().unwrap());
        assert!(header_length(&headers).is_err());
    }

    #[test]
    fn output_choice_per_output_overrides_the_request() {
        let header = r#"{"inputs":[],"parameters":{"binary_data_output":true},
            "outputs":[{"name":"a","parameters":{"binary_data":false}},{"name":"b"}]}"#;
        let (_, outputs) = decode(header, &[]).unwrap();
        assert!(!outputs.is_binary("a"));
        assert!(outputs.is_binary("b"));
        let err = error(
            r#"{"inputs":[],"parameters":{"binary_data_output":1}}"#,
            &[],
        );
        assert!(
            err.contains("binary_data_output must be true or false"),
            "{err}"
        );
        let err = error(
            r#"{"inputs":[],"outputs":[{"name":"a","parameters":{"class_count":3}}]}"#,
            &[],
        );
        assert!(err.contains("classification"), "{err}");
    }

    #[test]
    fn encodes_raw_outputs_after_the_header() {
        let response = InferResponse {
            model: "m".into(),
            version: 2,
            variant: sluice_core::Variant::Primary,
            id: Some("r".into()),
            outputs: vec![
                Tensor::new("label", vec![2], TensorData::I64(vec![1, 0])).unwrap(),
                Tensor::new("name", vec![1], TensorData::Bytes(vec![b"ok".to_vec()])).unwrap(),
                Tensor::new("p", vec![1], TensorData::F32(vec![0.5])).unwrap(),
            ],
        };
        let encoding = OutputEncoding {
            default_binary: true,
            explicit: vec![("p".into(), false)],
        };
        let encoded = encode_response(&response, &encoding);
        let n = encoded.header_length.unwrap();
        let header: Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
        assert_eq!(header["model_version"], "2");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 16);
        assert!(header["outputs"][0].get("data").is_none());
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 6);
        assert_eq!(header["outputs"][2]["data"][0], 0.5);
        let mut expected = raw::encode(&TensorData::I64(vec![1, 0]));
        expected.extend([2, 0, 0, 0, b'o', b'k']);
        assert_eq!(&encoded.body[n..], &expected[..]);

        // Nothing asked raw: plain JSON, no framing.
        let plain = encode_response(&response, &OutputEncoding::default());
        assert_eq!(plain.header_length, None);
        assert_eq!(plain.body, v2::encode_response(&response));
    }
}

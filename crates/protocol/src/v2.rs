//! KServe Open Inference Protocol v2, JSON form: request decoding onto [`InferRequest`] and
//! response encoding from [`InferResponse`], plus the metadata documents.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json_data::{self, JsonTensor};
use sluice_core::InferResponse;
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{
    DataType, ModelSignature, Tensor, TensorData, TensorSpec, checked_element_count, element_count,
};
use sluice_core::with_vec;

/// The JSON body of `POST /v2/models/{m}[/versions/{v}]/infer`. The `expecting` texts are
/// what a client reads when a part has the wrong form (serde would name these types).
#[derive(Debug, Deserialize)]
#[serde(expecting = "an inference request: an object with an \"inputs\" list")]
pub struct V2Request {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<V2Input>,
    #[serde(default)]
    pub outputs: Option<Vec<V2RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an input: an object with \"name\", \"shape\", \"datatype\" and \"data\"")]
pub struct V2Input {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// Kept as its JSON text: decoded by [`V2Input::into_tensor`] once the datatype is known,
    /// and, when it was a flat array of numbers, copied into the prediction log as sent.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a requested output: an object with a \"name\"")]
pub struct V2RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// Parses a v2 JSON body; syntax and structure errors name the place they were found.
pub fn parse_request(body: &[u8]) -> ServeResult<V2Request> {
    serde_json::from_slice(body)
        .map_err(|e| ServeError::bad_request(format!("invalid inference request JSON: {e}")))
}

/// The concrete shape of a v2 `shape` field; shapes too large to be real are refused here,
/// before anything multiplies or allocates by them.
pub fn parse_shape(input: &str, shape: &[i64]) -> ServeResult<Vec<usize>> {
    let dims = shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                ServeError::bad_request(format!(
                    "input '{input}': shape {shape:?} has a negative dimension"
                ))
            })
        })
        .collect::<ServeResult<Vec<usize>>>()?;
    if checked_element_count(&dims).is_none() {
        return Err(ServeError::bad_request(format!(
            "input '{input}': shape {} is too large (its dimensions multiply to more than 2^40)",
            sluice_core::tensor::format_dims(shape)
        )));
    }
    Ok(dims)
}

pub fn parse_datatype(input: &str, name: &str) -> ServeResult<DataType> {
    DataType::parse(name).ok_or_else(|| {
        ServeError::bad_request(format!(
            "input '{input}': unknown or unsupported datatype '{name}'"
        ))
    })
}

impl V2Input {
    /// Decodes the JSON `data` of this input into a tensor of its declared shape and type.
    pub fn into_tensor(self) -> ServeResult<Tensor> {
        self.into_tensor_and_text().map(|(tensor, _)| tensor)
    }

    /// [`V2Input::into_tensor`], also handing back the `data` text when it was a flat array
    /// of numbers on one line (what a prediction-log record may copy as it is).
    pub fn into_tensor_and_text(self) -> ServeResult<(Tensor, Option<Box<str>>)> {
        let text = self.data.as_deref().map(RawValue::get);
        let (tensor, keep) = decode_input(self.name, &self.shape, &self.datatype, text)?;
        Ok((tensor, self.data.filter(|_| keep).map(Into::into)))
    }
}

/// One input's tensor from its parts as sent, `data` as its JSON text; and whether that text
/// may stand for the values in the prediction log (a flat array of numbers, on one line).
/// Both request decoders end here, so they agree on every value and every refusal.
pub(crate) fn decode_input(
    name: String,
    shape: &[i64],
    datatype: &str,
    text: Option<&str>,
) -> ServeResult<(Tensor, bool)> {
    let dims = parse_shape(&name, shape)?;
    let datatype = parse_datatype(&name, datatype)?;
    let text =
        text.ok_or_else(|| ServeError::bad_request(format!("input '{name}' has no data")))?;
    let expected = element_count(&dims);
    let count_error = |found: usize| {
        ServeError::bad_request(format!(
            "input '{name}': shape {shape:?} needs {expected} values, data has {found}",
        ))
    };
    let (data, flat) = match json_data::flat_numbers(text, datatype, expected) {
        Some(data) => (data, true),
        None => {
            let json: JsonTensor = serde_json::from_str(text).map_err(|e| {
                ServeError::bad_request(format!(
                    "input '{name}': invalid data: {}",
                    without_position(&e)
                ))
            })?;
            if json.len() != expected {
                return Err(count_error(json.len()));
            }
            (json.into_data(datatype, &name)?, false)
        }
    };
    if data.len() != expected {
        return Err(count_error(data.len()));
    }
    let one_line = !text.bytes().any(|b| b == b'\n' || b == b'\r');
    let tensor =
        Tensor::new(name, dims, data).map_err(|e| ServeError::bad_request(e.to_string()))?;
    Ok((tensor, flat && one_line))
}

/// serde_json's message without its " at line L column C": the position is within one input's
/// `data`, which the message names instead.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) if error.line() > 0 => message[..at].to_string(),
        _ => message,
    }
}

/// The JSON answer to an inference.
#[derive(Serialize)]
pub struct V2Response<'a> {
    pub model_name: &'a str,
    /// The version number, written as the string v2 wants without allocating one.
    #[serde(serialize_with = "as_string")]
    pub model_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    pub outputs: Vec<V2Output<'a>>,
}

#[derive(Serialize)]
pub struct V2Output<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    pub shape: &'a [usize],
    pub data: JsonData<'a>,
}

/// Serialises tensor data as a flat JSON array (BYTES as strings).
pub struct JsonData<'a>(pub &'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Bytes(v) => {
                serializer.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b)))
            }
            other => with_vec!(other, v => serializer.collect_seq(v.iter())),
        }
    }
}

fn as_string<S: Serializer>(n: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(n)
}

/// The JSON answer's bytes: exactly [`V2Response`]'s serde form (a test holds them equal),
/// written field by field into one buffer sized up front. Through serde, every key went
/// through the map machinery and the string escaper, and the version through `Display`
/// (profiled: ~a third of the encoding's cost).
pub fn encode_response(response: &InferResponse) -> Vec<u8> {
    let values: usize = response.outputs.iter().map(|t| t.data.len()).sum();
    let mut out = Vec::with_capacity(96 + 80 * response.outputs.len() + 24 * values);
    out.extend_from_slice(b"{\"model_name\":");
    json(&mut out, &response.model);
    out.extend_from_slice(b",\"model_version\":\"");
    json(&mut out, &response.version);
    out.push(b'"');
    if let Some(id) = &response.id {
        out.extend_from_slice(b",\"id\":");
        json(&mut out, id);
    }
    out.extend_from_slice(b",\"outputs\":");
    write_tensors(&mut out, &response.outputs, &[]);
    out.push(b'}');
    out
}

/// Tensors as a v2 JSON array of `{"name", "datatype", "shape", "data"}` objects, flat data:
/// the answer's `outputs` and the prediction log's `outputs` and `inputs`. `as_sent[i]`, where
/// present, is tensor `i`'s data as the client's own JSON text (a flat array of numbers on one
/// line), copied instead of formatting every value again.
pub fn write_tensors(out: &mut Vec<u8>, tensors: &[Tensor], as_sent: &[Option<Box<str>>]) {
    out.push(b'[');
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        json(out, &t.name);
        // Datatype names are plain ASCII words: nothing to escape.
        out.extend_from_slice(b",\"datatype\":\"");
        out.extend_from_slice(t.datatype().as_str().as_bytes());
        out.extend_from_slice(b"\",\"shape\":");
        json(out, &t.shape);
        out.extend_from_slice(b",\"data\":");
        match as_sent.get(i).and_then(Option::as_ref) {
            Some(text) => out.extend_from_slice(text.as_bytes()),
            None => json(out, &JsonData(&t.data)),
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// One value in serde_json's form, appended.
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Strings, numbers and tensor data always serialise into memory.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `GET /v2/models/{m}[/versions/{v}]`.
#[derive(Serialize)]
pub struct ModelMetadata<'a> {
    pub name: &'a str,
    pub versions: Vec<String>,
    pub platform: &'a str,
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
}

impl<'a> ModelMetadata<'a> {
    /// The metadata of one loaded version: `platform` names its runtime, `versions` lists the
    /// model's loaded versions.
    pub fn new(
        name: &'a str,
        platform: &'a str,
        signature: &'a ModelSignature,
        versions: Vec<String>,
    ) -> ModelMetadata<'a> {
        ModelMetadata {
            name,
            versions,
            platform,
            inputs: &signature.inputs,
            outputs: &signature.outputs,
        }
    }
}

/// `GET /v2`.
#[derive(Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

pub const SERVER_METADATA: ServerMetadata = ServerMetadata {
    name: "sluice",
    version: env!("CARGO_PKG_VERSION"),
    // Triton's names: the binary tensor framing on HTTP (and raw contents on gRPC), and the
    // repository index/load/unload calls.
    extensions: &["binary_tensor_data", "model_repository"],
};

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::InferRequest;

    /// Plain v2 JSON goes through the binary-extension decoder with no binary section.
    fn decode(body: &[u8]) -> ServeResult<InferRequest> {
        crate::binary::decode_request(body, None, "m".into(), None).map(|(r, _)| r)
    }

    #[test]
    fn decodes_a_request() {
        let body = br#"{"id":"r1","inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}],
                        "outputs":[{"name":"label"}],"parameters":{"k":"v"}}"#;
        let request = decode(body).unwrap();
        assert_eq!(request.id.as_deref(), Some("r1"));
        assert_eq!(request.outputs, Some(vec!["label".to_string()]));
        assert_eq!(request.inputs[0].shape, vec![2, 2]);
        assert_eq!(
            request.inputs[0].data,
            TensorData::F32(vec![1.0, 2.0, 3.0, 4.5])
        );
        // Nested data has no text for the log: it is written flat from the tensor.
        assert!(request.inputs_json.is_empty());
    }

    #[test]
    fn keeps_flat_data_as_sent_for_the_log() {
        let body = br#"{"inputs":[
            {"name":"a","shape":[1,2],"datatype":"FP32","data":[0.10000000149011612, 2]},
            {"name":"b","shape":[1],"datatype":"INT64","data":[[7]]},
            {"name":"c","shape":[2],"datatype":"FP64","data":[1,
                                                            2]}]}"#;
        let request = decode(body).unwrap();
        assert_eq!(request.inputs[0].data, TensorData::F32(vec![0.1, 2.0]));
        let texts: Vec<Option<&str>> = request.inputs_json.iter().map(Option::as_deref).collect();
        // Nested, or spread over lines (a JSON-lines record must stay on one): no text.
        assert_eq!(texts, [Some("[0.10000000149011612, 2]"), None, None]);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = |body: &str| decode(body.as_bytes()).unwrap_err().message;
        assert!(err("{").contains("invalid inference request JSON"));
        assert!(
            err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#)
                .contains("has no data")
        );
        assert_eq!(
            err(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#),
            "input 'x': shape [1, 3] needs 3 values, data has 2"
        );
        assert!(
            err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[1]}]}"#)
                .contains("unsupported datatype 'FP16'")
        );
        assert!(
            err(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#)
                .contains("negative dimension")
        );
    }

    #[test]
    fn the_written_response_is_the_serde_form() {
        let outputs = vec![
            Tensor::new("label", vec![2], TensorData::I64(vec![1, -3])).unwrap(),
            Tensor::new("p\"q\\", vec![2, 1], TensorData::F32(vec![0.25, 1e-9])).unwrap(),
            Tensor::new("s", vec![1], TensorData::Bytes(vec![b"h\n\xffi".to_vec()])).unwrap(),
            Tensor::new("b", vec![0], TensorData::Bool(vec![])).unwrap(),
            Tensor::new("d", vec![1], TensorData::F64(vec![f64::NAN])).unwrap(),
        ];
        for (id, outputs) in [
            (None, vec![]),
            (Some("r\u{1}\"1"), outputs.clone()),
            (None, outputs[..1].to_vec()),
        ] {
            let response = InferResponse {
                model: "m\u{e9}\t".into(),
                version: 18_446_744_073_709_551_615,
                variant: sluice_core::Variant::Primary,
                id: id.map(str::to_string),
                outputs,
            };
            let serde_form = serde_json::to_vec(&V2Response {
                model_name: &response.model,
                model_version: response.version,
                id: response.id.as_deref(),
                outputs: response
                    .outputs
                    .iter()
                    .map(|t| V2Output {
                        name: &t.name,
                        datatype: t.datatype(),
                        shape: &t.shape,
                        data: JsonData(&t.data),
                    })
                    .collect(),
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(encode_response(&response)).unwrap(),
                String::from_utf8(serde_form).unwrap()
            );
        }
    }

    #[test]
    fn encodes_bytes_as_strings() {
        let response = InferResponse {
            model: "m".into(),
            version: 3,
            variant: sluice_core::Variant::Primary,
            id: None,
            outputs: vec![
                Tensor::new("s", vec![1], TensorData::Bytes(vec![b"hi".to_vec()])).unwrap(),
                Tensor::new("b", vec![2], TensorData::Bool(vec![true, false])).unwrap(),
            ],
        };
        let json: Value = serde_json::from_slice(&encode_response(&response)).unwrap();
        assert_eq!(json["model_version"], "3");
        assert_eq!(json["outputs"][0]["data"][0], "hi");
        assert_eq!(json["outputs"][1]["datatype"], "BOOL");
        assert_eq!(json["outputs"][1]["data"][1], false);
    }
}

//! V1 / TF-Serving REST: `POST /v1/models/{m}[/versions/{v}]:predict` with `instances` (row
//! format) or `inputs` (columnar). V1 carries no datatypes: values take the model's declared
//! input types.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::json_data::JsonTensor;
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{ModelSignature, Tensor, TensorData, TensorSpec};

/// Which of the two V1 request forms was used; the answer uses the matching form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V1Format {
    /// `instances`: a list of rows, answered with `predictions`.
    Rows,
    /// `inputs`: whole tensors, answered with `outputs`.
    Columns,
}

/// Decodes a V1 body into tensors shaped and typed for `signature`.
pub fn decode(body: &[u8], signature: &ModelSignature) -> ServeResult<(Vec<Tensor>, V1Format)> {
    let bad = ServeError::bad_request;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("invalid predict request JSON: {e}")))?;
    let Value::Object(mut body) = value else {
        return Err(bad("predict request must be a JSON object".to_string()));
    };
    body.remove("signature_name");
    match (body.remove("instances"), body.remove("inputs")) {
        (Some(_), Some(_)) => Err(bad(
            "give either 'instances' or 'inputs', not both".to_string()
        )),
        (None, None) => Err(bad(
            "predict request needs 'instances' (rows) or 'inputs' (columns)".to_string(),
        )),
        (Some(instances), None) => Ok((decode_rows(instances, signature)?, V1Format::Rows)),
        (None, Some(inputs)) => Ok((decode_columns(inputs, signature)?, V1Format::Columns)),
    }
}

fn json_tensor(value: &Value, input: &str) -> ServeResult<JsonTensor> {
    JsonTensor::deserialize(value)
        .map_err(|e| ServeError::bad_request(format!("input '{input}': {e}")))
}

/// Per input, the values named for it: either the whole value (single-input models may omit
/// the name) or the member of an object keyed by input name.
fn split_by_input<'v>(
    value: &'v Value,
    signature: &ModelSignature,
    what: &str,
) -> ServeResult<Vec<&'v Value>> {
    match value {
        Value::Object(map) => {
            reject_unknown(map, signature)?;
            signature
                .inputs
                .iter()
                .map(|spec| {
                    map.get(&spec.name).ok_or_else(|| {
                        ServeError::bad_request(format!("{what} is missing input '{}'", spec.name))
                    })
                })
                .collect()
        }
        other if signature.inputs.len() == 1 => Ok(vec![other]),
        _ => Err(ServeError::bad_request(format!(
            "the model takes {} inputs: each {what} must be an object keyed by input name",
            signature.inputs.len()
        ))),
    }
}

fn reject_unknown(map: &Map<String, Value>, signature: &ModelSignature) -> ServeResult<()> {
    match map
        .keys()
        .find(|k| !signature.inputs.iter().any(|s| &s.name == *k))
    {
        Some(unknown) => Err(ServeError::bad_request(format!(
            "unexpected input '{unknown}'"
        ))),
        None => Ok(()),
    }
}

fn decode_rows(instances: Value, signature: &ModelSignature) -> ServeResult<Vec<Tensor>> {
    let Value::Array(rows) = instances else {
        return Err(ServeError::bad_request(
            "'instances' must be a list of rows",
        ));
    };
    if rows.is_empty() {
        return Err(ServeError::bad_request("'instances' is empty"));
    }
    let per_row: Vec<Vec<&Value>> = rows
        .iter()
        .map(|row| split_by_input(row, signature, "instance"))
        .collect::<ServeResult<_>>()?;
    signature
        .inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| stack_rows(spec, per_row.iter().map(|r| r[i])))
        .collect()
}

/// Stacks one input's rows along a new first axis; every row must have the same shape.
fn stack_rows<'v>(spec: &TensorSpec, rows: impl Iterator<Item = &'v Value>) -> ServeResult<Tensor> {
    let mut data = TensorData::with_capacity(spec.datatype, 0);
    let mut row_dims: Option<Vec<usize>> = None;
    let mut count = 0;
    for (index, row) in rows.enumerate() {
        let json = json_tensor(row, &spec.name)?;
        match &row_dims {
            None => row_dims = Some(json.dims.clone()),
            Some(dims) if *dims != json.dims => {
                return Err(ServeError::bad_request(format!(
                    "input '{}': instance {index} has shape {:?}, instance 0 has {dims:?}",
                    spec.name, json.dims
                )));
            }
            _ => {}
        }
        data.append(json.into_data(spec.datatype, &spec.name)?);
        count += 1;
    }
    let mut shape = vec![count];
    shape.extend(row_dims.unwrap_or_default());
    Tensor::new(spec.name.clone(), shape, data).map_err(|e| ServeError::bad_request(e.to_string()))
}

fn decode_columns(inputs: Value, signature: &ModelSignature) -> ServeResult<Vec<Tensor>> {
    let values = split_by_input(&inputs, signature, "'inputs'")?;
    signature
        .inputs
        .iter()
        .zip(values)
        .map(|(spec, value)| {
            let json = json_tensor(value, &spec.name)?;
            let shape = json.dims.clone();
            let data = json.into_data(spec.datatype, &spec.name)?;
            Tensor::new(spec.name.clone(), shape, data)
                .map_err(|e| ServeError::bad_request(e.to_string()))
        })
        .collect()
}

/// Encodes outputs in the form matching the request.
pub fn encode(format: V1Format, outputs: &[Tensor]) -> Vec<u8> {
    let body = match format {
        V1Format::Columns => {
            let value = match outputs {
                [only] => nested(&elements(&only.data), &only.shape),
                many => Value::Object(
                    many.iter()
                        .map(|t| (t.name.clone(), nested(&elements(&t.data), &t.shape)))
                        .collect(),
                ),
            };
            serde_json::json!({ "outputs": value })
        }
        V1Format::Rows => {
            let rows = outputs
                .first()
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(0);
            let per_output: Vec<(String, Vec<Value>)> = outputs
                .iter()
                .map(|t| (t.name.clone(), split_rows(t, rows)))
                .collect();
            let predictions: Vec<Value> = (0..rows)
                .map(|r| match per_output.as_slice() {
                    [(_, only)] => only[r].clone(),
                    many => Value::Object(
                        many.iter()
                            .map(|(name, rows)| (name.clone(), rows[r].clone()))
                            .collect(),
                    ),
                })
                .collect();
            serde_json::json!({ "predictions": predictions })
        }
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One JSON value per row of `tensor` (rows are the first axis).
fn split_rows(tensor: &Tensor, rows: usize) -> Vec<Value> {
    let values = elements(&tensor.data);
    let inner = &tensor.shape[1.min(tensor.shape.len())..];
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    (0..rows)
        .map(|r| nested(&values[r * per_row..(r + 1) * per_row], inner))
        .collect()
}

fn elements(data: &TensorData) -> Vec<Value> {
    match data {
        TensorData::Bytes(v) => v
            .iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect(),
        TensorData::F32(v) => v.iter().map(|&x| json_f32(x)).collect(),
        other => {
            sluice_core::with_vec!(other, v => v.iter().map(|x| serde_json::json!(x)).collect())
        }
    }
}

/// f32 through its shortest decimal form, so 0.1f32 is written 0.1, not 0.10000000149.
fn json_f32(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Re-nests flat values into arrays of `shape`; a scalar shape yields the bare value.
fn nested(values: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] => values.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(values.to_vec()),
        [first, rest @ ..] => {
            let step = values.len().checked_div(*first).unwrap_or(0);
            Value::Array(
                (0..*first)
                    .map(|i| nested(&values[i * step..(i + 1) * step], rest))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::tensor::DataType;

    fn signature(inputs: &[(&str, i64)]) -> ModelSignature {
        ModelSignature {
            inputs: inputs
                .iter()
                .map(|(name, width)| TensorSpec {
                    name: name.to_string(),
                    datatype: DataType::F32,
                    shape: vec![-1, *width],
                })
                .collect(),
            outputs: vec![],
        }
    }

    #[test]
    fn rows_and_columns() {
        let sig = signature(&[("input", 2)]);
        let (tensors, format) = decode(br#"{"instances": [[1, 2], [3, 4]]}"#, &sig).unwrap();
        assert_eq!(format, V1Format::Rows);
        assert_eq!(tensors[0].shape, vec![2, 2]);
        let (tensors, format) = decode(br#"{"inputs": {"input": [[1, 2]]}}"#, &sig).unwrap();
        assert_eq!(format, V1Format::Columns);
        assert_eq!(tensors[0].shape, vec![1, 2]);
        let two = signature(&[("a", 1), ("b", 1)]);
        let (tensors, _) = decode(
            br#"{"instances": [{"a": [1], "b": [2]}, {"a": [3], "b": [4]}]}"#,
            &two,
        )
        .unwrap();
        assert_eq!(tensors[1].data, TensorData::F32(vec![2.0, 4.0]));
    }

    #[test]
    fn errors_name_the_problem() {
        let sig = signature(&[("input", 2)]);
        let err = |body: &str| decode(body.as_bytes(), &sig).unwrap_err().message;
        assert!(err("{}").contains("needs 'instances'"));
        assert!(err(r#"{"instances": [[1, 2], [3]]}"#).contains("instance 1 has shape [1]"));
        assert!(err(r#"{"instances": [{"x": [1, 2]}]}"#).contains("unexpected input 'x'"));
        assert!(err(r#"{"instances": 3}"#).contains("list of rows"));
    }

    #[test]
    fn encodes_predictions_per_row() {
        let label = Tensor::new("label", vec![2], TensorData::I64(vec![0, 1])).unwrap();
        let probs =
            Tensor::new("p", vec![2, 2], TensorData::F32(vec![0.9, 0.1, 0.2, 0.8])).unwrap();
        let single: Value =
            serde_json::from_slice(&encode(V1Format::Rows, std::slice::from_ref(&probs))).unwrap();
        assert_eq!(
            single,
            serde_json::json!({"predictions": [[0.9, 0.1], [0.2, 0.8]]})
        );
        let both: Value = serde_json::from_slice(&encode(V1Format::Rows, &[label, probs])).unwrap();
        assert_eq!(both["predictions"][1]["label"], 1);
        assert_eq!(both["predictions"][1]["p"], serde_json::json!([0.2, 0.8]));
    }
}

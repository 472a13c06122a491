//! Property tests over every decoder (v2 JSON, binary extension, V1, gRPC protobuf), called
//! directly: generated tensors round-trip exactly (encode, decode, compare), and generated
//! garbage (bytes, shapes, framing) never panics and is only ever a client error.
//!
//! Cases per property: proptest's default (256) or `PROPTEST_CASES`. The longer run by hand:
//! `cargo test -p sluice-protocol --lib fuzz -- --ignored` (100,000 cases per property).

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use serde_json::{Value, json};

use super::grpc::proto::{self, model_infer_request::InferInputTensor};
use super::{binary, grpc, raw, v1};
use sluice_core::InferRequest;
use sluice_core::error::ServeResult;
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

/// Small shapes (up to 3 dims of 0..4) and a tensor of any datatype filling one.
fn tensor() -> impl Strategy<Value = Tensor> {
    let shape = prop::collection::vec(0usize..4, 0..=3);
    (shape, 0..DataType::ALL.len(), "[a-z]{1,8}").prop_flat_map(|(shape, dt, name)| {
        let n: usize = shape.iter().product();
        data(DataType::ALL[dt], n).prop_map(move |data| Tensor {
            name: name.clone(),
            shape: shape.clone(),
            data,
        })
    })
}

fn data(datatype: DataType, n: usize) -> BoxedStrategy<TensorData> {
    use prop::collection::vec as v;
    // JSON cannot carry NaN or infinities; every finite value must come back bit for bit.
    let f32s = prop::num::f32::NORMAL | prop::num::f32::ZERO | prop::num::f32::SUBNORMAL;
    let f64s = prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL;
    match datatype {
        DataType::Bool => v(any::<bool>(), n).prop_map(TensorData::Bool).boxed(),
        DataType::U8 => v(any::<u8>(), n).prop_map(TensorData::U8).boxed(),
        DataType::U16 => v(any::<u16>(), n).prop_map(TensorData::U16).boxed(),
        DataType::U32 => v(any::<u32>(), n).prop_map(TensorData::U32).boxed(),
        // JSON integers travel as i64.
        DataType::U64 => v(0..=i64::MAX as u64, n).prop_map(TensorData::U64).boxed(),
        DataType::I8 => v(any::<i8>(), n).prop_map(TensorData::I8).boxed(),
        DataType::I16 => v(any::<i16>(), n).prop_map(TensorData::I16).boxed(),
        DataType::I32 => v(any::<i32>(), n).prop_map(TensorData::I32).boxed(),
        DataType::I64 => v(any::<i64>(), n).prop_map(TensorData::I64).boxed(),
        DataType::F32 => v(f32s, n).prop_map(TensorData::F32).boxed(),
        DataType::F64 => v(f64s, n).prop_map(TensorData::F64).boxed(),
        DataType::Bytes => v("[ -~]{0,6}", n)
            .prop_map(|s| TensorData::Bytes(s.into_iter().map(String::into_bytes).collect()))
            .boxed(),
    }
}

fn json_data(data: &TensorData) -> Value {
    match data {
        TensorData::Bytes(v) => json!(
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        ),
        // Through f64, which holds every f32 exactly.
        TensorData::F32(v) => json!(v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
        other => sluice_core::with_vec!(other, v => json!(v)),
    }
}

/// Tensors must come back with their names, shapes and data unchanged.
fn same(decoded: &[Tensor], sent: &[Tensor]) -> Result<(), TestCaseError> {
    prop_assert_eq!(decoded.len(), sent.len());
    for (got, want) in decoded.iter().zip(sent) {
        prop_assert_eq!(got, want);
    }
    Ok(())
}

/// Decoders may refuse anything, but only as the client's fault.
fn client_error<T>(result: ServeResult<T>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(
            !e.kind.is_server_side() && e.kind != sluice_core::error::ErrorKind::Internal,
            "{:?}: {}",
            e.kind,
            e.message
        );
    }
    Ok(())
}

fn v2_json(body: &[u8]) -> ServeResult<InferRequest> {
    binary::decode_request(body, None, "m".into(), None).map(|(r, _)| r)
}

fn cases(default: u32) -> Config {
    // PROPTEST_CASES, when set, wins (Config::default reads it).
    let from_env = std::env::var("PROPTEST_CASES").is_ok();
    Config {
        cases: if from_env {
            Config::default().cases
        } else {
            default
        },
        failure_persistence: None,
        ..Config::default()
    }
}

fn v2_json_round_trips(runner: &mut TestRunner) {
    let strategy = prop::collection::vec(tensor(), 1..4);
    runner
        .run(&strategy, |tensors| {
            let inputs: Vec<Value> = tensors
                .iter()
                .map(|t| {
                    json!({"name": t.name, "shape": t.shape, "datatype": t.datatype().as_str(),
                           "data": json_data(&t.data)})
                })
                .collect();
            let body = serde_json::to_vec(&json!({ "inputs": inputs })).unwrap();
            same(&v2_json(&body).map_err(fail)?.inputs, &tensors)
        })
        .unwrap();
}

fn binary_round_trips(runner: &mut TestRunner) {
    let strategy = (prop::collection::vec(tensor(), 1..4), any::<u64>());
    runner
        .run(&strategy, |(tensors, pick)| {
            // Each input raw or JSON, as the bits of `pick` say.
            let mut raw_part = Vec::new();
            let inputs: Vec<Value> = tensors
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut input = json!({"name": t.name, "shape": t.shape,
                                           "datatype": t.datatype().as_str()});
                    if pick >> i & 1 == 1 {
                        let bytes = raw::encode(&t.data);
                        input["parameters"] = json!({"binary_data_size": bytes.len()});
                        raw_part.extend(bytes);
                    } else {
                        input["data"] = json_data(&t.data);
                    }
                    input
                })
                .collect();
            let mut body = serde_json::to_vec(&json!({ "inputs": inputs })).unwrap();
            let header = body.len();
            body.extend(raw_part);
            let (request, _) =
                binary::decode_request(&body, Some(header), "m".into(), None).map_err(fail)?;
            same(&request.inputs, &tensors)
        })
        .unwrap();
}

fn grpc_round_trips(runner: &mut TestRunner) {
    let strategy = (prop::collection::vec(tensor(), 1..4), any::<bool>());
    runner
        .run(&strategy, |(tensors, typed)| {
            let inputs = tensors
                .iter()
                .map(|t| InferInputTensor {
                    name: t.name.clone(),
                    datatype: t.datatype().as_str().into(),
                    shape: t.shape.iter().map(|&d| d as i64).collect(),
                    contents: typed.then(|| contents(&t.data)),
                    ..Default::default()
                })
                .collect();
            let raw_input_contents = if typed {
                Vec::new()
            } else {
                tensors
                    .iter()
                    .map(|t| Bytes::from(raw::encode(&t.data)))
                    .collect()
            };
            let message = proto::ModelInferRequest {
                model_name: "m".into(),
                inputs,
                raw_input_contents,
                ..Default::default()
            };
            // Through the wire form, as a client sends it.
            let wire = message.encode_to_vec();
            let decoded = proto::ModelInferRequest::decode(wire.as_slice()).map_err(fail)?;
            same(
                &grpc::decode_request(decoded).map_err(fail)?.inputs,
                &tensors,
            )
        })
        .unwrap();
}

fn contents(data: &TensorData) -> proto::InferTensorContents {
    let mut c = proto::InferTensorContents::default();
    match data.clone() {
        TensorData::Bool(v) => c.bool_contents = v,
        TensorData::U8(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::U16(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::U32(v) => c.uint_contents = v,
        TensorData::U64(v) => c.uint64_contents = v,
        TensorData::I8(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::I16(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::I32(v) => c.int_contents = v,
        TensorData::I64(v) => c.int64_contents = v,
        TensorData::F32(v) => c.fp32_contents = v,
        TensorData::F64(v) => c.fp64_contents = v,
        TensorData::Bytes(v) => c.bytes_contents = v,
    }
    c
}

fn v1_round_trips(runner: &mut TestRunner) {
    // V1 takes its types from the signature: one FP32 input of `width` columns, given as
    // rows (instances) or as a whole tensor (inputs).
    let strategy = (1usize..5, 1usize..5).prop_flat_map(|(rows, width)| {
        (
            Just(width),
            prop::collection::vec(
                prop::collection::vec(prop::num::f32::NORMAL | prop::num::f32::ZERO, width),
                rows,
            ),
            any::<bool>(),
        )
    });
    runner
        .run(&strategy, |(width, rows, columns)| {
            let signature = ModelSignature {
                inputs: vec![TensorSpec {
                    name: "x".into(),
                    datatype: DataType::F32,
                    shape: vec![-1, width as i64],
                }],
                outputs: vec![],
            };
            let nested: Vec<Vec<f64>> = rows
                .iter()
                .map(|r| r.iter().map(|&x| f64::from(x)).collect())
                .collect();
            let body = if columns {
                json!({ "inputs": { "x": nested } })
            } else {
                json!({ "instances": nested })
            };
            let (tensors, _) =
                v1::decode(&serde_json::to_vec(&body).unwrap(), &signature).map_err(fail)?;
            let want =
                Tensor::new("x", vec![rows.len(), width], TensorData::F32(rows.concat())).unwrap();
            same(&tensors, &[want])
        })
        .unwrap();
}

fn garbage_is_a_client_error(runner: &mut TestRunner) {
    let signature = ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::F32,
            shape: vec![-1, 4],
        }],
        outputs: vec![],
    };
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..256),
        prop::option::of(0usize..300),
    );
    runner
        .run(&strategy, |(bytes, header)| {
            client_error(binary::decode_request(&bytes, header, "m".into(), None))?;
            client_error(v1::decode(&bytes, &signature))?;
            if let Ok(message) = proto::ModelInferRequest::decode(bytes.as_slice()) {
                client_error(grpc::decode_request(message))?;
            }
            Ok(())
        })
        .unwrap();
}

/// Well-formed JSON and messages with hostile shapes, datatypes and framing.
fn hostile_shapes_are_client_errors(runner: &mut TestRunner) {
    let dims = prop_oneof![
        any::<i64>(),
        -2i64..5,
        Just(1i64 << 58),
        Just(4611686018427387905),
        Just(i64::MAX)
    ];
    let datatype = prop_oneof![
        (0..DataType::ALL.len()).prop_map(|i| DataType::ALL[i].as_str().to_string()),
        Just("FP16".to_string()),
    ];
    let strategy = (
        prop::collection::vec(dims, 0..5),
        datatype,
        0usize..16,
        prop::option::of(0u64..64),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    runner
        .run(
            &strategy,
            |(shape, datatype, values, binary_size, raw_bytes)| {
                let mut input = json!({"name": "input", "shape": shape, "datatype": datatype,
                                   "data": vec![1; values]});
                if let Some(size) = binary_size {
                    input["parameters"] = json!({ "binary_data_size": size });
                    input.as_object_mut().unwrap().remove("data");
                }
                let mut body = serde_json::to_vec(&json!({ "inputs": [input] })).unwrap();
                let header = body.len();
                body.extend(&raw_bytes);
                client_error(binary::decode_request(
                    &body,
                    Some(header),
                    "m".into(),
                    None,
                ))?;
                client_error(v2_json(&body[..header]))?;
                let message = proto::ModelInferRequest {
                    model_name: "m".into(),
                    inputs: vec![InferInputTensor {
                        name: "input".into(),
                        datatype,
                        shape,
                        ..Default::default()
                    }],
                    raw_input_contents: vec![Bytes::from(raw_bytes)],
                    ..Default::default()
                };
                client_error(grpc::decode_request(message))
            },
        )
        .unwrap();
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

const PROPERTIES: [fn(&mut TestRunner); 6] = [
    v2_json_round_trips,
    binary_round_trips,
    grpc_round_trips,
    v1_round_trips,
    garbage_is_a_client_error,
    hostile_shapes_are_client_errors,
];

#[test]
fn decoders_round_trip_and_refuse_garbage_as_client_errors() {
    for property in PROPERTIES {
        property(&mut TestRunner::new(cases(256)));
    }
}

/// The long run, by hand: `cargo test -p sluice-protocol --lib fuzz -- --ignored`.
#[test]
#[ignore = "long fuzz run (100,000 cases per property); run by hand"]
fn long_fuzz() {
    for property in PROPERTIES {
        property(&mut TestRunner::new(cases(100_000)));
    }
}

//! Triton's binary tensor data extension over HTTP, end to end: framed requests and answers on
//! real sockets, and the 400s malformed framing gets.

use crate::common::*;
use serde_json::{Value, json};
use sluice_core::tensor::{DataType, TensorData};
use sluice_protocol::raw;
use sluice_runtime::RuntimeChoice;

/// JSON header + raw bytes, and the header's length.
fn framed(header: &Value, binary: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let length = body.len();
    body.extend_from_slice(binary);
    (body, length)
}

async fn post_framed(
    server: &TestServer,
    path: &str,
    body: Vec<u8>,
    header_length: usize,
) -> reqwest::Response {
    server
        .client
        .post(server.url(path))
        .header("Inference-Header-Content-Length", header_length.to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("POST")
}

fn floats(fixture: &Value) -> Vec<f32> {
    fixture["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_in_binary_out_matches_onnxruntime() {
    let server = TestServer::start(test_config(&bench_repo(), RuntimeChoice::Tract)).await;
    let fixture = read_json(&fixtures().join("bench/mlp_v2_request_b8.json"));
    let expected = read_json(&fixtures().join("bench/mlp_v2_expected_b8.json"));
    let data = raw::encode(&TensorData::F32(floats(&fixture)));
    let header = json!({
        "id": "b8",
        "inputs": [{"name": "input", "shape": [8, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}},
                    {"name": "probabilities", "parameters": {"binary_data": false}}],
    });
    let (body, length) = framed(&header, &data);
    let response = post_framed(&server, "/v2/models/mlp/infer", body, length).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let mut answer: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    assert_eq!(answer["model_version"], "2");
    assert_eq!(answer["id"], "b8");
    // `label` came raw, `probabilities` as JSON.
    let label = &answer["outputs"][0];
    assert_eq!(label["parameters"]["binary_data_size"], 64);
    assert!(label.get("data").is_none());
    let labels = raw::decode("label", DataType::I64, &[8], &bytes[json_length..]).unwrap();
    let TensorData::I64(labels) = labels else {
        unreachable!()
    };
    answer["outputs"][0]["data"] = json!(labels);
    assert_outputs_match(&answer, &expected, 1e-5, "binary mlp b8");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_a_clear_400() {
    let server = TestServer::start(test_config(&bench_repo(), RuntimeChoice::Tract)).await;
    let path = "/v2/models/mlp/infer";
    let input = |size: usize, shape: Value| {
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                           "parameters": {"binary_data_size": size}}]})
    };
    let cases: Vec<(Vec<u8>, usize, &str)> = vec![
        {
            let (body, length) = framed(&input(256, json!([1, 64])), &[0; 256]);
            (body, length + 300, "Inference-Header-Content-Length is")
        },
        {
            let (body, length) = framed(&input(256, json!([1, 64])), &[0; 200]);
            (
                body,
                length,
                "input 'input': binary_data_size is 256 bytes but only 200 bytes",
            )
        },
        {
            let (body, length) = framed(&input(256, json!([1, 64])), &[0; 260]);
            (body, length, "add up to 256 bytes, but 260 bytes follow")
        },
        {
            let (body, length) = framed(&input(252, json!([1, 64])), &[0; 252]);
            (
                body,
                length,
                "input 'input': shape [1,64] of FP32 needs 256 bytes",
            )
        },
    ];
    for (body, length, message) in cases {
        let response = post_framed(&server, path, body, length).await;
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{error}");
        let text = error["error"].as_str().unwrap();
        assert!(
            text.contains(message),
            "{text:?} should contain {message:?}"
        );
    }
    let response = server
        .client
        .post(server.url(path))
        .header("Inference-Header-Content-Length", "ten")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_tensors_use_length_prefixes() {
    let server = TestServer::start(test_config(&examples_repo(), RuntimeChoice::Tract)).await;
    let fixture = read_json(&fixtures().join("examples/types_v1_request_b1.json"));
    let expected = read_json(&fixtures().join("examples/types_v1_expected_b1.json"));
    // Every input raw; BYTES as 4-byte little-endian lengths and the bytes.
    let mut inputs = Vec::new();
    let mut binary = Vec::new();
    for input in fixture["inputs"].as_array().unwrap() {
        let datatype = DataType::parse(input["datatype"].as_str().unwrap()).unwrap();
        let values = input["data"].as_array().unwrap();
        let data = match datatype {
            DataType::F64 => TensorData::F64(values.iter().map(|v| v.as_f64().unwrap()).collect()),
            DataType::I32 => {
                TensorData::I32(values.iter().map(|v| v.as_i64().unwrap() as i32).collect())
            }
            DataType::Bool => {
                TensorData::Bool(values.iter().map(|v| v.as_bool().unwrap()).collect())
            }
            DataType::Bytes => TensorData::Bytes(
                values
                    .iter()
                    .map(|v| v.as_str().unwrap().as_bytes().to_vec())
                    .collect(),
            ),
            other => panic!("unexpected {other}"),
        };
        let bytes = raw::encode(&data);
        let mut input = input.clone();
        input.as_object_mut().unwrap().remove("data");
        input["parameters"] = json!({"binary_data_size": bytes.len()});
        inputs.push(input);
        binary.extend(bytes);
    }
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}});
    let (body, length) = framed(&header, &binary);
    let response = post_framed(&server, "/v2/models/types/infer", body, length).await;
    assert_eq!(response.status(), 200);
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    let tag = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["name"] == "tag_out")
        .unwrap();
    let mut offset = json_length;
    for (i, output) in answer["outputs"].as_array().unwrap().iter().enumerate() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        if i == tag {
            let data = raw::decode(
                "tag_out",
                DataType::Bytes,
                &[1, 1],
                &bytes[offset..offset + size],
            )
            .unwrap();
            let want = expected["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == "tag_out")
                .unwrap();
            assert_eq!(
                data,
                TensorData::Bytes(vec![want["data"][0].as_str().unwrap().as_bytes().to_vec()])
            );
        }
        offset += size;
    }
    assert_eq!(offset, bytes.len());
    server.stop().await;
}

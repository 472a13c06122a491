//! V1 / TF-Serving predict, end to end.

use crate::common::*;
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

fn rows(request: &Value, width: usize) -> Vec<Value> {
    request["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .chunks(width)
        .map(|r| Value::Array(r.to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_instances_and_inputs() {
    let server = TestServer::start(test_config(&examples_repo(), RuntimeChoice::Auto)).await;
    let request = read_json(&fixtures().join("examples/credit_v1_request_b4.json"));
    let expected = read_json(&fixtures().join("examples/credit_v1_expected_b4.json"));
    let labels = &expected["outputs"][0]["data"];
    let probs = expected["outputs"][1]["data"].as_array().unwrap();

    // Row format: one prediction object per instance, one member per output.
    let (status, body) = server
        .post_json(
            "/v1/models/credit/versions/1:predict",
            &json!({"instances": rows(&request, 10)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 4);
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(p["label"], labels[i]);
        let got = p["probabilities"][1].as_f64().unwrap();
        let want = probs[i * 2 + 1].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "row {i}: {got} vs {want}");
    }

    // Columnar format, inputs keyed by name.
    let (status, body) = server
        .post_json(
            "/v1/models/credit/versions/1:predict",
            &json!({"inputs": {"input": rows(&request, 10)}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(&body["outputs"]["label"], labels);
    assert_eq!(
        body["outputs"]["probabilities"].as_array().unwrap().len(),
        4
    );

    // Multi-input model with named instances and strings.
    let instance =
        json!({"x_fp64": [1.5, 2.0, -3.0], "x_i32": [1, 2], "flag": [true], "tag": ["a"]});
    let (status, body) = server
        .post_json(
            "/v1/models/types:predict",
            &json!({"instances": [instance.clone(), instance]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["predictions"][1]["fp64_doubled"],
        json!([3.0, 4.0, -6.0])
    );
    assert_eq!(body["predictions"][0]["i32_plus1"], json!([2, 3]));
    assert_eq!(body["predictions"][0]["flag_not"], json!([false]));
    assert_eq!(body["predictions"][0]["tag_out"], json!(["a"]));

    // Errors.
    let (status, body) = server
        .post_json("/v1/models/credit:predict", &json!({"instances": [[1, 2]]}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected shape [-1,10], got [1,2]"),
        "{body}"
    );
    let (status, _) = server
        .post_json("/v1/models/nope:predict", &json!({"instances": [[1]]}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .post_json("/v1/models/credit:explain", &json!({"instances": [[1]]}))
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

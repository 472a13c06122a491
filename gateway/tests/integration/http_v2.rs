//! KServe v2 over HTTP, end to end: real sockets, real models, both runtimes.

use crate::common::*;
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

/// Bench models: onnxruntime's reference outputs, 1e-5 tolerance, on every runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_models_match_onnxruntime() {
    for runtime in runtimes() {
        let server = TestServer::start(test_config(&bench_repo(), runtime)).await;
        let cases = [
            ("churn", None, "churn"),
            ("mlp", Some(1), "mlp"),
            ("mlp", Some(2), "mlp_v2"),
            ("mlp", None, "mlp_v2"), // unversioned requests go to the newest version
        ];
        for (model, version, stem) in cases {
            if runtime == RuntimeChoice::Tract && model == "churn" {
                assert_tree_classifier_refused(&server, model).await;
                continue;
            }
            for batch in [1, 8] {
                let request =
                    std::fs::read(fixtures().join(format!("bench/{stem}_request_b{batch}.json")))
                        .unwrap();
                let expected =
                    read_json(&fixtures().join(format!("bench/{stem}_expected_b{batch}.json")));
                let path = match version {
                    Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
                    None => format!("/v2/models/{model}/infer"),
                };
                let (status, body) = server.post(&path, request).await;
                let context = format!("{runtime:?} {path} b{batch}");
                assert_eq!(status, 200, "{context}: {body}");
                assert_eq!(body["model_name"], model);
                assert_outputs_match(&body, &expected, 1e-5, &context);
            }
        }
        server.stop().await;
    }
}

/// tract mislabels two-class tree ensembles: such a model is refused with the reason, never
/// served with wrong labels.
async fn assert_tree_classifier_refused(server: &TestServer, model: &str) {
    let (status, body) = server.get(&format!("/v2/models/{model}/ready")).await;
    assert_eq!(status, 404, "{body}");
    let failures = server.server.as_ref().unwrap().models.failures();
    let reason = failures.get(model).expect("load failure recorded");
    assert!(reason.contains("mislabelled by tract"), "{reason}");
}

/// The project's example models, every datatype they use, on every runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_models_match_onnxruntime() {
    for runtime in runtimes() {
        let server = TestServer::start(test_config(&examples_repo(), runtime)).await;
        for (model, version) in [("credit", 1), ("credit", 2), ("digits", 1), ("types", 1)] {
            if runtime == RuntimeChoice::Tract && model == "credit" {
                assert_tree_classifier_refused(&server, model).await;
                continue;
            }
            for batch in [1, 4] {
                let stem = format!("examples/{model}_v{version}");
                let request =
                    std::fs::read(fixtures().join(format!("{stem}_request_b{batch}.json")))
                        .unwrap();
                let expected =
                    read_json(&fixtures().join(format!("{stem}_expected_b{batch}.json")));
                let path = format!("/v2/models/{model}/versions/{version}/infer");
                let (status, body) = server.post(&path, request).await;
                let context = format!("{runtime:?} {path} b{batch}");
                assert_eq!(status, 200, "{context}: {body}");
                assert_eq!(body["model_version"], version.to_string());
                assert_outputs_match(&body, &expected, 1e-5, &context);
            }
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata() {
    let server = TestServer::start(test_config(&examples_repo(), RuntimeChoice::Auto)).await;
    assert_eq!(
        server.get("/v2/health/live").await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        server.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );

    let (status, meta) = server.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "sluice");

    let (status, meta) = server.get("/v2/models/credit").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "credit");
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 10]}])
    );
    let outputs: Vec<&str> = meta["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(outputs, ["label", "probabilities"]);
    assert_eq!(meta["outputs"][0]["datatype"], "INT64");

    let (status, meta) = server.get("/v2/models/credit/versions/1").await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["1"]));

    let (status, types) = server.get("/v2/models/types").await;
    assert_eq!(status, 200);
    let datatypes: Vec<&str> = types["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["datatype"].as_str().unwrap())
        .collect();
    assert_eq!(datatypes, ["FP64", "INT32", "BOOL", "BYTES"]);

    assert_eq!(server.get("/v2/models/credit/ready").await.0, 200);
    assert_eq!(
        server.get("/v2/models/credit/versions/2/ready").await.0,
        200
    );
    let (status, body) = server.get("/v2/models/nope/ready").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "unknown model 'nope'")
    );
    let (status, body) = server.get("/v2/models/credit/versions/9").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no loaded version 9"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_output_selection() {
    let server = TestServer::start(test_config(&examples_repo(), RuntimeChoice::Auto)).await;
    let mut request = read_json(&fixtures().join("examples/credit_v2_request_b1.json"));
    request["id"] = json!("req-42");
    request["parameters"] = json!({"anything": "accepted"});
    request["outputs"] = json!([{"name": "probabilities"}]);
    let response = server
        .client
        .post(server.url("/v2/models/credit/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["sluice-model-version"], "2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "req-42");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["name"], "probabilities");

    // Nested data is accepted as well as flat.
    let mut nested = read_json(&fixtures().join("examples/credit_v2_request_b4.json"));
    let flat: Vec<Value> = nested["inputs"][0]["data"].as_array().unwrap().clone();
    nested["inputs"][0]["data"] = Value::Array(
        flat.chunks(10)
            .map(|row| Value::Array(row.to_vec()))
            .collect(),
    );
    let (status, body) = server
        .post_json("/v2/models/credit/versions/2/infer", &nested)
        .await;
    assert_eq!(status, 200, "{body}");
    let expected = read_json(&fixtures().join("examples/credit_v2_expected_b4.json"));
    assert_outputs_match(&body, &expected, 1e-5, "nested data");

    // The inference routes are matched by hand on the hot path; names that need decoding go
    // through the router, and reach the same handler or its JSON refusal.
    for path in [
        "/v2/models/cr%65dit/infer",
        "/v2/models/credit/versions/%32/infer",
    ] {
        let (status, body) = server.post_json(path, &nested).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_outputs_match(&body, &expected, 1e-5, path);
    }
    let (status, body) = server.post_json("/v2/models/%ff%fe/infer", &nested).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("path"), "{body}");
    let (status, body) = server.post_json("/v2/models//infer", &nested).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .post_json("/v2/models/credit/versions//infer", &nested)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("version ''"),
        "{body}"
    );
    server.stop().await;
}

/// Every malformed request gets a clear 4xx naming the problem, and the server stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let mut config = test_config(&examples_repo(), RuntimeChoice::Auto);
    config.server.max_body_size = 64 * 1024;
    let server = TestServer::start(config).await;
    let infer = "/v2/models/credit/infer";
    let input = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]});
    let row: Vec<f32> = vec![0.5; 10];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"inputs\": [".to_vec(),
            400,
            "invalid inference request JSON",
        ),
        (
            "not an object",
            b"[1,2]".to_vec(),
            400,
            "invalid inference request JSON",
        ),
        (
            "missing inputs",
            b"{}".to_vec(),
            400,
            "missing field `inputs`",
        ),
        (
            "wrong datatype",
            serde_json::to_vec(&input(json!([1, 10]), "FP64", json!(row))).unwrap(),
            400,
            "input 'input': expected datatype FP32, got FP64",
        ),
        (
            "unknown datatype",
            serde_json::to_vec(&input(json!([1, 10]), "FLOAT", json!(row))).unwrap(),
            400,
            "unknown or unsupported datatype 'FLOAT'",
        ),
        (
            "wrong shape",
            serde_json::to_vec(&input(json!([1, 11]), "FP32", json!(vec![0.5; 11]))).unwrap(),
            400,
            "input 'input': expected shape [-1,10], got [1,11]",
        ),
        (
            "data length vs shape",
            serde_json::to_vec(&input(json!([2, 10]), "FP32", json!(row))).unwrap(),
            400,
            "needs 20 values, data has 10",
        ),
        (
            "strings for numbers",
            serde_json::to_vec(&input(json!([1, 1]), "FP32", json!(["a"]))).unwrap(),
            400,
            "datatype FP32 cannot hold string values",
        ),
        (
            "missing input",
            serde_json::to_vec(&json!({"inputs": []})).unwrap(),
            400,
            "missing input 'input'",
        ),
        (
            "extra input",
            serde_json::to_vec(&json!({"inputs": [
                {"name": "input", "shape": [1, 10], "datatype": "FP32", "data": row},
                {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}]}))
            .unwrap(),
            400,
            "unexpected input 'extra'",
        ),
        (
            "unknown output",
            serde_json::to_vec(&json!({"inputs": [
                {"name": "input", "shape": [1, 10], "datatype": "FP32", "data": row}],
                "outputs": [{"name": "score"}]}))
            .unwrap(),
            400,
            "unknown output 'score'",
        ),
        (
            "body too large",
            vec![b' '; 100 * 1024],
            413,
            "larger than the limit",
        ),
    ];
    for (what, body, status, message) in cases {
        let (got, answer) = server.post(infer, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field in {answer}"));
        assert!(
            error.contains(message),
            "{what}: '{error}' does not contain '{message}'"
        );
    }
    let good = serde_json::to_vec(&input(json!([1, 10]), "FP32", json!(row))).unwrap();
    let (status, body) = server.post("/v2/models/nope/infer", good.clone()).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "unknown model 'nope'")
    );
    let (status, body) = server
        .post("/v2/models/credit/versions/7/infer", good.clone())
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .post("/v2/models/credit/versions/x/infer", good.clone())
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/v2/models/credit/infer").await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = server.get("/nowhere").await;
    assert_eq!(status, 404, "{body}");

    // Still healthy, still answering.
    assert_eq!(server.get("/v2/health/ready").await.0, 200);
    let (status, body) = server.post(infer, good).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_requests() {
    let server = TestServer::start(test_config(&examples_repo(), RuntimeChoice::Auto)).await;
    let request = std::fs::read(fixtures().join("examples/digits_v1_request_b4.json")).unwrap();
    for _ in 0..3 {
        assert_eq!(
            server
                .post("/v2/models/digits/infer", request.clone())
                .await
                .0,
            200
        );
    }
    let bad = br#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    assert_eq!(
        server.post("/v2/models/digits/infer", bad.to_vec()).await.0,
        400
    );

    let text = server.metrics_text().await;
    let value = |series: &str| -> f64 {
        series_value(&text, series)
            .unwrap_or_else(|| panic!("no line starting with {series} in:\n{text}"))
    };
    // Other tests in this process may serve digits too: at least our requests are counted.
    assert!(
        value(
            r#"sluice_requests_total{model="digits",version="1",variant="primary",protocol="v2_json",outcome="ok"}"#
        ) >= 3.0
    );
    assert!(
        value(
            r#"sluice_requests_total{model="digits",version="1",variant="primary",protocol="v2_json",outcome="bad_request"}"#
        ) >= 1.0
    );
    assert!(value(r#"sluice_request_rows_sum{model="digits",version="1"}"#) >= 12.0);
    assert!(
        text.contains("# TYPE sluice_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_model_versions_loaded{model="credit"} 2"#),
        "{text}"
    );
    server.stop().await;
}

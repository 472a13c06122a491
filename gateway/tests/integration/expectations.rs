//! Data expectations end to end, on the credit model (a LightGBM ensemble served by sluice's
//! own tree evaluator, so no ONNX Runtime needed): a rejected request is a 400 naming input,
//! row, feature and rule (over v2 JSON, V1 and gRPC) and runs nothing; a flagged one is served unchanged, counted in
//! /metrics and marked in its file prediction-log record; rules derived from a profile that
//! `sluice profile` (the binary) wrote hold at the training range plus the margin; a table that
//! does not fit the model refuses the load and the served version stays.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

const FEATURES: &str =
    r#"features = ["income", "debt", "tenure", "age", "f4", "f5", "f6", "f7", "f8", "plan"]"#;

/// A repository holding credit v1 as `name`: metrics are process-wide and other tests
/// serve credit too, so each test counts on a model of its own.
fn repo_with(name: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join(name).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        examples_repo().join("credit/1/model.onnx"),
        dir.join("model.onnx"),
    )
    .unwrap();
    repo
}

/// The model's `model.toml`: its input declared with feature names, then `table`.
fn write_model_toml(repo: &Path, name: &str, table: &str) {
    let text = format!(
        "inputs = [{{ name = \"input\", datatype = \"FP32\", shape = [-1, 10], {FEATURES} }}]\n\n\
         [expectations]\n{table}"
    );
    std::fs::write(repo.join(name).join("model.toml"), text).unwrap();
}

/// What an FP32 value is in a JSON record: its shortest decimal form.
fn shortest(x: f32) -> f64 {
    x.to_string().parse().unwrap()
}

fn request(rows: &[[f32; 10]]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "input", "shape": [rows.len(), 10], "datatype": "FP32", "data": data}]})
}

fn examples(name: &str) -> Value {
    read_json(&fixtures().join("examples").join(name))
}

/// A `[rows, 10]` request's rows, from a fixture.
fn fixture_rows(name: &str) -> Vec<[f32; 10]> {
    let data = examples(name)["inputs"][0]["data"].clone();
    let values: Vec<f32> = serde_json::from_value(data).unwrap();
    values
        .chunks(10)
        .map(|c| <[f32; 10]>::try_from(c).unwrap())
        .collect()
}

async fn start(repo: &Path, log: Option<&Path>) -> TestServer {
    let mut config = test_config(repo, RuntimeChoice::Auto);
    if let Some(dir) = log {
        config.prediction_log.sink = sluice::predlog::SinkChoice::File;
        config.prediction_log.file.path = dir.join("predictions.jsonl");
        config.prediction_log.file.events_path = dir.join("events.jsonl");
    }
    TestServer::start(config).await
}

fn infer(model: &str) -> String {
    format!("/v2/models/{model}/infer")
}

fn violations(model: &str, feature: &str, rule: &str) -> String {
    format!(
        "sluice_expectation_violations_total{{model=\"{model}\",version=\"1\",feature=\"{feature}\",rule=\"{rule}\"}}"
    )
}

fn requests(model: &str, outcome: &str) -> String {
    format!(
        "sluice_requests_total{{model=\"{model}\",version=\"1\",variant=\"primary\",protocol=\"v2_json\",outcome=\"{outcome}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_names_the_feature_row_and_rule_and_runs_nothing() {
    const M: &str = "credit_reject";
    let repo = repo_with(M);
    write_model_toml(
        repo.path(),
        M,
        "on_violation = \"reject\"\n[expectations.features.tenure]\nmin = -10\nmax = 96.5\n",
    );
    let server = start(repo.path(), None).await;
    let good = examples("credit_v1_request_b4.json");
    let (status, body) = server.post_json(&infer(M), &good).await;
    assert_eq!(status, 200, "{body}");
    assert_outputs_match(
        &body,
        &examples("credit_v1_expected_b4.json"),
        1e-5,
        "clean",
    );
    let metrics = server.metrics_text().await;
    let runs_line =
        format!("sluice_inference_duration_seconds_count{{model=\"{M}\",version=\"1\"}}");
    let runs = series_value(&metrics, &runs_line);
    assert!(runs.is_some(), "{metrics}");
    assert_eq!(
        series_value(&metrics, &violations(M, "tenure", "max")),
        Some(0.0)
    );

    let mut rows = fixture_rows("credit_v1_request_b4.json");
    rows[3][2] = 1200.0;
    let (status, body) = server.post_json(&infer(M), &request(&rows)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "input 'input' row 3 feature 'tenure': 1200 is above the expected maximum 96.5 \
         (model.toml expectations)"
    );
    // V1 goes through the same door.
    let instances: Vec<Vec<f32>> = rows.iter().map(|r| r.to_vec()).collect();
    let (status, body) = server
        .post_json(
            &format!("/v1/models/{M}:predict"),
            &json!({ "instances": instances }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("row 3 feature 'tenure'"),
        "{body}"
    );

    // And gRPC, with raw inputs: INVALID_ARGUMENT, the same message.
    let status = grpc_infer(&server, M, &rows).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("row 3 feature 'tenure': 1200 is above"),
        "{status:?}"
    );

    // Counted as client errors and violations; the model never ran.
    let metrics = server.metrics_text().await;
    assert_eq!(
        series_value(&metrics, &requests(M, "bad_request")),
        Some(1.0)
    );
    assert_eq!(
        series_value(&metrics, &violations(M, "tenure", "max")),
        Some(3.0)
    );
    assert_eq!(series_value(&metrics, &runs_line), runs);
    // And nothing else changed: the same version answers the clean request as before.
    let (status, body) = server.post_json(&infer(M), &good).await;
    assert_eq!(status, 200, "{body}");
    assert_outputs_match(
        &body,
        &examples("credit_v1_expected_b4.json"),
        1e-5,
        "after",
    );
    server.stop().await;
}

/// A KServe v2 gRPC ModelInfer of `rows`, the input as raw contents.
async fn grpc_infer(
    server: &TestServer,
    model: &str,
    rows: &[[f32; 10]],
) -> Result<sluice_protocol::grpc::proto::ModelInferResponse, tonic::Status> {
    use sluice_protocol::grpc::proto;
    use sluice_protocol::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    let addr = server.server.as_ref().expect("running").grpc_addr;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connect");
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let request = proto::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows.len() as i64, 10],
            ..Default::default()
        }],
        raw_input_contents: vec![
            sluice_protocol::raw::encode(&sluice_core::tensor::TensorData::F32(data)).into(),
        ],
        ..Default::default()
    };
    client
        .model_infer(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The prediction-log records written so far, once at least `n` are there.
async fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_serves_counts_and_marks_the_log_record() {
    const M: &str = "credit_flag";
    let repo = repo_with(M);
    // The fixture's own rows break it: tenure (column 2) is above 0 in rows 0, 2 and 3.
    write_model_toml(
        repo.path(),
        M,
        "on_violation = \"flag\"\n[expectations.features.tenure]\nmax = 0\n",
    );
    let logs = tempfile::tempdir().unwrap();
    let server = start(repo.path(), Some(logs.path())).await;
    let fixture = examples("credit_v1_request_b4.json");
    let mut tagged = fixture.clone();
    tagged["id"] = json!("flagged-1");
    let (status, body) = server.post_json(&infer(M), &tagged).await;
    assert_eq!(status, 200, "{body}");
    assert_outputs_match(
        &body,
        &examples("credit_v1_expected_b4.json"),
        1e-5,
        "flagged",
    );
    let clean = request(&[[0.0; 10]]);
    let (status, body) = server.post_json(&infer(M), &clean).await;
    assert_eq!(status, 200, "{body}");

    let metrics = server.metrics_text().await;
    assert_eq!(
        series_value(&metrics, &violations(M, "tenure", "max")),
        Some(3.0)
    );
    assert_eq!(series_value(&metrics, &requests(M, "ok")), Some(2.0));

    let records = records(&logs.path().join("predictions.jsonl"), 2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let flagged = records
        .iter()
        .find(|r| r["request_id"] == "flagged-1")
        .expect("the flagged request's record");
    assert_eq!(flagged["status"], "ok");
    let rows = fixture_rows("credit_v1_request_b4.json");
    let tenure = |row: usize| {
        json!({"row": row, "feature": "tenure", "rule": "max",
                                      "value": shortest(rows[row][2])})
    };
    assert_eq!(
        flagged["expectations"],
        json!({"violations": 3, "first": [tenure(0), tenure(2), tenure(3)]})
    );
    let other = records
        .iter()
        .find(|r| r["request_id"] != "flagged-1")
        .unwrap();
    assert!(other.get("expectations").is_none(), "{other}");
    server.stop().await;
}

/// A training sample for the credit model: column j runs over [-5, 5]; `plan` (the last)
/// holds the codes 0, 1, 2; `debt` has a missing value.
fn write_sample(path: &Path) {
    let mut text = String::new();
    for i in 0..300 {
        let x = -5.0 + 10.0 * f64::from(i) / 299.0;
        let mut row: Vec<String> = (0..9).map(|_| format!("{x}")).collect();
        if i == 7 {
            row[1] = "nan".into();
        }
        row.push(format!("{}", i % 3));
        text.push_str(&row.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn run_profile(repo: &Path, model: &str, sample: &Path) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["profile", "--model-repository"])
        .arg(repo)
        .args(["--model", model, "--version", "1", "--sample"])
        .arg(sample)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sluice profile failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_derived_from_the_profile_hold() {
    const M: &str = "credit_derived";
    let repo = repo_with(M);
    write_model_toml(
        repo.path(),
        M,
        "on_violation = \"reject\"\nderive = \"profile\"\nmargin = 0.1\n",
    );
    let sample = repo.path().join("sample.csv");
    write_sample(&sample);
    let (dir, sample_path) = (repo.path().to_path_buf(), sample.clone());
    tokio::task::spawn_blocking(move || run_profile(&dir, M, &sample_path))
        .await
        .unwrap();
    let profile = read_json(&repo.path().join(M).join("1/profile.json"));
    assert_eq!(profile["features"][1]["nan_rows"], 1);
    assert_eq!(profile["features"][0]["nan_rows"], 0);
    assert_eq!(
        profile["features"][9]["distinct_values"],
        json!([0.0, 1.0, 2.0])
    );
    assert!(profile["features"][0].get("distinct_values").is_none());

    let server = start(repo.path(), None).await;
    // The training range [-5, 5] widened by 10 % of its width: [-6, 6].
    let mut edge = [6.0f32; 10];
    edge[9] = 2.0;
    edge[0] = -6.0;
    let (status, body) = server.post_json(&infer(M), &request(&[edge])).await;
    assert_eq!(status, 200, "{body}");
    let cases = [
        (
            3,
            6.5,
            "input 'input' row 1 feature 'age': 6.5 is above the expected maximum 6 (training \
             range -5 to 5 in profile.json, widened by margin 0.1)",
        ),
        (
            0,
            f32::NAN,
            "input 'input' row 1 feature 'income': NaN (a missing value) is not expected (the \
             training sample in profile.json had none)",
        ),
        (
            9,
            1.5,
            "input 'input' row 1 feature 'plan': 1.5 is not one of the expected values [0, 1, 2] \
             (the training sample's values, profile.json)",
        ),
    ];
    for (column, value, message) in cases {
        let mut bad = edge;
        bad[column] = value;
        // NaN is not JSON: the binary extension carries it.
        let (status, body) = post_binary(&server, M, &[edge, bad]).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], message);
    }
    // debt had a missing value in training: NaN passes.
    let mut missing = edge;
    missing[1] = f32::NAN;
    let (status, body) = post_binary(&server, M, &[missing]).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

/// A v2 request with its one input in Triton's binary tensor extension.
async fn post_binary(server: &TestServer, model: &str, rows: &[[f32; 10]]) -> (u16, Value) {
    let header = serde_json::to_vec(&json!({"inputs": [{
        "name": "input", "shape": [rows.len(), 10], "datatype": "FP32",
        "parameters": {"binary_data_size": rows.len() * 40}
    }]}))
    .unwrap();
    let mut body = header.clone();
    for v in rows.iter().flatten() {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let response = server
        .client
        .post(server.url(&infer(model)))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len().to_string())
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    // A 200 answer is a JSON header and binary outputs; an error is plain JSON.
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_fit_refuses_the_load() {
    const M: &str = "credit_refused";
    let repo = repo_with(M);
    write_model_toml(
        repo.path(),
        M,
        "[expectations.features.tenure]\nmax = 96.5\n",
    );
    let server = start(repo.path(), None).await;
    let good = examples("credit_v1_request_b1.json");
    assert_eq!(server.post_json(&infer(M), &good).await.0, 200);

    let load = &format!("/v2/repository/models/{M}/load");
    write_model_toml(
        repo.path(),
        M,
        "[expectations.features.tenur]\nmax = 96.5\n",
    );
    let (status, body) = server.admin_post(load, None).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("expectations.features: no feature 'tenur' in input 'input'"),
        "{body}"
    );
    write_model_toml(
        repo.path(),
        M,
        "[expectations.features.tenure]\nmin = 5\nmax = 1\n",
    );
    let (status, body) = server.admin_post(load, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expectations.features.tenure: min 5 is above max 1"),
        "{body}"
    );
    write_model_toml(repo.path(), M, "derive = \"profile\"\n");
    let (status, body) = server.admin_post(load, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("version 1 has no profile.json"),
        "{body}"
    );
    // The version loaded first still serves.
    assert_eq!(server.post_json(&infer(M), &good).await.0, 200);
    server.stop().await;
}

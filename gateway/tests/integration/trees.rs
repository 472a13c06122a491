//! The native tree runtime end to end: the `sluice` binary with no ONNX Runtime in the
//! process serves the README's `credit` answer and the bench churn model, and a LightGBM
//! `model.txt` version folder serves the library's own predictions.
//!
//! How ONNX Runtime is hidden: the child process runs without `ORT_DYLIB_PATH`, from a scratch
//! working directory (no `.ort/` there), and with `runtime.allow_ort = false`, because the
//! search above the executable would otherwise still find the checkout's `.ort/`. The test
//! then reads `/proc/<pid>/maps` to check that no `libonnxruntime` was mapped at all.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice::drift::sample;
use sluice_runtime::RuntimeChoice;

/// A `sluice serve` child; killed when dropped.
struct Served {
    child: Child,
    address: String,
    /// The log lines printed until it was ready (the load lines among them).
    log: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_without_ort(repo: &Path, scratch: &Path) -> Served {
    let config = scratch.join("sluice.toml");
    std::fs::write(
        &config,
        "[server]\nhost = \"127.0.0.1\"\n[runtime]\nallow_ort = false\ninstances = 1\n\
         [prediction_log]\nsink = \"none\"\n",
    )
    .unwrap();
    let mut child = serve_command(&config, repo)
        .env_remove("ORT_DYLIB_PATH")
        .current_dir(scratch)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    let address = loop {
        let line = lines
            .next()
            .expect("the server exits before it is ready")
            .unwrap();
        if line.contains("sluice is ready")
            && let Some(rest) = line.split("http=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        log.push(line);
        assert!(Instant::now() < deadline, "server did not become ready");
    };
    // Keep draining its output so that a full pipe never blocks it.
    std::thread::spawn(move || lines.for_each(drop));
    Served {
        child,
        address,
        log,
    }
}

fn post(address: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{address}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

#[test]
fn serves_credit_and_churn_with_no_onnx_runtime() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    for version in [1, 2] {
        copy_version(&examples_repo(), &repo, "credit", version, version);
    }
    std::fs::copy(
        examples_repo().join("credit/model.toml"),
        repo.join("credit/model.toml"),
    )
    .unwrap();
    copy_version(&bench_repo(), &repo, "churn", 1, 1);
    let served = serve_without_ort(&repo, scratch.path());

    let maps = std::fs::read_to_string(format!("/proc/{}/maps", served.child.id())).unwrap();
    assert!(!maps.contains("onnxruntime"), "ONNX Runtime is mapped");
    let log = served.log.join("\n");
    assert!(log.contains("ONNX Runtime unavailable"), "{log}");
    let loaded: Vec<&String> = served
        .log
        .iter()
        .filter(|l| l.contains("model version loaded"))
        .collect();
    assert_eq!(loaded.len(), 3, "{log}");
    for line in loaded {
        assert!(line.contains("runtime=\"trees\""), "{line}");
        assert!(line.contains("faster than ONNX Runtime"), "{line}");
    }

    // The README's first request, answered exactly as the README shows.
    let request = json!({
        "id": "r-1",
        "inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32",
                    "data": [0.1, -1.2, 0.3, 2.0, -0.5, 0.9, 1.1, -0.3, 0.0, 0.7]}]
    });
    let (status, body) = post(
        &served.address,
        "/v2/models/credit/infer",
        serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "2");
    assert_eq!(body["id"], "r-1");
    let readme = json!({"outputs": [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
         "data": [0.27464086, 0.72535914]}]});
    assert_outputs_match(&body, &readme, 1e-6, "credit, the README's request");

    let metadata: Value =
        reqwest::blocking::get(format!("http://{}/v2/models/credit", served.address))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(metadata["platform"], "sluice_trees", "{metadata}");

    for batch in [1, 8] {
        let request =
            std::fs::read(fixtures().join(format!("bench/churn_request_b{batch}.json"))).unwrap();
        let expected = read_json(&fixtures().join(format!("bench/churn_expected_b{batch}.json")));
        let (status, body) = post(&served.address, "/v2/models/churn/infer", request);
        assert_eq!(status, 200, "{body}");
        assert_outputs_match(&body, &expected, 1e-6, &format!("churn b{batch}"));
    }
}

fn trees_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/trees/tests/fixtures")
        .join(name)
}

const DECLARED: &str = "inputs = [{ name = \"input\", datatype = \"FP32\", shape = [-1, 8] }]\n";

/// A LightGBM text file as a version folder: the 200 sample rows in one request against
/// LightGBM's own probabilities (relative 1e-6), labels their first maximum; then a bad
/// declaration is a 400 on reload that names the fix, and a `model.onnx` put next to the
/// `model.txt` takes over on the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightgbm_text_version_serves_the_libraries_predictions() {
    let repo = tempfile::tempdir().unwrap();
    let version = repo.path().join("lgbm/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(trees_fixture("lgbm_binary.txt"), version.join("model.txt")).unwrap();
    std::fs::write(repo.path().join("lgbm/model.toml"), DECLARED).unwrap();
    let mut config = test_config(repo.path(), RuntimeChoice::Auto);
    config.runtime.allow_ort = false;
    let server = TestServer::start(config).await;

    let (status, metadata) = server.get("/v2/models/lgbm").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["platform"], "sluice_trees");
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 8]}])
    );

    let rows = sample::read(&trees_fixture("sample.npy")).unwrap();
    let expected = sample::read(&trees_fixture("lgbm_binary_expected.npy")).unwrap();
    assert_eq!((rows.rows, rows.columns, expected.columns), (200, 8, 2));
    // The sample has missing values (NaN), which v2 JSON cannot carry: binary input, JSON out.
    let raw: Vec<u8> = rows
        .values
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect();
    assert!(
        rows.values.iter().any(|v| v.is_nan()),
        "the sample has NaNs"
    );
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "input", "datatype": "FP32",
        "shape": [200, 8], "parameters": {"binary_data_size": raw.len()}}]}))
    .unwrap();
    let header_length = header.len();
    let body = [header, raw].concat();
    let infer = || async {
        let response = server
            .client
            .post(server.url("/v2/models/lgbm/infer"))
            .header("Inference-Header-Content-Length", header_length.to_string())
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    let (status, answer) = infer().await;
    assert_eq!(status, 200, "{answer}");
    let output = |name: &str| {
        answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name}: {answer}"))
            .clone()
    };
    let probabilities = output("probabilities");
    assert_eq!(probabilities["shape"], json!([200, 2]));
    let got: Vec<f64> = probabilities["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (i, (&ours, &lightgbm)) in got.iter().zip(&expected.values).enumerate() {
        let lightgbm = lightgbm as f32 as f64;
        assert!(
            (ours - lightgbm).abs() <= 1e-7_f64.max(1e-6 * lightgbm.abs()),
            "row {} column {}: ours {ours}, LightGBM {lightgbm}",
            i / 2,
            i % 2
        );
    }
    let labels = output("label");
    assert_eq!(labels["datatype"], "INT64");
    for (r, label) in labels["data"].as_array().unwrap().iter().enumerate() {
        let row = &expected.values[r * 2..r * 2 + 2];
        let best = if row[1] > row[0] { 1 } else { 0 };
        assert_eq!(label.as_i64(), Some(best), "label of row {r}");
    }

    // A wrong declaration: the reload is refused with the reason, the old version serves on.
    std::fs::write(
        repo.path().join("lgbm/model.toml"),
        "inputs = [{ name = \"input\", datatype = \"INT64\", shape = [-1, 8] }]\n",
    )
    .unwrap();
    let (status, refused) = server
        .admin_post("/v2/repository/models/lgbm/load", None)
        .await;
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("model.txt (a LightGBM text model) carries no input signature")
            && message.contains("must be FP32 or FP64, declared INT64"),
        "{refused}"
    );
    assert_eq!(infer().await.0, 200);

    // model.onnx takes precedence over model.txt: the reload sees a new file.
    std::fs::write(repo.path().join("lgbm/model.toml"), "").unwrap();
    std::fs::copy(
        trees_fixture("lgbm_binary.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    let (status, reloaded) = server
        .admin_post("/v2/repository/models/lgbm/load", None)
        .await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["loaded"], json!([1]), "{reloaded}");
    server.stop().await;
}

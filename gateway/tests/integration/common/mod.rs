//! Shared helpers for the end-to-end tests: start a real server on port 0, talk to it over
//! real sockets, compare outputs with reference files.
#![allow(dead_code)]

pub mod kafka;
pub mod services;

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::config::Config;
use sluice_runtime::RuntimeChoice;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn examples_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

pub fn bench_repo() -> PathBuf {
    fixtures().join("bench/repo")
}

/// Whether ONNX Runtime can be used. CI sets `SLUICE_REQUIRE_ORT=1` so that a missing library
/// fails the run instead of silently testing tract only.
pub fn ort_available() -> bool {
    let found = sluice_runtime::find_ort_library(None).is_some();
    if !found && std::env::var("SLUICE_REQUIRE_ORT").is_ok_and(|v| v == "1") {
        panic!("SLUICE_REQUIRE_ORT=1 but no ONNX Runtime library was found (scripts/fetch-ort.sh)");
    }
    found
}

/// The test suite's Python (`$VENV_PYTHON`, else `.venv/bin/python`), for the official Triton
/// client and scikit-learn. CI sets `SLUICE_REQUIRE_PYTHON=1` so that a missing environment
/// fails the run instead of skipping what needs it.
pub fn venv_python() -> Option<PathBuf> {
    let from_env = std::env::var_os("VENV_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let found = from_env.into_iter().chain([fallback]).find(|p| p.is_file());
    if found.is_none() && std::env::var("SLUICE_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!(
            "SLUICE_REQUIRE_PYTHON=1 but no Python environment was found: set VENV_PYTHON or \
             run scripts/python-deps.sh"
        );
    }
    found
}

/// The runtimes to test: tract always, ORT when present.
pub fn runtimes() -> Vec<RuntimeChoice> {
    let mut runtimes = vec![RuntimeChoice::Tract];
    if ort_available() {
        runtimes.push(RuntimeChoice::Ort);
    }
    runtimes
}

/// A config for tests: every port 0 on loopback, the given repository and runtime.
pub fn test_config(repo: &Path, runtime: RuntimeChoice) -> Config {
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.http_port = 0;
    config.server.grpc_port = 0;
    config.server.metrics_port = 0;
    config.repository.path = repo.to_path_buf();
    config.runtime.default = runtime;
    config.runtime.instances = 2;
    // Tests that check the prediction log turn it on themselves.
    config.prediction_log.sink = sluice::predlog::SinkChoice::None;
    config
}

/// A running server and a client for it; the server stops when this is dropped.
pub struct TestServer {
    pub server: Option<sluice::Server>,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let server = sluice::Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.http_addr);
        TestServer {
            server: Some(server),
            base,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        decode(response).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post(path, serde_json::to_vec(body).unwrap()).await
    }

    /// The Prometheus exposition text from the metrics listener.
    pub async fn metrics_text(&self) -> String {
        let addr = self.server.as_ref().expect("running").metrics_addr;
        let response = self
            .client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        response.text().await.expect("metrics body")
    }

    /// The value of the first exposition line starting with `series` (name and labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        series_value(&self.metrics_text().await, series)
    }

    /// A mutating admin call, with or without a bearer token.
    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        decode(request.send().await.expect("POST")).await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown();
        }
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// A scratch model repository holding copies of the given `(model, version)` folders from
/// `source`; dropped with the returned guard.
pub fn scratch_repo(source: &Path, versions: &[(&str, u64)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (model, version) in versions {
        copy_version(source, dir.path(), model, *version, *version);
    }
    dir
}

/// Copies `<source>/<model>/<from>/model.onnx` to `<repo>/<model>/<to>/model.onnx`.
pub fn copy_version(source: &Path, repo: &Path, model: &str, from: u64, to: u64) {
    let target = repo.join(model).join(to.to_string());
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(
        source.join(model).join(from.to_string()).join("model.onnx"),
        target.join("model.onnx"),
    )
    .unwrap();
}

/// The value of the first line of exposition `text` starting with `series`.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Asserts that `actual` v2 outputs match `expected` (same names, datatypes, shapes; numbers
/// within `tolerance`, everything else equal).
pub fn assert_outputs_match(actual: &Value, expected: &Value, tolerance: f64, context: &str) {
    let expected = expected["outputs"].as_array().expect("expected outputs");
    let actual = actual["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: no outputs in {actual}"));
    assert_eq!(actual.len(), expected.len(), "{context}: output count");
    for want in expected {
        let name = &want["name"];
        let got = actual
            .iter()
            .find(|o| &o["name"] == name)
            .unwrap_or_else(|| panic!("{context}: output {name} missing"));
        assert_eq!(
            got["datatype"], want["datatype"],
            "{context}: {name} datatype"
        );
        assert_eq!(got["shape"], want["shape"], "{context}: {name} shape");
        let (got, want) = (
            got["data"].as_array().unwrap(),
            want["data"].as_array().unwrap(),
        );
        assert_eq!(got.len(), want.len(), "{context}: {name} length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            match (g.as_f64(), w.as_f64()) {
                (Some(g), Some(w)) => {
                    let ok = (g - w).abs() <= tolerance * w.abs().max(1.0);
                    assert!(ok, "{context}: {name}[{i}] = {g}, expected {w}");
                }
                _ => assert_eq!(g, w, "{context}: {name}[{i}]"),
            }
        }
    }
}

/// The rows of the digits sample (`bench/mlp_sample.npy`: little-endian f32, 64 columns).
pub fn mlp_sample_rows() -> Vec<Vec<f32>> {
    let bytes = std::fs::read(fixtures().join("bench/mlp_sample.npy")).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    data.chunks(64).map(<[f32]>::to_vec).collect()
}

/// `sluice serve` as a process of its own: `config` over `repo`, every port picked by the OS,
/// info logs on a piped stdout (the ready line names the bound addresses). Add what a test
/// needs (environment, working directory), then `spawn`.
pub fn serve_command(config: &Path, repo: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .arg("--model-repository")
        .arg(repo)
        .args([
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    command
}

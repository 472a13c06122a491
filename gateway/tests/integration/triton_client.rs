//! Wire compatibility with NVIDIA's official Triton client: starts sluice on port 0 for the
//! example and the bench repositories and runs `tests/conformance/triton_conformance.py`, which
//! drives `tritonclient.http` and `tritonclient.grpc` against both listeners.
//!
//! The Python environment comes from `scripts/python-deps.sh` (`$VENV_PYTHON`, else
//! `<root>/.venv/bin/python`). Without one the test is skipped with a notice, unless
//! `SLUICE_REQUIRE_PYTHON=1` (set by scripts/test.sh and so CI), where it fails.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use sluice_runtime::RuntimeChoice;

async fn conformance(suite: &str, repo: &Path, tree_models: &[&str]) {
    let Some(python) = venv_python() else {
        eprintln!(
            "SKIPPED: triton_client {suite}: no Python environment (run scripts/python-deps.sh)"
        );
        return;
    };
    // The references are onnxruntime's outputs: serve with it when present. tract refuses the
    // tree ensembles by design, so without ORT the script leaves them out.
    let ort = ort_available();
    let runtime = if ort {
        RuntimeChoice::Ort
    } else {
        RuntimeChoice::Tract
    };
    let server = TestServer::start(test_config(repo, runtime)).await;
    let (http, grpc) = {
        let s = server.server.as_ref().expect("server running");
        (s.http_addr.to_string(), s.grpc_addr.to_string())
    };
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/triton_conformance.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .args(["--suite", suite, "--http-url", &http, "--grpc-url", &grpc]);
    if !ort {
        for model in tree_models {
            command.args(["--skip-model", model]);
        }
    }
    // The client blocks; the server keeps serving on the runtime's workers meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    server.stop().await;
    assert!(
        output.status.success(),
        "triton_conformance.py --suite {suite} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_client_on_example_models() {
    conformance("examples", &examples_repo(), &["credit"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_client_on_bench_models() {
    conformance("bench", &bench_repo(), &["churn"]).await;
}

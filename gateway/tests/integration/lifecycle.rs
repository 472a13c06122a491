//! Model control: Triton's repository API, sluice's admin API, auth, polling, and every way a
//! load can fail without changing what is served.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;
use sluice_runtime::RuntimeChoice;

const TOKEN: &str = "test-admin-token";

fn config_with_token(repo: &std::path::Path) -> sluice::Config {
    let mut config = test_config(repo, RuntimeChoice::Tract);
    config.admin.token = Some(TOKEN.into());
    config
}

async fn serving_version(server: &TestServer, model: &str) -> Option<u64> {
    let (status, view) = server.get(&format!("/admin/v1/models/{model}")).await;
    (status == 200)
        .then(|| view["serving_version"].as_u64())
        .flatten()
}

async fn infer_mlp(server: &TestServer) -> (u16, serde_json::Value) {
    let body = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    server.post("/v2/models/mlp/infer", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_picks_up_a_new_version_and_unload_stops_serving() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    std::fs::write(
        repo.path().join("mlp/model.toml"),
        "version_policy = { latest = 1 }\n",
    )
    .unwrap();
    let server = TestServer::start(config_with_token(repo.path())).await;
    assert_eq!(serving_version(&server, "mlp").await, Some(1));

    copy_version(&bench_repo(), repo.path(), "mlp", 2, 2);
    let (status, report) = server
        .admin_post("/v2/repository/models/mlp/load", Some(TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["versions"], json!([2]));
    assert_eq!(report["unloaded"], json!([1]));
    assert_eq!(serving_version(&server, "mlp").await, Some(2));
    let (status, body) = infer_mlp(&server).await;
    assert_eq!((status, body["model_version"].as_str()), (200, Some("2")));
    assert_eq!(server.get("/v2/models/mlp/versions/1/ready").await.0, 404);

    let (status, index) = server.admin_post("/v2/repository/index", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        index,
        json!([{"name": "mlp", "version": "2", "state": "READY", "reason": ""}])
    );

    let (status, _) = server
        .admin_post("/v2/repository/models/mlp/unload", Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(infer_mlp(&server).await.0, 404);
    let (_, index) = server.admin_post("/v2/repository/index", None).await;
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    assert_eq!(
        server
            .admin_post("/v2/repository/models/mlp/load", Some(TOKEN))
            .await
            .0,
        200
    );
    assert_eq!(infer_mlp(&server).await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_loads_change_nothing_and_say_why() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let server = TestServer::start(config_with_token(repo.path())).await;
    let load = "/v2/repository/models/mlp/load";

    // Auth: none, wrong, right.
    let (status, body) = server.admin_post(load, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    assert_eq!(server.admin_post(load, Some("guess")).await.0, 403);
    assert_eq!(
        server
            .admin_post("/v2/repository/models/mlp/unload", None)
            .await
            .0,
        401
    );

    // A corrupt version 3 (latest 2 would serve 3 and 2): refused, 2 keeps serving.
    let v3 = repo.path().join("mlp/3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::write(v3.join("model.onnx"), b"this is not an onnx file").unwrap();
    let (status, body) = server.admin_post(load, Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("version 3 failed to load"),
        "{body}"
    );
    assert_eq!(serving_version(&server, "mlp").await, Some(2));
    let (_, view) = server.get("/admin/v1/models/mlp").await;
    assert!(
        view["last_error"].as_str().unwrap().contains("version 3"),
        "{view}"
    );
    assert_eq!(infer_mlp(&server).await.0, 200);
    std::fs::remove_dir_all(&v3).unwrap();

    // A model file whose inputs disagree with model.toml: refused, nothing changes.
    std::fs::write(
        repo.path().join("mlp/model.toml"),
        "inputs = [{ name = \"input\", datatype = \"FP32\", shape = [-1, 12] }]\n",
    )
    .unwrap();
    let (status, body) = server.admin_post(load, Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("has shape [-1,64], declared [-1,12]"),
        "{body}"
    );
    assert_eq!(infer_mlp(&server).await.0, 200);

    // A missing model folder, and unloading a model that is not served.
    std::fs::remove_file(repo.path().join("mlp/model.toml")).unwrap();
    let (status, body) = server
        .admin_post("/v2/repository/models/ghost/load", Some(TOKEN))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .admin_post("/v2/repository/models/ghost/unload", Some(TOKEN))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "unknown model 'ghost'");

    // After all that, a good load works and clears the error.
    assert_eq!(server.admin_post(load, Some(TOKEN)).await.0, 200);
    let (_, view) = server.get("/admin/v1/models/mlp").await;
    assert_eq!(view["last_error"], serde_json::Value::Null);
    assert_eq!(view["versions"].as_array().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_loads_new_folders_but_never_half_written_files() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    let mut config = config_with_token(repo.path());
    config.repository.poll_interval = Some(Duration::from_millis(200));
    let server = TestServer::start(config).await;
    assert_eq!(serving_version(&server, "mlp").await, Some(1));

    // Write version 2 in two halves, as a slow copy would.
    let bytes = std::fs::read(bench_repo().join("mlp/2/model.onnx")).unwrap();
    let dir = repo.path().join("mlp/2");
    std::fs::create_dir_all(&dir).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    std::fs::write(dir.join("model.onnx"), first).unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("model.onnx"))
        .unwrap();
    std::io::Write::write_all(&mut file, rest).unwrap();
    drop(file);

    let deadline = Instant::now() + Duration::from_secs(10);
    while serving_version(&server, "mlp").await != Some(2) {
        assert!(Instant::now() < deadline, "version 2 was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, view) = server.get("/admin/v1/models/mlp").await;
    assert_eq!(
        view["last_error"],
        serde_json::Value::Null,
        "half-written file was loaded: {view}"
    );

    // A removed model folder stops being served.
    std::fs::remove_dir_all(repo.path().join("mlp")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while infer_mlp(&server).await.0 != 404 {
        assert!(Instant::now() < deadline, "removed model still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_cli_drives_the_admin_api() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    let server = TestServer::start(config_with_token(repo.path())).await;
    let ctl = |args: &[&str], token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("ctl").arg("--url").arg(&server.base).args(args);
        command.env_remove("SLUICE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("SLUICE_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    };
    let models = ctl(&["models"], None);
    assert!(models.status.success());
    assert!(String::from_utf8_lossy(&models.stdout).contains("\"serving_version\": 1"));
    let refused = ctl(&["load", "mlp"], None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let loaded =
        tokio::task::spawn_blocking(move || ctl_owned(&server.base, &["load", "mlp"], TOKEN))
            .await
            .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
}

fn ctl_owned(base: &str, args: &[&str], token: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("ctl")
        .arg("--url")
        .arg(base)
        .args(args)
        .env("SLUICE_ADMIN_TOKEN", token)
        .output()
        .unwrap()
}

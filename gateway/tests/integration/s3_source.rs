//! An S3 bucket as the model repository, against a real S3 API (`moto_server` from the test
//! virtualenv): serving from a bucket, a new version picked up by polling, a half-written
//! upload (a multipart upload not completed; a model whose `.sha256` does not match yet)
//! never loaded, and the bucket going away (unreachable, then gone) while serving goes on,
//! through a restart served from the cache.

use std::path::Path;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_runtime::RuntimeChoice;

use crate::common::kafka::free_port;
use crate::common::services::{ServiceGroup, venv_tool, wait_ready};
use crate::common::*;

const BUCKET: &str = "models";

struct Moto {
    _group: ServiceGroup,
    endpoint: String,
}

/// A moto S3 server on a free port; `None` (skipped) without the test virtualenv.
async fn moto(port: u16, log: &Path) -> Option<Moto> {
    let tool = venv_tool("moto_server")?;
    let mut command = std::process::Command::new(tool);
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let group = ServiceGroup::spawn("moto_server", command, log);
    let endpoint = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{endpoint}/"), Duration::from_secs(30), log).await;
    Some(Moto {
        _group: group,
        endpoint,
    })
}

fn store(endpoint: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap()
}

async fn create_bucket(endpoint: &str) {
    let status = reqwest::Client::new()
        .put(format!("{endpoint}/{BUCKET}"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "create bucket: {status}");
}

async fn put(store: &AmazonS3, key: &str, bytes: Vec<u8>) {
    store
        .put(&ObjectPath::from(key), PutPayload::from(bytes))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

fn model_bytes(version: u64) -> Vec<u8> {
    std::fs::read(bench_repo().join(format!("mlp/{version}/model.onnx"))).unwrap()
}

fn sha256_line(bytes: &[u8]) -> Vec<u8> {
    format!("{:x}  model.onnx\n", Sha256::digest(bytes)).into_bytes()
}

/// `prefix` names the source in metrics, which the tests running side by side share.
fn config(endpoint: &str, prefix: &str, cache: &Path) -> sluice::Config {
    let uri = format!("s3://{BUCKET}/{prefix}");
    let mut config = test_config(Path::new(&uri), RuntimeChoice::Tract);
    config.repository.poll_interval = Some(Duration::from_millis(300));
    let s3 = &mut config.repository.s3;
    s3.endpoint = Some(endpoint.to_string());
    s3.region = Some("us-east-1".into());
    s3.path_style = true;
    s3.access_key_id = Some("test".into());
    s3.secret_access_key = Some("test".into());
    s3.cache_dir = cache.to_path_buf();
    config
}

async fn answering_version(server: &TestServer) -> Option<String> {
    let request = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    let (status, body) = server.post("/v2/models/mlp/infer", request).await;
    (status == 200).then(|| body["model_version"].as_str().unwrap_or("").to_string())
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; answers how long it took.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn source(server: &TestServer) -> Value {
    let (status, body) = server.get("/admin/v1/sources").await;
    assert_eq!(status, 200, "{body}");
    body["sources"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_serves_and_a_new_version_is_picked_up_but_never_half_written() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(moto) = moto(free_port(), &scratch.path().join("moto.log")).await else {
        eprintln!("SKIPPED: s3 source: no moto_server (run scripts/python-deps.sh)");
        return;
    };
    create_bucket(&moto.endpoint).await;
    let bucket = store(&moto.endpoint);
    let v1 = model_bytes(1);
    put(&bucket, "prod/mlp/1/model.onnx.sha256", sha256_line(&v1)).await;
    put(&bucket, "prod/mlp/1/model.onnx", v1).await;
    let cache = scratch.path().join("cache");
    let server = TestServer::start(config(&moto.endpoint, "prod", &cache)).await;
    let (_, models) = server.get("/admin/v1/models").await;
    assert_eq!(
        answering_version(&server).await.as_deref(),
        Some("1"),
        "{models:#} {:#}",
        source(&server).await
    );
    assert!(cache.join("mlp/1/model.onnx").is_file());
    assert!(cache.join("mlp/1/.sluice-source.json").is_file());

    // A multipart upload in progress is not an object yet: nothing changes.
    let v2 = model_bytes(2);
    let mut upload = bucket
        .put_multipart(&ObjectPath::from("prod/mlp/2/model.onnx"))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(v2[..v2.len() / 2].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, model) = server.get("/admin/v1/models/mlp").await;
    assert_eq!(model["versions"].as_array().unwrap().len(), 1, "{model:#}");
    drop(upload);

    // The digest first, then a partial copy of the model: refused with the reason, v1 serves.
    put(&bucket, "prod/mlp/2/model.onnx.sha256", sha256_line(&v2)).await;
    put(
        &bucket,
        "prod/mlp/2/model.onnx",
        v2[..v2.len() / 2].to_vec(),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the partial v2 refused",
        || async {
            source(&server).await["refused"]["mlp/2"]
                .as_str()
                .is_some_and(|r| r.contains("does not match model.onnx.sha256"))
        },
    )
    .await;
    assert_eq!(answering_version(&server).await.as_deref(), Some("1"));
    assert!(
        !cache.join("mlp/2").exists(),
        "a refused version left files"
    );
    let refusals = server
        .metric("sluice_source_refused_versions_total{source=\"s3://models/prod\"}")
        .await;
    assert!(refusals.is_some_and(|n| n >= 1.0), "{refusals:?}");

    // The upload completes: picked up by polling and served.
    let uploaded = Instant::now();
    put(&bucket, "prod/mlp/2/model.onnx", v2).await;
    eventually(Duration::from_secs(10), "v2 serving", || async {
        answering_version(&server).await.as_deref() == Some("2")
    })
    .await;
    let took = uploaded.elapsed();
    let source = source(&server).await;
    println!(
        "s3: upload complete -> first answer from v2 in {:.2} s (poll 300 ms, settle 2 polls); {}",
        took.as_secs_f64(),
        source["last_change"]
    );
    assert!(source["refused"].get("mlp/2").is_none(), "{source:#}");
    assert!(source["last_error"].is_null(), "{source:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_survives_the_bucket_going_away_and_a_restart_serves_from_the_cache() {
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = scratch.path().join("moto.log");
    let Some(moto_server) = moto(port, &log).await else {
        eprintln!("SKIPPED: s3 source: no moto_server (run scripts/python-deps.sh)");
        return;
    };
    let endpoint = moto_server.endpoint.clone();
    create_bucket(&endpoint).await;
    let bucket = store(&endpoint);
    put(&bucket, "outage/mlp/1/model.onnx", model_bytes(1)).await;
    let cache = scratch.path().join("cache");
    let server = TestServer::start(config(&endpoint, "outage", &cache)).await;
    assert_eq!(answering_version(&server).await.as_deref(), Some("1"));

    // The endpoint goes away: serving goes on, the error is in the model's view and a metric.
    drop(moto_server);
    eventually(Duration::from_secs(20), "the outage reported", || async {
        let (_, model) = server.get("/admin/v1/models/mlp").await;
        model["sources"][0]["last_error"].is_string()
    })
    .await;
    let (_, model) = server.get("/admin/v1/models/mlp").await;
    println!("bucket unreachable: {}", model["sources"][0]["last_error"]);
    assert_eq!(answering_version(&server).await.as_deref(), Some("1"));
    let up = server
        .metric("sluice_source_up{source=\"s3://models/outage\"}")
        .await;
    assert_eq!(up, Some(0.0));
    server.stop().await;

    // A restart with the bucket still unreachable serves what the cache verified before.
    let started = Instant::now();
    let server = TestServer::start(config(&endpoint, "outage", &cache)).await;
    println!(
        "restart with the bucket unreachable: ready in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(answering_version(&server).await.as_deref(), Some("1"));

    // The endpoint comes back without the bucket (moto keeps nothing): still serving.
    let _moto = moto(port, &log).await.expect("moto restarts");
    eventually(
        Duration::from_secs(30),
        "the missing bucket reported",
        || async {
            source(&server).await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("NoSuchBucket") || e.contains("does not exist"))
        },
    )
    .await;
    assert_eq!(answering_version(&server).await.as_deref(), Some("1"));
    server.stop().await;
}

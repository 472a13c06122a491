//! Overload: a tiny queue in front of a slow model. Requests beyond the queue are refused at
//! once with 503 and Retry-After; admitted requests still succeed.

use std::sync::Arc;

use crate::common::*;
use serde_json::json;
use sluice_runtime::RuntimeChoice;

fn slow_repo() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("slow/1")).unwrap();
    std::fs::copy(
        fixtures().join("candidates/slow/model.onnx"),
        repo.path().join("slow/1/model.onnx"),
    )
    .unwrap();
    repo
}

/// Sends `n` concurrent 16-row requests; returns (admitted, refused) and checks every refusal.
async fn flood(server: &Arc<TestServer>, n: usize, refusal: &'static str) -> (usize, usize) {
    let rows = 16;
    let body = json!({"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": vec![0.5f32; rows * 64]}]});
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (server, body) = (server.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let response = server
                .client
                .post(server.url("/v2/models/slow/infer"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let answer: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, answer)
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let (status, retry_after, answer) = task.await.unwrap();
        match status {
            200 => {
                assert_eq!(answer["outputs"][0]["shape"], json!([rows]));
                admitted += 1;
            }
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert!(
                    answer["error"].as_str().unwrap().contains(refusal),
                    "{answer}"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other}: {answer}"),
        }
    }
    (admitted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_in_flight_limit_refuses_the_excess() {
    let repo = slow_repo();
    let mut config = test_config(repo.path(), RuntimeChoice::Tract);
    config.runtime.instances = 1;
    config.server.max_concurrent_requests = 2;
    let server = Arc::new(TestServer::start(config).await);
    let (admitted, refused) = flood(&server, 48, "too many requests in flight").await;
    assert!(
        admitted >= 2 && refused > 0,
        "admitted {admitted}, refused {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_503_with_retry_after_and_admitted_requests_succeed() {
    let repo = slow_repo();
    let mut config = test_config(repo.path(), RuntimeChoice::Tract);
    config.runtime.instances = 1;
    config.runtime.queue_capacity = 2;
    let server = Arc::new(TestServer::start(config).await);

    let (admitted, refused) = flood(&server, 48, "overloaded").await;
    assert!(admitted >= 3, "only {admitted} admitted");
    assert!(
        refused > 0,
        "a queue of 2 absorbed 48 concurrent slow requests"
    );
    let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]}]});
    // Once the flood has passed, the model answers again.
    let (status, _) = server.post_json("/v2/models/slow/infer", &body).await;
    assert_eq!(status, 200);
}

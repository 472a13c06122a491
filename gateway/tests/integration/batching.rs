//! Dynamic batching on a real model: concurrent single-row requests are stacked into shared
//! runs, and every request still gets exactly its own answer.

use std::sync::Arc;

use crate::common::*;
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_requests_get_their_own_rows() {
    each_request_gets_its_own_rows(
        "instances = 1\nbatching = { max_batch_size = 32, max_queue_delay_us = 2000 }\n",
    )
    .await;
}

/// The default batching (stack what is queued, never wait) stacks under concurrency too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_batching_stacks_queued_requests() {
    each_request_gets_its_own_rows("instances = 1\n").await;
}

/// 64 concurrent single-row requests, five times over, on one worker: each answer must be its
/// own row's reference output, and some requests must have been stacked.
async fn each_request_gets_its_own_rows(model_toml: &str) {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    std::fs::write(repo.path().join("mlp/model.toml"), model_toml).unwrap();
    let runtime = if ort_available() {
        RuntimeChoice::Ort
    } else {
        RuntimeChoice::Tract
    };
    let server = Arc::new(TestServer::start(test_config(repo.path(), runtime)).await);

    let request = read_json(&fixtures().join("bench/mlp_request_b8.json"));
    let expected = read_json(&fixtures().join("bench/mlp_expected_b8.json"));
    let rows: Vec<Vec<Value>> = request["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .chunks(64)
        .map(<[Value]>::to_vec)
        .collect();
    let labels = expected["outputs"][0]["data"].as_array().unwrap().clone();
    let probabilities: Vec<Vec<Value>> = expected["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .chunks(10)
        .map(<[Value]>::to_vec)
        .collect();

    for _round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let server = server.clone();
            let row = rows[i % 8].clone();
            tasks.push(tokio::spawn(async move {
                let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]});
                (i % 8, server.post_json("/v2/models/mlp/infer", &body).await)
            }));
        }
        for task in tasks {
            let (row, (status, answer)) = task.await.unwrap();
            assert_eq!(status, 200, "{answer}");
            let want = json!({"outputs": [
                {"name": "label", "datatype": "INT64", "shape": [1], "data": [labels[row]]},
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": probabilities[row]},
            ]});
            assert_outputs_match(&answer, &want, 1e-5, &format!("row {row}"));
        }
    }

    let stacked = server
        .metric(r#"sluice_batch_rows_count{model="mlp",version="1"}"#)
        .await
        .unwrap_or(0.0);
    assert!(
        stacked > 0.0,
        "no request was stacked:\n{}",
        server.metrics_text().await
    );
}

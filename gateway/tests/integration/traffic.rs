//! Traffic policy end to end: weighted and sticky canary splits, URL versions bypassing the
//! split, and shadow runs that never touch the client's answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

const TOKEN: &str = "traffic-token";

async fn start(repo: &std::path::Path) -> TestServer {
    let mut config = test_config(repo, RuntimeChoice::Tract);
    config.admin.token = Some(TOKEN.into());
    TestServer::start(config).await
}

async fn set_traffic(server: &TestServer, policy: Value) -> (u16, Value) {
    let response = server
        .client
        .put(server.url("/admin/v1/models/mlp/traffic"))
        .bearer_auth(TOKEN)
        .json(&policy)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends `n` requests from 16 concurrent clients; returns how many each variant answered.
async fn split(
    server: &Arc<TestServer>,
    n: usize,
    header: Option<(&'static str, String)>,
) -> HashMap<String, usize> {
    let body = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    let clients = 16;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (server, body, header) = (server.clone(), body.clone(), header.clone());
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in (c..n).step_by(clients) {
                let mut request = server
                    .client
                    .post(server.url("/v2/models/mlp/infer"))
                    .body(body.clone());
                if let Some((name, value)) = &header {
                    request = request.header(*name, value);
                }
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                let variant = response.headers()["sluice-variant"]
                    .to_str()
                    .unwrap()
                    .to_string();
                *counts.entry(variant).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts = HashMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_holds_the_weight() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let server = Arc::new(start(repo.path()).await);
    for weight in [1.0, 10.0, 50.0] {
        let (status, body) = set_traffic(
            &server,
            json!({"primary": "1", "canary": {"version": "2", "weight": weight}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let n = 20_000;
        let counts = split(&server, n, None).await;
        let share = *counts.get("canary").unwrap_or(&0) as f64 * 100.0 / n as f64;
        assert!(
            (share - weight).abs() <= 1.0,
            "weight {weight}: canary share {share:.2}%"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_keep_their_side_and_raises_only_add_canary_keys() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let server = start(repo.path()).await;
    let body = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    let variant_of = |key: String, body: Vec<u8>| {
        let request = server
            .client
            .post(server.url("/v2/models/mlp/infer"))
            .header("x-user-id", key)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let version = response.headers()["sluice-model-version"]
                .to_str()
                .unwrap()
                .to_string();
            (
                response.headers()["sluice-variant"]
                    .to_str()
                    .unwrap()
                    .to_string(),
                version,
            )
        }
    };
    let policy = |weight: f64| json!({"primary": "1", "canary": {"version": "2", "weight": weight}, "sticky_key": "x-user-id"});
    assert_eq!(set_traffic(&server, policy(20.0)).await.0, 200);
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut at_20 = Vec::new();
    for key in &keys {
        let (variant, version) = variant_of(key.clone(), body.clone()).await;
        assert_eq!(version, if variant == "canary" { "2" } else { "1" });
        at_20.push(variant);
    }
    for (key, first) in keys.iter().zip(&at_20).take(300) {
        assert_eq!(
            &variant_of(key.clone(), body.clone()).await.0,
            first,
            "{key} changed sides"
        );
    }
    let canary_20 = at_20.iter().filter(|v| *v == "canary").count();
    assert!(
        (150..=250).contains(&canary_20),
        "{canary_20} of 1000 keys on the canary at 20%"
    );

    assert_eq!(set_traffic(&server, policy(40.0)).await.0, 200);
    let mut canary_40 = 0;
    for (key, before) in keys.iter().zip(&at_20) {
        let (after, _) = variant_of(key.clone(), body.clone()).await;
        if before == "canary" {
            assert_eq!(after, "canary", "{key} moved back from canary to primary");
        }
        canary_40 += usize::from(after == "canary");
    }
    assert!(
        canary_40 > canary_20 && (350..=450).contains(&canary_40),
        "{canary_40} keys at 40%"
    );

    // The key may also come as a v2 request parameter of the same name.
    let mut with_param: Value = serde_json::from_slice(&body).unwrap();
    let canary_key = keys
        .iter()
        .zip(&at_20)
        .find(|(_, v)| *v == "canary")
        .unwrap()
        .0;
    with_param["parameters"] = json!({"x-user-id": canary_key});
    let response = server
        .client
        .post(server.url("/v2/models/mlp/infer"))
        .json(&with_param)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["sluice-variant"], "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_versions_bypass_the_split_and_bad_policies_change_nothing() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let server = start(repo.path()).await;
    assert_eq!(
        set_traffic(
            &server,
            json!({"primary": "1", "canary": {"version": "2", "weight": 100.0}})
        )
        .await
        .0,
        200
    );
    let body = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    for _ in 0..50 {
        let response = server
            .client
            .post(server.url("/v2/models/mlp/versions/1/infer"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["sluice-model-version"], "1");
        assert_eq!(response.headers()["sluice-variant"], "direct");
        let (status, answer) = server.post("/v2/models/mlp/infer", body.clone()).await;
        assert_eq!((status, answer["model_version"].as_str()), (200, Some("2")));
    }
    // V1 follows the same policy.
    let rows: Vec<Value> = serde_json::from_slice::<Value>(&body).unwrap()["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .clone();
    let response = server
        .client
        .post(server.url("/v1/models/mlp:predict"))
        .json(&json!({"instances": [rows]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["sluice-model-version"], "2");

    // A policy with several problems is refused as a whole, naming each; nothing changes.
    let (status, answer) = set_traffic(
        &server,
        json!({"primary": "7", "canary": {"version": "2", "weight": 120.0}, "shadow": {"version": "x", "sample_rate": 2.0}}),
    )
    .await;
    assert_eq!(status, 400);
    let error = answer["error"].as_str().unwrap();
    for problem in [
        "primary: version 7 is not loaded",
        "canary.weight: 120",
        "shadow.version: 'x'",
        "shadow.sample_rate: 2",
    ] {
        assert!(error.contains(problem), "'{problem}' missing from: {error}");
    }
    let (status, policy) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(status, 200);
    assert_eq!(
        policy,
        json!({"primary": "1", "canary": {"version": "2", "weight": 100.0}})
    );
    let refused = server
        .client
        .put(server.url("/admin/v1/models/mlp/traffic"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let (status, _) = set_traffic(&server, json!({"primary": "1", "weight": 3})).await;
    assert_eq!(status, 400, "unknown fields are refused");
}

/// Reads the float32 rows of a 2-D `.npy` file.
fn npy_rows(path: &std::path::Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("False"),
        "{header}"
    );
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    data.chunks(dims[1]).map(<[f32]>::to_vec).collect()
}

async fn shadow_summary(server: &TestServer) -> Value {
    server.get("/admin/v1/models/mlp").await.1["shadow"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_agreement_matches_the_offline_computation() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let server = start(repo.path()).await;
    let (status, body) = set_traffic(
        &server,
        json!({"primary": "1", "shadow": {"version": "2", "sample_rate": 1.0}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rows = npy_rows(&fixtures().join("bench/mlp_sample.npy"));
    let reference = read_json(&fixtures().join("bench/mlp_shadow_reference.json"));
    assert_eq!(rows.len() as u64, reference["rows"].as_u64().unwrap());
    let batches: Vec<&[Vec<f32>]> = rows.chunks(8).collect();
    for batch in &batches {
        let data: Vec<f32> = batch.iter().flatten().copied().collect();
        let request = json!({"inputs": [{"name": "input", "shape": [batch.len(), 64], "datatype": "FP32", "data": data}]});
        let (status, answer) = server.post_json("/v2/models/mlp/infer", &request).await;
        assert_eq!((status, answer["model_version"].as_str()), (200, Some("1")));
        // Pace the copies so that none is dropped by the bounded shadow queue.
        if server.get("/admin/v1/models/mlp").await.1["shadow"][0]["dropped"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            panic!("shadow copies dropped at this pace");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let summary = shadow_summary(&server).await;
        if summary["compared"].as_u64() == Some(batches.len() as u64) {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "shadow did not finish: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(summary["primary_version"], 1);
    assert_eq!(summary["version"], 2);
    assert_eq!(summary["label_rows"], reference["rows"]);
    assert_eq!(summary["agreeing_rows"], reference["agreeing_rows"]);
    let max_diff = summary["max_abs_diff"].as_f64().unwrap();
    let want = reference["max_abs_diff"].as_f64().unwrap();
    assert!(
        (max_diff - want).abs() < 1e-5,
        "max abs diff {max_diff} vs offline {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_never_reaches_the_client() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    // Version 3 is a different model: every shadow copy fails its input validation.
    copy_version(&examples_repo(), repo.path(), "types", 1, 3);
    std::fs::rename(repo.path().join("types/3"), repo.path().join("mlp/3")).unwrap();
    std::fs::write(
        repo.path().join("mlp/model.toml"),
        "version_policy = \"all\"\n",
    )
    .unwrap();
    let server = start(repo.path()).await;
    let (status, body) = set_traffic(
        &server,
        json!({"primary": "1", "shadow": {"version": "3", "sample_rate": 1.0}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let request = std::fs::read(fixtures().join("bench/mlp_request_b8.json")).unwrap();
    let expected = read_json(&fixtures().join("bench/mlp_expected_b8.json"));
    for _ in 0..40 {
        let (status, answer) = server.post("/v2/models/mlp/infer", request.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_outputs_match(&answer, &expected, 1e-5, "primary with failing shadow");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let summary = shadow_summary(&server).await;
        let done =
            summary["failed"].as_u64().unwrap_or(0) + summary["dropped"].as_u64().unwrap_or(0);
        if done == 40 {
            assert!(summary["failed"].as_u64().unwrap() > 0, "{summary}");
            assert_eq!(summary["compared"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{summary}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

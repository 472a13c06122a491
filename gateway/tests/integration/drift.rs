//! Drift end to end: `sluice profile` (the binary) writes the churn model's profile from its
//! training sample, a model reload picks it up, and the sample's shifted copy sent as real
//! requests shows up in the drift gauges, the stats endpoint and the webhook, with the
//! numbers of the independent reference (scipy / numpy, `fixtures/drift`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice::drift::sample;
use sluice_runtime::RuntimeChoice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const EVALUATE: Duration = Duration::from_millis(200);

/// The value of `name{...}` whose labels include every one of `labels`.
fn gauge(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A webhook receiver: accepts HTTP/1.1 POSTs and hands each JSON body to the channel.
async fn webhook() -> (String, mpsc::Receiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/drift", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    let body: Value = serde_json::from_slice(&buffer[end + 4..end + 4 + length])
                        .expect("webhook body is JSON");
                    let _ = tx.send(body).await;
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (url, rx)
}

fn run_profile(repo: &std::path::Path) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["profile", "--model-repository"])
        .arg(repo)
        .args([
            "--model",
            "churn",
            "--version",
            "1",
            "--runtime",
            "ort",
            "--sample",
        ])
        .arg(fixtures().join("bench/churn_sample.npy"));
    if let Some(library) = sluice_runtime::find_ort_library(None) {
        command.env("ORT_DYLIB_PATH", library);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sluice profile failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("12 features"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifted_traffic_shows_drift_on_the_shifted_features_only() {
    if !ort_available() {
        eprintln!("skipped: the churn model needs ONNX Runtime");
        return;
    }
    let repo = scratch_repo(&bench_repo(), &[("churn", 1), ("mlp", 1)]);
    let (url, mut alerts) = webhook().await;
    let mut config = test_config(repo.path(), RuntimeChoice::Ort);
    config.drift.evaluate_interval = EVALUATE;
    // Thresholds are judged on the whole shifted sample only: a partial window is a
    // subsample whose noise could cross them on an unshifted feature.
    config.drift.min_rows = 1000;
    config.drift.webhook_url = Some(url);
    config.validate().unwrap();
    let server = TestServer::start(config).await;

    // Without a profile the model serves with drift off.
    let (status, stats) = server.get("/admin/v1/models/churn/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["drift"], json!([]));

    let dir = repo.path().to_path_buf();
    tokio::task::spawn_blocking(move || run_profile(&dir))
        .await
        .unwrap();
    let profile = read_json(&repo.path().join("churn/1/profile.json"));
    assert_eq!(profile["schema"], "sluice.profile.v1");
    assert_eq!(profile["features"].as_array().unwrap().len(), 12);
    assert_eq!(
        profile["features"][0]["distribution"]["quantiles"]
            .as_array()
            .unwrap()
            .len(),
        201
    );
    assert_eq!(profile["prediction"]["kind"], "score");
    assert_eq!(profile["prediction"]["output"], "probabilities");
    assert_eq!(profile["prediction"]["column"], 1);
    // A new profile makes the loaded version stale: a reload picks it up.
    let (status, body) = server
        .admin_post("/v2/repository/models/churn/load", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], json!([1]), "{body}");

    let reference = read_json(&fixtures().join("drift/churn_drift_reference.json"));
    let want = &reference["cases"]["churn_shifted"];
    let live = sample::read(&fixtures().join("drift/churn_shifted.npy")).unwrap();
    for start in (0..live.rows).step_by(50) {
        let rows = 50.min(live.rows - start);
        let data: Vec<f32> = live.values[start * 12..(start + rows) * 12]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 12], "data": data}]});
        let (status, answer) = server.post_json("/v2/models/churn/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
    }

    // Every row is counted before its response is sent; the evaluator catches up within
    // a tick or two.
    let deadline = Instant::now() + Duration::from_secs(20);
    let churn = [("model", "churn"), ("version", "1")];
    let text = loop {
        tokio::time::sleep(EVALUATE * 3).await;
        let text = server.metrics_text().await;
        if gauge(&text, "sluice_drift_window_rows", &churn) == Some(1000.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "drift gauges never reached 1000 rows"
        );
    };
    for feature in want["features"].as_array().unwrap() {
        let name = feature["name"].as_str().unwrap();
        let labels = [churn[0], churn[1], ("feature", name)];
        let psi = gauge(&text, "sluice_drift_psi", &labels).expect("psi gauge");
        let ks = gauge(&text, "sluice_drift_ks", &labels).expect("ks gauge");
        let (want_psi, want_ks) = (
            feature["psi"].as_f64().unwrap(),
            feature["ks"].as_f64().unwrap(),
        );
        assert!(
            (psi - want_psi).abs() <= 0.01,
            "{name}: psi {psi} vs {want_psi}"
        );
        assert!((ks - want_ks).abs() <= 0.01, "{name}: ks {ks} vs {want_ks}");
        if feature["change"] == "+0.5sd" {
            assert!(
                psi > 0.2 && ks > 0.15,
                "{name} is shifted: psi {psi}, ks {ks}"
            );
        } else if feature["change"] == "none" {
            assert!(
                psi < 0.01 && ks < 0.01,
                "{name} is not shifted: psi {psi}, ks {ks}"
            );
        }
    }
    let prediction_psi = gauge(&text, "sluice_prediction_drift_psi", &churn).unwrap();
    let prediction_ks = gauge(&text, "sluice_prediction_drift_ks", &churn).unwrap();
    let want_prediction = &want["prediction"];
    assert!(
        (prediction_psi - want_prediction["psi"].as_f64().unwrap()).abs() <= 0.01,
        "{prediction_psi}"
    );
    assert!(
        (prediction_ks - want_prediction["ks"].as_f64().unwrap()).abs() <= 0.01,
        "{prediction_ks}"
    );

    let (status, stats) = server.get("/admin/v1/models/churn/stats").await;
    assert_eq!(status, 200);
    let drift = &stats["drift"][0];
    assert_eq!(drift["version"], 1, "{stats}");
    assert_eq!(drift["window_rows"], 1000);
    assert_eq!(drift["window_seconds"], 300);
    assert_eq!(drift["prediction"]["name"], "probabilities[:,1]");
    assert_eq!(drift["prediction"]["rows"], 1000);
    let f1 = &drift["features"][1];
    assert_eq!(f1["name"], "f1");
    assert!(
        (f1["psi"].as_f64().unwrap() - want["features"][1]["psi"].as_f64().unwrap()).abs() <= 0.01
    );
    assert_eq!(drift["features"][0]["psi"], 0.0);
    // The model without a profile still has none.
    let (_, stats) = server.get("/admin/v1/models/mlp/stats").await;
    assert_eq!(stats["drift"], json!([]));

    // Alerts: PSI and KS of the three shifted features, KS of the scaled one (its PSI, 0.195,
    // stays under 0.2); nothing for the prediction (PSI 0.035, KS 0.079).
    let mut raised = BTreeSet::new();
    while raised.len() < 7 {
        let alert = tokio::time::timeout(Duration::from_secs(10), alerts.recv())
            .await
            .expect("7 drift alerts within 10 s")
            .unwrap();
        assert_eq!(alert["state"], "raised", "{alert}");
        assert_eq!(
            (alert["model"].as_str(), alert["version"].as_u64()),
            (Some("churn"), Some(1))
        );
        raised.insert(format!(
            "{} {}",
            alert["series"].as_str().unwrap(),
            alert["statistic"].as_str().unwrap()
        ));
    }
    let want_alerts: BTreeSet<String> = [
        "f1 psi", "f1 ks", "f4 psi", "f4 ks", "f8 psi", "f8 ks", "f10 ks",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(raised, want_alerts);
    // Edge-triggered: later ticks with the same window raise nothing new.
    tokio::time::sleep(EVALUATE * 3).await;
    assert!(alerts.try_recv().is_err());
    server.stop().await;
}

//! Ground-truth outcomes end to end, with real servers and real models: every answer carries
//! its request id; live accuracy equals an offline count on the same rows, and log loss, Brier,
//! ROC AUC and MAE agree with scikit-learn; the join's edge cases (late, duplicate, unknown,
//! evicted) and bad bodies; outcomes from a Kafka topic; and the guard judging correctness
//! (outcome_rollouts.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice::config::Config;
use sluice_runtime::RuntimeChoice;

pub const OUTCOMES_TOKEN: &str = "outcomes-token";

/// The true digit of each row of the mlp sample.
pub fn mlp_labels() -> Vec<i64> {
    let text = std::fs::read_to_string(fixtures().join("candidates/mlp_sample_labels.json"))
        .expect("labels fixture");
    serde_json::from_str(&text).unwrap()
}

pub fn mlp_body(row: &[f32], id: Option<&str>) -> Value {
    let mut body =
        json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    body
}

/// A v2 request; returns the status, the body and the `sluice-request-id` header.
pub async fn infer(server: &TestServer, model: &str, body: &Value) -> (u16, Value, String) {
    let response = server
        .client
        .post(server.url(&format!("/v2/models/{model}/infer")))
        .json(body)
        .send()
        .await
        .expect("infer");
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("sluice-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, response.json().await.unwrap_or(Value::Null), id)
}

pub async fn post_outcomes(
    server: &TestServer,
    model: &str,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = server
        .client
        .post(server.url(&format!("/v2/models/{model}/outcomes")))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("outcomes");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn post_labels(server: &TestServer, model: &str, outcomes: &[(String, i64)]) -> Value {
    let records: Vec<Value> = outcomes
        .iter()
        .map(|(id, label)| json!({"id": id, "label": label}))
        .collect();
    let body = serde_json::to_vec(&json!({ "outcomes": records })).unwrap();
    let (status, counts) = post_outcomes(server, model, body, Some(OUTCOMES_TOKEN)).await;
    assert_eq!(status, 200, "{counts}");
    counts
}

/// The stats endpoint's quality for (version, variant) over the last five minutes.
pub async fn quality(server: &TestServer, model: &str, version: u64, variant: &str) -> Value {
    let (status, stats) = server
        .get(&format!("/admin/v1/models/{model}/stats?window=300s"))
        .await;
    assert_eq!(status, 200, "{stats}");
    stats["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["version"] == version && s["variant"] == variant)
        .map(|s| s["quality"].clone())
        .unwrap_or(Value::Null)
}

/// A repository of the given `(model, source folder)` pairs, each as version 1.
fn repo_of(models: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in models {
        let target = dir.path().join(name).join("1");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::copy(source.join("model.onnx"), target.join("model.onnx")).unwrap();
    }
    dir
}

fn config(repo: &Path) -> Config {
    // Auto: the credit model (a tree ensemble) runs on sluice's own evaluator.
    let mut config = test_config(repo, RuntimeChoice::Auto);
    config.outcomes.token = Some(OUTCOMES_TOKEN.into());
    config
}

/// scikit-learn's numbers for `truth` and `scores` (JSON arrays): the referee.
fn sklearn(script: &str, data: &Value) -> Option<Value> {
    let python = venv_python()?;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.json");
    std::fs::write(&input, serde_json::to_vec(data).unwrap()).unwrap();
    let program = format!(
        "import json, sys\nimport numpy as np\nfrom sklearn import metrics\n\
         d = json.load(open(sys.argv[1]))\n{script}\nprint(json.dumps(out))\n"
    );
    let output = std::process::Command::new(python)
        .args(["-c", &program])
        .arg(&input)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

/// A reproducible stream of uniform numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn close(a: &Value, b: f64, tolerance: f64, what: &str) {
    let a = a.as_f64().unwrap_or_else(|| panic!("{what}: {a}"));
    assert!((a - b).abs() <= tolerance, "{what}: {a} against {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_its_request_id() {
    let repo = repo_of(&[("mlp", bench_repo().join("mlp/1"))]);
    let server = TestServer::start(config(repo.path())).await;
    let row = &mlp_sample_rows()[0];
    // The client's id comes back in the body and the header.
    let (status, body, header) = infer(&server, "mlp", &mlp_body(row, Some("client-7"))).await;
    assert_eq!(
        (status, body["id"].as_str(), header.as_str()),
        (200, Some("client-7"), "client-7")
    );
    // Without one, sluice makes one, and says it in both places.
    let (_, body, header) = infer(&server, "mlp", &mlp_body(row, None)).await;
    let made = body["id"].as_str().expect("a generated id").to_string();
    assert_eq!((made.len(), header.as_str()), (29, made.as_str()));
    let (_, again, _) = infer(&server, "mlp", &mlp_body(row, None)).await;
    assert_ne!(again["id"], body["id"], "each request its own id");
    // V1 has no id field: the header carries it both ways.
    let v1 = |id: Option<&str>| {
        let mut request = server
            .client
            .post(server.url("/v1/models/mlp:predict"))
            .json(&json!({"instances": [row]}));
        if let Some(id) = id {
            request = request.header("sluice-request-id", id);
        }
        request.send()
    };
    let response = v1(Some("v1-id")).await.unwrap();
    assert_eq!(response.headers()["sluice-request-id"], "v1-id");
    let response = v1(None).await.unwrap();
    let v1_made = response.headers()["sluice-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(v1_made.len(), 29);
    // Both kinds of id are joinable.
    let counts = post_labels(
        &server,
        "mlp",
        &[
            ("client-7".into(), 0),
            (made, 0),
            ("v1-id".into(), 0),
            (v1_made, 0),
        ],
    )
    .await;
    assert_eq!(counts["matched"], 4, "{counts}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_quality_equals_an_offline_count_and_agrees_with_scikit_learn() {
    let candidates = fixtures().join("candidates");
    let repo = repo_of(&[
        ("digits", bench_repo().join("mlp/1")),
        ("credit2", examples_repo().join("credit/1")),
        ("regressor", candidates.join("regressor")),
    ]);
    let log = tempfile::tempdir().unwrap();
    let mut config = config(repo.path());
    // Model names of its own: the metrics recorder is shared by every server in this process.
    config.prediction_log.sink = sluice::predlog::SinkChoice::File;
    config.prediction_log.file.path = log.path().join("predictions.jsonl");
    config.prediction_log.file.events_path = log.path().join("events.jsonl");
    let server = TestServer::start(config).await;

    // Digits: 300 rows, the true labels, and a weak guess for a few so that it is not 100 %.
    let rows = mlp_sample_rows();
    let labels = mlp_labels();
    let (mut outcomes, mut correct, mut log_loss) = (Vec::new(), 0u64, 0.0f64);
    for (i, row) in rows.iter().take(300).enumerate() {
        let id = format!("mlp-{i}");
        let (status, answer, _) = infer(&server, "digits", &mlp_body(row, Some(&id))).await;
        assert_eq!(status, 200, "{answer}");
        // Every 7th outcome says another digit: accuracy 6/7-ish, known exactly here.
        let truth = if i % 7 == 0 {
            (labels[i] + 1) % 10
        } else {
            labels[i]
        };
        let predicted = answer["outputs"][0]["data"][0].as_i64().unwrap();
        let p = answer["outputs"][1]["data"][truth as usize]
            .as_f64()
            .unwrap();
        correct += u64::from(predicted == truth);
        log_loss += -p.clamp(1e-15, 1.0).ln();
        outcomes.push((id, truth));
    }
    for chunk in outcomes.chunks(100) {
        let counts = post_labels(&server, "digits", chunk).await;
        assert_eq!(counts["matched"], 100, "{counts}");
    }
    let q = quality(&server, "digits", 1, "primary").await;
    assert_eq!(
        (q["labeled"].as_u64(), q["correct"].as_u64()),
        (Some(300), Some(correct)),
        "{q}"
    );
    assert_eq!(
        q["accuracy"].as_f64(),
        Some(correct as f64 / 300.0),
        "exactly the offline count"
    );
    close(&q["log_loss"], log_loss / 300.0, 1e-9, "mlp log loss");

    // Credit (two classes): labels drawn from the model's own probabilities, so AUC is
    // meaningful; scikit-learn is the referee for AUC, log loss and Brier.
    let mut lcg = Lcg(42);
    let (mut truth, mut scores, mut credit) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..400 {
        let row: Vec<f64> = (0..10).map(|_| (lcg.next() - 0.5) * 4.0).collect();
        let id = format!("credit-{i}");
        let body = json!({"id": id, "inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": row}]});
        let (status, answer, _) = infer(&server, "credit2", &body).await;
        assert_eq!(status, 200, "{answer}");
        let p1 = answer["outputs"][1]["data"][1].as_f64().unwrap();
        let y = i64::from(lcg.next() < p1);
        truth.push(y);
        scores.push(p1);
        credit.push((id, y));
    }
    let counts = post_labels(&server, "credit2", &credit).await;
    assert_eq!(counts["matched"], 400, "{counts}");
    let q = quality(&server, "credit2", 1, "primary").await;
    let reference = sklearn(
        "p = np.array(d['scores']); y = np.array(d['truth'])\n\
         out = {'auc': metrics.roc_auc_score(y, p), \
                'log_loss': metrics.log_loss(y, np.stack([1 - p, p], axis=1), labels=[0, 1]), \
                'brier': metrics.brier_score_loss(y, p)}",
        &json!({"scores": scores, "truth": truth}),
    );
    if let Some(reference) = reference {
        close(
            &q["roc_auc"],
            reference["auc"].as_f64().unwrap(),
            0.01,
            "ROC AUC",
        );
        close(
            &q["log_loss"],
            reference["log_loss"].as_f64().unwrap(),
            1e-6,
            "log loss",
        );
        close(
            &q["brier"],
            reference["brier"].as_f64().unwrap(),
            1e-6,
            "Brier",
        );
        println!(
            "credit: live AUC {} against scikit-learn's {}",
            q["roc_auc"], reference["auc"]
        );
    } else {
        eprintln!("SKIPPED: the scikit-learn comparison (no Python environment)");
    }

    // A regressor: MAE and RMSE.
    let (mut values, mut targets) = (Vec::new(), Vec::new());
    let mut records = Vec::new();
    for (i, row) in rows.iter().skip(300).take(200).enumerate() {
        let id = format!("reg-{i}");
        let (status, answer, _) = infer(&server, "regressor", &mlp_body(row, Some(&id))).await;
        assert_eq!(status, 200, "{answer}");
        let v = answer["outputs"][0]["data"][0].as_f64().unwrap();
        let target = v + (lcg.next() - 0.5) * 2.0;
        values.push(v);
        targets.push(target);
        records.push(json!({"id": id, "value": target}));
    }
    let body = serde_json::to_vec(&json!({ "outcomes": records })).unwrap();
    let (status, counts) = post_outcomes(&server, "regressor", body, Some(OUTCOMES_TOKEN)).await;
    assert_eq!((status, &counts["matched"]), (200, &json!(200)), "{counts}");
    let q = quality(&server, "regressor", 1, "primary").await;
    let mae = values
        .iter()
        .zip(&targets)
        .map(|(v, t)| (v - t).abs())
        .sum::<f64>()
        / 200.0;
    let mse = values
        .iter()
        .zip(&targets)
        .map(|(v, t)| (v - t).powi(2))
        .sum::<f64>()
        / 200.0;
    close(&q["mae"], mae, 1e-6, "MAE");
    close(&q["rmse"], mse.sqrt(), 1e-6, "RMSE");
    // A label for a regressor is refused, naming the record.
    let (status, refused) = post_outcomes(
        &server,
        "regressor",
        r#"{"outcomes": [{"id": "reg-0", "label": 1}]}"#,
        Some(OUTCOMES_TOKEN),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("outcomes[0]: model 'regressor' predicts values"),
        "{refused}"
    );

    // A request of several rows: each row its own outcome.
    let four: Vec<f32> = rows[..4].concat();
    let body = json!({"id": "batch-1", "inputs": [{"name": "input", "shape": [4, 64], "datatype": "FP32", "data": four}]});
    assert_eq!(infer(&server, "digits", &body).await.0, 200);
    let records: Vec<Value> = (0..5)
        .map(|r| json!({"id": "batch-1", "row": r, "label": labels[r.min(3)]}))
        .collect();
    let body = serde_json::to_vec(&json!({ "outcomes": records })).unwrap();
    let (_, counts) = post_outcomes(&server, "digits", body, Some(OUTCOMES_TOKEN)).await;
    assert_eq!(
        (&counts["matched"], &counts["unknown"]),
        (&json!(4), &json!(1)),
        "{counts}"
    );

    // The metrics: joined outcomes counted now; the rolling gauges once the controller ticks.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics_text().await;
        let accuracy = series_value(
            &text,
            "sluice_quality_accuracy{model=\"digits\",version=\"1\",variant=\"primary\"}",
        );
        if accuracy.is_some() {
            assert_eq!(
                series_value(
                    &text,
                    "sluice_quality_correct_total{model=\"digits\",version=\"1\",variant=\"primary\"}"
                ),
                Some((correct + 4) as f64)
            );
            assert!(
                series_value(
                    &text,
                    "sluice_quality_roc_auc{model=\"credit2\",version=\"1\",variant=\"primary\"}"
                )
                .is_some()
            );
            break;
        }
        assert!(Instant::now() < deadline, "no quality gauges: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;

    // The joined records sit in the prediction log next to their predictions, same key.
    let text = std::fs::read_to_string(log.path().join("predictions.jsonl")).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let joined: Vec<&Value> = records
        .iter()
        .filter(|r| r["schema"] == "sluice.joined.v1")
        .collect();
    assert_eq!(joined.len(), 300 + 400 + 200 + 4);
    let first = joined.iter().find(|r| r["request_id"] == "mlp-1").unwrap();
    assert_eq!(first["outcome"], json!({"label": labels[1]}));
    assert_eq!(first["correct"], true);
    assert!(
        records
            .iter()
            .any(|r| r["schema"] == "sluice.prediction.v1" && r["request_id"] == "mlp-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_handles_late_duplicate_unknown_and_evicted_outcomes() {
    let candidates = fixtures().join("candidates");
    let repo = repo_of(&[
        ("mlp", bench_repo().join("mlp/1")),
        ("slow", candidates.join("slow_mlp")),
        ("credit", examples_repo().join("credit/1")),
    ]);
    let mut config = config(repo.path());
    config.runtime.batching = sluice_runtime::Batching::OFF;
    config.outcomes.max_predictions = 64;
    let server = Arc::new(TestServer::start(config).await);
    let rows = mlp_sample_rows();

    // Late: the outcome arrives while its request is still running (the slow model spends
    // milliseconds per row); it is held and joined the moment the answer is known.
    let (mut late, mut joined) = (None, 0);
    for attempt in 0..50 {
        let id = format!("late-{attempt}");
        let running = {
            let (server, body) = (server.clone(), mlp_body(&rows[0], Some(&id)));
            tokio::spawn(async move { infer(&server, "slow", &body).await })
        };
        // An outcome for an id not entered yet is unknown and changes nothing, so it can be
        // sent again until the request is running (late) or has already answered (matched:
        // this attempt missed the window, try another).
        loop {
            let counts = post_labels(&server, "slow", &[(id.clone(), 0)]).await;
            if counts["late"] == 1 {
                late = Some(id.clone());
                break;
            }
            if counts["matched"] == 1 {
                joined += 1;
                break;
            }
            if running.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (status, _, _) = running.await.unwrap();
        assert_eq!(status, 200);
        if late.is_some() {
            break;
        }
    }
    let late = late.expect("an outcome arrived while its request ran");
    let q = quality(&server, "slow", 1, "primary").await;
    assert_eq!(q["labeled"], joined + 1, "the late outcome was joined: {q}");
    let counts = post_labels(&server, "slow", &[(late, 0)]).await;
    assert_eq!(counts["duplicate"], 1, "{counts}");

    // Duplicates, in one batch and across batches; unknown ids; another model's id.
    let (_, answer, id) = infer(&server, "mlp", &mlp_body(&rows[1], None)).await;
    assert_eq!(answer["id"], json!(id));
    let counts = post_labels(
        &server,
        "mlp",
        &[(id.clone(), 1), (id.clone(), 1), ("never-served".into(), 1)],
    )
    .await;
    assert_eq!(
        counts,
        json!({"matched": 1, "duplicate": 1, "unknown": 1, "late": 0, "mismatched": 0, "forwarded": 0})
    );
    assert_eq!(
        post_labels(&server, "mlp", &[(id.clone(), 1)]).await["duplicate"],
        1
    );
    assert_eq!(
        post_labels(&server, "credit", &[(id, 1)]).await["unknown"],
        1
    );

    // Bad bodies get a clear 4xx and change nothing: the valid record in a refused batch is
    // still joinable afterwards.
    let (_, _, kept) = infer(&server, "mlp", &mlp_body(&rows[2], None)).await;
    let before = quality(&server, "mlp", 1, "primary").await;
    let valid = json!({"id": kept, "label": 2});
    for (body, status, says) in [
        ("not json".to_string(), 400, "not valid JSON"),
        (
            json!({"outcomes": [valid, {"id": "x", "label": "two"}]}).to_string(),
            400,
            "outcomes[1]: 'label' must be an integer",
        ),
        (
            json!({"outcomes": [valid, {"id": "x", "value": 0.5}]}).to_string(),
            400,
            "outcomes[1]: model 'mlp' predicts classes",
        ),
        (
            json!({"outcomes": [{"id": "x", "label": 1, "reward": 1}]}).to_string(),
            400,
            "not several",
        ),
        (
            json!({"outcomes": vec![valid.clone(); 10_001]}).to_string(),
            413,
            "outcomes.max_batch",
        ),
    ] {
        let (got, error) = post_outcomes(&server, "mlp", body, Some(OUTCOMES_TOKEN)).await;
        assert_eq!(got, status, "{error}");
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{says}: {error}"
        );
    }
    let (status, error) =
        post_outcomes(&server, "nope", r#"{"outcomes": []}"#, Some(OUTCOMES_TOKEN)).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (404, Some("unknown model 'nope'"))
    );
    // The outcomes token, and only it.
    for (token, status) in [(None, 401), (Some("wrong"), 403)] {
        let body = json!({"outcomes": [valid]}).to_string();
        assert_eq!(post_outcomes(&server, "mlp", body, token).await.0, status);
    }
    assert_eq!(
        quality(&server, "mlp", 1, "primary").await,
        before,
        "nothing changed"
    );
    let counts = post_labels(&server, "mlp", &[(kept, 2)]).await;
    assert_eq!(counts["matched"], 1, "{counts}");

    // Evictions: 200 predictions through an index of 64; the oldest are gone, counted.
    for i in 0..200 {
        let (status, _, _) = infer(
            &server,
            "mlp",
            &mlp_body(&rows[i % 50], Some(&format!("e-{i}"))),
        )
        .await;
        assert_eq!(status, 200);
    }
    let counts = post_labels(
        &server,
        "mlp",
        &[("e-0".into(), 0), ("e-199".into(), labels_of(199))],
    )
    .await;
    assert_eq!(
        (&counts["unknown"], &counts["matched"]),
        (&json!(1), &json!(1)),
        "{counts}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics_text().await;
        let held = series_value(&text, "sluice_outcome_index_predictions").unwrap_or(f64::MAX);
        let evicted = series_value(
            &text,
            "sluice_outcome_index_evictions_total{reason=\"capacity\"}",
        )
        .unwrap_or(0.0);
        if held <= 64.0 && evicted >= 136.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "index {held} held, {evicted} evicted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

fn labels_of(i: usize) -> i64 {
    mlp_labels()[i % 50]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_from_a_kafka_topic_are_joined() {
    use crate::common::kafka::{Tansu, tansu_available};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    if !tansu_available() {
        return;
    }
    let broker = Tansu::start();
    broker.create_topic("sluice.outcomes");
    let repo = repo_of(&[("mlp", bench_repo().join("mlp/1"))]);
    let server = TestServer::start(config_for_topic(repo.path(), &broker.brokers())).await;
    let (rows, labels) = (mlp_sample_rows(), mlp_labels());
    for (i, row) in rows.iter().take(20).enumerate() {
        let (status, _, _) = infer(&server, "mlp", &mlp_body(row, Some(&format!("k-{i}")))).await;
        assert_eq!(status, 200);
    }
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    let mut payloads: Vec<String> = (0..20)
        .map(|i| {
            json!({"schema": "sluice.outcome.v1", "model": "mlp", "id": format!("k-{i}"), "label": labels[i]})
                .to_string()
        })
        .collect();
    payloads.push("not an outcome".into());
    for (i, payload) in payloads.iter().enumerate() {
        let key = format!("k-{i}");
        producer
            .send(BaseRecord::to("sluice.outcomes").key(&key).payload(payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = quality(&server, "mlp", 1, "primary").await;
        if q["labeled"] == 20 {
            assert_eq!(q["accuracy"], 1.0, "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "outcomes from the topic: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = server.metrics_text().await;
    assert_eq!(
        series_value(
            &text,
            "sluice_outcomes_total{model=\"\",source=\"kafka\",result=\"invalid\"}"
        ),
        Some(1.0)
    );

    // A second replica on the same topic: an outcome posted to it for a request the first one
    // served is forwarded, and the first one joins it.
    let mut other = config_for_topic(repo.path(), &broker.brokers());
    other.outcomes.token = Some(OUTCOMES_TOKEN.into());
    let other = TestServer::start(other).await;
    let (status, _, _) = infer(&server, "mlp", &mlp_body(&rows[20], Some("fw-1"))).await;
    assert_eq!(status, 200);
    let counts = post_labels(&other, "mlp", &[("fw-1".into(), labels[20])]).await;
    assert_eq!(
        (&counts["unknown"], &counts["forwarded"]),
        (&json!(1), &json!(1)),
        "{counts}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while quality(&server, "mlp", 1, "primary").await["labeled"] != 21 {
        assert!(
            Instant::now() < deadline,
            "the forwarded outcome was not joined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.stop().await;
    server.stop().await;
}

fn config_for_topic(repo: &Path, brokers: &str) -> Config {
    let mut config = config(repo);
    config.outcomes.kafka.topic = "sluice.outcomes".into();
    config.outcomes.kafka.brokers = brokers.into();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_join_off_the_endpoint_says_so() {
    let repo = repo_of(&[("mlp", bench_repo().join("mlp/1"))]);
    let mut config = config(repo.path());
    config.outcomes.enabled = false;
    let server = TestServer::start(config).await;
    let (status, _, id) = infer(&server, "mlp", &mlp_body(&mlp_sample_rows()[0], None)).await;
    assert_eq!(
        (status, id.len()),
        (200, 29),
        "ids are returned whether or not outcomes join"
    );
    let body = json!({"outcomes": [{"id": id, "label": 0}]}).to_string();
    let (status, error) = post_outcomes(&server, "mlp", body, Some(OUTCOMES_TOKEN)).await;
    assert_eq!(status, 404, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("outcomes.enabled = false"),
        "{error}"
    );
    server.stop().await;
}

//! The guard judging correctness from ground-truth outcomes, with real traffic (300 requests a
//! second from eight clients, rows of the digits sample) whose true labels are posted back as
//! outcomes moments after each answer, as an application that learns the truth would:
//!
//! - a candidate with the same prediction distribution but wrong answers (mlp v1 with its
//!   classes cyclically shifted) is rolled back within 2 s of the canary's `min_outcomes`-th
//!   outcome, with no failed client request;
//! - a healthy candidate with outcomes is promoted;
//! - with `promote_on = "probability"`, a clearly better candidate (mlp v1 over a 70 % version)
//!   is promoted before its last step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::outcomes::{OUTCOMES_TOKEN, mlp_body, mlp_labels};
use crate::rollout::{ONE_AT_A_TIME, TOKEN, decisions, send as admin, wait_for_rollout};
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

/// A model name of its own: the metrics recorder is shared by every server in this process,
/// and rollout.rs counts the decisions of its model `mlp`.
const MODEL: &str = "guarded";
const ROLLOUT: &str = "/admin/v1/models/guarded/rollout";

/// Version 1 from `baseline`, version 2 from `candidate` (fixture folders holding model.onnx).
fn repo(baseline: &str, candidate: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (version, source) in [(1, baseline), (2, candidate)] {
        let target = dir.path().join(format!("{MODEL}/{version}"));
        std::fs::create_dir_all(&target).unwrap();
        std::fs::copy(
            fixtures().join(source).join("model.onnx"),
            target.join("model.onnx"),
        )
        .unwrap();
    }
    dir
}

async fn start(repo: &std::path::Path) -> Arc<TestServer> {
    let mut config = test_config(repo, RuntimeChoice::Tract);
    config.admin.token = Some(TOKEN.into());
    config.outcomes.token = Some(OUTCOMES_TOKEN.into());
    config.rollout.tick = Duration::from_millis(100);
    config.runtime.batching = sluice_runtime::Batching::OFF;
    let server = TestServer::start(config).await;
    let (status, body) = admin(
        &server,
        "PUT",
        "/admin/v1/models/guarded/traffic",
        json!({"primary": "1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    Arc::new(server)
}

/// One answer, and the outcome the client will send for it.
struct Answered {
    status: u16,
    variant: String,
    version: String,
    id: String,
    label: i64,
}

/// Clients sending rows at `rate` a second, and one that posts the true label of every
/// answer back as an outcome every 50 ms. `canary_outcomes` says when the canary's
/// `min_outcomes`-th outcome was joined.
struct Traffic {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<(u16, String, String)>>>,
    poster: tokio::task::JoinHandle<Option<Instant>>,
}

impl Traffic {
    fn start(server: &Arc<TestServer>, rate: f64, min_outcomes: u64) -> Traffic {
        let rows = Arc::new(mlp_sample_rows());
        let labels = Arc::new(mlp_labels());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answered>();
        let clients = 8;
        let period = Duration::from_secs_f64(clients as f64 / rate);
        let tasks = (0..clients)
            .map(|c| {
                let (server, rows, labels, stop, tx) = (
                    server.clone(),
                    rows.clone(),
                    labels.clone(),
                    stop.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut ticks = tokio::time::interval(period);
                    let mut i = c * 131;
                    while !stop.load(Ordering::Relaxed) {
                        ticks.tick().await;
                        let row = i % rows.len();
                        i += clients;
                        let response = server
                            .client
                            .post(server.url("/v2/models/guarded/infer"))
                            .json(&mlp_body(&rows[row], None))
                            .send()
                            .await
                            .expect("the server answers");
                        let header = |name: &str| {
                            response
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let answer = Answered {
                            status: response.status().as_u16(),
                            variant: header("sluice-variant"),
                            version: header("sluice-model-version"),
                            id: header("sluice-request-id"),
                            label: labels[row],
                        };
                        let _ = response.bytes().await;
                        seen.push((
                            answer.status,
                            answer.variant.clone(),
                            answer.version.clone(),
                        ));
                        let _ = tx.send(answer);
                    }
                    seen
                })
            })
            .collect();
        drop(tx);
        let server = server.clone();
        let poster = tokio::spawn(async move {
            let (mut canary, mut reached) = (0u64, None);
            let mut batch: Vec<Answered> = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut closed = false;
                loop {
                    match rx.try_recv() {
                        Ok(a) => batch.push(a),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let answered: Vec<&Answered> = batch.iter().filter(|a| a.status == 200).collect();
                if !answered.is_empty() {
                    let records: Vec<Value> = answered
                        .iter()
                        .map(|a| json!({"id": a.id, "label": a.label}))
                        .collect();
                    let body = serde_json::to_vec(&json!({ "outcomes": records })).unwrap();
                    let (status, counts) =
                        crate::outcomes::post_outcomes(&server, MODEL, body, Some(OUTCOMES_TOKEN))
                            .await;
                    assert_eq!(status, 200, "{counts}");
                    assert_eq!(
                        counts["matched"].as_u64(),
                        Some(answered.len() as u64),
                        "{counts}"
                    );
                    canary += answered.iter().filter(|a| a.variant == "canary").count() as u64;
                    if reached.is_none() && canary >= min_outcomes {
                        reached = Some(Instant::now());
                    }
                }
                batch.clear();
                if closed {
                    return reached;
                }
            }
        });
        Traffic {
            stop,
            clients: tasks,
            poster,
        }
    }

    /// Stops the clients; returns every (status, variant, version) and when the canary's
    /// `min_outcomes`-th outcome was joined.
    async fn stop(self) -> (Vec<(u16, String, String)>, Option<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.clients {
            all.extend(task.await.unwrap());
        }
        (all, self.poster.await.unwrap())
    }
}

fn assert_none_failed(answers: &[(u16, String, String)]) {
    let failed = answers.iter().filter(|a| a.0 != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", answers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_is_wrong_on_every_row_is_rolled_back_on_its_outcomes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo("bench/repo/mlp/1", "candidates/permuted");
    let server = start(repo.path()).await;
    let min_outcomes = 50;
    let traffic = Traffic::start(&server, 300.0, min_outcomes);
    // Long steps: only the outcomes can end this rollout within the test.
    let (status, started) = admin(
        &server,
        "POST",
        "/admin/v1/models/guarded/rollouts",
        json!({"version": "2", "steps": [10, 50, 100], "step_duration": "60s",
               "min_requests": 20, "min_outcomes": min_outcomes, "watch_period": "0s"}),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let (rollout, seen) = wait_for_rollout(&server, ROLLOUT, Duration::from_secs(30), |r| {
        r["state"] == "rolled_back"
    })
    .await;
    let (answers, reached) = traffic.stop().await;
    let reached = reached.expect("the canary reached min_outcomes");
    let reason = rollout["reason"].as_str().unwrap();
    assert!(reason.contains("outcomes: accuracy 0.0%"), "{reason}");
    // Its predictions look like the primary's: nothing but the outcomes caught it.
    assert!(!reason.contains("PSI"), "{reason}");
    let after = seen.saturating_duration_since(reached);
    assert!(
        after < Duration::from_secs(2),
        "rolled back {after:?} after the {min_outcomes}th canary outcome"
    );
    assert_none_failed(&answers);
    let canary_answers = answers.iter().filter(|a| a.1 == "canary").count();
    println!(
        "permuted candidate rolled back {:.0} ms after the canary's {min_outcomes}th outcome \
         ({canary_answers} canary answers, {} requests, none failed)",
        after.as_secs_f64() * 1000.0,
        answers.len()
    );
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_with_outcomes_is_promoted() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo("bench/repo/mlp/1", "bench/repo/mlp/2");
    let server = start(repo.path()).await;
    let traffic = Traffic::start(&server, 300.0, 30);
    let (status, started) = admin(
        &server,
        "POST",
        "/admin/v1/models/guarded/rollouts",
        // Latency is not what this test is about: a busy 2-core machine's tail must not decide.
        json!({"version": "2", "steps": [10, 50, 100], "step_duration": "2s",
               "min_requests": 20, "min_outcomes": 30, "watch_period": "0s",
               "min_p99_increase": "50ms", "max_p99_ratio": 10}),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    // Judged on outcomes at some step: both sides equally right.
    let (done, _) = wait_for_rollout(&server, ROLLOUT, Duration::from_secs(40), |r| {
        r["phase"] == "finished"
    })
    .await;
    let (answers, _) = traffic.stop().await;
    assert_eq!(done["state"], "promoted", "{done:#}");
    assert_eq!(
        decisions(&done),
        ["start", "step", "step", "promote"],
        "{done:#}"
    );
    // The promotion was decided with the outcomes judged: both sides equally right. (The last
    // step lasts 2 s at 100 %: hundreds of canary outcomes, far above min_outcomes.)
    let t = &done["timeline"][3]["numbers"]["outcomes"];
    assert_eq!(
        (&t["metric"], &t["canary"], &t["primary"], &t["breach"]),
        (&json!("accuracy"), &json!(1.0), &json!(1.0), &json!(false)),
        "{done:#}"
    );
    assert_none_failed(&answers);
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clearly_better_candidate_is_promoted_early_by_probability() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo("candidates/weak", "bench/repo/mlp/1");
    let server = start(repo.path()).await;
    let traffic = Traffic::start(&server, 300.0, 30);
    let (status, started) = admin(
        &server,
        "POST",
        "/admin/v1/models/guarded/rollouts",
        // Steps long enough that only an early promotion finishes within the test.
        json!({"version": "2", "steps": [10, 50, 100], "step_duration": "60s",
               "min_requests": 20, "min_outcomes": 30, "watch_period": "0s",
               "promote_on": "probability"}),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let (done, _) = wait_for_rollout(&server, ROLLOUT, Duration::from_secs(30), |r| {
        r["state"] == "promoted"
    })
    .await;
    let (answers, _) = traffic.stop().await;
    assert_eq!(decisions(&done)[..2], ["start", "promote"], "{done:#}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("promoted at step 1 of 3 (10%): P(more accurate than version 1)"),
        "{reason}"
    );
    let numbers = &done["timeline"][1]["numbers"]["outcomes"];
    assert!(
        numbers["probability_better"].as_f64().unwrap() >= 0.95,
        "{numbers}"
    );
    assert_none_failed(&answers);
    println!("better candidate promoted at step 1: {reason}");
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

//! Guarded rollouts end to end, with real traffic (a few hundred requests a second from eight
//! concurrent clients, real rows of the digits sample) and real models: a healthy candidate is
//! promoted through every step; a failing, a slow and a random-weights candidate are each
//! rolled back, with the time from the canary's first answer to weight 0 measured; low traffic
//! decides nothing; a shadow stage fails a bad model before it answers anyone; a `[rollout]`
//! table starts a rollout for a version folder the poller picks up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use serde_json::{Value, json};
use sluice_runtime::RuntimeChoice;

pub(crate) const TOKEN: &str = "rollout-token";

/// The tests run one at a time: each puts a few hundred requests a second through a server,
/// and on a small machine side-by-side runs would measure each other's load, not the guard.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ROLLOUT: &str = "/admin/v1/models/mlp/rollout";

fn candidates() -> std::path::PathBuf {
    fixtures().join("candidates")
}

/// mlp v1 as version 1 and `candidate` (a bench version or a file) as version 2.
fn repo_with(candidate: &str) -> tempfile::TempDir {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    let target = repo.path().join("mlp/2");
    std::fs::create_dir_all(&target).unwrap();
    let source = match candidate {
        "v2" => bench_repo().join("mlp/2/model.onnx"),
        name => candidates().join(name).join("model.onnx"),
    };
    std::fs::copy(source, target.join("model.onnx")).unwrap();
    repo
}

async fn start(repo: &std::path::Path, runtime: RuntimeChoice) -> Arc<TestServer> {
    let mut config = test_config(repo, runtime);
    config.admin.token = Some(TOKEN.into());
    config.rollout.tick = Duration::from_millis(100);
    // One row per run, as the candidates are described: stacked, slow_mlp's 160 matrix-vector
    // products become matrix products, several times cheaper per row, and its latency
    // regression (what this file tests the guard on) shrinks to a few ms over a primary whose
    // own tail it then inflates, so the rollback takes seconds longer. Batching is tested in
    // tests/batching.rs.
    config.runtime.batching = sluice_runtime::Batching::OFF;
    let server = TestServer::start(config).await;
    // Both versions are loaded and the newest would be primary: start from version 1.
    let (status, body) = send(
        &server,
        "PUT",
        "/admin/v1/models/mlp/traffic",
        json!({"primary": "1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    Arc::new(server)
}

pub(crate) async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = server
        .client
        .request(method, server.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One v2 request body per row of the digits sample, and whether the failing candidate's
/// guard (input[:, 5] > 12) trips on that row.
fn sample_bodies() -> Vec<(Bytes, bool)> {
    mlp_sample_rows()
        .iter()
        .map(|row| {
            let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]});
            (Bytes::from(serde_json::to_vec(&body).unwrap()), row[5] > 12.0)
        })
        .collect()
}

/// One answered request.
#[derive(Clone, Debug)]
struct Answer {
    sent: Instant,
    status: u16,
    variant: String,
    version: String,
    guarded_row: bool,
}

/// Eight clients sending `rate` requests a second in total until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    fn start(server: &Arc<TestServer>, rate: f64) -> Load {
        Load::start_with(server, rate, Arc::new(AtomicBool::new(true)))
    }

    /// Like `start`, but the rows the failing candidate fails on are sent only while
    /// `all_rows` is set.
    fn start_with(server: &Arc<TestServer>, rate: f64, all_rows: Arc<AtomicBool>) -> Load {
        let bodies = Arc::new(sample_bodies());
        let stop = Arc::new(AtomicBool::new(false));
        let clients = 8;
        let period = Duration::from_secs_f64(clients as f64 / rate);
        let tasks = (0..clients)
            .map(|c| {
                let (server, bodies, stop) = (server.clone(), bodies.clone(), stop.clone());
                let all_rows = all_rows.clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut ticks = tokio::time::interval(period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = c * 97;
                    while !stop.load(Ordering::Relaxed) {
                        let (body, guarded_row) = bodies[i % bodies.len()].clone();
                        i += clients;
                        if guarded_row && !all_rows.load(Ordering::Relaxed) {
                            continue;
                        }
                        ticks.tick().await;
                        let sent = Instant::now();
                        let response = server
                            .client
                            .post(server.url("/v2/models/mlp/infer"))
                            .header("content-type", "application/json")
                            .body(body)
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
                        answers.push(Answer {
                            sent,
                            status: response.status().as_u16(),
                            variant: header("sluice-variant"),
                            version: header("sluice-model-version"),
                            guarded_row,
                        });
                        let _ = response.bytes().await;
                    }
                    answers
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|a| a.sent);
        all
    }
}

/// Polls the rollout every 20 ms until `done` holds; returns it and when it was first seen.
async fn wait_for(
    server: &TestServer,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Instant) {
    wait_for_rollout(server, ROLLOUT, limit, done).await
}

/// Polls the rollout at `path` every 20 ms until `done` holds; returns it and when it was
/// first seen.
pub(crate) async fn wait_for_rollout(
    server: &TestServer,
    path: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, rollout) = server.get(path).await;
        assert_eq!(status, 200, "{rollout}");
        if done(&rollout) {
            return (rollout, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not get there: {rollout:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn decisions(rollout: &Value) -> Vec<String> {
    rollout["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_is_promoted_through_every_step() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo_with("v2");
    let server = start(repo.path(), RuntimeChoice::Tract).await;
    let load = Load::start(&server, 300.0);
    let (status, started) = send(
        &server,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        // A wide latency margin: the watch compares the promoted version with the old
        // primary's earlier numbers, and on a busy 2-core machine a healthy version's tail
        // can move by a few ms between the two. This test is about the promotion path.
        json!({"version": "2", "steps": [5, 25, 50, 100], "step_duration": "1s",
               "min_requests": 20, "watch_period": "1s", "min_p99_increase": "5ms"}),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(
        (&started["state"], &started["weight"], &started["baseline"]),
        (&json!("progressing"), &json!(5.0), &json!(1))
    );
    // While it runs, the guard owns the traffic and the rollout.
    let (status, refused) = send(
        &server,
        "PUT",
        "/admin/v1/models/mlp/traffic",
        json!({"primary": "2"}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("rollout"),
        "{refused}"
    );
    let (status, _) = send(
        &server,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        json!({"version": "2"}),
    )
    .await;
    assert_eq!(status, 409);
    let (judged, _) = wait_for(&server, Duration::from_secs(10), |r| {
        r["comparison"]["canary"]["requests"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(judged["comparison"]["primary"]["version"], 1, "{judged:#}");

    let (done, _) = wait_for(&server, Duration::from_secs(40), |r| {
        r["phase"] == "finished"
    })
    .await;
    let answers = load.stop().await;
    assert_eq!(done["state"], "promoted", "{done:#}");
    assert_eq!(
        decisions(&done),
        ["start", "step", "step", "step", "promote", "watch_end"],
        "{done:#}"
    );
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..1]
    );
    let last = answers.last().unwrap();
    assert_eq!(
        (last.version.as_str(), last.variant.as_str()),
        ("2", "primary")
    );
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(traffic, json!({"primary": "2"}));
    let metrics = server.metrics_text().await;
    for (series, want) in [
        (
            "sluice_rollout_state{model=\"mlp\",state=\"promoted\"}",
            1.0,
        ),
        (
            "sluice_rollout_state{model=\"mlp\",state=\"progressing\"}",
            0.0,
        ),
        ("sluice_rollout_canary_weight_percent{model=\"mlp\"}", 100.0),
        (
            "sluice_rollout_decisions_total{model=\"mlp\",decision=\"step\"}",
            3.0,
        ),
        (
            "sluice_rollout_decisions_total{model=\"mlp\",decision=\"promote\"}",
            1.0,
        ),
    ] {
        assert_eq!(series_value(&metrics, series), Some(want), "{series}");
    }
    println!(
        "healthy rollout promoted after {:.1} s, {} requests, none failed",
        done["timeline"][4]["elapsed_s"].as_f64().unwrap(),
        answers.len()
    );
}

/// Rolls out a bad candidate under load and checks it is rolled back for `why`; returns the
/// seconds from the first request the canary answered to the rollback being visible.
async fn rolled_back(candidate: &str, why: &str) -> f64 {
    let repo = repo_with(candidate);
    let server = start(repo.path(), RuntimeChoice::Tract).await;
    let rate = 300.0;
    let decided = |decision: &str| {
        format!("sluice_rollout_decisions_total{{model=\"mlp\",decision=\"{decision}\"}}")
    };
    let rollbacks_before = server.metric(&decided("rollback")).await.unwrap_or(0.0);
    let load = Load::start(&server, rate);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = send(
        &server,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        json!({"version": "2", "steps": [10, 50, 100], "step_duration": "30s", "min_requests": 50}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (rollout, seen) = wait_for(&server, Duration::from_secs(20), |r| {
        r["state"] != "progressing"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.stop().await;

    assert_eq!(rollout["state"], "rolled_back", "{rollout:#}");
    assert_eq!(rollout["weight"], 0.0);
    let reason = rollout["reason"].as_str().unwrap();
    println!("{candidate}: {:#}", rollout["timeline"][1]["numbers"]);
    assert!(
        reason.contains(why),
        "{candidate}: '{why}' not in: {reason}"
    );
    assert_eq!(decisions(&rollout), ["start", "rollback"]);
    let numbers = &rollout["timeline"][1]["numbers"];
    assert!(
        numbers["canary"]["requests"].as_u64().unwrap() >= 50,
        "{numbers:#}"
    );
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(traffic, json!({"primary": "1"}));
    // Counters are process-wide and the tests share the process: count this test's rollback.
    assert_eq!(
        server.metric(&decided("rollback")).await,
        Some(rollbacks_before + 1.0)
    );
    assert_eq!(
        server
            .metric("sluice_rollout_state{model=\"mlp\",state=\"rolled_back\"}")
            .await,
        Some(1.0)
    );

    // The canary answered until the rollback, and nothing sent after it reached the canary.
    let first_canary = answers
        .iter()
        .find(|a| a.version == "2" || (a.status != 200 && a.guarded_row))
        .expect("the canary answered")
        .sent;
    let late: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent > seen && (a.version == "2" || a.status != 200))
        .collect();
    assert!(
        late.is_empty(),
        "{} requests reached the canary after the rollback",
        late.len()
    );
    // No client request failed because of the rollback: every failure is the failing
    // candidate's own, on a row its guard trips on.
    for a in answers.iter().filter(|a| a.status != 200) {
        assert!(
            candidate == "failing" && a.status == 500 && a.guarded_row,
            "{candidate}: a request failed: {a:?}"
        );
    }
    let seconds = seen.duration_since(first_canary).as_secs_f64();
    let canary = answers
        .iter()
        .filter(|a| a.sent >= first_canary && a.sent <= seen)
        .count();
    println!(
        "{candidate}: rolled back {seconds:.2} s after the canary's first request ({canary} \
         requests at ~{rate} req/s in that time, {} canary requests judged): {reason}",
        numbers["canary"]["requests"]
    );
    assert!(seconds < 5.0, "{candidate}: rollback took {seconds:.2} s");
    seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    rolled_back("failing", "error rate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_is_rolled_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    rolled_back("slow_mlp", "latency").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_with_different_predictions_is_rolled_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    rolled_back("random", "predictions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_version_that_breaks_during_the_watch_is_swapped_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // The failing candidate passes every step while the clients avoid the rows it fails on,
    // then breaks on them once it is primary: the watch compares it with version 1's numbers.
    let repo = repo_with("failing");
    let server = start(repo.path(), RuntimeChoice::Tract).await;
    let all_rows = Arc::new(AtomicBool::new(false));
    let load = Load::start_with(&server, 300.0, Arc::clone(&all_rows));
    let (status, body) = send(
        &server,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        json!({"version": "2", "steps": [50, 100], "step_duration": "1s", "min_requests": 30,
               "watch_period": "30s"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (watching, _) = wait_for(&server, Duration::from_secs(20), |r| r["phase"] != "step").await;
    assert_eq!(
        (&watching["state"], &watching["phase"]),
        (&json!("promoted"), &json!("watch")),
        "{watching:#}"
    );
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(traffic, json!({"primary": "2"}));
    let broke = Instant::now();
    all_rows.store(true, Ordering::Relaxed);
    let (rollout, seen) = wait_for(&server, Duration::from_secs(20), |r| {
        r["phase"] == "finished"
    })
    .await;
    let answers = load.stop().await;
    assert_eq!(rollout["state"], "rolled_back", "{rollout:#}");
    assert_eq!(
        decisions(&rollout),
        ["start", "step", "promote", "rollback"]
    );
    let reason = rollout["reason"].as_str().unwrap();
    assert!(
        reason.contains("watch after promotion") && reason.contains("error rate"),
        "{reason}"
    );
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(
        traffic,
        json!({"primary": "1"}),
        "version 1 is primary again"
    );
    for a in &answers {
        assert!(a.status == 200 || a.guarded_row, "{a:?}");
        assert!(
            a.sent < seen || a.version == "1",
            "{a:?} after the swap back"
        );
    }
    println!(
        "watch: swapped back {:.2} s after the first failing row was sent: {reason}",
        seen.duration_since(broke).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_traffic_decides_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo_with("random");
    let server = start(repo.path(), RuntimeChoice::Tract).await;
    let load = Load::start(&server, 4.0);
    let (status, body) = send(
        &server,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        json!({"version": "2", "steps": [50, 100], "step_duration": "1s", "min_requests": 50}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, rollout) = server.get(ROLLOUT).await;
    let answers = load.stop().await;
    assert_eq!(
        (&rollout["state"], &rollout["step_index"]),
        (&json!("progressing"), &json!(0)),
        "{rollout:#}"
    );
    assert_eq!(decisions(&rollout), ["start"]);
    let comparison = &rollout["comparison"];
    assert_eq!(comparison["judged"], false, "{comparison:#}");
    assert!(
        comparison["summary"]
            .as_str()
            .unwrap()
            .starts_with("waiting")
    );
    let canary = answers.iter().filter(|a| a.variant == "canary").count();
    assert!(canary > 0 && canary < 50, "{canary} canary answers");
    // Aborting sends everything back to version 1 at once; a second abort has nothing to stop.
    let (status, aborted) = send(&server, "DELETE", ROLLOUT, Value::Null).await;
    assert_eq!(
        (status, &aborted["state"]),
        (200, &json!("aborted")),
        "{aborted}"
    );
    assert_eq!(decisions(&aborted), ["start", "abort"]);
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(traffic, json!({"primary": "1"}));
    assert_eq!(send(&server, "DELETE", ROLLOUT, Value::Null).await.0, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_stage_fails_a_bad_model_before_it_answers_anyone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo_with("random");
    let server = start(repo.path(), RuntimeChoice::Tract).await;
    let load = Load::start(&server, 200.0);
    let (status, body) = send(
        &server,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        json!({"version": "2", "min_requests": 30,
               "shadow_stage": {"duration": "2s", "sample_rate": 1.0, "min_agreement": 0.9}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (&body["phase"], &body["weight"]),
        (&json!("shadow"), &json!(0.0))
    );
    let (rollout, _) = wait_for(&server, Duration::from_secs(20), |r| {
        r["state"] != "progressing"
    })
    .await;
    let answers = load.stop().await;
    assert_eq!(rollout["state"], "rolled_back", "{rollout:#}");
    let reason = rollout["reason"].as_str().unwrap();
    assert!(reason.contains("shadow agreement"), "{reason}");
    assert!(answers.iter().all(|a| a.status == 200 && a.version == "1"));
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(
        traffic,
        json!({"primary": "1"}),
        "the stage's shadow is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = repo_with("v2");
    let server = start(repo.path(), RuntimeChoice::Tract).await;
    let post = |body: Value| send(&server, "POST", "/admin/v1/models/mlp/rollouts", body);
    for (body, status, names) in [
        (json!({"steps": [5]}), 400, "version: missing"),
        (json!({"version": "2", "stpes": [5]}), 400, "stpes"),
        (json!({"version": "2", "steps": [50, 20]}), 400, "steps[1]"),
        (
            json!({"version": "2", "max_p99_ratio": 0.5}),
            400,
            "max_p99_ratio",
        ),
        (json!({"version": "x"}), 400, "version 'x'"),
        (json!({"version": "7"}), 404, "no loaded version 7"),
        (json!({"version": "1"}), 400, "already the primary"),
    ] {
        let (got, answer) = post(body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(names), "{body}: '{names}' not in {error}");
    }
    let (got, _) = send(
        &server,
        "POST",
        "/admin/v1/models/nope/rollouts",
        json!({"version": "2"}),
    )
    .await;
    assert_eq!(got, 404);
    assert_eq!(server.get(ROLLOUT).await.0, 404);
    let unauthorised = server
        .client
        .post(server.url("/admin/v1/models/mlp/rollouts"))
        .json(&json!({"version": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(traffic, json!({"primary": "1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_table_starts_a_rollout_for_a_polled_version() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    std::fs::write(
        repo.path().join("mlp/model.toml"),
        "[rollout]\nsteps = [50, 100]\nstep_duration = \"30s\"\nmin_requests = 10\n",
    )
    .unwrap();
    let mut config = test_config(repo.path(), RuntimeChoice::Tract);
    config.admin.token = Some(TOKEN.into());
    config.repository.poll_interval = Some(Duration::from_millis(200));
    // Latest 1: without the rollout, version 1 would be unloaded as soon as 2 appears.
    config.repository.version_policy = sluice::config::VersionPolicy::Latest(1);
    let server = TestServer::start(config).await;
    // The poller takes what is on disk when its task first runs as already loaded: let it run
    // before version 2 appears.
    tokio::time::sleep(Duration::from_millis(500)).await;
    copy_version(&bench_repo(), repo.path(), "mlp", 2, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let rollout = loop {
        let (status, rollout) = server.get(ROLLOUT).await;
        if status == 200 {
            break rollout;
        }
        if Instant::now() > deadline {
            let (_, model) = server.get("/admin/v1/models/mlp").await;
            panic!("no rollout started: {rollout}; model: {model:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            &rollout["version"],
            &rollout["baseline"],
            &rollout["weight"]
        ),
        (&json!(2), &json!(1), &json!(50.0)),
        "{rollout:#}"
    );
    assert_eq!(rollout["timeline"][0]["actor"], "repository poller");
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(
        traffic,
        json!({"primary": "1", "canary": {"version": "2", "weight": 50.0}})
    );
    // The baseline stays loaded, whatever the version policy says, while it is the target.
    let (_, model) = server.get("/admin/v1/models/mlp").await;
    assert_eq!(model["versions"].as_array().unwrap().len(), 2, "{model:#}");
    let (status, _) = send(&server, "DELETE", ROLLOUT, Value::Null).await;
    assert_eq!(status, 200);
    let (_, traffic) = server.get("/admin/v1/models/mlp/traffic").await;
    assert_eq!(traffic, json!({"primary": "1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failing_candidate_fails_the_same_rows_on_every_runtime() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let bodies = sample_bodies();
    for runtime in runtimes() {
        let repo = repo_with("failing");
        let server = start(repo.path(), runtime).await;
        let mut failed = 0;
        for (body, guarded) in &bodies {
            let (status, answer) = server
                .post("/v2/models/mlp/versions/2/infer", body.clone())
                .await;
            assert_eq!(status != 200, *guarded, "{runtime:?}: {status} {answer}");
            failed += usize::from(status != 200);
        }
        println!("{runtime:?}: {failed} of {} rows fail", bodies.len());
        assert_eq!(failed, 194, "{runtime:?}");
    }
}

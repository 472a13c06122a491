//! A fleet: `sluice` processes (the real binary, each with its own config and ports) that
//! follow one control topic on a real Kafka-protocol broker (tansu). A traffic change sent to
//! one replica is in force on the others within a second; a model load reaches all of them; a
//! replica started later comes up with the fleet's state before it reports ready; a rollback
//! decided by one replica's guard is applied by all; a replica killed with SIGKILL takes no
//! state with it; and while the broker is away, changes are refused with 503 and the replicas
//! keep serving what they have, catching up once it is back.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::kafka::{Tansu, tansu_available};
use crate::common::*;
use bytes::Bytes;
use serde_json::{Value, json};

const TOKEN: &str = "fleet-token";
const TOPIC: &str = "sluice.control";
const TRAFFIC: &str = "/admin/v1/models/mlp/traffic";
const ROLLOUT: &str = "/admin/v1/models/mlp/rollout";

/// One `sluice serve` process; killed (SIGKILL) when dropped.
struct Replica {
    name: &'static str,
    child: Child,
    base: String,
    /// Everything it printed, for the failure report.
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts a replica and returns once it logged that it is ready, with the time that took.
    fn start(name: &'static str, repo: &Path, brokers: &str) -> (Replica, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
host = "127.0.0.1"
http_port = 0
grpc_port = 0
metrics_port = 0
[repository]
path = {repo:?}
version_policy = "all"
[runtime]
default = "tract"
instances = 1
[admin]
token = "{TOKEN}"
[prediction_log]
sink = "none"
[rollout]
tick = "100ms"
[fleet]
control_topic = "{TOPIC}"
brokers = "{brokers}"
replica_id = "{name}"
apply_timeout = "3s"
"#
            ),
        )
        .unwrap();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SLUICE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let lines = Arc::clone(&output);
        // Reads the output to its end: a full pipe would stall the server.
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if line.contains("sluice is ready")
                    && let Some(rest) = line.split("http=").nth(1)
                {
                    let address = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = ready_tx.send(address);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = ready_rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| {
                let lines = output.lock().unwrap().join("\n");
                panic!("replica {name} did not become ready:\n{lines}")
            });
        let replica = Replica {
            name,
            child,
            base: format!("http://{address}"),
            output,
            _dir: dir,
        };
        (replica, started.elapsed())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let lines = self.output.lock().unwrap();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- replica {} (last lines)\n{}",
                self.name,
                tail.join("\n")
            );
        }
    }
}

async fn get(client: &reqwest::Client, replica: &Replica, path: &str) -> (u16, Value) {
    let response = client.get(replica.url(path)).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn send(
    client: &reqwest::Client,
    replica: &Replica,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .request(method, replica.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `path` on each replica until `done` holds there; returns, per replica, how long after
/// `since` it was first seen.
async fn seen_on(
    client: &reqwest::Client,
    replicas: &[&Replica],
    path: &str,
    since: Instant,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for replica in replicas {
        loop {
            let (status, body) = get(client, replica, path).await;
            if status == 200 && done(&body) {
                times.push(since.elapsed());
                break;
            }
            assert!(
                since.elapsed() < limit,
                "replica {}: {path} did not get there within {limit:?}: {status} {body}",
                replica.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    times
}

fn versions(model: &Value) -> Vec<u64> {
    model["versions"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["version"].as_u64()).collect())
        .unwrap_or_default()
}

fn millis(times: &[Duration]) -> String {
    let parts: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3))
        .collect();
    parts.join(", ")
}

/// Rows of the digits sample as v2 request bodies.
fn sample_bodies() -> Vec<Bytes> {
    mlp_sample_rows()
        .iter()
        .map(|row| {
            let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]});
            Bytes::from(serde_json::to_vec(&body).unwrap())
        })
        .collect()
}

/// One unversioned inference on `replica`: its status and the version that answered.
async fn infer(client: &reqwest::Client, replica: &Replica, body: Bytes) -> (u16, String) {
    let response = client
        .post(replica.url("/v2/models/mlp/infer"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("infer");
    let version = response
        .headers()
        .get("sluice-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (response.status().as_u16(), version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_follow_one_control_topic() {
    if !tansu_available() {
        return;
    }
    let mut broker = Tansu::start();
    broker.create_topic_with(TOPIC, 1, &["cleanup.policy=compact"]);
    let brokers = broker.brokers();
    // One repository for all: replicas on one machine. mlp 1 and 2 to start with.
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let client = reqwest::Client::new();

    let (a, _) = Replica::start("a", repo.path(), &brokers);
    let (b, _) = Replica::start("b", repo.path(), &brokers);
    let (mut c, _) = Replica::start("c", repo.path(), &brokers);

    // (a) A traffic change sent to A is in force on B and C within a second.
    let policy = json!({"primary": "1", "canary": {"version": "2", "weight": 10.0}});
    let sent = Instant::now();
    let (status, body) = send(&client, &a, "PUT", TRAFFIC, policy.clone()).await;
    let answered = sent.elapsed();
    assert_eq!((status, &body), (200, &policy), "{body}");
    // Read your writes: A answered once it applied the change itself.
    assert_eq!(get(&client, &a, TRAFFIC).await.1, policy);
    let times = seen_on(
        &client,
        &[&b, &c],
        TRAFFIC,
        sent,
        Duration::from_secs(5),
        |t| *t == policy,
    )
    .await;
    println!(
        "traffic change: A answered after {:.0} ms; in force on B, C after {}",
        answered.as_secs_f64() * 1e3,
        millis(&times)
    );
    for t in &times {
        assert!(*t < Duration::from_secs(1), "propagation took {t:?}");
    }

    // (b) A new version folder, loaded through B, reaches all three.
    let target = repo.path().join("mlp/3");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(
        fixtures().join("candidates/random/model.onnx"),
        target.join("model.onnx"),
    )
    .unwrap();
    let sent = Instant::now();
    let (status, report) = send(
        &client,
        &b,
        "POST",
        "/v2/repository/models/mlp/load",
        json!({}),
    )
    .await;
    let answered = sent.elapsed();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["versions"], json!([3, 2, 1]), "{report}");
    assert_eq!(report["loaded"], json!([3]), "{report}");
    let times = seen_on(
        &client,
        &[&a, &c],
        "/admin/v1/models/mlp",
        sent,
        Duration::from_secs(20),
        |m| versions(m) == [3, 2, 1],
    )
    .await;
    println!(
        "model load: B answered after {:.0} ms; version 3 loaded on A, C after {}",
        answered.as_secs_f64() * 1e3,
        millis(&times)
    );
    // The traffic policy pins version 1, so the new version answers nobody yet.
    for replica in [&a, &b, &c] {
        assert_eq!(get(&client, replica, TRAFFIC).await.1, policy);
    }

    // (c) A replica started now comes up with the fleet's state before it reports ready.
    let (d, took) = Replica::start("d", repo.path(), &brokers);
    let (_, model) = get(&client, &d, "/admin/v1/models/mlp").await;
    assert_eq!(versions(&model), [3, 2, 1], "{model}");
    assert_eq!(model["traffic"], policy, "{model}");
    let (status, _) = get(&client, &d, "/v2/health/ready").await;
    assert_eq!(status, 200);
    println!("late replica D: ready with the fleet's state after {took:?}");

    // (d) A rollback decided by A's guard (the only replica with traffic) is applied by all.
    let stop = Arc::new(AtomicBool::new(false));
    let bodies = Arc::new(sample_bodies());
    let load: Vec<_> = (0..6)
        .map(|i| {
            let (client, stop, bodies) = (client.clone(), Arc::clone(&stop), Arc::clone(&bodies));
            let base = a.base.clone();
            tokio::spawn(async move {
                let mut n = i * 101;
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = client
                        .post(format!("{base}/v2/models/mlp/infer"))
                        .header("content-type", "application/json")
                        .body(bodies[n % bodies.len()].clone())
                        .send()
                        .await
                        .expect("A answers");
                    statuses.push(response.status().as_u16());
                    n += 6;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                statuses
            })
        })
        .collect();
    let (status, started) = send(
        &client,
        &c,
        "POST",
        "/admin/v1/models/mlp/rollouts",
        json!({"version": "3", "steps": [50, 100], "step_duration": "1s", "min_requests": 30}),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].clone();
    // Started through C, in force on A (where the traffic is) at once.
    seen_on(
        &client,
        &[&a],
        ROLLOUT,
        Instant::now(),
        Duration::from_secs(1),
        |r| r["id"] == id,
    )
    .await;
    seen_on(
        &client,
        &[&a],
        ROLLOUT,
        Instant::now(),
        Duration::from_secs(30),
        |r| r["state"] != "progressing",
    )
    .await;
    let decided_at = Instant::now();
    let decided = get(&client, &a, ROLLOUT).await.1;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let statuses = task.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "A refused requests");
    }
    assert_eq!(decided["state"], "rolled_back", "{decided:#}");
    assert_eq!(decided["id"], id);
    let times = seen_on(
        &client,
        &[&b, &c, &d],
        ROLLOUT,
        decided_at,
        Duration::from_secs(5),
        |r| r["state"] == "rolled_back" && r["weight"] == 0.0 && r["id"] == id,
    )
    .await;
    println!(
        "rollback decided by A's guard ({}): in force on B, C, D within {} of A showing it",
        decided["reason"],
        millis(&times)
    );
    for replica in [&a, &b, &c, &d] {
        let (_, rollout) = get(&client, replica, ROLLOUT).await;
        let decisions: Vec<&str> = rollout["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["decision"].as_str().unwrap())
            .collect();
        assert_eq!(
            decisions,
            ["start", "rollback"],
            "{}: {rollout:#}",
            replica.name
        );
        assert_eq!(rollout["timeline"][1]["actor"], "guard");
        assert_eq!(
            get(&client, replica, TRAFFIC).await.1,
            json!({"primary": "1"})
        );
    }

    // (e) C is killed: the others keep serving and keep applying changes.
    c.kill();
    let policy = json!({"primary": "2"});
    let sent = Instant::now();
    let (status, body) = send(&client, &b, "PUT", TRAFFIC, policy.clone()).await;
    assert_eq!((status, &body), (200, &policy), "{body}");
    let times = seen_on(
        &client,
        &[&a, &d],
        TRAFFIC,
        sent,
        Duration::from_secs(5),
        |t| *t == policy,
    )
    .await;
    println!(
        "after C was killed: a change through B in force on A, D after {}",
        millis(&times)
    );
    for t in &times {
        assert!(*t < Duration::from_secs(1), "propagation took {t:?}");
    }
    for replica in [&a, &b, &d] {
        let (status, version) = infer(&client, replica, bodies[0].clone()).await;
        assert_eq!((status, version.as_str()), (200, "2"), "{}", replica.name);
    }

    // While the broker is away, a change is refused with 503 and nothing changes; once it is
    // back, changes flow again.
    broker.stop();
    let (status, body) = send(&client, &a, "PUT", TRAFFIC, json!({"primary": "1"})).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or("");
    assert!(error.contains("control topic unavailable"), "{error}");
    for replica in [&a, &b, &d] {
        assert_eq!(get(&client, replica, TRAFFIC).await.1, policy);
        let (status, version) = infer(&client, replica, bodies[1].clone()).await;
        assert_eq!((status, version.as_str()), (200, "2"), "{}", replica.name);
    }
    broker.resume();
    let policy = json!({"primary": "3"});
    let back = Instant::now();
    loop {
        let (status, body) = send(&client, &a, "PUT", TRAFFIC, policy.clone()).await;
        if status == 200 {
            assert_eq!(body, policy);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no change accepted after the broker came back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = back.elapsed();
    let times = seen_on(
        &client,
        &[&b, &d],
        TRAFFIC,
        back,
        Duration::from_secs(30),
        |t| *t == policy,
    )
    .await;
    println!(
        "broker back: first change accepted after {:.1} s, in force on B, D after {}",
        accepted.as_secs_f64(),
        millis(&times)
    );
}

//! The prediction log against a real Kafka-protocol broker (tansu) and librdkafka's mock
//! cluster: every prediction lands exactly once with the right model, version and variant;
//! shadow records carry their comparison; a broker that is down at start or goes away
//! mid-run costs clients nothing and loses no record the buffers can hold; beyond them,
//! drops are counted and memory stays bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::kafka::{Tansu, consume, tansu_available};
use crate::common::*;
use serde_json::{Value, json};
use sluice::config::{Config, VersionPolicy};
use sluice::predlog::SinkChoice;
use sluice_runtime::RuntimeChoice;

const TOKEN: &str = "log-token";
const TOPIC: &str = "sluice.predictions";
const EVENTS: &str = "sluice.events";

fn kafka_config(repo: &std::path::Path, brokers: &str) -> Config {
    let mut config = test_config(repo, RuntimeChoice::Tract);
    config.repository.version_policy = VersionPolicy::All;
    config.admin.token = Some(TOKEN.into());
    config.prediction_log.sink = SinkChoice::Kafka;
    config.prediction_log.kafka.brokers = brokers.into();
    config
}

/// mlp versions 1 and 2 (the bench model's two versions) and 3 (a copy of 2, for shadows).
fn three_versions() -> tempfile::TempDir {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    copy_version(&bench_repo(), repo.path(), "mlp", 2, 3);
    repo
}

async fn set_traffic(server: &TestServer, policy: Value) {
    let response = server
        .client
        .put(server.url("/admin/v1/models/mlp/traffic"))
        .bearer_auth(TOKEN)
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Sends requests `ids` (each with its own v2 `id`) from 16 concurrent clients; every one
/// must be answered 200.
async fn send(server: &Arc<TestServer>, ids: std::ops::Range<usize>) {
    let body: Value = read_json(&fixtures().join("bench/mlp_request_b1.json"));
    let ids: Vec<usize> = ids.collect();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let (server, body, chunk) = (server.clone(), body.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let mut body = body.clone();
                body["id"] = json!(format!("req-{id}"));
                let (status, answer) = server.post_json("/v2/models/mlp/infer", &body).await;
                assert_eq!(status, 200, "request {id}: {answer}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn log_stats(server: &TestServer) -> sluice::predlog::LogStats {
    server.server.as_ref().unwrap().log.stats()
}

/// Waits until the sink has acknowledged `n` prediction records.
async fn wait_delivered(server: &TestServer, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = log_stats(server);
        if stats.delivered >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records delivered: {stats:?}",
            stats.delivered
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Request id -> the non-shadow records carrying it.
fn by_request(records: &[(String, Value)]) -> HashMap<String, Vec<&Value>> {
    let mut map: HashMap<String, Vec<&Value>> = HashMap::new();
    for (key, record) in records {
        assert_eq!(record["schema"], "sluice.prediction.v1");
        assert_eq!(
            key,
            record["request_id"].as_str().unwrap(),
            "keyed by request id"
        );
        if record["variant"] != "shadow" {
            map.entry(key.clone()).or_default().push(record);
        }
    }
    map
}

fn assert_each_once(records: &[(String, Value)], ids: std::ops::Range<usize>) {
    let map = by_request(records);
    for id in ids.clone() {
        let found = map.get(&format!("req-{id}")).map_or(0, Vec::len);
        assert_eq!(found, 1, "request req-{id} has {found} records");
    }
    assert_eq!(map.len(), ids.len(), "records for requests never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prediction_lands_exactly_once_with_its_variant() {
    if !tansu_available() {
        return;
    }
    let broker = Tansu::start();
    broker.create_topic(TOPIC);
    broker.create_topic(EVENTS);
    let repo = three_versions();
    let server = Arc::new(TestServer::start(kafka_config(repo.path(), &broker.brokers())).await);
    set_traffic(
        &server,
        json!({"primary": "1", "canary": {"version": "2", "weight": 30}, "shadow": {"version": "3", "sample_rate": 1.0}}),
    )
    .await;
    let n = 3000;
    send(&server, 0..n).await;

    // Every request was copied to the shadow: wait until each copy ran, failed or was dropped.
    let deadline = Instant::now() + Duration::from_secs(60);
    let shadow = loop {
        let (_, view) = server.get("/admin/v1/models/mlp").await;
        let s = view["shadow"][0].clone();
        let seen = ["compared", "failed", "dropped"]
            .iter()
            .map(|k| s[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        if seen == n as u64 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "shadow copies unaccounted: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shadow_records = shadow["compared"].as_u64().unwrap() + shadow["failed"].as_u64().unwrap();
    let total = n as u64 + shadow_records;
    wait_delivered(&server, total, Duration::from_secs(60)).await;
    let stats = log_stats(&server);
    assert_eq!((stats.dropped, stats.failed), (0, 0), "{stats:?}");

    let records = consume(
        &broker.brokers(),
        TOPIC,
        total as usize,
        Duration::from_secs(60),
    );
    assert_eq!(records.len() as u64, total, "records in the topic");
    assert_each_once(&records, 0..n);
    let map = by_request(&records);
    let sent =
        read_json(&fixtures().join("bench/mlp_request_b1.json"))["inputs"][0]["data"].clone();
    let mut canary = 0;
    for (id, found) in &map {
        let record = found[0];
        assert_eq!(record["model"], "mlp");
        assert_eq!(record["status"], "ok");
        assert_eq!(record["protocol"], "v2_json");
        match record["variant"].as_str().unwrap() {
            "primary" => assert_eq!(record["version"], 1, "{id}"),
            "canary" => {
                assert_eq!(record["version"], 2, "{id}");
                canary += 1;
            }
            other => panic!("{id}: unexpected variant {other}"),
        }
        assert!(record["latency_us"].as_u64().is_some());
        assert_eq!(record["inputs"][0]["shape"], json!([1, 64]));
        // The values as the client wrote them (copied, not re-formatted from FP32).
        assert_eq!(record["inputs"][0]["data"], sent, "{id}");
        assert!(!record["outputs"].as_array().unwrap().is_empty());
    }
    let share = canary as f64 / n as f64;
    assert!((0.25..0.35).contains(&share), "canary share {share}");
    // Shadow records share the primary's request id and carry the comparison.
    let shadows: Vec<&Value> = records
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["variant"] == "shadow")
        .collect();
    assert_eq!(shadows.len() as u64, shadow_records);
    for record in shadows {
        let primary = map[record["request_id"].as_str().unwrap()][0];
        assert_eq!(record["version"], 3);
        assert_eq!(record["shadow"]["primary_version"], primary["version"]);
        assert!(
            record["shadow"]["max_abs_diff"].as_f64().is_some(),
            "{record}"
        );
        assert!(record.get("inputs").is_none());
    }

    // The events stream has the start-up load and the traffic change, with who asked.
    let events = consume(&broker.brokers(), EVENTS, 2, Duration::from_secs(30));
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"load") && kinds.contains(&"traffic"),
        "{kinds:?}"
    );
    let traffic = events.iter().find(|(_, e)| e["kind"] == "traffic").unwrap();
    assert_eq!(traffic.0, "mlp", "events are keyed by model");
    assert_eq!(traffic.1["schema"], "sluice.event.v1");
    assert!(
        traffic.1["actor"]
            .as_str()
            .unwrap()
            .contains("token holder"),
        "{}",
        traffic.1
    );
    assert_eq!(traffic.1["details"]["canary"]["version"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_for_a_broker_that_is_down_at_start() {
    if !tansu_available() {
        return;
    }
    let mut broker = Tansu::start();
    broker.create_topic(TOPIC);
    broker.create_topic(EVENTS);
    broker.stop();
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    let server = Arc::new(TestServer::start(kafka_config(repo.path(), &broker.brokers())).await);
    let n = 1000;
    send(&server, 0..n).await;
    assert_eq!(log_stats(&server).delivered, 0);
    broker.resume();
    wait_delivered(&server, n as u64, Duration::from_secs(90)).await;
    let records = consume(&broker.brokers(), TOPIC, n, Duration::from_secs(60));
    assert_each_once(&records, 0..n);
    let stats = log_stats(&server);
    assert_eq!((stats.dropped, stats.failed), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_run_loses_nothing() {
    if !tansu_available() {
        return;
    }
    let mut broker = Tansu::start();
    broker.create_topic(TOPIC);
    broker.create_topic(EVENTS);
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    let server = Arc::new(TestServer::start(kafka_config(repo.path(), &broker.brokers())).await);
    send(&server, 0..500).await;
    wait_delivered(&server, 500, Duration::from_secs(30)).await;
    broker.stop();
    send(&server, 500..1500).await;
    let during = log_stats(&server);
    assert_eq!(
        during.delivered, 500,
        "nothing can be delivered while the broker is down"
    );
    broker.resume();
    send(&server, 1500..2000).await;
    wait_delivered(&server, 2000, Duration::from_secs(90)).await;
    let records = consume(&broker.brokers(), TOPIC, 2000, Duration::from_secs(60));
    assert_each_once(&records, 0..2000);
    let stats = log_stats(&server);
    assert_eq!((stats.dropped, stats.failed), (0, 0), "{stats:?}");
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_buffers_records_are_dropped_and_counted_and_memory_stays_bounded() {
    // librdkafka's in-process mock cluster: its broker can be taken down and brought back.
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    cluster.create_topic(EVENTS, 1, 1).unwrap();
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1)]);
    let mut config = kafka_config(repo.path(), &cluster.bootstrap_servers());
    let backlog = 512 << 10;
    let producer_buffer = 1 << 20;
    config.prediction_log.backlog_bytes = backlog;
    config.prediction_log.kafka.producer_buffer_bytes = producer_buffer;
    let server = Arc::new(TestServer::start(config).await);
    send(&server, 0..100).await;
    wait_delivered(&server, 100, Duration::from_secs(30)).await;

    cluster.broker_down(1).unwrap();
    let before = rss();
    // Each record is ~1.5 KB (64 inputs, 10 outputs): 6,000 of them are ~9 MB, several times
    // what the 1.5 MiB of buffers hold.
    let n = 6000;
    send(&server, 100..100 + n).await;
    let during = log_stats(&server);
    assert!(during.dropped > 0, "nothing dropped: {during:?}");
    assert!(
        during.backlog_bytes <= backlog as usize,
        "backlog over its bound: {during:?}"
    );
    let grown = rss().saturating_sub(before);
    assert!(
        grown < backlog + producer_buffer + (48 << 20),
        "memory grew by {grown} bytes during the outage"
    );
    let dropped_metric = server
        .metric("sluice_predlog_dropped_total{stream=\"predictions\",reason=\"backlog_full\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(dropped_metric as u64, during.dropped);

    cluster.broker_up(1).unwrap();
    // Whatever was not dropped is delivered: nothing unaccounted for.
    let total = 100 + n as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = log_stats(&server);
        if s.delivered + s.dropped == total {
            assert_eq!(s.failed, 0, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "records unaccounted for: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = log_stats(&server).delivered as usize;
    let records = consume(
        &cluster.bootstrap_servers(),
        TOPIC,
        delivered,
        Duration::from_secs(30),
    );
    assert_eq!(records.len(), delivered);
}

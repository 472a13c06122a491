//! The monitoring files against a real Prometheus: sluice serves the example models under load
//! (canary, shadow, bad requests, dynamic batching, a guarded rollout, drift, ground-truth
//! outcomes against an offline baseline), its /metrics text passes `promtool check
//! metrics`, a real `prometheus` process scrapes it every second with the project's alert rules
//! loaded, and every PromQL expression of the Grafana dashboard and of the alert rules must
//! return data.
//!
//! How alert expressions are evaluated: an alert's `expr` returns nothing while the alert is
//! quiet, so it is split at its top-level `and`/`unless` (dropping the `on (...)`/`ignoring
//! (...)` that follows), and each part is run without its final top-level comparison: for
//! `p99 > 0.5 and on (m) rate > 1` the queries are `p99` and `rate`. Each must return data,
//! i.e. every value an alert compares exists while sluice serves. The expressions are taken
//! from Prometheus' own rules API after it loaded `docker/prometheus/alerts.yml` (so no YAML
//! parser is needed, and Prometheus must have accepted and evaluated every rule); their names
//! are checked against the `- alert:` lines of the file.
//!
//! Needs `prometheus` and `promtool` on PATH (Debian: `apt-get install prometheus`); without
//! them the test is skipped, unless `SLUICE_REQUIRE_PROMETHEUS=1` (set by scripts/test.sh),
//! which makes it fail. Needs ONNX Runtime (the credit example is a two-class tree ensemble,
//! which tract refuses).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice::predlog::SinkChoice;
use sluice_runtime::RuntimeChoice;

/// Metric-name prefixes of metrics that sluice does not export yet. Expressions using them
/// are skipped with a note. Every feature has landed, so the list is empty: every dashboard
/// and alert expression must return data.
const PENDING_METRIC_PREFIXES: &[&str] = &[];

/// What Grafana's variables become when an expression is evaluated here. `$__rate_interval`
/// is at least four scrape intervals in Grafana; a minute covers the whole test.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("${model}", ".*"),
    ("$model", ".*"),
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "5m"),
];

/// Series that must be in sluice's /metrics before Prometheus is asked anything: each is
/// provoked by the setup and load below (a canary, bad requests, stacked batches, a shadow with
/// a tiny queue that both compares and drops copies, a prediction log with a one-record
/// backlog that delivers and drops, and an events file on a full disk).
const PROVOKED: &[&str] = &[
    "variant=\"canary\"",
    "variant=\"direct\"",
    "variant=\"shadow\"",
    "outcome=\"bad_request\"",
    "sluice_batch_rows_bucket",
    "sluice_shadow_label_rows_agreeing_total",
    "sluice_shadow_max_abs_diff_bucket",
    "sluice_shadow_dropped_total",
    "sluice_predlog_backlog_records",
    "sluice_predlog_delivered_total",
    "sluice_predlog_dropped_total",
    "sluice_predlog_failed_total",
    "kind=\"traffic\"",
];

/// Series provoked in a second phase: a guarded rollout of credit v2 (it steps and is
/// promoted), and drift against the profiles the test writes.
const PROVOKED_LATER: &[&str] = &[
    "sluice_rollout_state",
    "sluice_rollout_canary_weight_percent",
    "sluice_rollout_decisions_total",
    "sluice_drift_psi",
    "sluice_drift_ks",
    "sluice_prediction_drift_psi",
    "sluice_prediction_drift_ks",
    "sluice_drift_window_rows",
];

/// Series provoked in a third phase: ground-truth outcomes for credit (labels of both
/// classes, rewards) and for a regressor (values), joined with the requests they name, with
/// credit's profiles carrying an offline baseline (`--labels`) and an index small enough that
/// the bursts evict from it.
const PROVOKED_QUALITY: &[&str] = &[
    "sluice_outcomes_total",
    "sluice_quality_outcomes_total",
    "sluice_quality_correct_total",
    "sluice_quality_accuracy",
    "sluice_quality_log_loss",
    "sluice_quality_brier",
    "sluice_quality_roc_auc",
    "sluice_quality_mae",
    "sluice_quality_rmse",
    "sluice_quality_reward_mean",
    "sluice_quality_baseline_accuracy",
    "sluice_quality_below_baseline",
    "sluice_outcome_index_predictions",
    "sluice_outcome_index_evictions_total{reason=\"capacity\"}",
];

/// The regressor candidate (64 FP32 features, one value out), for the MAE/RMSE panels.
const REGRESSOR: &str = "regressor";

/// A scratch copy of credit v1 and v2, each with a drift profile built (by the library, as
/// `sluice profile` does) from 400 rows scattered around the example requests' rows, labelled
/// as the rows they scatter around (the offline baseline); and the regressor candidate.
fn credit_with_profiles() -> tempfile::TempDir {
    let repo = scratch_repo(&examples_repo(), &[("credit", 1), ("credit", 2)]);
    let regressor = repo.path().join(REGRESSOR).join("1");
    std::fs::create_dir_all(&regressor).unwrap();
    std::fs::copy(
        fixtures().join("candidates/regressor/model.onnx"),
        regressor.join("model.onnx"),
    )
    .unwrap();
    let request = read_json(&fixtures().join("examples/credit_v1_request_b4.json"));
    let rows: Vec<f64> = request["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = || {
        // xorshift: deterministic noise in [-1, 1).
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let mut csv = String::new();
    for i in 0..400 {
        let row = &rows[(i % 4) * 10..(i % 4) * 10 + 10];
        let line: Vec<String> = row.iter().map(|x| format!("{}", x + noise())).collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    let sample = repo.path().join("credit_sample.csv");
    std::fs::write(&sample, csv).unwrap();
    let expected = read_json(&fixtures().join("examples/credit_v1_expected_b4.json"));
    let classes = &expected["outputs"][0]["data"];
    let labels: String = (0..400).map(|i| format!("{}\n", classes[i % 4])).collect();
    let labels_path = repo.path().join("credit_labels.txt");
    std::fs::write(&labels_path, labels).unwrap();
    let mut config = test_config(repo.path(), RuntimeChoice::Ort);
    config.repository.path = repo.path().to_path_buf();
    for version in [1, 2] {
        let request = sluice::profiling::ProfileRequest {
            model: MODEL.into(),
            version,
            sample: sample.clone(),
            runtime: Some(RuntimeChoice::Ort),
            quantiles: 100,
            input: None,
            output: None,
            labels: Some(labels_path.clone()),
        };
        sluice::profiling::write_profile(&config, &request).expect("profile");
    }
    repo
}

const MODEL: &str = "credit";

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name`'s path when it is an executable file on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `prometheus` and `promtool`, or None (skip) when either is missing, unless
/// `SLUICE_REQUIRE_PROMETHEUS=1`.
fn prometheus_tools() -> Option<(PathBuf, PathBuf)> {
    let found = on_path("prometheus").zip(on_path("promtool"));
    if found.is_none() {
        let message = "prometheus/promtool not on PATH (Debian: apt-get install prometheus)";
        if std::env::var("SLUICE_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1") {
            panic!("SLUICE_REQUIRE_PROMETHEUS=1 but {message}");
        }
        eprintln!("SKIPPED: {message}; set SLUICE_REQUIRE_PROMETHEUS=1 to make this a failure");
    }
    found
}

/// A `prometheus` process with its own storage; killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every second as job `sluice` (the job
    /// name the SluiceDown alert expects), evaluating `rules` every second.
    fn start(binary: &Path, target: &str, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = json!(rules.display().to_string()),
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_text());
            }
            let ready = client
                .get(format!("{}/-/ready", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query; the `data` object of a successful answer.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Result<Value, String> {
        let response = client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"].clone())
    }

    async fn rules(&self, client: &reqwest::Client) -> Value {
        let response = client
            .get(format!("{}/api/v1/rules", self.base))
            .send()
            .await
            .expect("GET /api/v1/rules");
        response.json().await.expect("rules JSON")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a query answer holds at least one sample (an instant vector with a series, or a
/// scalar).
fn has_data(data: &Value) -> bool {
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => true,
        _ => data["result"].as_array().is_some_and(|r| !r.is_empty()),
    }
}

/// The metric names (identifiers starting `sluice_`) an expression uses.
fn metric_names(expr: &str) -> BTreeSet<&str> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            if expr[start..i].starts_with("sluice_") {
                names.insert(&expr[start..i]);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn pending_metrics(expr: &str) -> Vec<&str> {
    metric_names(expr)
        .into_iter()
        .filter(|name| PENDING_METRIC_PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect()
}

/// Byte offsets of `expr` that are at nesting depth 0 (outside (), [], {} and quotes).
fn top_level(expr: &str) -> Vec<bool> {
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    let mut out = Vec::with_capacity(expr.len());
    for &b in expr.as_bytes() {
        let mut here = false;
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' | b'`' => quote = Some(b),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ => here = depth == 0,
            },
        }
        out.push(here);
    }
    out
}

/// Offset of each top-level occurrence of keyword `word` (case-insensitive, whole word).
fn keyword_offsets(expr: &str, word: &str) -> Vec<usize> {
    let top = top_level(expr);
    let lower = expr.to_ascii_lowercase();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let bytes = expr.as_bytes();
    lower
        .match_indices(word)
        .map(|(i, _)| i)
        .filter(|&i| {
            let end = i + word.len();
            top[i]
                && (i == 0 || !is_ident(bytes[i - 1]))
                && (end == bytes.len() || !is_ident(bytes[end]))
        })
        .collect()
}

/// Drops a leading `on (...)` or `ignoring (...)` vector-matching modifier.
fn strip_matching_modifier(part: &str) -> &str {
    let trimmed = part.trim_start();
    for modifier in ["on", "ignoring"] {
        let Some(rest) = trimmed.strip_prefix(modifier) else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(inner) = rest.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            return inner[close + 1..].trim_start();
        }
    }
    trimmed
}

/// `part` without its last top-level comparison (`> 0.5`, `== 0`, ...).
fn strip_comparison(part: &str) -> &str {
    let top = top_level(part);
    let bytes = part.as_bytes();
    let mut cut = None;
    let mut i = 0;
    while i < bytes.len() {
        if top[i] {
            let two = bytes.get(i..i + 2);
            if matches!(two, Some(b"==" | b"!=" | b">=" | b"<=")) {
                cut = Some(i);
                i += 2;
                continue;
            }
            if matches!(bytes[i], b'>' | b'<') {
                cut = Some(i);
            }
        }
        i += 1;
    }
    match cut {
        Some(at) => part[..at].trim(),
        None => part.trim(),
    }
}

/// The value expressions an alert compares (see the file's doc comment).
fn alert_value_exprs(expr: &str) -> Vec<String> {
    let mut cuts: Vec<(usize, usize)> = ["and", "unless"]
        .iter()
        .flat_map(|w| keyword_offsets(expr, w).into_iter().map(|i| (i, w.len())))
        .collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, len) in cuts {
        parts.push(&expr[start..at]);
        start = at + len;
    }
    parts.push(&expr[start..]);
    parts
        .into_iter()
        .map(|p| strip_comparison(strip_matching_modifier(p)).to_string())
        .collect()
}

/// Grafana variables replaced; panics on one this test does not know.
fn substitute_grafana(expr: &str) -> String {
    let mut out = expr.to_string();
    for (variable, value) in GRAFANA_VARIABLES {
        out = out.replace(variable, value);
    }
    assert!(
        !out.contains('$'),
        "unknown Grafana variable in {expr:?}: add it to GRAFANA_VARIABLES"
    );
    out
}

/// Every `targets[].expr` of every panel (rows' nested panels included), with the panel title.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("panel {title:?}"), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    // Template variables: `label_values(metric, label)` is Grafana's; its PromQL is the metric.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            let (metric, label) = args.rsplit_once(',').unwrap_or(("", args));
            let metric = if metric.trim().is_empty() {
                format!("{{{}!=\"\"}}", label.trim())
            } else {
                metric.trim().to_string()
            };
            out.push((format!("variable ${}", variable["name"]), metric));
        }
    }
    out
}

/// Alert names as written in alerts.yml (`- alert: Name` lines).
fn alert_names_in_file(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

/// Runs `promtool check metrics` on exposition text; panics with its output on failure.
fn promtool_check_metrics(promtool: &Path, text: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- metrics ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

async fn set_traffic(server: &TestServer, policy: Value) {
    let response = server
        .client
        .put(server.url(&format!("/admin/v1/models/{MODEL}/traffic")))
        .json(&policy)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "traffic policy refused: {status} {body}"
    );
}

/// One burst: `clients` concurrent clients, each sending a round of requests: unversioned
/// (split between primary and canary, copied to the shadow), one naming version 1, a
/// four-row one, and one with a wrong shape (400, counted as bad_request).
async fn burst(server: &Arc<TestServer>, clients: usize) {
    let examples = fixtures().join("examples");
    let one = std::fs::read(examples.join("credit_v1_request_b1.json")).unwrap();
    let four = std::fs::read(examples.join("credit_v1_request_b4.json")).unwrap();
    let bad = serde_json::to_vec(&json!({"inputs": [
        {"name": "input", "shape": [1, 11], "datatype": "FP32", "data": vec![0.0; 11]}
    ]}))
    .unwrap();
    let unversioned = format!("/v2/models/{MODEL}/infer");
    let versioned = format!("/v2/models/{MODEL}/versions/1/infer");
    let requests: Vec<(String, Vec<u8>, u16)> = vec![
        (unversioned.clone(), one.clone(), 200),
        (unversioned.clone(), one.clone(), 200),
        (unversioned.clone(), four, 200),
        (unversioned.clone(), one.clone(), 200),
        (versioned, one, 200),
        (unversioned, bad, 400),
    ];
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (server, requests) = (server.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            for (path, body, expected) in requests {
                let (status, answer) = server.post(&path, body).await;
                assert_eq!(status, expected, "{path}: {answer}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Phase three: requests with ids of their own, then their outcomes (see
/// [`PROVOKED_QUALITY`]); returns /metrics once every quality series is in it (the quality
/// controller publishes the gauges every 2 s).
async fn provoke_quality(server: &TestServer) -> String {
    let examples = fixtures().join("examples");
    let mut credit = read_json(&examples.join("credit_v1_request_b1.json"));
    let mut outcomes = Vec::new();
    for i in 0..50 {
        let id = format!("quality-{i}");
        credit["id"] = json!(id);
        let (status, body) = server
            .post_json(&format!("/v2/models/{MODEL}/infer"), &credit)
            .await;
        assert_eq!(status, 200, "{body}");
        // Labels of both classes, so that the two-class AUC has positives and negatives; one
        // outcome a row (a second for the same row is a duplicate), so rewards on rows of
        // their own.
        outcomes.push(if i < 40 {
            json!({"id": id, "label": i % 2})
        } else {
            json!({"id": id, "reward": f64::from(i % 3)})
        });
    }
    let (status, counts) = server
        .post_json(
            &format!("/v2/models/{MODEL}/outcomes"),
            &json!({ "outcomes": outcomes }),
        )
        .await;
    assert_eq!(status, 200, "{counts}");
    let mut values = Vec::new();
    for i in 0..10 {
        let id = format!("quality-value-{i}");
        let body = json!({"id": id, "inputs": [{"name": "input", "shape": [1, 64],
                          "datatype": "FP32", "data": vec![i as f32 * 0.1; 64]}]});
        let (status, answer) = server
            .post_json(&format!("/v2/models/{REGRESSOR}/infer"), &body)
            .await;
        assert_eq!(status, 200, "{answer}");
        values.push(json!({"id": id, "value": f64::from(i)}));
    }
    let (status, counts) = server
        .post_json(
            &format!("/v2/models/{REGRESSOR}/outcomes"),
            &json!({ "outcomes": values }),
        )
        .await;
    assert_eq!(status, 200, "{counts}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.metrics_text().await;
        let missing: Vec<_> = PROVOKED_QUALITY
            .iter()
            .filter(|s| !text.contains(*s))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "30s after the outcomes, /metrics still lacks {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_expressions_return_data_from_a_real_prometheus() {
    let Some((prometheus_bin, promtool)) = prometheus_tools() else {
        return;
    };
    if !ort_available() {
        eprintln!(
            "SKIPPED: no ONNX Runtime library (scripts/fetch-ort.sh); the credit example needs it"
        );
        return;
    }
    let root = project_root();
    let alerts_path = root.join("docker/prometheus/alerts.yml");
    let dashboard_path = root.join("docker/grafana/dashboards/sluice.json");

    let repo = tokio::task::spawn_blocking(credit_with_profiles)
        .await
        .unwrap();
    let mut config = test_config(repo.path(), RuntimeChoice::Ort);
    // One worker and batching on, so concurrent requests queue and get stacked.
    config.runtime.instances = 1;
    config.runtime.batching = sluice_runtime::Batching {
        max_batch_size: 8,
        max_queue_delay_us: 500,
    };
    // A join index the bursts overflow, so that it evicts by capacity.
    config.outcomes.max_predictions = 128;
    // A one-slot shadow queue: some copies are compared, others dropped (both are metrics).
    config.traffic.shadow_workers = 1;
    config.traffic.shadow_queue = 1;
    // The file prediction log with a one-record backlog, so bursts both deliver and drop
    // records; the events stream writes to /dev/full, a disk that is always full, so its
    // writes fail.
    let logs = tempfile::tempdir().unwrap();
    config.prediction_log.sink = SinkChoice::File;
    config.prediction_log.file.path = logs.path().join("predictions.jsonl");
    config.prediction_log.file.events_path = PathBuf::from("/dev/full");
    config.prediction_log.backlog_records = 1;
    let server = Arc::new(TestServer::start(config).await);
    let metrics_addr = server.server.as_ref().unwrap().metrics_addr;

    // Version 1 primary, version 2 takes 30 % as canary and sees every request as shadow.
    set_traffic(
        &server,
        json!({"primary": "1", "canary": {"version": "2", "weight": 30.0},
               "shadow": {"version": "2", "sample_rate": 1.0}}),
    )
    .await;

    let mut prometheus =
        Prometheus::start(&prometheus_bin, &metrics_addr.to_string(), &alerts_path);
    let client = reqwest::Client::new();
    prometheus.wait_ready(&client).await;

    // Load until every provoked series is in /metrics (the shadow drops depend on timing).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        burst(&server, 32).await;
        // A lull: the file sink counts records as delivered when it flushes, which it does
        // once no record has come for a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = server.metrics_text().await;
        let missing: Vec<_> = PROVOKED.iter().filter(|s| !text.contains(*s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60s of load, /metrics still lacks {missing:?}:\n{text}"
        );
    }
    // Phase two: the manual canary ends, and a guarded rollout takes credit v2 through two
    // short steps to promotion; the drift windows fill meanwhile.
    set_traffic(&server, json!({"primary": "1"})).await;
    let (status, body) = server
        .post_json(
            &format!("/admin/v1/models/{MODEL}/rollouts"),
            &json!({"version": "2", "steps": [50, 100], "step_duration": "1s",
                    "min_requests": 5, "watch_period": "0s"}),
        )
        .await;
    assert_eq!(status, 201, "rollout refused: {body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        burst(&server, 8).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = server.metrics_text().await;
        let missing: Vec<_> = PROVOKED_LATER
            .iter()
            .filter(|s| !text.contains(*s))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60s of load with a rollout and profiles, /metrics still lacks {missing:?}"
        );
    }
    let text = provoke_quality(&server).await;
    promtool_check_metrics(&promtool, &text);

    // A trickle of traffic while Prometheus is queried, so rates are not all zero.
    let running = Arc::new(AtomicBool::new(true));
    let trickle = {
        let (server, running) = (server.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                burst(&server, 2).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Every alert of the file loaded and evaluated without error.
    let file_alerts = alert_names_in_file(&std::fs::read_to_string(&alerts_path).unwrap());
    assert!(!file_alerts.is_empty(), "no `- alert:` lines in alerts.yml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts: Vec<(String, String)> = loop {
        let rules = prometheus.rules(&client).await;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = all.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001-"))
        });
        if evaluated && !all.is_empty() {
            for rule in &all {
                assert_eq!(
                    rule["health"], "ok",
                    "rule {} failed to evaluate: {}",
                    rule["name"], rule["lastError"]
                );
            }
            break all
                .iter()
                .filter(|r| r["type"] == "alerting")
                .map(|r| {
                    (
                        r["name"].as_str().unwrap().to_string(),
                        r["query"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not evaluate the rules within 30s: {rules}\n{}",
            prometheus.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let loaded: BTreeSet<String> = alerts.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(
        loaded, file_alerts,
        "alerts Prometheus loaded vs `- alert:` lines in alerts.yml"
    );

    // Every expression to check, with where it came from.
    let mut checks: Vec<(String, String)> = Vec::new();
    for (name, query) in &alerts {
        for part in alert_value_exprs(query) {
            checks.push((format!("alert {name}"), part));
        }
    }
    let dashboard = read_json(&dashboard_path);
    let panels = dashboard_exprs(&dashboard);
    assert!(
        !panels.is_empty(),
        "no expressions found in {dashboard_path:?}"
    );
    for (origin, expr) in panels {
        checks.push((origin, substitute_grafana(&expr)));
    }

    // Rates need two scrapes of a series; retry each expression for a while before failing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut with_data, mut pending, mut failures) = (0, Vec::new(), Vec::new());
    for (origin, expr) in &checks {
        let waiting_on = pending_metrics(expr);
        if !waiting_on.is_empty() {
            pending.push(format!(
                "{origin}: {expr}  (pending: {})",
                waiting_on.join(", ")
            ));
            continue;
        }
        loop {
            match prometheus.query(&client, expr).await {
                Ok(data) if has_data(&data) => {
                    with_data += 1;
                    break;
                }
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(_) => {
                    failures.push(format!("{origin}: no data from {expr}"));
                    break;
                }
                Err(error) => {
                    failures.push(format!("{origin}: {error} in {expr}"));
                    break;
                }
            }
        }
    }
    running.store(false, Ordering::Relaxed);
    trickle.await.unwrap();

    eprintln!(
        "{with_data} of {} expressions returned data; {} skipped as pending:",
        checks.len(),
        pending.len()
    );
    for note in &pending {
        eprintln!("  PENDING {note}");
    }
    assert!(
        failures.is_empty(),
        "{} expression(s) failed:\n  {}\n--- prometheus log ---\n{}",
        failures.len(),
        failures.join("\n  "),
        prometheus.log_text()
    );
    assert!(with_data > 0);
}

#[test]
fn alert_parts_lose_their_comparisons() {
    assert_eq!(
        alert_value_exprs("up{job=\"sluice\"} == 0"),
        ["up{job=\"sluice\"}"]
    );
    assert_eq!(
        alert_value_exprs(
            "histogram_quantile(0.99, sum by (m, le) (rate(x_bucket{a!=\"b\"}[5m]))) > 0.5 \
             and on (m) sum by (m) (rate(x_count[5m])) > 1"
        ),
        [
            "histogram_quantile(0.99, sum by (m, le) (rate(x_bucket{a!=\"b\"}[5m])))",
            "sum by (m) (rate(x_count[5m]))"
        ]
    );
    assert_eq!(
        alert_value_exprs("(a or b * 0) / c > 0.05"),
        ["(a or b * 0) / c"]
    );
    // Keywords inside label values or names are not operators.
    assert_eq!(
        alert_value_exprs("x{state=\"rolled_back and more\"} >= 1 unless ignoring (k) sandy"),
        ["x{state=\"rolled_back and more\"}", "sandy"]
    );
    assert_eq!(
        metric_names("rate(sluice_a_total[1m]) / sluice_b"),
        ["sluice_a_total", "sluice_b"].into()
    );
}

//! The `sluice` binary itself: serve and drain on SIGTERM, check-config, models, profile with
//! labels (the offline quality baseline, against onnxruntime's and scikit-learn's numbers).

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn serve_answers_then_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The default sink (local JSON lines), pointed into the scratch folder.
    let predictions = dir.path().join("logs/predictions.jsonl");
    let events = dir.path().join("logs/events.jsonl");
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nhost = \"127.0.0.1\"\n[prediction_log.file]\npath = {:?}\nevents_path = {:?}\n",
            predictions, events
        ),
    );
    let mut child = serve_command(&config, &examples_repo()).spawn().unwrap();
    // The ready line names the bound HTTP address.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut address = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line
            .split("http=")
            .nth(1)
            .filter(|_| line.contains("sluice is ready"))
        {
            address = rest.split_whitespace().next().map(str::to_string);
            break;
        }
        assert!(Instant::now() < deadline, "server did not become ready");
    }
    let address = address.expect("ready line with the HTTP address");
    // Its first value written as `0e0`, which formatting the FP32 value would write `0.0`.
    let body = std::fs::read_to_string(fixtures().join("examples/digits_v1_request_b1.json"))
        .unwrap()
        .replacen("\"data\":[0.0,", "\"data\":[0e0,", 1);
    assert!(body.contains("[0e0,"));
    let client = reqwest::blocking::Client::new();
    let response = client
        .post(format!("http://{address}/v2/models/digits/infer"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    // `sluice ctl` against it: read and change the traffic policy, read the stats and the
    // (absent) rollout. Loopback callers may change things when no token is configured.
    let ctl = |args: &[&str]| {
        let output = sluice()
            .args(["ctl", "--url", &format!("http://{address}")])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, set) = ctl(&["traffic", "digits", "--set", r#"{"primary": "1"}"#]);
    assert!(ok, "{set}");
    let (ok, shown) = ctl(&["traffic", "digits"]);
    assert!(ok && shown.contains("\"primary\": \"1\""), "{shown}");
    let (ok, stats) = ctl(&["stats", "digits"]);
    assert!(ok && stats.contains("\"requests\": 1"), "{stats}");
    let (ok, bad) = ctl(&["traffic", "digits", "--set", "{primary"]);
    assert!(!ok && bad.contains("--set is not valid JSON"), "{bad}");
    let (ok, refused) = ctl(&["rollout", "digits", "--start", "7"]);
    assert!(!ok && refused.contains("404"), "{refused}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
    assert!(
        client
            .get(format!("http://{address}/v2/health/live"))
            .send()
            .is_err()
    );
    // The shutdown flushed the prediction log: one record for the one request, and the
    // start-up loads in the events file.
    let lines = std::fs::read_to_string(&predictions).unwrap();
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{lines}");
    assert_eq!(records[0]["schema"], "sluice.prediction.v1");
    assert_eq!(records[0]["model"], "digits");
    // The logged inputs are the client's own text, copied as sent.
    assert!(lines.contains("\"data\":[0e0,0.0,7.0,"), "{lines}");
    assert_eq!(records[0]["status"], "ok");
    assert_eq!(records[0]["variant"], "primary");
    let events = std::fs::read_to_string(&events).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"kind\":\"load\"") && l.contains("\"model\":\"digits\"")),
        "{events}"
    );
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[server]\nhttp_port = 9000\ngrpc_port = 9000\n[runtime]\ninstances = 0\n[repository]\npath = \"/nonexistent\"\n",
    );
    let output = sluice()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("server.http_port and server.grpc_port are both 9000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("runtime.instances must be at least 1"),
        "{stdout}"
    );
    assert!(stdout.contains("repository.path"), "{stdout}");

    let typo = write_config(dir.path(), "[server]\nhttp_prot = 1\n");
    let output = sluice()
        .args(["check-config", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("http_prot"));

    let output = sluice()
        .args(["check-config", "--model-repository"])
        .arg(examples_repo())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn models_lists_the_repository() {
    let output = sluice()
        .args(["models", "--model-repository"])
        .arg(bench_repo())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mlp = stdout
        .lines()
        .find(|l| l.starts_with("mlp"))
        .expect("mlp listed");
    assert!(mlp.contains("2,1"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("churn")), "{stdout}");
}

/// `sluice profile` on the credit model's held-out rows (its tree evaluator: no ONNX Runtime)
/// and `labels`, into `profile.json` next to the model; its output.
fn profile_with_labels(repo: &std::path::Path, labels: &std::path::Path) -> std::process::Output {
    let quality = fixtures().join("quality");
    sluice()
        .args(["profile", "--model-repository"])
        .arg(repo)
        .args(["--model", "credit", "--version", "1", "--sample"])
        .arg(quality.join("credit_holdout.npy"))
        .arg("--labels")
        .arg(labels)
        .output()
        .unwrap()
}

#[test]
fn profile_with_labels_stores_the_offline_quality() {
    let repo = scratch_repo(&examples_repo(), &[("credit", 1)]);
    let quality = fixtures().join("quality");
    // Counted by onnxruntime and scored by scikit-learn (make_quality_reference.py).
    let reference = read_json(&quality.join("credit_quality_reference.json"));
    let rows = reference["rows"].as_u64().unwrap() as usize;
    let correct = reference["correct"].as_u64().unwrap() as f64;
    let profile_path = repo.path().join("credit/1/profile.json");
    let mut stored = Vec::new();
    for labels in ["credit_labels.npy", "credit_labels.txt"] {
        let output = profile_with_labels(repo.path(), &quality.join(labels));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{labels}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("quality on 500 labelled rows"), "{stdout}");
        let profile = read_json(&profile_path);
        let q = &profile["quality"];
        assert_eq!(q["labels"], labels);
        assert_eq!(q["rows"], rows);
        assert_eq!(q["accuracy"].as_f64(), Some(correct / rows as f64), "{q}");
        let log_loss = q["log_loss"].as_f64().unwrap();
        let expected = reference["log_loss"].as_f64().unwrap();
        assert!(
            (log_loss - expected).abs() < 1e-6,
            "{log_loss} vs {expected}"
        );
        // Exact, not binned: onnxruntime's and the tree evaluator's probabilities differ by
        // float32 rounding at most, which reorders no pair here.
        let auc = q["roc_auc"].as_f64().unwrap();
        let expected = reference["roc_auc"].as_f64().unwrap();
        assert!((auc - expected).abs() < 1e-9, "{auc} vs {expected}");
        stored.push(q.clone());
    }
    assert_eq!(stored[0]["accuracy"], stored[1]["accuracy"]);
    // What the quality controller reads as the alert's baseline.
    assert_eq!(
        sluice::drift::profile::baseline_accuracy(&repo.path().join("credit/1")),
        Some(correct / rows as f64)
    );

    // One label short: refused, saying what is wrong, and the stored profile stays.
    let text = std::fs::read_to_string(quality.join("credit_labels.txt")).unwrap();
    let short = repo.path().join("short.txt");
    std::fs::write(&short, text.trim_end().rsplit_once('\n').unwrap().0).unwrap();
    let before = std::fs::read(&profile_path).unwrap();
    let output = profile_with_labels(repo.path(), &short);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("499 labels for the 500 rows of credit_holdout.npy"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&profile_path).unwrap(), before);
    // A fraction is no class.
    let fraction = repo.path().join("fraction.txt");
    std::fs::write(&fraction, text.replacen("\n1\n", "\n0.5\n", 1)).unwrap();
    let stderr =
        String::from_utf8_lossy(&profile_with_labels(repo.path(), &fraction).stderr).into_owned();
    assert!(stderr.contains("0.5 is not a class label"), "{stderr}");
}

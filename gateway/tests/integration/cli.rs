//! The `sluice` binary itself: serve and drain on SIGTERM, check-config, models.

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
    let body = std::fs::read(fixtures().join("examples/digits_v1_request_b1.json")).unwrap();
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

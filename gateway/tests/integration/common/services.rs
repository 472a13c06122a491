//! Python-based services the source tests run for real (a moto S3 server, an MLflow tracking
//! server), from the test virtualenv (`scripts/python-deps.sh`): each in its own process
//! group, stopped as a group when dropped (both spawn workers).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A command of the test virtualenv (`moto_server`, `mlflow`), next to `$VENV_PYTHON` (else
/// `<root>/.venv/bin`). Without it the caller skips with a notice, unless
/// `SLUICE_REQUIRE_PYTHON=1`, where this fails.
pub fn venv_tool(name: &str) -> Option<PathBuf> {
    let tool = super::venv_python()?
        .parent()
        .map(|bin| bin.join(name))
        .filter(|t| t.is_file());
    if tool.is_none() && std::env::var("SLUICE_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!(
            "SLUICE_REQUIRE_PYTHON=1 but {name} is not in the test virtualenv: run \
             scripts/python-deps.sh"
        );
    }
    tool
}

/// A child process leading its own process group; dropping it stops the whole group.
pub struct ServiceGroup {
    child: Option<Child>,
    pub name: &'static str,
}

impl ServiceGroup {
    /// Spawns `command` as the leader of a new process group; its output goes to `log`.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> ServiceGroup {
        let out = std::fs::File::create(log).expect("service log");
        let err = out.try_clone().expect("service log");
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ServiceGroup {
            child: Some(child),
            name,
        }
    }

    /// Stops the group: TERM, then KILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = child.wait();
    }
}

impl Drop for ServiceGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `url` answers 200 (or panics after `timeout`, with the service's log).
pub async fn wait_ready(url: &str, timeout: Duration, log: &Path) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{url} not ready after {timeout:?}; log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

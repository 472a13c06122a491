//! The deployment files agree with the server: the Kubernetes config is one sluice accepts,
//! and the pod's termination grace covers its preStop sleep plus sluice's drain. (Schemas,
//! rendering and lint of the same files: deploy/check.sh.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::examples_repo;
use sluice::Config;

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// The number in the first line of `text` that starts (after indentation) with `prefix`.
fn number_after(text: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("deployment.yaml has no line starting {prefix:?}"));
    let digits: String = line[prefix.len()..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line:?}"))
}

#[test]
fn kubernetes_config_is_valid() {
    let mut config = Config::from_file(&k8s().join("sluice.toml")).expect("deploy/k8s/sluice.toml");
    // The path is the image's (/opt/sluice/models); here the same models are in models/.
    assert_eq!(config.repository.path, Path::new("/opt/sluice/models"));
    config.repository.path = examples_repo();
    assert_eq!(config.problems(), Vec::<String>::new());
    assert_eq!(
        (
            config.server.http_port,
            config.server.grpc_port,
            config.server.metrics_port
        ),
        (8000, 8001, 8002),
        "the ports deployment.yaml and service.yaml name"
    );
}

#[test]
fn termination_grace_covers_pre_stop_and_drain() {
    let config = Config::from_file(&k8s().join("sluice.toml")).expect("deploy/k8s/sluice.toml");
    let deployment = std::fs::read_to_string(k8s().join("deployment.yaml")).unwrap();
    let grace = Duration::from_secs(number_after(&deployment, "terminationGracePeriodSeconds:"));
    let pre_stop = Duration::from_secs(number_after(&deployment, "command: [\"sleep\""));
    // The prediction log's close may take a second past the drain deadline.
    let slack = Duration::from_secs(1);
    assert!(
        grace >= pre_stop + config.server.drain_timeout + slack,
        "terminationGracePeriodSeconds {grace:?} < preStop {pre_stop:?} + drain_timeout {:?} + {slack:?}",
        config.server.drain_timeout
    );
    let metrics_port = number_after(&deployment, "prometheus.io/port:");
    assert_eq!(metrics_port, u64::from(config.server.metrics_port));
}

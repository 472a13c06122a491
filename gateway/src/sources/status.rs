//! What each source last saw and did: shown by `GET /admin/v1/sources` (`sluice ctl sources`)
//! and next to the models it feeds in `/admin/v1/models/{m}`, and counted in metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::telemetry::metrics;

/// One source's shared record; the source task writes it, the admin API reads it.
pub struct SourceHandle {
    /// "s3://bucket/prefix", "mlflow:churn@champion".
    pub name: String,
    /// "s3" or "mlflow".
    pub kind: &'static str,
    state: Mutex<SourceState>,
    /// Wakes the source for an immediate check (a webhook delivery).
    pub wake: tokio::sync::Notify,
}

/// What a source last saw, changed and failed at.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceState {
    /// Models this source feeds.
    pub models: Vec<String>,
    /// When the source last asked (RFC 3339).
    pub last_checked: Option<String>,
    /// When the source last got an answer.
    pub last_success: Option<String>,
    /// What it last saw: "alias champion -> version 3", "2 models, 5 versions".
    pub last_seen: Option<String>,
    /// The last change it made: "version 3 published (1.2 MB, verified in 40 ms)".
    pub last_change: Option<String>,
    /// The last failure, cleared by the next success; serving goes on meanwhile.
    pub last_error: Option<String>,
    /// Checks failed in a row (the retry backs off with them).
    pub consecutive_failures: u32,
    /// Versions refused and why ("churn/3": "not an ONNX model: ..."): not retried until they
    /// change.
    pub refused: BTreeMap<String, String>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl SourceHandle {
    pub fn new(name: String, kind: &'static str, models: Vec<String>) -> SourceHandle {
        metrics::record_source_check(&name, true);
        SourceHandle {
            name,
            kind,
            state: Mutex::new(SourceState {
                models,
                ..SourceState::default()
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn state(&self) -> SourceState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut SourceState)) {
        if let Ok(mut state) = self.state.lock() {
            change(&mut state);
        }
    }

    /// A check that got an answer: what it saw.
    pub fn checked(&self, seen: String) {
        let at = now();
        metrics::record_source_check(&self.name, true);
        self.update(|s| {
            s.last_checked = Some(at.clone());
            s.last_success = Some(at);
            s.last_seen = Some(seen);
            s.last_error = None;
            s.consecutive_failures = 0;
        });
    }

    /// A check (or a download) that failed for a reason that may pass: retried with backoff.
    pub fn failed(&self, error: String) -> u32 {
        tracing::warn!(source = %self.name, %error, "model source check failed; serving goes on");
        metrics::record_source_check(&self.name, false);
        let mut failures = 0;
        self.update(|s| {
            s.last_checked = Some(now());
            s.last_error = Some(error);
            s.consecutive_failures += 1;
            failures = s.consecutive_failures;
        });
        failures
    }

    /// A version refused for good (corrupt, not ONNX, too big): kept until it changes.
    pub fn refused(&self, what: String, reason: String) {
        tracing::warn!(source = %self.name, version = %what, %reason, "model version refused");
        metrics::record_source_refusal(&self.name);
        self.update(|s| {
            s.last_error = Some(format!("{what} refused: {reason}"));
            s.refused.insert(what, reason);
        });
    }

    /// Forgets a refusal (the version changed, or is gone).
    pub fn forget_refusal(&self, what: &str) {
        self.update(|s| {
            s.refused.remove(what);
        });
    }

    pub fn changed(&self, change: String) {
        tracing::info!(source = %self.name, %change, "model source");
        self.update(|s| s.last_change = Some(change));
    }

    pub fn set_models(&self, models: Vec<String>) {
        self.update(|s| s.models = models);
    }

    pub fn feeds(&self, model: &str) -> bool {
        self.state
            .lock()
            .map(|s| s.models.iter().any(|m| m == model))
            .unwrap_or(false)
    }
}

/// How long to wait after `failures` failed checks in a row: the interval, doubled per
/// failure, at most five minutes (and never less than the interval).
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(6);
    interval
        .saturating_mul(factor)
        .min(Duration::from_secs(300))
        .max(interval)
}

/// One source as the admin API shows it.
#[derive(Serialize)]
pub struct SourceView {
    pub name: String,
    pub kind: &'static str,
    #[serde(flatten)]
    pub state: SourceState,
}

impl SourceView {
    pub fn of(handle: &SourceHandle) -> SourceView {
        SourceView {
            name: handle.name.clone(),
            kind: handle.kind,
            state: handle.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), 0), s(5));
        assert_eq!(backoff(s(5), 1), s(10));
        assert_eq!(backoff(s(5), 3), s(40));
        assert_eq!(backoff(s(5), 30), s(300));
        assert_eq!(backoff(s(600), 2), s(600));
    }

    #[test]
    fn a_success_clears_the_error_but_not_refusals() {
        let handle = SourceHandle::new("s3://b/p".into(), "s3", vec![]);
        assert_eq!(handle.failed("unreachable".into()), 1);
        assert_eq!(handle.failed("unreachable".into()), 2);
        handle.refused("m/2".into(), "not an ONNX model".into());
        handle.checked("1 model".into());
        let state = handle.state();
        assert_eq!(state.consecutive_failures, 0);
        assert!(state.last_error.is_none());
        assert_eq!(state.refused.len(), 1);
    }
}

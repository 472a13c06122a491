//! Drift alerts: a threshold crossed (or no longer crossed) by a feature's or the prediction's
//! PSI or KS. Edge-triggered with hysteresis: an alert is raised when a value reaches its
//! threshold and cleared only once it falls below `threshold * clear_ratio`, so a value
//! hovering at the threshold does not flap. Every transition goes to each [`DriftAlertSink`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::monitor::DriftReport;
use crate::drift::DriftConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    Psi,
    Ks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The value reached the threshold.
    Raised,
    /// The value fell back below `threshold * clear_ratio`.
    Cleared,
}

/// One threshold transition, as sinks receive it (and the webhook's JSON body).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftAlert {
    pub model: String,
    pub version: u64,
    /// The feature's name, or the prediction's description (e.g. `probabilities[:,1]`).
    pub series: String,
    /// Whether `series` is the prediction rather than an input feature.
    pub prediction: bool,
    pub statistic: Statistic,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    /// Values in the window behind `value`.
    pub rows: u64,
    /// RFC 3339, UTC.
    pub at: String,
}

/// Where threshold transitions go besides the log: the webhook, and the events topic once
/// it exists. Called from the evaluator (a blocking-pool thread, never the request path);
/// an implementation must not block for long: hand slow work to a task or a bounded queue.
pub trait DriftAlertSink: Send + Sync {
    fn alert(&self, alert: &DriftAlert);
}

/// The thresholds and their hysteresis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub psi: f64,
    pub ks: f64,
    pub clear_ratio: f64,
    /// Fewer values than this neither raise nor clear: a small window is mostly noise.
    pub min_rows: u64,
}

impl From<&DriftConfig> for Thresholds {
    fn from(c: &DriftConfig) -> Thresholds {
        Thresholds {
            psi: c.psi_threshold,
            ks: c.ks_threshold,
            clear_ratio: c.clear_ratio,
            min_rows: c.min_rows,
        }
    }
}

/// Which thresholds each series of one version currently crosses: `[psi, ks]` per series,
/// features first, then the prediction.
pub(crate) struct Latches {
    raised: Vec<[bool; 2]>,
}

impl Latches {
    pub(super) fn new(series: usize) -> Latches {
        Latches {
            raised: vec![[false; 2]; series],
        }
    }

    /// Applies a fresh report; returns the transitions it caused.
    pub(crate) fn update(
        &mut self,
        model: &str,
        version: u64,
        report: &DriftReport,
        thresholds: &Thresholds,
    ) -> Vec<DriftAlert> {
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let series = report
            .features
            .iter()
            .map(|s| (s, false))
            .chain(report.prediction.iter().map(|s| (s, true)));
        let mut alerts = Vec::new();
        for ((drift, prediction), raised) in series.zip(self.raised.iter_mut()) {
            let checks = [
                (Statistic::Psi, drift.psi, thresholds.psi),
                (Statistic::Ks, drift.ks, thresholds.ks),
            ];
            for ((statistic, value, threshold), raised) in checks.into_iter().zip(raised.iter_mut())
            {
                let Some(value) = value.filter(|_| drift.rows >= thresholds.min_rows) else {
                    continue;
                };
                let state = if !*raised && value >= threshold {
                    AlertState::Raised
                } else if *raised && value < threshold * thresholds.clear_ratio {
                    AlertState::Cleared
                } else {
                    continue;
                };
                *raised = state == AlertState::Raised;
                alerts.push(DriftAlert {
                    model: model.to_string(),
                    version,
                    series: drift.name.clone(),
                    prediction,
                    statistic,
                    state,
                    value,
                    threshold,
                    rows: drift.rows,
                    at: at.clone(),
                });
            }
        }
        alerts
    }
}

/// POSTs each alert as JSON to a URL, fire-and-forget: at most [`WEBHOOK_IN_FLIGHT`] posts at
/// once, each bounded by a timeout; a post that cannot start is dropped with a warning
/// rather than queued, so a dead endpoint costs nothing but log lines.
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    in_flight: Arc<Semaphore>,
}

/// Posts that may be outstanding at once.
pub const WEBHOOK_IN_FLIGHT: usize = 16;

impl WebhookSink {
    pub fn new(url: &str, timeout: Duration) -> Result<WebhookSink, reqwest::Error> {
        Ok(WebhookSink {
            client: reqwest::Client::builder().timeout(timeout).build()?,
            url: url.to_string(),
            in_flight: Arc::new(Semaphore::new(WEBHOOK_IN_FLIGHT)),
        })
    }
}

impl DriftAlertSink for WebhookSink {
    fn alert(&self, alert: &DriftAlert) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("drift webhook: no async runtime; alert not posted");
            return;
        };
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            tracing::warn!(url = %self.url, "drift webhook: too many posts in flight; alert dropped");
            return;
        };
        let request = self.client.post(&self.url).json(alert);
        let url = self.url.clone();
        runtime.spawn(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(%url, status = %response.status(), "drift webhook refused the alert")
                }
                Err(error) => tracing::warn!(%url, %error, "drift webhook post failed"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::SeriesDrift;

    fn report(psi: f64, ks: f64, rows: u64) -> DriftReport {
        DriftReport {
            window_rows: rows,
            window_seconds: 300,
            features: vec![SeriesDrift {
                name: "f0".into(),
                rows,
                psi: Some(psi),
                ks: Some(ks),
            }],
            prediction: None,
        }
    }

    #[test]
    fn edge_triggered_with_hysteresis() {
        let t = Thresholds {
            psi: 0.2,
            ks: 0.1,
            clear_ratio: 0.8,
            min_rows: 100,
        };
        let mut latches = Latches::new(1);
        let mut step = |psi, ks, rows| {
            latches
                .update("m", 1, &report(psi, ks, rows), &t)
                .into_iter()
                .map(|a| (a.statistic, a.state))
                .collect::<Vec<_>>()
        };
        // Too few rows: nothing, however large.
        assert!(step(0.9, 0.9, 10).is_empty());
        assert_eq!(
            step(0.25, 0.05, 500),
            vec![(Statistic::Psi, AlertState::Raised)]
        );
        // Still above, then hovering between 0.16 and 0.2: no news.
        assert!(step(0.3, 0.05, 500).is_empty());
        assert!(step(0.17, 0.05, 500).is_empty());
        assert!(step(0.21, 0.05, 500).is_empty());
        assert_eq!(
            step(0.1, 0.12, 500),
            vec![
                (Statistic::Psi, AlertState::Cleared),
                (Statistic::Ks, AlertState::Raised)
            ]
        );
    }
}

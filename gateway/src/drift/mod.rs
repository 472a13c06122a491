//! Inline drift detection. A version with a `profile.json` (built by `sluice profile` from
//! training rows) gets a [`DriftMonitor`] when it loads; every row it serves is counted into
//! a sliding, time-bucketed window of the profile's bins, and a background evaluator ([`crate::controllers::drift`])
//! turns the window into PSI and KS per feature and for the prediction: gauges, the stats
//! endpoint, and threshold alerts (log, webhook, [`DriftAlertSink`]s).
//!
//! Both statistics come from one set of counters per feature: the fine quantile bins of the
//! reference. KS is evaluated at the fine edges (where the reference CDF is known exactly);
//! the PSI deciles are a subset of those edges, so PSI bins are sums of fine bins.

pub mod alert;
mod config;
mod monitor;
pub mod profile;
pub mod sample;
mod series;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod window;

use std::path::Path;

pub use alert::{DriftAlert, DriftAlertSink, WebhookSink};
pub use config::DriftConfig;
pub use monitor::{DriftMonitor, DriftReport, DriftSnapshot, SeriesCounts, SeriesDrift};
pub use profile::{Profile, ProfileError};

use crate::telemetry::metrics as m;
use sluice_core::tensor::ModelSignature;

/// The monitor for the version in `version_dir`: `None` when drift is off or the version has
/// no profile; an error when the profile is unreadable or does not fit the model.
pub fn monitor_for(
    version_dir: &Path,
    signature: &ModelSignature,
    config: &DriftConfig,
) -> Result<Option<DriftMonitor>, ProfileError> {
    let path = version_dir.join(profile::FILE_NAME);
    if !config.enabled || !path.is_file() {
        return Ok(None);
    }
    let profile = Profile::read(&path)?;
    DriftMonitor::new(&profile, signature, config)
        .map(Some)
        .map_err(|message| ProfileError::Invalid {
            path: path.display().to_string(),
            message,
        })
}

/// Publishes one version's drift gauges; a statistic without a value (empty window, KS of a
/// class prediction) is NaN, so a stale number never outlives its data.
pub fn record_drift(model: &str, version: u64, report: &DriftReport) {
    let (model, version) = (model.to_string(), version.to_string());
    let value = |v: Option<f64>| v.unwrap_or(f64::NAN);
    for feature in &report.features {
        let labels = [
            ("model", model.clone()),
            ("version", version.clone()),
            ("feature", feature.name.clone()),
        ];
        metrics::gauge!(m::DRIFT_PSI, &labels).set(value(feature.psi));
        metrics::gauge!(m::DRIFT_KS, &labels).set(value(feature.ks));
    }
    let labels = [("model", model), ("version", version)];
    if let Some(prediction) = &report.prediction {
        metrics::gauge!(m::PREDICTION_DRIFT_PSI, &labels).set(value(prediction.psi));
        metrics::gauge!(m::PREDICTION_DRIFT_KS, &labels).set(value(prediction.ks));
    }
    metrics::gauge!(m::DRIFT_WINDOW_ROWS, &labels).set(report.window_rows as f64);
}

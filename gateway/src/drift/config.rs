//! The `[drift]` config section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::units::human_duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Measure drift for every version that has a `profile.json`; off ignores the profiles.
    pub enabled: bool,
    /// Span PSI and KS are computed over, e.g. "5m": long enough for a few thousand rows,
    /// short enough to notice a change within minutes.
    #[serde(with = "human_duration")]
    pub window: Duration,
    /// Width of one time bucket; the window slides by this much at a time.
    #[serde(with = "human_duration")]
    pub bucket: Duration,
    /// How often PSI and KS are recomputed, the gauges set and the thresholds checked.
    #[serde(with = "human_duration")]
    pub evaluate_interval: Duration,
    /// PSI at or above which a series is drifting. 0.2 is the customary "significant shift"
    /// line (0.1-0.2: moderate).
    pub psi_threshold: f64,
    /// KS statistic at or above which a series is drifting. 0.1 is about the two-sample 5 %
    /// critical value for a 200-row window against a 1000-row reference.
    pub ks_threshold: f64,
    /// A raised alert clears once the value falls below `threshold * clear_ratio`
    /// (hysteresis, so a value hovering at the threshold does not flap).
    pub clear_ratio: f64,
    /// Values a series' window must hold before its thresholds are checked; smaller windows
    /// are mostly sampling noise. The gauges are published regardless.
    pub min_rows: u64,
    /// URL that receives each alert (raised and cleared) as a JSON POST, e.g. a retraining
    /// job's trigger. http:// only.
    pub webhook_url: Option<String>,
    /// Longest a webhook post may take.
    #[serde(with = "human_duration")]
    pub webhook_timeout: Duration,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window: Duration::from_secs(300),
            bucket: Duration::from_secs(10),
            evaluate_interval: Duration::from_secs(1),
            psi_threshold: 0.2,
            ks_threshold: 0.1,
            clear_ratio: 0.8,
            min_rows: 200,
            webhook_url: None,
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

impl DriftConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.bucket < Duration::from_millis(100) {
            problems.push("drift.bucket must be at least 100ms".into());
        }
        if self.window < self.bucket {
            problems.push("drift.window must be at least one drift.bucket".into());
        } else if self.window.as_nanos() / self.bucket.as_nanos().max(1) > 1000 {
            // Every bucket holds a counter per bin of every feature: keep memory bounded.
            problems.push("drift.window may hold at most 1000 buckets".into());
        }
        if self.evaluate_interval < Duration::from_millis(100) {
            problems.push("drift.evaluate_interval must be at least 100ms".into());
        }
        for (name, value) in [
            ("drift.psi_threshold", self.psi_threshold),
            ("drift.ks_threshold", self.ks_threshold),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                problems.push(format!("{name} must be a positive number"));
            }
        }
        if !(self.clear_ratio > 0.0 && self.clear_ratio <= 1.0) {
            problems.push("drift.clear_ratio must be in (0, 1]".into());
        }
        if let Some(url) = &self.webhook_url {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" => {}
                Ok(_) => problems.push(format!(
                    "drift.webhook_url: '{url}' must be an http:// URL (this build has no TLS client)"
                )),
                Err(e) => problems.push(format!("drift.webhook_url: '{url}' is not a URL: {e}")),
            }
        }
        problems
    }
}

//! The background evaluator: every `drift.evaluate_interval` it computes PSI and KS for every
//! loaded version with a profile, publishes the gauges, and turns threshold crossings into
//! log lines and alerts for the sinks. The request path never waits on any of it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::drift::DriftConfig;
use crate::drift::alert::{AlertState, DriftAlert, DriftAlertSink, Thresholds};
use crate::routing::Router;
use crate::telemetry::metrics;

/// Evaluates drift of whatever the router serves at each tick.
pub struct Evaluator {
    router: Arc<Router>,
    thresholds: Thresholds,
    sinks: Vec<Arc<dyn DriftAlertSink>>,
    /// Gauges published last tick, per (model, version): the feature names and whether a
    /// prediction series was among them, so a version that went away gets its gauges blanked.
    published: HashMap<(String, u64), (Vec<String>, bool)>,
}

impl Evaluator {
    pub fn new(
        router: Arc<Router>,
        config: &DriftConfig,
        sinks: Vec<Arc<dyn DriftAlertSink>>,
    ) -> Evaluator {
        Evaluator {
            router,
            thresholds: Thresholds::from(config),
            sinks,
            published: HashMap::new(),
        }
    }

    /// One evaluation of every served version; returns the alerts it raised or cleared.
    pub fn tick(&mut self) -> Vec<DriftAlert> {
        let snapshot = self.router.snapshot();
        let mut alerts = Vec::new();
        let mut published = HashMap::new();
        for version in snapshot.models.values().flat_map(|r| r.versions.values()) {
            let Some(monitor) = &version.drift else {
                continue;
            };
            let report = monitor.report();
            crate::drift::record_drift(&version.model, version.version, &report);
            if let Ok(mut latches) = monitor.latches.lock() {
                alerts.extend(latches.update(
                    &version.model,
                    version.version,
                    &report,
                    &self.thresholds,
                ));
            }
            let names = report.features.iter().map(|f| f.name.clone()).collect();
            published.insert(
                (version.model.clone(), version.version),
                (names, report.prediction.is_some()),
            );
        }
        for ((model, version), (features, prediction)) in &self.published {
            if !published.contains_key(&(model.clone(), *version)) {
                metrics::clear_drift(model, *version, features, *prediction);
            }
        }
        self.published = published;
        for alert in &alerts {
            log(alert);
            for sink in &self.sinks {
                sink.alert(alert);
            }
        }
        alerts
    }

    /// Ticks every `interval` until shutdown. Each tick runs on the blocking pool: summing
    /// the windows of many versions is CPU work the reactor should not carry.
    pub async fn run(self, interval: std::time::Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut evaluator = self;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
            let ticked = tokio::task::spawn_blocking(move || {
                evaluator.tick();
                evaluator
            })
            .await;
            match ticked {
                Ok(back) => evaluator = back,
                Err(error) => {
                    tracing::error!(%error, "drift evaluator failed; drift gauges stop updating");
                    return;
                }
            }
        }
    }
}

fn log(alert: &DriftAlert) {
    let what = if alert.prediction {
        "prediction"
    } else {
        "feature"
    };
    match alert.state {
        AlertState::Raised => tracing::warn!(
            model = %alert.model,
            version = alert.version,
            series = %alert.series,
            statistic = ?alert.statistic,
            value = alert.value,
            threshold = alert.threshold,
            rows = alert.rows,
            "{what} drift above threshold"
        ),
        AlertState::Cleared => tracing::info!(
            model = %alert.model,
            version = alert.version,
            series = %alert.series,
            statistic = ?alert.statistic,
            value = alert.value,
            threshold = alert.threshold,
            rows = alert.rows,
            "{what} drift back below threshold"
        ),
    }
}

//! The quality controller: every few seconds it ages out old predictions from the outcome
//! index, publishes each version's live quality over `outcomes.alert_window` as gauges, and
//! raises (or clears) the accuracy alert of a version whose live accuracy fell more than
//! `outcomes.baseline_margin` below the baseline `sluice profile --labels` measured for it.
//! The alert is an event on the events stream, a warning in the log and the
//! `sluice_quality_below_baseline` gauge (which the Prometheus rule in deploy/ reads).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::outcomes::Outcomes;
use crate::predlog::{Event, EventKind, PredictionLog};
use crate::routing::Router;
use crate::telemetry::metrics;
use crate::telemetry::quality::QualityView;
use sluice_core::Variant;

/// How often it looks.
pub const INTERVAL: Duration = Duration::from_secs(2);

pub struct QualityController {
    router: Arc<Router>,
    outcomes: Arc<Outcomes>,
    events: PredictionLog,
    /// Versions whose alert is raised.
    raised: HashSet<(String, u64)>,
}

/// One raised or cleared accuracy alert.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyAlert {
    pub model: String,
    pub version: u64,
    pub raised: bool,
    pub accuracy: f64,
    pub baseline: f64,
    pub labeled: u64,
}

impl QualityController {
    pub fn new(router: Arc<Router>, outcomes: Arc<Outcomes>, events: PredictionLog) -> Self {
        QualityController {
            router,
            outcomes,
            events,
            raised: HashSet::new(),
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    for alert in self.tick() {
                        self.announce(&alert);
                    }
                }
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// One look at every served version; returns the alerts raised or cleared.
    pub fn tick(&mut self) -> Vec<AccuracyAlert> {
        self.outcomes.upkeep();
        let config = self.outcomes.config();
        let snapshot = self.router.snapshot();
        let mut alerts = Vec::new();
        let mut served = HashSet::new();
        for version in snapshot.models.values().flat_map(|r| r.versions.values()) {
            let key = (version.model.clone(), version.version);
            served.insert(key.clone());
            let mut all = QualityView::default();
            for variant in [Variant::Primary, Variant::Canary, Variant::Direct] {
                let view = version.quality.get(variant).view(config.alert_window);
                if view.outcomes > 0 {
                    metrics::record_quality(&version.model, version.version, variant, &view);
                }
                all.labeled += view.labeled;
                all.correct += view.correct;
            }
            let Some(baseline) = version.baseline_accuracy else {
                continue;
            };
            let accuracy = (all.labeled > 0).then(|| all.correct as f64 / all.labeled as f64);
            let below = all.labeled >= config.alert_min_outcomes
                && accuracy.is_some_and(|a| a < baseline - config.baseline_margin);
            metrics::record_quality_baseline(&version.model, version.version, baseline, below);
            let was = self.raised.contains(&key);
            // Cleared only once the window has enough labels again and is back above the line.
            let recovered = all.labeled >= config.alert_min_outcomes && !below;
            if below && !was {
                self.raised.insert(key.clone());
            } else if was && recovered {
                self.raised.remove(&key);
            } else {
                continue;
            }
            alerts.push(AccuracyAlert {
                model: key.0,
                version: key.1,
                raised: below,
                accuracy: accuracy.unwrap_or(0.0),
                baseline,
                labeled: all.labeled,
            });
        }
        self.raised.retain(|k| served.contains(k));
        alerts
    }

    fn announce(&self, a: &AccuracyAlert) {
        let reason = if a.raised {
            format!(
                "live accuracy {:.1}% over {} labels is more than {:.1} points below the \
                 baseline {:.1}%",
                a.accuracy * 100.0,
                a.labeled,
                self.outcomes.config().baseline_margin * 100.0,
                a.baseline * 100.0
            )
        } else {
            format!(
                "live accuracy {:.1}% is back within {:.1} points of the baseline {:.1}%",
                a.accuracy * 100.0,
                self.outcomes.config().baseline_margin * 100.0,
                a.baseline * 100.0
            )
        };
        if a.raised {
            tracing::warn!(model = %a.model, version = a.version, %reason, "accuracy alert raised");
        } else {
            tracing::info!(model = %a.model, version = a.version, %reason, "accuracy alert cleared");
        }
        self.events.event(
            Event::new(EventKind::Quality, &a.model, "quality controller", reason)
                .version(a.version)
                .details(serde_json::json!({
                    "state": if a.raised { "raised" } else { "cleared" },
                    "accuracy": a.accuracy,
                    "baseline": a.baseline,
                    "labels": a.labeled,
                })),
        );
    }
}

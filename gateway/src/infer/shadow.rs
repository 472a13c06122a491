//! Shadow runs: after a primary answer is ready, a sampled copy of the request runs on the
//! shadow version through a bounded queue with its own small worker budget. A full queue drops
//! the copy (counted); a shadow failure or slowness never reaches a client. Results are
//! compared with the primary's answer and summed per model and shadow version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::{LogEntry, RunSummary, record_run, request_rows, run_version};
use crate::predlog::PredictionLog;
use crate::predlog::record::ShadowComparison;
use crate::repository::LoadedVersion;
use crate::telemetry::compare::{ShadowSummary, compare};
use crate::telemetry::metrics;
use sluice_core::tensor::Tensor;
use sluice_core::{Protocol, Variant};

/// A copy of an answered request, for the shadow.
pub struct ShadowJob {
    pub target: Arc<LoadedVersion>,
    pub primary_version: u64,
    pub inputs: Vec<Tensor>,
    /// The primary's answer (the outputs the client asked for).
    pub primary_outputs: Vec<Tensor>,
    pub protocol: Protocol,
    /// The primary's log record id; the shadow's record shares it. `None` when the
    /// prediction log is off.
    pub log_id: Option<String>,
}

type Totals = Arc<Mutex<HashMap<(String, u64), ShadowSummary>>>;

/// The shadow queue and its workers.
pub struct Shadower {
    queue: mpsc::Sender<ShadowJob>,
    totals: Totals,
}

impl Shadower {
    /// Starts the dispatcher: at most `workers` shadow runs at once, `capacity` waiting.
    pub fn start(
        workers: usize,
        capacity: usize,
        timeout: Duration,
        log: PredictionLog,
    ) -> Shadower {
        let (queue, mut jobs) = mpsc::channel::<ShadowJob>(capacity.max(1));
        let totals: Totals = Arc::default();
        let budget = Arc::new(Semaphore::new(workers.max(1)));
        let worker_totals = Arc::clone(&totals);
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let Ok(permit) = Arc::clone(&budget).acquire_owned().await else {
                    return;
                };
                let totals = Arc::clone(&worker_totals);
                let log = log.clone();
                tokio::spawn(async move {
                    run(job, &totals, timeout, &log).await;
                    drop(permit);
                });
            }
        });
        Shadower { queue, totals }
    }

    /// Queues a copy without waiting; when the queue is full the copy is dropped and counted.
    pub fn submit(&self, job: ShadowJob) {
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            self.queue.try_send(job)
        {
            metrics::record_shadow_dropped(&job.target.model, job.target.version);
            self.with_summary(&job, |s| s.dropped += 1);
        }
    }

    /// Every shadow version's totals for `model`, by shadow version.
    pub fn summaries(&self, model: &str) -> Vec<(u64, ShadowSummary)> {
        let totals = self.totals.lock().map(|t| t.clone()).unwrap_or_default();
        let mut found: Vec<(u64, ShadowSummary)> = totals
            .into_iter()
            .filter(|((m, _), _)| m == model)
            .map(|((_, v), s)| (v, s))
            .collect();
        found.sort_by_key(|(v, _)| *v);
        found
    }

    fn with_summary(&self, job: &ShadowJob, change: impl FnOnce(&mut ShadowSummary)) {
        update(&self.totals, job, change);
    }
}

fn update(totals: &Totals, job: &ShadowJob, change: impl FnOnce(&mut ShadowSummary)) {
    if let Ok(mut totals) = totals.lock() {
        let summary = totals
            .entry((job.target.model.clone(), job.target.version))
            .or_default();
        summary.primary_version = job.primary_version;
        change(summary);
    }
}

async fn run(job: ShadowJob, totals: &Totals, timeout: Duration, log: &PredictionLog) {
    let started = Instant::now();
    let target = &job.target;
    let rows = request_rows(&job.inputs);
    let run = run_version(
        target,
        Variant::Shadow,
        job.inputs.clone(),
        started + timeout,
        None,
    )
    .await;
    let comparison = match &run {
        Ok(run) => {
            let comparison = compare(&job.primary_outputs, &run.outputs);
            metrics::record_shadow_comparison(&target.model, target.version, &comparison);
            update(totals, &job, |s| s.add(&comparison));
            Some(comparison)
        }
        Err(error) => {
            tracing::debug!(model = %target.model, version = target.version, %error, "shadow run failed");
            update(totals, &job, |s| s.failed += 1);
            None
        }
    };
    let summary = RunSummary {
        variant: Variant::Shadow,
        protocol: job.protocol,
        rows,
        elapsed: started.elapsed(),
        run: run.as_ref(),
    };
    let entry = job.log_id.as_deref().map(|id| LogEntry {
        id,
        inputs: None,
        shadow: comparison
            .as_ref()
            .map(|c| ShadowComparison::new(job.primary_version, c)),
        expectations: None,
    });
    record_run(target, &summary, log, entry);
}

//! The applier: what a replica does with each record it reads, in the topic's order.

use std::collections::BTreeSet;
use std::time::Instant;

use super::record::{ControlRecord, Verdict};
use super::{Fleet, Outcome};
use crate::lifecycle::Actor;
use crate::telemetry::metrics;
use sluice_core::error::{ErrorKind, ServeError};

/// What applying a record changed here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Versions newly loaded from disk.
    pub loaded: Vec<u64>,
    /// Versions no longer served.
    pub unloaded: Vec<u64>,
}

impl Fleet {
    /// Accepts or skips one record, applies an accepted one, and tells its writer (if it is
    /// waiting here) what became of it.
    pub(super) async fn receive(&self, record: ControlRecord) {
        let _applying = self.applying.lock().await;
        let (verdict, latest) = {
            let mut ledger = self.ledger();
            let verdict = record.verdict(ledger.accepted.get(&record.model));
            if verdict == Verdict::Accept {
                ledger.accepted.insert(record.model.clone(), record.clone());
            }
            if ledger
                .proposals
                .get(&record.model)
                .is_some_and(|(key, _)| record.rollout.as_ref().map(|r| r.key()) == Some(*key))
            {
                ledger.proposals.remove(&record.model);
            }
            (verdict, ledger.accepted.get(&record.model).cloned())
        };
        let mine = self.is_mine(&record);
        let outcome = match verdict {
            Verdict::Accept => match self.apply(&record).await {
                Ok(applied) => {
                    metrics::record_fleet_record("applied");
                    Outcome::Applied(applied)
                }
                Err(error) => {
                    metrics::record_fleet_record("failed");
                    tracing::error!(
                        model = %record.model,
                        generation = record.generation,
                        origin = %record.origin,
                        %error,
                        "control record not applied here; this replica keeps its state"
                    );
                    if mine {
                        self.revert(&record, &error);
                    }
                    Outcome::Failed(error)
                }
            },
            Verdict::Duplicate => {
                metrics::record_fleet_record("duplicate");
                Outcome::Duplicate
            }
            Verdict::Stale => {
                metrics::record_fleet_record("stale");
                tracing::info!(
                    model = %record.model,
                    generation = record.generation,
                    origin = %record.origin,
                    "control record skipped: another change of the model came first"
                );
                if let (true, Some(latest)) = (mine, latest) {
                    self.reassert(latest);
                }
                Outcome::Stale
            }
        };
        let waiter = self.ledger().waiters.remove(&record.op);
        if let Some(waiter) = waiter {
            let _ = waiter.send(outcome);
        }
    }

    /// Brings the model to the record's state: loads what is missing (or everything, for a new
    /// load request), then stores the versions, the traffic and the rollout in one store.
    pub(super) async fn apply(&self, record: &ControlRecord) -> Result<Applied, ServeError> {
        let model = record.model.as_str();
        let actor = Actor::new(format!("{} (via {})", record.actor, record.origin));
        let router = self.models.router();
        let before: BTreeSet<u64> = router
            .snapshot()
            .models
            .get(model)
            .map(|r| r.versions.keys().copied().collect())
            .unwrap_or_default();
        // A load request this replica has not carried out yet means reading the files again.
        // A model's first record here with no load request at all (0: its versions are what
        // every replica loaded at start-up) needs no reading, only what is missing.
        let previous = self.ledger().loads.insert(model.to_string(), record.load);
        let reload = previous.map_or(record.load != 0, |p| p != record.load);
        if !record.loaded {
            if router.snapshot().models.contains_key(model) {
                self.models.unload(model, &actor).await?;
            }
            return Ok(Applied {
                loaded: Vec::new(),
                unloaded: before.into_iter().rev().collect(),
            });
        }
        let wanted: BTreeSet<u64> = record.versions.iter().copied().collect();
        let mut loaded = Vec::new();
        if reload || !wanted.is_subset(&before) {
            loaded = self
                .models
                .load_versions(model, &record.versions, &actor)
                .await?;
        }
        let now = Instant::now();
        let mut adopted = None;
        let previous = router
            .snapshot()
            .models
            .get(model)
            .and_then(|r| r.rollout.as_ref().map(|r| (r.id, r.state, r.phase)));
        router.try_update(|snapshot| {
            let mut routes = snapshot.models.get(model).cloned().ok_or_else(|| {
                ServeError::new(
                    ErrorKind::Conflict,
                    format!("model '{model}' was unloaded while its record was applied"),
                )
            })?;
            routes.versions.retain(|v, _| wanted.contains(v));
            let traffic = record.traffic.validate(&routes).map_err(|problems| {
                ServeError::bad_request(format!(
                    "the fleet's traffic policy for model '{model}' does not fit the versions \
                     loaded here: {}",
                    problems.join("; ")
                ))
            })?;
            let rollout = record
                .rollout
                .as_ref()
                .map(|r| r.adopt(routes.rollout.as_ref(), &routes, now));
            adopted.clone_from(&rollout);
            routes.traffic = traffic;
            routes.rollout = rollout;
            Ok::<_, ServeError>(snapshot.with_model(model, routes))
        })?;
        if let Some(rollout) = &adopted
            && previous != Some((rollout.id, rollout.state, rollout.phase))
        {
            tracing::info!(
                model,
                rollout = rollout.id,
                state = rollout.state.as_str(),
                phase = rollout.phase.as_str(),
                origin = %record.origin,
                "rollout state applied from the control topic"
            );
            // The replica that decided tells the world, once for the fleet.
            if self.is_mine(record) {
                crate::lifecycle::announce_decision(self.models.events(), router, model, rollout);
            }
        }
        Ok(Applied {
            loaded,
            unloaded: before
                .iter()
                .rev()
                .filter(|v| !wanted.contains(v))
                .copied()
                .collect(),
        })
    }

    /// This replica's own change failed here: it writes back the state it still serves, so
    /// that the topic does not keep asking every replica (and every replica started later) for
    /// what cannot be done. A failed revert is not reverted again.
    fn revert(&self, failed: &ControlRecord, error: &ServeError) {
        if self.ledger().reverts.remove(&failed.op) {
            return;
        }
        let mut record = self.base(
            &failed.model,
            &failed.actor,
            format!("reverted: {}", error.message),
        );
        // The load request stands as handled: nobody retries it until the next one.
        record.load = failed.load;
        self.ledger().reverts.insert(record.op.clone());
        self.write_unwaited(record);
    }

    /// This replica's change lost a race: it writes the winning state again, one generation
    /// on, so that the model's latest record (what a compacted topic keeps) is the state in
    /// force rather than the loser.
    fn reassert(&self, winner: ControlRecord) {
        let mut record = winner;
        record.generation += 1;
        record.op = self.next_op();
        record.origin.clone_from(&self.replica);
        record.reason = format!("re-asserted after a concurrent change ({})", record.reason);
        record.at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        self.write_unwaited(record);
    }
}

//! `sluice.control.v1`: one model's whole desired state, as the control topic carries it
//! (keyed by model name; docs/fleet.md documents every field).
//!
//! A record is never a delta: it says which versions are loaded, the traffic policy and the
//! rollout, all of it. Applying the latest record of a model therefore yields the model's
//! state whatever came before, which is what lets a compacted topic (the latest record per key)
//! bring a new replica up to date, and makes applying a record twice harmless.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::rollout_record::RolloutRecord;
use crate::routing::TrafficPolicy;
use crate::routing::{Phase, RolloutState};

/// The schema name every record carries.
pub const SCHEMA: &str = "sluice.control.v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    /// Always [`SCHEMA`]; a record with another schema is skipped.
    pub schema: String,
    /// Also the record's key.
    pub model: String,
    /// Grows by one with every accepted change of the model. A record whose generation is not
    /// above the latest accepted one lost a race with another change and is skipped.
    pub generation: u64,
    /// Whether the model is served at all; an unloaded model keeps its record (never a
    /// tombstone), so that a replica starting later does not load it from its repository.
    pub loaded: bool,
    /// The versions to serve, highest first; empty when not loaded.
    #[serde(default)]
    pub versions: Vec<u64>,
    /// The generation of the latest load request: when it changes, every replica re-reads the
    /// model's files (a version whose file was replaced is loaded again), even if the version
    /// numbers stay the same.
    #[serde(default)]
    pub load: u64,
    /// The traffic policy, as the admin API reads and writes it.
    #[serde(default)]
    pub traffic: TrafficPolicy,
    /// The model's latest rollout, running or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRecord>,
    /// The replica that wrote the record.
    pub origin: String,
    /// Unique id of the change: how the replica that wrote it recognises it coming back.
    pub op: String,
    /// Who asked for the change ("token holder at 10.0.0.7:51234", "guard").
    pub actor: String,
    /// Why, in words.
    pub reason: String,
    /// RFC 3339: when the record was written.
    pub at: String,
}

/// What a replica does with a record, given the latest one it accepted for the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A newer state: apply it.
    Accept,
    /// The state in force already (another replica decided the same): nothing to do.
    Duplicate,
    /// Written against an older state and different from the one in force: skipped.
    Stale,
}

impl ControlRecord {
    /// The rule every replica applies in the topic's order, so that all of them accept and skip
    /// the same records.
    pub fn verdict(&self, latest: Option<&ControlRecord>) -> Verdict {
        match latest {
            None => Verdict::Accept,
            Some(latest) if self.generation > latest.generation => Verdict::Accept,
            Some(latest) if self.same_state(latest) => Verdict::Duplicate,
            Some(_) => Verdict::Stale,
        }
    }

    /// Whether two records ask for the same state: same versions, load request, traffic, and
    /// the same rollout at the same step with the same outcome. Who wrote them, when and why
    /// does not matter.
    pub fn same_state(&self, other: &ControlRecord) -> bool {
        let versions = |r: &ControlRecord| r.versions.iter().copied().collect::<BTreeSet<u64>>();
        let rollout = |r: &ControlRecord| -> Option<(u64, RolloutState, Phase)> {
            r.rollout.as_ref().map(RolloutRecord::key)
        };
        self.model == other.model
            && self.loaded == other.loaded
            && versions(self) == versions(other)
            && self.load == other.load
            && self.traffic == other.traffic
            && rollout(self) == rollout(other)
    }

    /// The record as the topic's payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload; `Err` says why it is not a record this sluice can apply.
    pub fn parse(payload: &[u8]) -> Result<ControlRecord, String> {
        let record: ControlRecord =
            serde_json::from_slice(payload).map_err(|e| format!("not a control record: {e}"))?;
        if record.schema != SCHEMA {
            return Err(format!(
                "schema '{}' is not {SCHEMA}; skipped (a newer sluice wrote it?)",
                record.schema
            ));
        }
        if record.model.is_empty() {
            return Err("a control record without a model".into());
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64, weight: f64) -> ControlRecord {
        ControlRecord {
            schema: SCHEMA.into(),
            model: "mlp".into(),
            generation,
            loaded: true,
            versions: vec![2, 1],
            load: 1,
            traffic: serde_json::from_value(serde_json::json!({
                "primary": "1", "canary": {"version": "2", "weight": weight}
            }))
            .unwrap(),
            rollout: None,
            origin: "a".into(),
            op: format!("a:1:{generation}"),
            actor: "test".into(),
            reason: "test".into(),
            at: "2025-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn newer_generations_win_and_races_resolve_the_same_way_everywhere() {
        let first = record(1, 10.0);
        assert_eq!(first.verdict(None), Verdict::Accept);
        let next = record(2, 20.0);
        assert_eq!(next.verdict(Some(&first)), Verdict::Accept);
        // Another replica changed the same generation differently: it lost the race.
        let rival = record(2, 30.0);
        assert_eq!(rival.verdict(Some(&next)), Verdict::Stale);
        // ... or decided the same thing: harmless.
        let mut twin = record(2, 20.0);
        twin.origin = "b".into();
        twin.reason = "same decision, other replica".into();
        assert_eq!(twin.verdict(Some(&next)), Verdict::Duplicate);
        assert_eq!(first.verdict(Some(&next)), Verdict::Stale, "an old record");
    }

    #[test]
    fn payloads_round_trip_and_foreign_schemas_are_refused() {
        let r = record(3, 5.0);
        assert_eq!(ControlRecord::parse(&r.to_json()).unwrap(), r);
        let mut other = r.clone();
        other.schema = "sluice.control.v9".into();
        assert!(
            ControlRecord::parse(&other.to_json())
                .unwrap_err()
                .contains("v9")
        );
        assert!(ControlRecord::parse(b"{}").is_err());
    }
}

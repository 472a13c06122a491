//! The join's memory: recent predictions by request id, bounded by count and by age.
//!
//! A request is entered when it starts running ([`PredictionIndex::begin`]), so that an outcome
//! that arrives while its prediction is still being computed is held on the entry and joined
//! the moment the answer is known (a *late* join), and filled in with what the version answered
//! when the run ends ([`PredictionIndex::answer`]). Entries leave oldest first, when a shard is
//! full or when they are older than `max_age`; an entry that had its outcomes stays until then,
//! so a second outcome for it is recognised as a duplicate.
//!
//! The index is split into shards by the id's hash, each behind its own mutex, so requests on
//! different cores rarely meet; a request holds a shard for a hash-map insert, a push onto the
//! shard's ring and a look at the oldest entry. Memory is flat whatever fraction of predictions ever gets an outcome: at most
//! `max_predictions` entries, each a few hundred bytes.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::telemetry::quality::{Mismatch, Predicted, Scored, Truth, VersionQuality};
use sluice_core::Variant;

const SHARDS: usize = 16;
/// Outcomes one in-flight request may hold before its answer; more are refused as unknown.
const MAX_WAITING: usize = 64;

/// Who served a prediction.
#[derive(Clone)]
pub struct Served {
    pub quality: Arc<VersionQuality>,
    pub variant: Variant,
    pub at: SystemTime,
}

/// One outcome for one row of a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Truthful {
    pub row: usize,
    pub truth: Truth,
}

/// A prediction joined with its outcome: what the joined record and the counts are made of.
#[derive(Clone, Debug)]
pub struct Joined {
    pub id: Box<str>,
    pub model: String,
    pub version: u64,
    pub variant: Variant,
    pub served_at: SystemTime,
    pub row: usize,
    /// The row's prediction: label and probabilities, or value.
    pub label: Option<i64>,
    pub probabilities: Option<Vec<f32>>,
    pub value: Option<f64>,
    pub truth: Truth,
    pub scored: Scored,
    /// Whether the outcome waited for its prediction.
    pub late: bool,
}

/// What became of one outcome.
#[derive(Debug)]
pub enum Join {
    Matched(Box<Joined>),
    /// Held on a request still running; joined (and logged) when it answers.
    Late,
    /// This row of this request already had its outcome.
    Duplicate,
    /// No prediction with this id for this model: never served here, failed, or evicted.
    Unknown,
    /// The outcome's kind does not fit the prediction (a label for a regressor's value).
    Mismatched,
}

enum State {
    Running {
        waiting: Vec<Truthful>,
    },
    Answered {
        predicted: Predicted,
        joined: Vec<u16>,
    },
}

/// A request id, inline up to 32 bytes (sluice's own are 29): no allocation per request.
type Id = smallvec::SmallVec<[u8; 32]>;

struct Slot {
    /// The id's keyed hash: the map's key for this slot while it is live.
    hash: u64,
    entered: Instant,
    id: Id,
    served: Served,
    state: State,
}

/// The shard maps' keys are already the id's keyed SipHash: hashing them again would only cost.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here (write_u64); fold anything else in, for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One shard: its entries in the order they were made, and a map from id hash to the live
/// one's sequence number.
///
/// The entries live in a ring rather than in the map because a busy index is always full:
/// every request evicts the oldest entry as it enters its own. The ring makes both ends
/// sequential memory (the oldest is at the front, the new one goes at the back) and leaves
/// the map's random accesses on 16-byte buckets, which stay in cache at 100,000 entries where
/// hash-map buckets holding the entries themselves did not.
#[derive(Default)]
struct Shard {
    live: HashMap<u64, u64, BuildHasherDefault<PreHashed>>,
    /// `ring[i]` has sequence number `front_seq + i`; `None` once replaced or failed.
    ring: VecDeque<Option<Slot>>,
    front_seq: u64,
}

impl Shard {
    fn next_seq(&self) -> u64 {
        self.front_seq + self.ring.len() as u64
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = usize::try_from(seq.checked_sub(self.front_seq)?).ok()?;
        self.ring.get_mut(i)?.as_mut()
    }

    /// The live entry for `hash`.
    fn find(&mut self, hash: u64) -> Option<&mut Slot> {
        let seq = *self.live.get(&hash)?;
        self.slot_mut(seq)
    }

    /// The entry a ticket names, if it is still the live one for its hash.
    fn ticketed(&mut self, ticket: Ticket) -> Option<&mut Slot> {
        self.slot_mut(ticket.seq).filter(|s| s.hash == ticket.hash)
    }

    /// Takes the entry `seq` out of the shard (its ring place stays, empty, until it is the
    /// oldest).
    fn remove(&mut self, seq: u64) {
        let Some(i) = self.seq_index(seq) else {
            return;
        };
        if let Some(slot) = self.ring.get_mut(i).and_then(Option::take)
            && self.live.get(&slot.hash) == Some(&seq)
        {
            self.live.remove(&slot.hash);
        }
    }

    fn seq_index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.front_seq)?).ok()
    }

    /// Drops the oldest ring place; true when it held a live entry.
    fn pop_oldest(&mut self) -> bool {
        let Some(place) = self.ring.pop_front() else {
            return false;
        };
        let seq = self.front_seq;
        self.front_seq += 1;
        match place {
            Some(slot) if self.live.get(&slot.hash) == Some(&seq) => {
                self.live.remove(&slot.hash);
                true
            }
            _ => false,
        }
    }
}

/// Where one request's entry is, for its answer.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    hash: u64,
    seq: u64,
}

pub struct PredictionIndex {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    max_age: Duration,
    evicted_full: AtomicU64,
    evicted_age: AtomicU64,
}

/// Evictions so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub capacity: u64,
    pub age: u64,
}

impl PredictionIndex {
    pub fn new(max_predictions: usize, max_age: Duration) -> PredictionIndex {
        PredictionIndex {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_predictions.div_ceil(SHARDS).max(1),
            max_age,
            evicted_full: AtomicU64::new(0),
            evicted_age: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Enters a request that is about to run. An id seen before replaces the older entry: ids
    /// are meant to be unique, and the outcome joins the latest prediction made under it.
    pub fn begin(&self, id: &str, served: Served) -> Ticket {
        let hash = self.hasher.hash_one(id);
        let now = Instant::now();
        let mut shard = self.shard(hash);
        self.evict(&mut shard, now);
        let seq = shard.next_seq();
        if let Some(replaced) = shard.live.insert(hash, seq)
            && let Some(i) = shard.seq_index(replaced)
            && let Some(place) = shard.ring.get_mut(i)
        {
            *place = None;
        }
        shard.ring.push_back(Some(Slot {
            hash,
            entered: now,
            id: Id::from_slice(id.as_bytes()),
            served,
            state: State::Running {
                waiting: Vec::new(),
            },
        }));
        Ticket { hash, seq }
    }

    /// Drops entries past `max_age`, then the oldest while the shard is at its share (ring
    /// places left empty by replaced or failed entries count towards the share: they are
    /// freed as they reach the front).
    fn evict(&self, shard: &mut Shard, now: Instant) {
        loop {
            let (empty, old) = match shard.ring.front() {
                None => break,
                Some(None) => (true, false),
                Some(Some(slot)) => (
                    false,
                    now.saturating_duration_since(slot.entered) > self.max_age,
                ),
            };
            if !old && !empty && shard.ring.len() < self.per_shard {
                break;
            }
            if shard.pop_oldest() {
                let counter = if old {
                    &self.evicted_age
                } else {
                    &self.evicted_full
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops what has aged out in every shard (the periodic sweep, so that memory falls back
    /// when traffic stops).
    pub fn sweep(&self) {
        let now = Instant::now();
        for i in 0..SHARDS {
            let mut shard = self.shards[i]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Only age applies here: a full shard is trimmed by its next insert.
            loop {
                let old = match shard.ring.front() {
                    None => break,
                    Some(None) => true,
                    Some(Some(slot)) => now.saturating_duration_since(slot.entered) > self.max_age,
                };
                if !old {
                    break;
                }
                if shard.pop_oldest() {
                    self.evicted_age.fetch_add(1, Ordering::Relaxed);
                }
            }
            if shard.ring.is_empty() {
                // Give the memory of a burst back once it has all aged out.
                shard.ring.shrink_to(64);
                shard.live.shrink_to(64);
            }
        }
    }

    /// Fills in a request's answer; outcomes that arrived while it ran are joined now.
    pub fn answer(&self, ticket: Ticket, predicted: Predicted) -> Vec<Joined> {
        let mut shard = self.shard(ticket.hash);
        let Some(slot) = shard.ticketed(ticket) else {
            return Vec::new();
        };
        let waiting = match std::mem::replace(
            &mut slot.state,
            State::Answered {
                predicted,
                joined: Vec::new(),
            },
        ) {
            State::Running { waiting } => waiting,
            State::Answered { .. } => Vec::new(),
        };
        waiting
            .into_iter()
            .filter_map(|t| match join_answered(slot, t, true) {
                Join::Matched(joined) => Some(*joined),
                _ => None,
            })
            .collect()
    }

    /// Forgets a request that failed: it has no prediction to join.
    pub fn fail(&self, ticket: Ticket) {
        let mut shard = self.shard(ticket.hash);
        if shard.ticketed(ticket).is_some() {
            shard.remove(ticket.seq);
        }
    }

    /// Joins one outcome for `model`'s request `id`.
    pub fn join(&self, model: &str, id: &str, outcome: Truthful) -> Join {
        let hash = self.hasher.hash_one(id);
        let mut shard = self.shard(hash);
        let Some(slot) = shard
            .find(hash)
            .filter(|s| s.id.as_slice() == id.as_bytes() && s.served.quality.model == model)
        else {
            return Join::Unknown;
        };
        match &mut slot.state {
            State::Running { waiting } => {
                if waiting.iter().any(|w| w.row == outcome.row) {
                    Join::Duplicate
                } else if waiting.len() >= MAX_WAITING {
                    Join::Unknown
                } else {
                    waiting.push(outcome);
                    Join::Late
                }
            }
            State::Answered { .. } => join_answered(slot, outcome, false),
        }
    }

    /// Entries held now (every shard is locked in turn).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.live.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evictions(&self) -> Evictions {
        Evictions {
            capacity: self.evicted_full.load(Ordering::Relaxed),
            age: self.evicted_age.load(Ordering::Relaxed),
        }
    }
}

fn join_answered(slot: &mut Slot, outcome: Truthful, late: bool) -> Join {
    let State::Answered { predicted, joined } = &mut slot.state else {
        return Join::Unknown;
    };
    let Ok(row) = u16::try_from(outcome.row) else {
        return Join::Unknown;
    };
    if joined.contains(&row) {
        return Join::Duplicate;
    }
    let Some(prediction) = predicted.row(outcome.row) else {
        return Join::Unknown;
    };
    let quality = &slot.served.quality;
    let scored = match quality.join(slot.served.variant, prediction, outcome.truth) {
        Ok(scored) => scored,
        Err(Mismatch::Kind) => return Join::Mismatched,
    };
    joined.push(row);
    use crate::telemetry::quality::RowPrediction;
    let (label, probabilities, value) = match prediction {
        RowPrediction::Class {
            label,
            probabilities,
        } => (Some(label), probabilities.map(<[f32]>::to_vec), None),
        RowPrediction::Value(v) => (None, None, Some(v)),
        RowPrediction::Opaque => (None, None, None),
    };
    Join::Matched(Box::new(Joined {
        // The bytes came from a &str.
        id: std::str::from_utf8(&slot.id).unwrap_or_default().into(),
        model: quality.model.clone(),
        version: quality.version,
        variant: slot.served.variant,
        served_at: slot.served.at,
        row: outcome.row,
        label,
        probabilities,
        value,
        truth: outcome.truth,
        scored,
        late,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::tensor::{Tensor, TensorData};

    fn served(quality: &Arc<VersionQuality>) -> Served {
        Served {
            quality: Arc::clone(quality),
            variant: Variant::Primary,
            at: SystemTime::now(),
        }
    }

    fn answer(label: i64) -> Predicted {
        let outputs = vec![
            Tensor::new("label", vec![1], TensorData::I64(vec![label])).unwrap(),
            Tensor::new("p", vec![1, 2], TensorData::F32(vec![0.25, 0.75])).unwrap(),
        ];
        Predicted::from_outputs(&outputs, 1)
    }

    fn label(l: i64) -> Truthful {
        Truthful {
            row: 0,
            truth: Truth::Label(l),
        }
    }

    #[test]
    fn matches_duplicates_late_and_unknown() {
        let quality = Arc::new(VersionQuality::new("m", 3));
        let index = PredictionIndex::new(1000, Duration::from_secs(60));
        let t = index.begin("a", served(&quality));
        assert!(matches!(index.join("m", "a", label(1)), Join::Late));
        assert!(matches!(index.join("m", "a", label(1)), Join::Duplicate));
        let joined = index.answer(t, answer(1));
        assert_eq!(joined.len(), 1);
        assert!(joined[0].late && joined[0].scored.correct == Some(true));
        assert!(matches!(index.join("m", "a", label(0)), Join::Duplicate));
        assert!(matches!(index.join("m", "nope", label(0)), Join::Unknown));
        assert!(matches!(index.join("other", "a", label(0)), Join::Unknown));
        let t = index.begin("b", served(&quality));
        index.answer(t, answer(1));
        let Join::Matched(j) = index.join("m", "b", label(0)) else {
            panic!("b is answered")
        };
        assert_eq!(
            (j.version, j.label, j.scored.correct),
            (3, Some(1), Some(false))
        );
        assert!(matches!(
            index.join(
                "m",
                "b",
                Truthful {
                    row: 1,
                    truth: Truth::Label(0)
                }
            ),
            Join::Unknown
        ));
        let t = index.begin("b2", served(&quality));
        index.answer(t, answer(1));
        assert!(matches!(
            index.join(
                "m",
                "b2",
                Truthful {
                    row: 0,
                    truth: Truth::Value(1.0)
                }
            ),
            Join::Mismatched
        ));
        let totals = quality.get(Variant::Primary).totals();
        assert_eq!((totals.labeled, totals.correct), (2, 1));
        // A failed request leaves nothing to join.
        let t = index.begin("c", served(&quality));
        index.fail(t);
        assert!(matches!(index.join("m", "c", label(0)), Join::Unknown));
    }

    #[test]
    fn holds_at_most_its_bound_and_counts_what_it_evicts() {
        let quality = Arc::new(VersionQuality::new("m", 1));
        let index = PredictionIndex::new(1600, Duration::from_secs(3600));
        for i in 0..1_000_000u32 {
            let t = index.begin(&i.to_string(), served(&quality));
            index.answer(t, answer(1));
        }
        assert!(index.len() <= 1600, "{}", index.len());
        let evicted = index.evictions();
        assert_eq!(evicted.capacity + index.len() as u64, 1_000_000);
        assert!(matches!(index.join("m", "0", label(1)), Join::Unknown));
        assert!(matches!(
            index.join("m", "999999", label(1)),
            Join::Matched(_)
        ));
        for shard in index.shards.iter() {
            let shard = shard.lock().unwrap();
            assert!(shard.ring.len() <= index.per_shard);
        }
    }

    #[test]
    fn a_reused_id_joins_its_latest_prediction() {
        let quality = Arc::new(VersionQuality::new("m", 1));
        let index = PredictionIndex::new(160, Duration::from_secs(60));
        let first = index.begin("a", served(&quality));
        let second = index.begin("a", served(&quality));
        // The first run's answer finds its entry replaced.
        assert!(index.answer(first, answer(0)).is_empty());
        index.answer(second, answer(1));
        assert_eq!(index.len(), 1);
        let Join::Matched(j) = index.join("m", "a", label(1)) else {
            panic!("the latest prediction is answered")
        };
        assert_eq!(j.label, Some(1));
        // Failing the replaced ticket leaves the live entry alone.
        index.fail(first);
        assert!(matches!(index.join("m", "a", label(1)), Join::Duplicate));
        // Replaced places are freed as they reach the front: the shard stays within its share.
        for i in 0..1000 {
            let t = index.begin(&format!("x{i}"), served(&quality));
            index.answer(t, answer(1));
        }
        for shard in index.shards.iter() {
            assert!(shard.lock().unwrap().ring.len() <= index.per_shard);
        }
    }

    #[test]
    fn entries_age_out() {
        let quality = Arc::new(VersionQuality::new("m", 1));
        let index = PredictionIndex::new(1000, Duration::from_millis(20));
        let t = index.begin("old", served(&quality));
        index.answer(t, answer(1));
        std::thread::sleep(Duration::from_millis(40));
        index.sweep();
        assert!(index.is_empty());
        assert_eq!(index.evictions().age, 1);
        assert!(matches!(index.join("m", "old", label(1)), Join::Unknown));
    }
}

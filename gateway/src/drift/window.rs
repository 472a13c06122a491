//! The sliding window drift is measured over: a ring of time buckets (e.g. 30 buckets of
//! 10 s for a 5 minute window), each holding one counter per bin of every tracked series.
//! Counting a value is one relaxed atomic add; no lock is taken, so concurrent requests only
//! share cache lines, never wait on each other. The layout imitates `telemetry::window`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Slot {
    /// Which bucket (since the window's start) this slot holds; u64::MAX = none yet.
    bucket: AtomicU64,
    /// Input rows counted into this slot.
    rows: AtomicU64,
    /// One counter per bin, all series laid end to end.
    counts: Box<[AtomicU64]>,
}

/// Bin counts of every series over the last `window`, bucket by bucket.
pub struct DriftWindow {
    started: Instant,
    bucket_nanos: u64,
    slots: Box<[Slot]>,
}

/// The slot a request counts into, claimed once per request.
pub struct Counter<'a> {
    slot: &'a Slot,
}

impl Counter<'_> {
    /// Counts one value into bin `index` (a series' offset plus its bin).
    #[inline]
    pub fn count(&self, index: usize) {
        if let Some(counter) = self.slot.counts.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn add_rows(&self, rows: u64) {
        self.slot.rows.fetch_add(rows, Ordering::Relaxed);
    }
}

/// Totals over the window at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub rows: u64,
    pub counts: Vec<u64>,
}

impl DriftWindow {
    /// A window of `window` in buckets of `bucket` (both at least 1 ms; the window holds at
    /// least one bucket), with `bins` counters per bucket.
    pub fn new(window: Duration, bucket: Duration, bins: usize) -> DriftWindow {
        let bucket_nanos = bucket.as_nanos().clamp(1_000_000, u128::from(u64::MAX)) as u64;
        let slots = window
            .as_nanos()
            .div_ceil(u128::from(bucket_nanos))
            .clamp(1, 100_000) as usize;
        DriftWindow {
            started: Instant::now(),
            bucket_nanos,
            slots: (0..slots)
                .map(|_| Slot {
                    bucket: AtomicU64::new(u64::MAX),
                    rows: AtomicU64::new(0),
                    counts: (0..bins).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
        }
    }

    /// The span the totals cover: every bucket, the current (partial) one included.
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos.saturating_mul(self.slots.len() as u64))
    }

    fn bucket(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_nanos() / u128::from(self.bucket_nanos))
            as u64
    }

    /// The slot for the bucket `at` falls in. The first request of a new bucket clears the
    /// slot's old counts; a count racing that reset may be lost, which a window of thousands
    /// of rows does not notice (the same trade as `telemetry::window`).
    pub fn counter_at(&self, at: Instant) -> Counter<'_> {
        let bucket = self.bucket(at);
        let slot = &self.slots[(bucket % self.slots.len() as u64) as usize];
        let held = slot.bucket.load(Ordering::Acquire);
        if held != bucket
            && slot
                .bucket
                .compare_exchange(held, bucket, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.rows.store(0, Ordering::Relaxed);
            for c in slot.counts.iter() {
                c.store(0, Ordering::Relaxed);
            }
        }
        Counter { slot }
    }

    pub fn counter(&self) -> Counter<'_> {
        self.counter_at(Instant::now())
    }

    /// Totals over the buckets still inside the window at `now`.
    pub fn totals_at(&self, now: Instant) -> WindowCounts {
        let current = self.bucket(now);
        let oldest = current.saturating_sub(self.slots.len() as u64 - 1);
        let bins = self.slots.first().map_or(0, |s| s.counts.len());
        let mut totals = WindowCounts {
            rows: 0,
            counts: vec![0; bins],
        };
        for slot in self.slots.iter() {
            let bucket = slot.bucket.load(Ordering::Acquire);
            if bucket == u64::MAX || bucket < oldest || bucket > current {
                continue;
            }
            totals.rows += slot.rows.load(Ordering::Relaxed);
            for (sum, c) in totals.counts.iter_mut().zip(slot.counts.iter()) {
                *sum += c.load(Ordering::Relaxed);
            }
        }
        totals
    }

    pub fn totals(&self) -> WindowCounts {
        self.totals_at(Instant::now())
    }

    /// When the window started counting, for tests that drive time by hand.
    pub fn started(&self) -> Instant {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_after_the_window() {
        let w = DriftWindow::new(Duration::from_secs(30), Duration::from_secs(10), 3);
        assert_eq!(w.span(), Duration::from_secs(30));
        let t0 = w.started();
        let c = w.counter_at(t0);
        c.count(0);
        c.count(2);
        c.add_rows(1);
        let later = t0 + Duration::from_secs(25);
        let c = w.counter_at(later);
        c.count(1);
        c.add_rows(1);
        assert_eq!(
            w.totals_at(later),
            WindowCounts {
                rows: 2,
                counts: vec![1, 1, 1]
            }
        );
        // 30 s on, the first bucket has left the window; its slot is reused by a new bucket.
        let much_later = t0 + Duration::from_secs(31);
        assert_eq!(w.totals_at(much_later).counts, vec![0, 1, 0]);
        w.counter_at(much_later).count(2);
        assert_eq!(w.totals_at(much_later).counts, vec![0, 1, 1]);
        // An index past the end is ignored rather than a panic on the request path.
        w.counter_at(much_later).count(3);
    }
}

//! Rolling windows: per model version and variant, time-bucketed counters and latency
//! histograms over the last couple of minutes, kept in-process so that p50/p99 and error rates
//! over any recent span are a read away, without a scrape. Recording is a few relaxed atomic
//! adds; no lock is taken on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Width of one time bucket.
const BUCKET: Duration = Duration::from_secs(1);
/// Buckets kept: the longest span a query can cover.
const BUCKETS: usize = 120;
/// Latency buckets: 8 per power of two from 1 us, up to ~2^27 us (134 s).
const SUB_BUCKETS: u32 = 8;
const LATENCY_BUCKETS: usize = 27 * SUB_BUCKETS as usize;

struct Slot {
    /// Which second (since the window's start) this slot currently holds; u64::MAX = none.
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// One series (model, version, variant).
pub struct RollingWindow {
    started: Instant,
    slots: Box<[Slot]>,
}

/// What a window saw over a span.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub requests_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(skip)]
    pub latency: Vec<u64>,
}

impl Default for RollingWindow {
    fn default() -> Self {
        RollingWindow::new()
    }
}

fn latency_bucket(latency: Duration) -> usize {
    let us = latency.as_micros().max(1) as u64;
    let power = 63 - us.leading_zeros(); // floor(log2(us))
    let fraction = if power >= 3 {
        (us >> (power - 3)) & 0x7
    } else {
        (us << (3 - power)) & 0x7
    };
    ((power * SUB_BUCKETS) as usize + fraction as usize).min(LATENCY_BUCKETS - 1)
}

/// The lower bound of a latency bucket, in milliseconds.
fn bucket_lower_ms(index: usize) -> f64 {
    let power = (index as u32) / SUB_BUCKETS;
    let fraction = (index as u32) % SUB_BUCKETS;
    (1u64 << power) as f64 * (1.0 + f64::from(fraction) / f64::from(SUB_BUCKETS)) / 1000.0
}

/// The upper bound of a latency bucket, in milliseconds.
fn bucket_upper_ms(index: usize) -> f64 {
    let power = (index as u32) / SUB_BUCKETS;
    let fraction = (index as u32) % SUB_BUCKETS;
    let lower_us = (1u64 << power) as f64 * (1.0 + f64::from(fraction) / f64::from(SUB_BUCKETS));
    let width_us = (1u64 << power) as f64 / f64::from(SUB_BUCKETS);
    (lower_us + width_us) / 1000.0
}

impl RollingWindow {
    pub fn new() -> RollingWindow {
        RollingWindow {
            started: Instant::now(),
            slots: (0..BUCKETS).map(|_| Slot::new()).collect(),
        }
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() / BUCKET.as_secs()
    }

    /// Records one finished request.
    pub fn record(&self, latency: Duration, failed: bool) {
        self.record_at(Instant::now(), latency, failed);
    }

    pub fn record_at(&self, at: Instant, latency: Duration, failed: bool) {
        let second = self.second(at);
        let slot = &self.slots[(second % BUCKETS as u64) as usize];
        let held = slot.second.load(Ordering::Acquire);
        if held != second {
            // First request of a new second in this slot: whoever wins the exchange clears the
            // slot's old counts. A request racing the reset may be lost; the windows are for
            // decisions over hundreds of requests, not exact accounting (the counters are).
            if slot
                .second
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.errors.store(0, Ordering::Relaxed);
                for b in slot.latency.iter() {
                    b.store(0, Ordering::Relaxed);
                }
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Totals over the last `span` (whole buckets, the current one included).
    pub fn stats(&self, span: Duration) -> WindowStats {
        self.stats_at(Instant::now(), span)
    }

    /// Totals since `since`, from the whole second it falls in (at most the last 120 s): what
    /// the guard compares over a rollout step.
    pub fn stats_since(&self, since: Instant) -> WindowStats {
        let now = Instant::now();
        let seconds = self.second(now).saturating_sub(self.second(since)) + 1;
        self.stats_at(now, Duration::from_secs(seconds))
    }

    pub fn stats_at(&self, now: Instant, span: Duration) -> WindowStats {
        let current = self.second(now);
        let seconds = span.as_secs().clamp(1, BUCKETS as u64);
        let oldest = current.saturating_sub(seconds - 1);
        let mut stats = WindowStats {
            latency: vec![0; LATENCY_BUCKETS],
            ..WindowStats::default()
        };
        for slot in self.slots.iter() {
            let second = slot.second.load(Ordering::Acquire);
            if second == u64::MAX || second < oldest || second > current {
                continue;
            }
            stats.requests += slot.requests.load(Ordering::Relaxed);
            stats.errors += slot.errors.load(Ordering::Relaxed);
            for (sum, b) in stats.latency.iter_mut().zip(slot.latency.iter()) {
                *sum += b.load(Ordering::Relaxed);
            }
        }
        let covered = (current - oldest + 1) as f64;
        stats.requests_per_second = stats.requests as f64 / covered;
        stats.error_rate =
            (stats.requests > 0).then(|| stats.errors as f64 / stats.requests as f64);
        stats.p50_ms = quantile(&stats.latency, 0.50);
        stats.p90_ms = quantile(&stats.latency, 0.90);
        stats.p99_ms = quantile(&stats.latency, 0.99);
        stats
    }
}

impl WindowStats {
    /// Requests certainly slower than `ms`: those in latency buckets that start at or above it.
    pub fn slower_than(&self, ms: f64) -> u64 {
        self.latency
            .iter()
            .enumerate()
            .filter(|(i, _)| bucket_lower_ms(*i) >= ms)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The upper bound of the bucket holding quantile `q`, in milliseconds.
pub fn quantile(histogram: &[u64], q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_ms(i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_resolve_to_an_eighth() {
        for us in [1u64, 7, 50, 999, 1_000, 12_345, 2_000_000] {
            let upper = bucket_upper_ms(latency_bucket(Duration::from_micros(us))) * 1000.0;
            assert!(
                upper >= us as f64 && upper <= us as f64 * 1.25 + 1.0,
                "{us} us -> {upper}"
            );
        }
    }

    #[test]
    fn quantiles_and_rates_over_a_span() {
        let w = RollingWindow::new();
        let t0 = w.started;
        for i in 0..1000u64 {
            let latency = Duration::from_micros(if i < 990 { 100 } else { 10_000 });
            w.record_at(t0 + Duration::from_millis(i), latency, i % 100 == 0);
        }
        let s = w.stats_at(t0 + Duration::from_millis(999), Duration::from_secs(60));
        assert_eq!((s.requests, s.errors), (1000, 10));
        assert_eq!(s.error_rate, Some(0.01));
        assert!((0.1..0.125).contains(&s.p50_ms.unwrap()), "{s:?}");
        assert!((0.1..0.125).contains(&s.p99_ms.unwrap()), "{s:?}");
        // Later traffic only: the old second falls out of a short span.
        w.record_at(
            t0 + Duration::from_secs(5),
            Duration::from_millis(10),
            false,
        );
        let recent = w.stats_at(t0 + Duration::from_secs(5), Duration::from_secs(2));
        assert_eq!(recent.requests, 1);
        assert!(recent.p99_ms.unwrap() >= 10.0);
    }

    #[test]
    fn counts_since_an_instant_and_slower_than_a_bound() {
        let w = RollingWindow::new();
        let t0 = w.started;
        w.record_at(t0, Duration::from_micros(100), false);
        for i in 0..10u64 {
            let latency = Duration::from_millis(if i < 3 { 20 } else { 1 });
            w.record_at(t0 + Duration::from_secs(2), latency, false);
        }
        let now = t0 + Duration::from_secs(2);
        let seconds = w.second(now) - w.second(t0 + Duration::from_millis(1500)) + 1;
        let s = w.stats_at(now, Duration::from_secs(seconds));
        assert_eq!(s.requests, 10, "the earlier second is left out");
        assert_eq!(s.slower_than(10.0), 3);
        assert_eq!(s.slower_than(0.5), 10);
        for i in 0..LATENCY_BUCKETS - 1 {
            assert!((bucket_lower_ms(i + 1) - bucket_upper_ms(i)).abs() < 1e-9);
        }
    }

    #[test]
    fn slots_are_reused_after_they_expire() {
        let w = RollingWindow::new();
        let t0 = w.started;
        w.record_at(t0, Duration::from_micros(10), true);
        let later = t0 + Duration::from_secs(BUCKETS as u64);
        w.record_at(later, Duration::from_micros(10), false);
        let s = w.stats_at(later, Duration::from_secs(BUCKETS as u64));
        assert_eq!((s.requests, s.errors), (1, 0));
    }
}

/// One window per traffic variant, for one model version, and what it predicted while a
/// rollout watched it.
#[derive(Default)]
pub struct VariantWindows {
    primary: RollingWindow,
    canary: RollingWindow,
    direct: RollingWindow,
    shadow: RollingWindow,
    pub predictions: super::predictions::PredictionWatch,
}

impl VariantWindows {
    pub fn get(&self, variant: sluice_core::Variant) -> &RollingWindow {
        use sluice_core::Variant;
        match variant {
            Variant::Primary => &self.primary,
            Variant::Canary => &self.canary,
            Variant::Direct => &self.direct,
            Variant::Shadow => &self.shadow,
        }
    }
}

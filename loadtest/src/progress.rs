//! The live progress line: once a second, on stderr, what the run has done so far.
//!
//! Each connection's [`Recorder`](crate::stats::Recorder) bumps its own [`LiveCount`] (one cache
//! line per connection, written by that connection only), and a printer task sums them once a
//! second, so the hot path shares nothing with the printer but a relaxed counter of its own.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::pace::Window;

/// Responses and errors one connection has recorded so far (inside the measured window).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LiveCount {
    responses: AtomicU64,
    errors: AtomicU64,
}

impl LiveCount {
    pub(crate) fn response(&self) {
        self.responses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of every connection of a run.
#[derive(Debug, Default)]
pub struct Progress {
    counts: Vec<Arc<LiveCount>>,
}

impl Progress {
    /// A counter for one more connection.
    pub fn counter(&mut self) -> Arc<LiveCount> {
        let count = Arc::new(LiveCount::default());
        self.counts.push(Arc::clone(&count));
        count
    }

    /// Prints a line on stderr every second until `window` ends. Abort the task to stop early.
    pub fn spawn(self, window: Window) -> JoinHandle<()> {
        tokio::spawn(async move {
            let begun = Instant::now();
            let mut ticks =
                tokio::time::interval_at(begun + Duration::from_secs(1), Duration::from_secs(1));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last = (Instant::now(), 0);
            loop {
                let now = ticks.tick().await;
                if now >= window.end {
                    return;
                }
                let (responses, errors) = self.totals();
                let rate = if now > last.0 {
                    responses.saturating_sub(last.1) as f64 / (now - last.0).as_secs_f64()
                } else {
                    0.0
                };
                last = (now, responses);
                let phase = if now < window.start {
                    "warm-up"
                } else {
                    "measuring"
                };
                // A failed write to stderr is no reason to stop the run.
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{}",
                    line(now - begun, phase, responses, rate, errors)
                );
            }
        })
    }

    /// Responses and errors recorded so far, over every connection.
    pub fn totals(&self) -> (u64, u64) {
        self.counts.iter().fold((0, 0), |(r, e), c| {
            (
                r + c.responses.load(Ordering::Relaxed),
                e + c.errors.load(Ordering::Relaxed),
            )
        })
    }
}

/// One progress line.
fn line(elapsed: Duration, phase: &str, responses: u64, rate: f64, errors: u64) -> String {
    format!(
        "[{:>4}s] {phase:<9}  {responses:>9} requests  {rate:>9.0} req/s  {errors} errors",
        elapsed.as_secs_f64().round()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_connection() {
        let mut progress = Progress::default();
        let a = progress.counter();
        let b = progress.counter();
        a.response();
        b.response();
        b.response();
        a.error();
        assert_eq!(progress.totals(), (3, 1));
    }

    #[test]
    fn formats_a_line() {
        assert_eq!(
            line(Duration::from_millis(3004), "measuring", 1234, 411.3, 2),
            "[   3s] measuring       1234 requests        411 req/s  2 errors"
        );
    }
}

//! Recording what each connection saw.
//!
//! Every connection task owns one [`Recorder`] and nothing else is shared while the load runs, so
//! the hot path takes no lock and touches no other core's cache lines. The recorders are merged
//! once, at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use http::StatusCode;

use crate::progress::LiveCount;

/// Significant figures kept by the latency histogram: 0.1% error at any magnitude.
const SIGNIFICANT_FIGURES: u8 = 3;

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Opening the connection failed (refused, unreachable, or it took longer than the timeout).
    Connect,
    /// The connection broke while sending the request or reading the response.
    Io,
    /// No complete response within the request timeout.
    Timeout,
}

impl ErrorKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ErrorKind; 3] = [ErrorKind::Connect, ErrorKind::Io, ErrorKind::Timeout];

    /// The name used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Latencies, status codes and errors seen by one connection (or, merged, by all of them).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of every response, in microseconds.
    latency_us: Histogram<u64>,
    /// Latency of 2xx responses only: under overload, fast refusals would otherwise hide how
    /// long the admitted requests took.
    ok_latency_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: [u64; ErrorKind::ALL.len()],
    /// Also counts into this, for the progress line, when set.
    live: Option<Arc<LiveCount>>,
}

impl Recorder {
    /// An empty recorder whose histogram spans 1µs to `max_latency`; longer latencies are
    /// recorded as `max_latency`. Pass the request timeout: nothing can take longer.
    pub fn new(max_latency: Duration) -> anyhow::Result<Self> {
        // hdrhistogram needs high >= 2 * low.
        let high = u64::try_from(max_latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(2);
        let latency_us = Histogram::new_with_bounds(1, high, SIGNIFICANT_FIGURES)
            .context("cannot build latency histogram")?;
        Ok(Self {
            ok_latency_us: latency_us.clone(),
            latency_us,
            statuses: BTreeMap::new(),
            errors: [0; ErrorKind::ALL.len()],
            live: None,
        })
    }

    /// Also counts every response and error into `live`, for the progress line.
    pub fn with_live(mut self, live: Arc<LiveCount>) -> Self {
        self.live = Some(live);
        self
    }

    /// Records one complete response.
    pub fn response(&mut self, status: StatusCode, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us);
        if status.is_success() {
            self.ok_latency_us.saturating_record(us);
        }
        *self.statuses.entry(status.as_u16()).or_insert(0) += 1;
        if let Some(live) = &self.live {
            live.response();
        }
    }

    /// Records one request that got no response.
    pub fn error(&mut self, kind: ErrorKind) {
        self.errors[kind.index()] += 1;
        if let Some(live) = &self.live {
            live.error();
        }
    }

    /// Adds everything `other` recorded to this recorder.
    pub fn merge(&mut self, other: &Recorder) -> anyhow::Result<()> {
        self.ok_latency_us
            .add(&other.ok_latency_us)
            .context("cannot merge latency histograms")?;
        self.latency_us
            .add(&other.latency_us)
            .context("cannot merge latency histograms")?;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_insert(0) += n;
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        Ok(())
    }

    /// Responses recorded, whatever their status.
    pub fn responses(&self) -> u64 {
        self.latency_us.len()
    }

    /// The latency histogram, in microseconds.
    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.latency_us
    }

    /// Latencies of successful (2xx) responses only.
    pub fn ok_latency_us(&self) -> &Histogram<u64> {
        &self.ok_latency_us
    }

    /// Responses per status code.
    pub fn statuses(&self) -> &BTreeMap<u16, u64> {
        &self.statuses
    }

    /// Requests that failed with `kind`.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_counts_and_latencies() -> anyhow::Result<()> {
        let max = Duration::from_secs(1);
        let mut a = Recorder::new(max)?;
        let mut b = Recorder::new(max)?;
        a.response(StatusCode::OK, Duration::from_micros(100));
        b.response(StatusCode::OK, Duration::from_micros(300));
        b.response(StatusCode::SERVICE_UNAVAILABLE, Duration::from_micros(50));
        b.error(ErrorKind::Io);
        a.error(ErrorKind::Io);
        a.error(ErrorKind::Timeout);
        a.merge(&b)?;

        assert_eq!(a.responses(), 3);
        assert_eq!(a.statuses()[&200], 2);
        assert_eq!(a.statuses()[&503], 1);
        assert_eq!(a.errors(ErrorKind::Io), 2);
        assert_eq!(a.errors(ErrorKind::Timeout), 1);
        assert_eq!(a.errors(ErrorKind::Connect), 0);
        assert!(a.latency_us().max() >= 300);
        Ok(())
    }

    #[test]
    fn latency_past_the_timeout_saturates() -> anyhow::Result<()> {
        let mut r = Recorder::new(Duration::from_millis(10))?;
        r.response(StatusCode::OK, Duration::from_secs(60));
        assert_eq!(r.responses(), 1);
        assert!(r.latency_us().max() <= 10_100);
        Ok(())
    }
}

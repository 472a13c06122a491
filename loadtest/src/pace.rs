//! When a connection sends (open-loop schedules) and which answers count (the measured
//! window): the timing every connection loop shares, below the loops and the run that drives
//! them.

use std::time::Duration;

use tokio::time::Instant;

/// An open-loop schedule for one connection: send times `first + k * interval`. Latency is
/// measured from the scheduled time, not from when the connection got round to sending, so a
/// stalled server is charged for the requests it delayed (the coordinated-omission correction
/// wrk2 makes).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub next: Instant,
    pub interval: Duration,
}

impl Pace {
    /// The schedule of connection `index` of `connections` sharing `rate` requests per second;
    /// connections are staggered so that the sends are spread evenly.
    pub fn for_connection(rate: f64, connections: usize, index: usize, from: Instant) -> Pace {
        let interval = Duration::from_secs_f64(connections as f64 / rate);
        Pace {
            next: from + interval.mul_f64(index as f64 / connections as f64),
            interval,
        }
    }

    /// Waits for the next scheduled send and returns the time its latency counts from.
    ///
    /// When the connection is behind schedule (its last answer came back after this send was
    /// due) that is the scheduled time: the server is charged for the wait it caused. When it
    /// is on time, it is the moment the timer fired, so the client's own timer granularity
    /// (about a millisecond in tokio) is not charged to the server.
    pub async fn wait(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        if Instant::now() >= due {
            return due;
        }
        tokio::time::sleep_until(due).await;
        Instant::now()
    }
}

/// The span of time whose requests count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// Whether something that finished at `t` counts.
    pub fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }
}

//! The numbers a run produced, for people (a table) and for scripts (one JSON object).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use crate::run::{Config, Summary};
use crate::stats::ErrorKind;

/// The result of a run. Its JSON form is the stable interface for scripts and CI.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Responses received in the measured window, whatever their status.
    pub requests: u64,
    /// Length of the measured window (warm-up excluded).
    pub duration_s: f64,
    /// `requests / duration_s`.
    pub throughput_rps: f64,
    pub latency_ms: LatencyMs,
    /// The same over successful (2xx) responses only.
    pub ok_latency_ms: LatencyMs,
    /// Responses per HTTP status code.
    pub status_counts: BTreeMap<u16, u64>,
    /// Requests that got no response, per [`ErrorKind`]; every kind is present, zeros included.
    pub errors: BTreeMap<&'static str, u64>,
    pub connections: usize,
}

/// Response latency in milliseconds, over every response in the window.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencyMs {
    fn of(h: &hdrhistogram::Histogram<u64>) -> LatencyMs {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyMs {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

impl Report {
    pub fn new(summary: &Summary) -> Self {
        let r = &summary.recorder;
        let duration_s = summary.duration.as_secs_f64();
        let requests = r.responses();
        Self {
            requests,
            duration_s,
            throughput_rps: if duration_s > 0.0 {
                requests as f64 / duration_s
            } else {
                0.0
            },
            latency_ms: LatencyMs::of(r.latency_us()),
            ok_latency_ms: LatencyMs::of(r.ok_latency_us()),
            status_counts: r.statuses().clone(),
            errors: ErrorKind::ALL
                .iter()
                .map(|kind| (kind.as_str(), r.errors(*kind)))
                .collect(),
            connections: summary.connections,
        }
    }

    /// Writes the report as one line of JSON.
    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        writeln!(out)
    }

    /// Writes the report as a table for people, headed by what was run.
    pub fn write_table(&self, out: &mut impl Write, config: &Config) -> io::Result<()> {
        let template = &config.template;
        writeln!(out, "{} {}", template.method(), template.url())?;
        let http = if config.http2 { ", HTTP/2 (h2c)" } else { "" };
        let pacing = match config.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            out,
            "{} connections{http}, {pacing}, {} measured after {} warm-up",
            self.connections,
            humantime::format_duration(config.duration),
            humantime::format_duration(config.warmup),
        )?;
        writeln!(out)?;
        writeln!(out, "  requests      {}", self.requests)?;
        writeln!(out, "  throughput    {:.1} req/s", self.throughput_rps)?;
        writeln!(out)?;
        let l = &self.latency_ms;
        writeln!(
            out,
            "  latency (ms)  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        writeln!(
            out,
            "                {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        writeln!(out)?;
        let statuses: Vec<String> = self
            .status_counts
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let statuses = if statuses.is_empty() {
            "none".to_owned()
        } else {
            statuses.join("  ")
        };
        writeln!(out, "  status        {statuses}")?;
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        writeln!(out, "  errors        {}", errors.join("  "))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::stats::Recorder;

    fn summary() -> anyhow::Result<Summary> {
        let mut recorder = Recorder::new(Duration::from_secs(10))?;
        for us in [1000, 2000, 3000, 4000] {
            recorder.response(StatusCode::OK, Duration::from_micros(us));
        }
        recorder.response(StatusCode::TOO_MANY_REQUESTS, Duration::from_micros(500));
        recorder.error(ErrorKind::Timeout);
        Ok(Summary {
            recorder,
            duration: Duration::from_secs(2),
            connections: 8,
        })
    }

    #[test]
    fn json_has_the_documented_shape() -> anyhow::Result<()> {
        let report = Report::new(&summary()?);
        let mut out = Vec::new();
        report.write_json(&mut out)?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;

        assert_eq!(v["requests"], 5);
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["throughput_rps"], 2.5);
        assert_eq!(v["connections"], 8);
        assert_eq!(v["status_counts"]["200"], 4);
        assert_eq!(v["status_counts"]["429"], 1);
        assert_eq!(v["errors"]["timeout"], 1);
        assert_eq!(v["errors"]["connect"], 0);
        assert_eq!(v["errors"]["io"], 0);
        let latency = &v["latency_ms"];
        for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(latency[field].is_f64(), "latency_ms.{field} missing");
        }
        let max = latency["max"].as_f64().unwrap_or_default();
        assert!((max - 4.0).abs() < 0.01, "max {max}");
        Ok(())
    }

    #[test]
    fn empty_run_reports_zeros() -> anyhow::Result<()> {
        let summary = Summary {
            recorder: Recorder::new(Duration::from_secs(1))?,
            duration: Duration::from_secs(1),
            connections: 1,
        };
        let report = Report::new(&summary);
        assert_eq!(report.requests, 0);
        assert_eq!(report.latency_ms.mean, 0.0);
        assert!(report.status_counts.is_empty());
        Ok(())
    }
}

//! `--svg`: the latency-percentile plot of a run, as a hand-written SVG.
//!
//! The x axis is the percentile on a "nines" scale (0%, 90%, 99%, 99.9%, 99.99% equally spaced,
//! i.e. `-log10(1 - q)`), so the tail gets as much room as the body; the y axis is latency in
//! milliseconds from zero.

use std::fmt::Write;

use hdrhistogram::Histogram;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 60.0;
/// The x axis ends at 99.99%.
const NINES: f64 = 4.0;
/// Points plotted per nine.
const STEPS_PER_NINE: u32 = 100;

/// The plot of `latency_us` (microseconds) headed by `title`.
pub fn latency_svg(latency_us: &Histogram<u64>, title: &str) -> String {
    let points: Vec<(f64, f64)> = if latency_us.is_empty() {
        Vec::new()
    } else {
        (0..=(NINES as u32 * STEPS_PER_NINE))
            .map(|i| {
                let nines = f64::from(i) / f64::from(STEPS_PER_NINE);
                let q = 1.0 - 10f64.powf(-nines);
                (nines, latency_us.value_at_quantile(q) as f64 / 1000.0)
            })
            .collect()
    };
    let top_ms = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let step = nice_step(top_ms / 5.0);
    let y_max = (top_ms / step).ceil().max(1.0) * step;

    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |nines: f64| LEFT + nines / NINES * plot_w;
    let y = |ms: f64| TOP + plot_h - ms / y_max * plot_h;

    let mut svg = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="30" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and ticks.
    for (nines, label) in (0..=NINES as u32).zip(["0%", "90%", "99%", "99.9%", "99.99%"]) {
        let px = x(f64::from(nines));
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let py = y(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            format_ms(tick, step)
        );
        tick += step;
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{0:.1}" text-anchor="middle" transform="rotate(-90 20 {0:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0
    );
    if points.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no responses</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    } else {
        let path: Vec<String> = points
            .iter()
            .map(|&(n, ms)| format!("{:.1},{:.1}", x(n), y(ms)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A tick label with as many decimals as the step needs.
fn format_ms(ms: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{ms:.decimals$}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_the_percentiles() -> anyhow::Result<()> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3)?;
        for us in 1..=10_000u64 {
            h.record(us)?;
        }
        let svg = latency_svg(&h, "POST http://h/x?a=1&b=2 <64 connections>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("http://h/x?a=1&amp;b=2 &lt;64 connections&gt;"));
        for label in ["99.99%", "percentile", "latency (ms)"] {
            assert!(svg.contains(label), "missing {label}");
        }
        // 401 points; the last (99.99%) near 10ms, at the right edge, near the top.
        let points = svg
            .split("points=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default();
        let points: Vec<&str> = points.split(' ').collect();
        assert_eq!(points.len(), 401);
        assert_eq!(points[400].split(',').next(), Some("770.0"));
        Ok(())
    }

    #[test]
    fn an_empty_run_still_draws() -> anyhow::Result<()> {
        let h = Histogram::<u64>::new_with_bounds(1, 1000, 3)?;
        let svg = latency_svg(&h, "t");
        assert!(svg.contains("no responses"));
        assert!(!svg.contains("polyline"));
        Ok(())
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(format_ms(0.5, 0.5), "0.5");
        assert_eq!(format_ms(20.0, 10.0), "20");
    }
}

//! Latency plots as standalone SVG, written by hand (no plotting or font
//! crates): a percentile curve in the HdrHistogram style (x: percentile on a
//! log scale of "nines", 0 % to 99.99 %; y: milliseconds) and, below it, the
//! latency over time.

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Lines are drawn in these colours, in order.
const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
/// The percentile axis goes to 1 − 10^−NINES (99.99 %).
const NINES: f64 = 4.0;
const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// A named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The percentile curve of a histogram of microseconds: (nines, ms) points
/// where nines = −log10(1 − q), from q = 0 to 99.99 %.
pub fn percentile_curve(label: impl Into<String>, h: &Histogram<u64>) -> Line {
    let label = label.into();
    if h.is_empty() {
        return Line {
            label,
            points: Vec::new(),
        };
    }
    let steps = 200;
    let points = (0..=steps)
        .map(|i| {
            let nines = NINES * f64::from(i) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    Line {
        label: format!(
            "{label} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, n = {})",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        ),
        points,
    }
}

/// The whole picture: a title, the percentile curves, and (if any) lines of
/// latency over time (x in seconds).
pub fn svg(title: &str, curves: &[Line], over_time: &[Line]) -> String {
    let top_h = 380.0;
    let bottom_h = if over_time.iter().any(|l| !l.points.is_empty()) {
        300.0
    } else {
        0.0
    };
    let height = 40.0 + top_h + bottom_h;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="24" font-size="16" text-anchor="middle">{title}</text>
"##,
        x = WIDTH / 2.0,
        title = escape(title),
    );
    let x_ticks: Vec<(f64, String)> = (0..=NINES as u32)
        .map(|n| {
            let pct = 100.0 * (1.0 - 10f64.powi(-(n as i32)));
            (f64::from(n), format!("{}%", trim(pct)))
        })
        .collect();
    panel(
        &mut out,
        Frame {
            top: 40.0,
            height: top_h,
            x_range: (0.0, NINES),
            x_ticks,
            x_label: "percentile",
        },
        curves,
    );
    if bottom_h > 0.0 {
        let x_max = over_time
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .fold(1.0f64, f64::max);
        let x_ticks = nice_ticks(x_max)
            .into_iter()
            .map(|t| (t, trim(t)))
            .collect();
        panel(
            &mut out,
            Frame {
                top: 40.0 + top_h,
                height: bottom_h,
                x_range: (0.0, x_max),
                x_ticks,
                x_label: "second of the measurement",
            },
            over_time,
        );
    }
    out.push_str("</svg>\n");
    out
}

struct Frame {
    top: f64,
    height: f64,
    x_range: (f64, f64),
    x_ticks: Vec<(f64, String)>,
    x_label: &'static str,
}

fn panel(out: &mut String, f: Frame, lines: &[Line]) {
    // Room for the legend above the plot and the axis labels below it.
    let legend_h = 18.0 * lines.len() as f64 + 8.0;
    let plot_top = f.top + legend_h;
    let plot_bottom = f.top + f.height - 45.0;
    let plot_right = WIDTH - RIGHT;
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_ticks = nice_ticks(if y_max > 0.0 { y_max } else { 1.0 });
    let y_top = *y_ticks.last().unwrap_or(&1.0);
    let (x0, x1) = f.x_range;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(f64::EPSILON) * (plot_right - LEFT);
    let sy = |y: f64| plot_bottom - y / y_top * (plot_bottom - plot_top);

    for (t, label) in &f.x_ticks {
        let x = sx(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{plot_top:.1}" x2="{x:.1}" y2="{plot_bottom:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle">{label}</text>"##,
            ty = plot_bottom + 16.0,
            label = escape(label),
        );
    }
    for t in &y_ticks {
        let y = sy(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT:.1}" y1="{y:.1}" x2="{plot_right:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{v}</text>"##,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            v = trim(*t),
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT:.1}" y="{plot_top:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#888"/>
<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle">{xl}</text>
<text transform="translate(18 {cy:.1}) rotate(-90)" text-anchor="middle">latency (ms)</text>"##,
        w = plot_right - LEFT,
        h = plot_bottom - plot_top,
        cx = (LEFT + plot_right) / 2.0,
        ly = plot_bottom + 34.0,
        xl = f.x_label,
        cy = (plot_top + plot_bottom) / 2.0,
    );
    for (i, line) in lines.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let ly = f.top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"/><text x="{tx:.1}" y="{ty:.1}">{label}</text>"##,
            y = ly - 4.0,
            x2 = LEFT + 24.0,
            tx = LEFT + 30.0,
            ty = ly,
            label = escape(&line.label),
        );
        if line.points.is_empty() {
            continue;
        }
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"##,
            path.join(" ")
        );
        if line.points.len() < 3 {
            // Too few points for a visible line.
            for &(x, y) in &line.points {
                let _ = writeln!(
                    out,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"##,
                    sx(x),
                    sy(y)
                );
            }
        }
    }
}

/// 0 and round steps (1, 2 or 5 × 10^k) up to at least `max`, 4–8 of them.
fn nice_ticks(max: f64) -> Vec<f64> {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| max / s <= 7.0)
        .unwrap_or(10.0 * magnitude);
    let n = (max / step).ceil().max(1.0) as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// A number without trailing zeros: 99.99, 5, 0.25.
fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(nice_ticks(9.3), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let small = nice_ticks(0.7);
        assert!(
            small.len() <= 8 && *small.last().unwrap() >= 0.7 - 1e-9,
            "{small:?}"
        );
        assert!(*nice_ticks(1234.0).last().unwrap() >= 1234.0);
        assert_eq!(trim(99.99), "99.99");
        assert_eq!(trim(90.0), "90");
    }

    #[test]
    fn a_plot_is_well_formed_svg_with_every_line() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let curve = percentile_curve("POST /tasks <all>", &h);
        assert_eq!(curve.points.len(), 201);
        assert!(curve.points.windows(2).all(|w| w[0].1 <= w[1].1));
        let over_time = Line {
            label: "p99".into(),
            points: vec![(0.0, 1.0), (1.0, 2.5)],
        };
        let svg = svg("a & b", &[curve], &[over_time]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &amp; b") && svg.contains("&lt;all&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">99.99%<"));
    }
}

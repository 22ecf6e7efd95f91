//! The load test's report as one self-contained HTML page: the figures and thresholds as
//! tables, and three plots drawn here as inline SVG (latency over time with the fault windows
//! marked, the response-time distribution, the violations). No script, no font, no request.

use std::fmt::Write;

use super::report::{Report, Window};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 36.0;

/// Text for HTML (and SVG) content and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round step for about `ticks` ticks up to `max`.
fn step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn number(value: f64) -> String {
    if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Latency per second (p50, p95, max of the runs answered in that second), with the SLA lines
/// and the fault windows behind.
fn latency_over_time(report: &Report) -> String {
    let end = report
        .fault_windows
        .iter()
        .map(|w| w.end_s)
        .fold(report.elapsed_s, f64::max)
        .max(1.0);
    let top_ms = report
        .series
        .iter()
        .filter_map(|s| s.response_ms.max)
        .fold(1.0, f64::max)
        * 1.1;
    let y_step = step(top_ms, 5.0);
    let y_max = (top_ms / y_step).ceil() * y_step;
    let x = |s: f64| LEFT + s / end * (WIDTH - LEFT - RIGHT);
    let y = |ms: f64| TOP + (1.0 - ms / y_max) * (HEIGHT - TOP - BOTTOM);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Response time per second">"#
    );
    for (i, window) in report.fault_windows.iter().enumerate() {
        let colour = if window.source == "mark" { "#7b61ff" } else { "#e4572e" };
        let (x0, x1) = (x(window.start_s), x(window.end_s).max(x(window.start_s) + 2.0));
        let _ = write!(
            svg,
            r#"<rect class="window" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.15"><title>{}</title></rect><text x="{:.1}" y="{:.1}" font-size="11" fill="{colour}">{}</text>"#,
            x1 - x0,
            HEIGHT - TOP - BOTTOM,
            escape(&window_title(window)),
            x0 + 3.0,
            TOP + 12.0 + 12.0 * (i % 3) as f64,
            escape(&window.label)
        );
    }
    let mut tick = 0.0;
    while tick <= y_max + y_step / 2.0 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} ms</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            number(tick),
            y = y(tick)
        );
        tick += y_step;
    }
    let x_step = step(end, 10.0);
    let mut tick = 0.0;
    while tick <= end {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{} s</text>"#,
            x(tick),
            HEIGHT - BOTTOM + 16.0,
            number(tick)
        );
        tick += x_step;
    }
    for (limit, label) in [(2000.0, "p95 SLA 2 s"), (3000.0, "failure 3 s")] {
        if limit <= y_max {
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#c00" text-anchor="end">{label}</text>"##,
                WIDTH - RIGHT,
                WIDTH - RIGHT - 4.0,
                y(limit) - 4.0,
                y = y(limit)
            );
        }
    }
    let lines: [(&str, &str, &str, Pick); 3] = [
        ("max", "#999", "4 3", |f| f.max),
        ("p95", "#f28e2b", "", |f| f.p95),
        ("p50", "#4e79a7", "", |f| f.p50),
    ];
    for (name, colour, dash, value) in lines {
        let mut path = String::new();
        let mut drawing = false;
        for second in &report.series {
            match value(&second.response_ms) {
                Some(ms) => {
                    let verb = if drawing { 'L' } else { 'M' };
                    let _ = write!(path, "{verb}{:.1},{:.1} ", x(second.t as f64 + 0.5), y(ms));
                    drawing = true;
                }
                None => drawing = false,
            }
        }
        let _ = write!(
            svg,
            r#"<path class="series" d="{path}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"><title>{name}</title></path>"#
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/></svg>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
    svg
}

/// Which figure of a second a line of the latency plot draws.
type Pick = fn(&super::Figures) -> Option<f64>;

fn window_title(window: &Window) -> String {
    format!(
        "{:.1}–{:.1} s: {} ({})",
        window.start_s, window.end_s, window.label, window.source
    )
}

/// The response-time histogram, one bar per bucket.
fn distribution(report: &Report) -> String {
    let buckets = &report.response_histogram;
    let most = buckets.iter().map(|b| b.runs).max().unwrap_or(0).max(1) as f64;
    let width = (WIDTH - LEFT - RIGHT) / buckets.len() as f64;
    let y = |runs: f64| TOP + (1.0 - runs / most) * (HEIGHT - TOP - BOTTOM);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Response time distribution">"#
    );
    for (i, bucket) in buckets.iter().enumerate() {
        let x0 = LEFT + i as f64 * width;
        let colour = match bucket.from_ms {
            ms if ms >= 3000.0 => "#c00",
            ms if ms >= 2000.0 => "#f28e2b",
            _ => "#4e79a7",
        };
        let label = match bucket.to_ms {
            Some(to) => format!("{}–{}", number(bucket.from_ms), number(to)),
            None => format!("≥ {}", number(bucket.from_ms)),
        };
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{label} ms: {} runs</title></rect><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{label}</text>"#,
            x0 + 2.0,
            y(bucket.runs as f64),
            width - 4.0,
            HEIGHT - BOTTOM - y(bucket.runs as f64),
            bucket.runs,
            x0 + width / 2.0,
            HEIGHT - BOTTOM + 14.0,
        );
        if bucket.runs > 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                x0 + width / 2.0,
                y(bucket.runs as f64) - 3.0,
                bucket.runs
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">response time (ms), runs per bucket</text></svg>"#,
        WIDTH / 2.0,
        HEIGHT - 4.0
    );
    svg
}

/// One bar per threshold: how often it was violated.
fn violations(report: &Report) -> String {
    let row = 26.0;
    let height = TOP + row * report.thresholds.len() as f64 + 10.0;
    let label_width = 300.0;
    let most = report.thresholds.iter().map(|t| t.violations).max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="Violations per threshold">"#
    );
    for (i, threshold) in report.thresholds.iter().enumerate() {
        let y = TOP + i as f64 * row;
        let (colour, verdict) = match (threshold.checked, threshold.violations) {
            (false, _) => ("#999", "not checked".to_owned()),
            (true, 0) => ("#59a14f", "ok".to_owned()),
            (true, n) => ("#c00", format!("{n} violation{}", if n == 1 { "" } else { "s" })),
        };
        let bar = if threshold.violations == 0 {
            3.0
        } else {
            threshold.violations as f64 / most * (WIDTH - label_width - 160.0)
        };
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text><rect class="violation" x="{label_width}" y="{:.1}" width="{bar:.1}" height="16" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="12" fill="{colour}">{verdict}: {}</text>"#,
            label_width - 8.0,
            y + 12.0,
            escape(&threshold.limit),
            y,
            label_width + bar + 6.0,
            y + 12.0,
            escape(&threshold.observed)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole page.
pub(super) fn page(report: &Report) -> String {
    let mut html = String::new();
    let verdict = if report.passed() {
        r#"<p class="pass">Every threshold held.</p>"#.to_owned()
    } else {
        format!(
            r#"<p class="fail">Violated: {}.</p>"#,
            escape(&report.violated().join("; "))
        )
    };
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Switchboard load test</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
svg {{ width: 100%; height: auto; background: #fafafa; }}
.pass {{ color: #2a7a2a; font-weight: bold; }} .fail {{ color: #c00; font-weight: bold; }}
</style></head><body>
<h1>Switchboard load test</h1>
<p>{}</p>
{verdict}
<h2>Latency over time</h2>
<p>Response time (message accepted → final event) of the runs answered in each second: p50, p95
and max. Shaded: when <code>/health/ready</code> or <code>/api/sla</code> said something was
wrong, and the windows given with <code>--mark</code>.</p>
{}
<h2>Latency distribution</h2>
{}
<h2>Violations</h2>
{}
<h2>Figures</h2>
<table><tr><th>figure (ms)</th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>
"#,
        escape(&report.headline()),
        latency_over_time(report),
        distribution(report),
        violations(report),
    );
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for (name, f) in report.figures() {
        let _ = writeln!(
            html,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            escape(name),
            f.count,
            cell(f.p50),
            cell(f.p95),
            cell(f.p99),
            cell(f.max)
        );
    }
    html.push_str("</table>\n");
    let list = |html: &mut String, title: &str, items: Vec<String>| {
        if items.is_empty() {
            return;
        }
        let _ = writeln!(html, "<h2>{}</h2><ul>", escape(title));
        for item in items {
            let _ = writeln!(html, "<li>{}</li>", escape(&item));
        }
        html.push_str("</ul>\n");
    };
    list(
        &mut html,
        "Fault windows",
        report.fault_windows.iter().map(window_title).collect(),
    );
    list(
        &mut html,
        &format!("Contract problems ({})", report.contract_problems.len()),
        report
            .contract_problems
            .iter()
            .take(200)
            .map(|p| format!("user {}: {} ({})", p.user, p.message, p.kind))
            .collect(),
    );
    list(
        &mut html,
        &format!(
            "Errors ({}; the first {} listed)",
            report.errors,
            report.error_samples.len()
        ),
        report
            .error_samples
            .iter()
            .map(|e| format!("{:.1} s, {}: {}", e.at_s, e.kind, e.message))
            .collect(),
    );
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_open_markup() {
        assert_eq!(
            escape(r#"<b onclick="x">&'"#),
            "&lt;b onclick=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(step(2300.0, 5.0), 500.0);
        assert_eq!(step(7.0, 10.0), 1.0);
    }
}

//! A realistic synthetic month of model calls, for trying the product: several models and
//! features, a daily rhythm, error bursts, repeated prompts and a nightly batch job that does
//! not use the batch API. Deterministic for a given seed.

use serde_json::{Value, json};
use switchboard_protocol::Timestamp;

/// What the generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSpec {
    /// Seed of the generator: the same seed gives the same rows.
    pub seed: u64,
    /// Days of data, ending at `end`.
    pub days: u32,
    /// Interactive calls on an average day.
    pub calls_per_day: u32,
    /// The first instant after the data (the data ends just before it).
    pub end_unix_ms: i64,
}

/// A feature of the demo product: which model it calls and how big its calls are.
struct Feature {
    name: &'static str,
    model: &'static str,
    provider: &'static str,
    share: f64,
    input: (u64, u64),
    output: (u64, u64),
    latency_ms: (f64, f64),
    repeated_prompts: f64,
}

const FEATURES: [Feature; 4] = [
    Feature {
        name: "support-chat",
        model: "gpt-4o",
        provider: "openai",
        share: 0.45,
        input: (600, 2500),
        output: (80, 400),
        latency_ms: (700.0, 2600.0),
        repeated_prompts: 0.05,
    },
    Feature {
        name: "search-answers",
        model: "claude-sonnet-4",
        provider: "anthropic",
        share: 0.25,
        input: (1500, 6000),
        output: (150, 600),
        latency_ms: (1200.0, 4200.0),
        repeated_prompts: 0.35,
    },
    Feature {
        name: "tagging",
        model: "gpt-4o",
        provider: "openai",
        share: 0.20,
        input: (200, 700),
        output: (5, 30),
        latency_ms: (300.0, 900.0),
        repeated_prompts: 0.10,
    },
    Feature {
        name: "autocomplete",
        model: "gpt-4o-mini",
        provider: "openai",
        share: 0.10,
        input: (100, 400),
        output: (10, 60),
        latency_ms: (150.0, 500.0),
        repeated_prompts: 0.20,
    },
];

/// Relative traffic per hour of day (UTC): quiet nights, a working-day hump.
const RHYTHM: [f64; 24] = [
    0.2, 0.15, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 1.0, 1.4, 1.6, 1.7, 1.5, 1.6, 1.7, 1.6, 1.4, 1.1, 0.8, 0.6, 0.5, 0.4,
    0.3, 0.25,
];

fn between(rng: &mut fastrand::Rng, (low, high): (u64, u64)) -> u64 {
    rng.u64(low..=high)
}

/// A month of about `calls` rows (seed 7, ending 2026-11-01), for benchmarks. Weekends are
/// quieter and the nightly job adds its own calls, so the day's calls are scaled from a first try.
pub fn demo_month_of_about(calls: u32) -> Vec<Value> {
    let mut rows = Vec::new();
    demo_month_of_about_by_day(calls, |day| rows.extend(day));
    rows
}

/// The same rows as [`demo_month_of_about`], handed over a day at a time (oldest first), so that
/// a month of ten million calls never has to be held at once.
pub fn demo_month_of_about_by_day(calls: u32, each_day: impl FnMut(Vec<Value>)) {
    let spec = |calls_per_day: u32| DemoSpec {
        seed: 7,
        days: 30,
        calls_per_day,
        end_unix_ms: 1_793_491_200_000, // 2026-11-01
    };
    let mut first_try = 0usize;
    demo_days(spec(calls / 30), |day| first_try += day.len());
    let calls_per_day = (f64::from(calls / 30) * f64::from(calls) / first_try as f64).round() as u32;
    demo_days(spec(calls_per_day), each_day);
}

/// The rows, oldest first, as JSON objects ready for `POST /api/workload-events`.
pub fn demo_rows(spec: DemoSpec) -> Vec<Value> {
    let mut rows = Vec::new();
    demo_days(spec, |day| rows.extend(day));
    rows
}

/// The same rows as [`demo_rows`], handed over a day at a time (oldest first), so that a long
/// range never has to be held as JSON at once.
pub fn demo_rows_by_day(spec: DemoSpec, each_day: impl FnMut(Vec<Value>)) {
    demo_days(spec, each_day);
}

/// The rows of each day in turn, oldest first (every row of a day falls within it).
fn demo_days(spec: DemoSpec, mut each_day: impl FnMut(Vec<Value>)) {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let day_ms = 24 * 3_600_000i64;
    let start = spec.end_unix_ms - i64::from(spec.days) * day_ms;
    let rhythm_total: f64 = RHYTHM.iter().sum();
    // Two bursts of failures: a provider incident and a bad deploy.
    let bursts = [
        (start + 9 * day_ms + 14 * 3_600_000, 2),
        (start + 21 * day_ms + 10 * 3_600_000, 1),
    ];
    for day in 0..i64::from(spec.days) {
        let mut rows = Vec::new();
        let weekend = matches!(day % 7, 5 | 6);
        let day_calls = f64::from(spec.calls_per_day) * if weekend { 0.45 } else { 1.0 };
        for (hour, weight) in RHYTHM.iter().enumerate() {
            let calls = (day_calls * weight / rhythm_total * rng.f64().mul_add(0.4, 0.8)).round() as u64;
            let hour_start = start + day * day_ms + hour as i64 * 3_600_000;
            let in_burst = bursts
                .iter()
                .any(|(at, hours)| hour_start >= *at && hour_start < at + hours * 3_600_000);
            for _ in 0..calls {
                let pick = rng.f64();
                let mut cumulative = 0.0;
                let feature = FEATURES
                    .iter()
                    .find(|f| {
                        cumulative += f.share;
                        pick < cumulative
                    })
                    .unwrap_or(&FEATURES[0]);
                let error = rng.f64() < if in_burst { 0.35 } else { 0.01 };
                let prompt = if rng.f64() < feature.repeated_prompts {
                    format!("{}-faq-{}", feature.name, rng.u32(0..40))
                } else {
                    format!("{}-{:016x}", feature.name, rng.u64(..))
                };
                let latency = feature.latency_ms.0 + rng.f64() * (feature.latency_ms.1 - feature.latency_ms.0);
                rows.push(json!({
                    "timestamp": Timestamp::from_unix_millis(hour_start + rng.i64(0..3_600_000)).map(|t| t.to_string()),
                    "model": feature.model,
                    "provider": feature.provider,
                    "feature": feature.name,
                    "input_tokens": between(&mut rng, feature.input),
                    "output_tokens": if error { 0 } else { between(&mut rng, feature.output) },
                    "latency_ms": (latency * if error { 1.6 } else { 1.0 }).round(),
                    "status": if error { "error" } else { "ok" },
                    "prompt_hash": prompt,
                }));
            }
        }
        // The nightly report: a bulk job at 02:00 that calls the full-price API one call at a time.
        for _ in 0..(spec.calls_per_day / 20).max(1) {
            let at = start + day * day_ms + 2 * 3_600_000 + rng.i64(0..5_400_000);
            rows.push(json!({
                "timestamp": Timestamp::from_unix_millis(at).map(|t| t.to_string()),
                "model": "gpt-4o",
                "provider": "openai",
                "feature": "nightly-report",
                "input_tokens": between(&mut rng, (3000, 9000)),
                "output_tokens": between(&mut rng, (400, 1200)),
                "latency_ms": (4000.0 + rng.f64() * 6000.0).round(),
                "status": "ok",
                "prompt_hash": format!("nightly-{:016x}", rng.u64(..)),
                "batch": false,
            }));
        }
        rows.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
        each_day(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::PriceTable;
    use crate::workload::parse_row;

    fn spec() -> DemoSpec {
        DemoSpec {
            seed: 7,
            days: 30,
            calls_per_day: 400,
            end_unix_ms: Timestamp::parse("2026-11-01T00:00:00Z").unwrap().unix_millis(),
        }
    }

    #[test]
    fn the_demo_month_is_valid_deterministic_and_has_the_patterns_it_promises() {
        let rows = demo_rows(spec());
        assert_eq!(rows, demo_rows(spec()), "the same seed gives the same rows");
        let prices = PriceTable::embedded();
        let events: Vec<_> = rows
            .iter()
            .map(|r| parse_row(r, &prices).expect("every row is valid"))
            .collect();
        assert!((9_000..13_000).contains(&events.len()), "{} rows", events.len());
        let first = events.first().unwrap().timestamp.to_string();
        let last = events.last().unwrap().timestamp.to_string();
        assert!(
            first.starts_with("2026-10-02") && last.starts_with("2026-10-31"),
            "{first} .. {last}"
        );
        let features: std::collections::BTreeSet<_> = events.iter().filter_map(|e| e.feature.clone()).collect();
        assert_eq!(features.len(), 5);
        let nightly = events
            .iter()
            .filter(|e| e.feature.as_deref() == Some("nightly-report"))
            .count();
        assert_eq!(nightly, 30 * 20);
        let errors = events
            .iter()
            .filter(|e| e.status == switchboard_store::CallStatus::Error)
            .count();
        assert!(errors > 100, "{errors} errors: the bursts are there");
        let mut hashes = std::collections::HashMap::new();
        for event in &events {
            *hashes.entry(event.prompt_hash.clone()).or_insert(0) += 1;
        }
        assert!(hashes.values().any(|n| *n > 20), "some prompts repeat");
        let day_rows = |hour: u32| {
            events
                .iter()
                .filter(|e| e.timestamp.to_string()[11..13] == format!("{hour:02}"))
                .count()
        };
        assert!(day_rows(11) > 3 * day_rows(4), "a daily rhythm");

        // The analysis finds the failure bursts, and not the quiet weekends: they are the norm.
        let mut builder = switchboard_store::SummaryBuilder::default();
        for e in &events {
            builder.add(&e.model, e.feature.as_deref(), e.prompt_hash.as_deref(), e.figures());
        }
        let found: Vec<(String, &str)> = crate::anomalies(&builder.finish().unwrap())
            .into_iter()
            .map(|a| (a.start.to_string(), a.metric))
            .collect();
        assert_eq!(
            found,
            [
                ("2026-10-11T14:00:00.000Z".to_owned(), "error_rate"),
                ("2026-10-11T15:00:00.000Z".to_owned(), "error_rate"),
                ("2026-10-23T10:00:00.000Z".to_owned(), "error_rate")
            ]
        );
    }
}

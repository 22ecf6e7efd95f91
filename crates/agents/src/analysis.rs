//! What the figures say beyond the totals: hours and days far off the norm, and where latency is
//! worst with what to change. Pure functions of the store's aggregates, so every finding can be
//! checked by hand.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};
use switchboard_protocol::Timestamp;
use switchboard_store::{OFF_HOURS_END, Summary};

/// Days needed before a day (or an hour of the day) has a norm to be compared with.
pub const MIN_DAYS: usize = 7;
/// Calls an hour needs before its error rate counts.
pub const MIN_HOUR_CALLS: u64 = 20;
/// How many robust standard deviations (1.4826 × the median absolute deviation) from the
/// median make a day's cost unusual; it must also be at least half the median away.
pub const DAY_DEVIATIONS: f64 = 3.0;
/// An hour's calls are a spike at this many times the median of the same hour on other days
/// (and at least [`MIN_HOUR_CALLS`] more).
pub const SPIKE_FACTOR: f64 = 3.0;
/// An hour's error rate is a burst at this many times the overall rate (and at least 10 points
/// above it).
pub const BURST_FACTOR: f64 = 3.0;
/// Days of data from which each day is compared with the same weekday rather than every day.
pub const WEEKLY_DAYS: usize = 21;
/// Weekday names, Sunday first (1970-01-01, day 0, was a Thursday).
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
/// A feature counts as an off-hours bulk job (not user-facing) when at least this share of its
/// calls falls between 00:00 and `OFF_HOURS_END` UTC.
pub const BULK_SHARE: f64 = 0.8;
/// The most anomalies reported (the strongest; then in time order).
pub const MAX_ANOMALIES: usize = 10;

/// A usual day below this many dollars is too small to say how many times a day exceeds it.
const MIN_NORM_USD: f64 = 0.01;
/// A day more than this many times its norm is said to be far above it, not counted in times.
const MAX_RATIO: f64 = 1000.0;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// An hour or a day far off the norm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// `day` or `hour` (UTC).
    pub kind: &'static str,
    /// Its start.
    pub start: Timestamp,
    /// `cost_usd` (a day's spend), `calls` (an hour's traffic) or `error_rate` (an hour's failures).
    pub metric: &'static str,
    /// Its value.
    pub value: f64,
    /// What is usual: the median day, the median of the same hour on the other days, or the
    /// overall error rate.
    pub norm: f64,
    /// A sentence saying what is unusual.
    pub text: String,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn day_label(at: Timestamp) -> String {
    at.to_string().get(..10).unwrap_or_default().to_owned()
}

fn hour_label(at: Timestamp) -> String {
    let text = at.to_string();
    format!(
        "{} {}:00 UTC",
        text.get(..10).unwrap_or_default(),
        text.get(11..13).unwrap_or_default()
    )
}

/// Whether a feature with `all` calls, `off_hours` of them off-hours, is a bulk job.
pub(crate) fn is_bulk(all: u64, off_hours: u64) -> bool {
    all > 0 && off_hours as f64 / all as f64 >= BULK_SHARE
}

/// The hours and days of `summary` far off the norm: days whose spend is far from the median
/// day, hours with several times the usual traffic for that hour of the day, and hours whose
/// error rate is several times the overall one. The strongest first few, in time order.
pub fn anomalies(summary: &Summary) -> Vec<Anomaly> {
    let Some(first) = summary.hourly.first().map(|b| b.start.unix_millis()) else {
        return Vec::new();
    };
    let last = summary.hourly.last().map_or(first, |b| b.start.unix_millis());
    let (first_day, last_day) = (first.div_euclid(DAY_MS), last.div_euclid(DAY_MS));
    let days = usize::try_from(last_day - first_day + 1).unwrap_or(0);
    let mut found: Vec<(f64, Anomaly)> = Vec::new();

    // Error bursts: need no history, only enough calls in the hour.
    let totals = &summary.totals.usage;
    let overall = if totals.calls == 0 {
        0.0
    } else {
        totals.errors as f64 / totals.calls as f64
    };
    for bucket in &summary.hourly {
        if bucket.calls < MIN_HOUR_CALLS {
            continue;
        }
        let rate = bucket.errors as f64 / bucket.calls as f64;
        if rate >= (overall * BURST_FACTOR).max(overall + 0.10) {
            found.push((
                rate / overall.max(0.001),
                Anomaly {
                    kind: "hour",
                    start: bucket.start,
                    metric: "error_rate",
                    value: rate,
                    norm: overall,
                    text: format!(
                        "{}: {:.0} % of {} calls failed, against {:.1} % overall.",
                        hour_label(bucket.start),
                        rate * 100.0,
                        bucket.calls,
                        overall * 100.0
                    ),
                },
            ));
        }
    }
    if days < MIN_DAYS {
        return finish(found);
    }

    // Days: spend against the median day (days without calls count as zero).
    let mut daily = vec![0.0; days];
    let mut by_hour: HashMap<i64, u64> = HashMap::new();
    for bucket in &summary.hourly {
        let start = bucket.start.unix_millis();
        daily[(start.div_euclid(DAY_MS) - first_day) as usize] += bucket.cost_usd;
        by_hour.insert(start.div_euclid(HOUR_MS), bucket.calls);
    }
    // With three weeks of data each day is held against the same weekday (weekends are quiet by
    // design, not by accident); with less, against every day.
    let weekly = days >= WEEKLY_DAYS;
    let weekday = |index: usize| ((first_day + index as i64 + 4).rem_euclid(7)) as usize;
    let group = |index: usize| if weekly { weekday(index) } else { 0 };
    let norms: Vec<(f64, f64)> = (0..if weekly { 7 } else { 1 })
        .map(|g| {
            let mut peers: Vec<f64> = daily
                .iter()
                .enumerate()
                .filter(|(index, _)| group(*index) == g)
                .map(|(_, cost)| *cost)
                .collect();
            let norm = median(&mut peers);
            let mut deviations: Vec<f64> = peers.iter().map(|d| (d - norm).abs()).collect();
            (norm, 1.4826 * median(&mut deviations))
        })
        .collect();
    for (index, cost) in daily.iter().enumerate() {
        let (norm, spread) = norms[group(index)];
        let usual = if weekly { WEEKDAYS[weekday(index)] } else { "day" };
        let off = (cost - norm).abs();
        let Some(start) = Timestamp::from_unix_millis((first_day + index as i64) * DAY_MS) else {
            continue;
        };
        if off > (DAY_DEVIATIONS * spread).max(0.5 * norm) && off > 0.0 {
            let ratio = cost / norm;
            let text = if *cost > norm && norm >= MIN_NORM_USD && ratio <= MAX_RATIO {
                format!(
                    "{}: {} spent, {}× the usual {usual} ({}).",
                    day_label(start),
                    crate::usd(*cost),
                    crate::data::figure(ratio, 1),
                    crate::usd(norm)
                )
            } else if *cost > norm {
                format!(
                    "{}: {} spent, far above the usual {usual} ({}).",
                    day_label(start),
                    crate::usd(*cost),
                    crate::usd(norm)
                )
            } else {
                format!(
                    "{}: {} spent, against {} on the usual {usual}.",
                    day_label(start),
                    crate::usd(*cost),
                    crate::usd(norm)
                )
            };
            found.push((
                off / norm.max(0.01),
                Anomaly {
                    kind: "day",
                    start,
                    metric: "cost_usd",
                    value: *cost,
                    norm,
                    text,
                },
            ));
        }
    }

    // Hours: traffic against the same hour of the day on every day of the period.
    let usual_at: Vec<f64> = (0..24)
        .map(|hour_of_day| {
            let mut same_hour: Vec<f64> = (first_day..=last_day)
                .map(|day| by_hour.get(&(day * 24 + hour_of_day)).copied().unwrap_or(0) as f64)
                .collect();
            median(&mut same_hour)
        })
        .collect();
    for bucket in &summary.hourly {
        let usual = usual_at[bucket.start.unix_millis().div_euclid(HOUR_MS).rem_euclid(24) as usize];
        let calls = bucket.calls as f64;
        if calls >= usual * SPIKE_FACTOR && calls - usual >= MIN_HOUR_CALLS as f64 {
            found.push((
                calls / usual.max(1.0),
                Anomaly {
                    kind: "hour",
                    start: bucket.start,
                    metric: "calls",
                    value: calls,
                    norm: usual,
                    text: if usual == 0.0 {
                        format!(
                            "{}: {} calls, in an hour of the day that usually has none.",
                            hour_label(bucket.start),
                            bucket.calls
                        )
                    } else {
                        format!(
                            "{}: {} calls, {}× the usual {usual} for that hour.",
                            hour_label(bucket.start),
                            bucket.calls,
                            crate::data::figure(calls / usual, 1)
                        )
                    },
                },
            ));
        }
    }
    finish(found)
}

fn finish(mut found: Vec<(f64, Anomaly)>) -> Vec<Anomaly> {
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.truncate(MAX_ANOMALIES);
    let mut out: Vec<Anomaly> = found.into_iter().map(|(_, a)| a).collect();
    out.sort_by_key(|a| (a.start.unix_millis(), a.metric));
    out
}

fn f(value: &Value) -> Option<f64> {
    value.as_f64()
}

/// Rows of `key` with a p95 latency, slowest first.
fn slowest(summary: &Value, key: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = summary[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["p95_latency_ms"].is_number())
        .cloned()
        .collect();
    rows.sort_by(|a, b| {
        f(&b["p95_latency_ms"])
            .unwrap_or(0.0)
            .total_cmp(&f(&a["p95_latency_ms"]).unwrap_or(0.0))
    });
    rows
}

/// The features that run off-hours in bulk (see [`BULK_SHARE`]), from the data agent's summary.
pub fn bulk_features(summary: &Value) -> Vec<String> {
    let mut calls: Vec<(String, u64, u64)> = Vec::new();
    for row in summary["opportunities"]["by_feature_model"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(feature) = row["feature"].as_str() else {
            continue;
        };
        let (all, off) = (
            row["all"]["calls"].as_u64().unwrap_or(0),
            row["off_hours"]["calls"].as_u64().unwrap_or(0),
        );
        match calls.iter_mut().find(|(name, _, _)| name == feature) {
            Some(entry) => {
                entry.1 += all;
                entry.2 += off;
            }
            None => calls.push((feature.to_owned(), all, off)),
        }
    }
    calls
        .into_iter()
        .filter(|(_, all, off)| is_bulk(*all, *off))
        .map(|(name, _, _)| name)
        .collect()
}

/// Where latency is worst (features, models, hours of the day, by p95) and what to change,
/// from the data agent's summary. Features that run off-hours in bulk are named but left out of
/// the advice: their latency reaches no user. `null` when no call reported a latency.
pub fn latency(summary: &Value) -> Value {
    let overall = &summary["totals"];
    let Some(p95) = f(&overall["p95_latency_ms"]) else {
        return Value::Null;
    };
    let features = slowest(summary, "by_feature");
    let bulk = bulk_features(summary);
    let interactive: Vec<&Value> = features
        .iter()
        .filter(|r| !r["feature"].as_str().is_some_and(|f| bulk.iter().any(|b| b == f)))
        .collect();
    let models = slowest(summary, "by_model");
    // An hour of the day with a handful of calls says nothing about load.
    let hours: Vec<Value> = slowest(summary, "hours")
        .into_iter()
        .filter(|h| h["calls"].as_u64().unwrap_or(0) >= MIN_HOUR_CALLS)
        .collect();
    let mut advice: Vec<Value> = Vec::new();
    if let Some(worst) = interactive.first() {
        let name = worst["feature"].as_str().unwrap_or("(none)");
        let calls = worst["calls"].as_f64().unwrap_or(0.0).max(1.0);
        let output_per_call = worst["output_tokens"].as_f64().unwrap_or(0.0) / calls;
        if output_per_call >= 500.0 {
            advice.push(json!({
                "kind": "output_length",
                "title": format!("Cap the length of {name}'s answers, or stream them"),
                "detail": format!("Its calls write {output_per_call:.0} tokens on average; answer time grows with every token, so stream them to the user and set max_tokens."),
            }));
        }
        let errors = worst["error_rate"].as_f64().unwrap_or(0.0);
        if errors >= 0.05 {
            advice.push(json!({
                "kind": "error_reduction",
                "title": format!("Fix the failures of {name}"),
                "detail": format!("{:.1} % of its calls fail, and each retry adds a whole call's wait.", errors * 100.0),
            }));
        }
    }
    let short_calls = |model: &str| -> u64 {
        summary["opportunities"]["short_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["model"] == model)
            .map_or(0, |s| s["calls"]["calls"].as_u64().unwrap_or(0))
    };
    if let (Some(fast), Some(slow)) = (models.last(), models.first())
        && models.len() > 1
        && f(&slow["p95_latency_ms"]).unwrap_or(0.0) >= 2.0 * f(&fast["p95_latency_ms"]).unwrap_or(f64::MAX)
        && short_calls(slow["model"].as_str().unwrap_or("")) > 0
    {
        let (slow_name, fast_name) = (
            slow["model"].as_str().unwrap_or("?"),
            fast["model"].as_str().unwrap_or("?"),
        );
        advice.push(json!({
            "kind": "model_routing",
            "title": format!("Route short calls from {slow_name} to {fast_name}"),
            "detail": format!(
                "p95 is {:.0} ms on {slow_name} and {:.0} ms on {fast_name}; {} of the {slow_name} calls are short \
                 (at most {} prompt and {} answer tokens), which a faster model can usually serve.",
                f(&slow["p95_latency_ms"]).unwrap_or(0.0),
                f(&fast["p95_latency_ms"]).unwrap_or(0.0),
                short_calls(slow_name),
                switchboard_store::SHORT_INPUT_TOKENS,
                switchboard_store::SHORT_OUTPUT_TOKENS
            ),
        }));
    }
    // Off-hours, a bulk job's own slow calls set the hour's p95, not the provider's load.
    let judged: Vec<&Value> = hours
        .iter()
        .filter(|h| bulk.is_empty() || h["hour"].as_u64().unwrap_or(0) >= u64::from(OFF_HOURS_END))
        .collect();
    let mut hour_p95s: Vec<f64> = judged.iter().filter_map(|h| f(&h["p95_latency_ms"])).collect();
    let typical = median(&mut hour_p95s);
    if let Some(hour) = judged.first()
        && judged.len() >= 2
        && f(&hour["p95_latency_ms"]).unwrap_or(0.0) >= 1.5 * typical
    {
        let at = hour["hour"].as_u64().unwrap_or(0);
        advice.push(json!({
            "kind": "peak_hours",
            "title": format!("Move work away from {at:02}:00 UTC"),
            "detail": format!(
                "p95 reaches {:.0} ms in that hour against {typical:.0} ms in a typical hour: the provider queues or throttles you then; spread the work or raise your rate limits.",
                f(&hour["p95_latency_ms"]).unwrap_or(0.0)
            ),
        }));
    }
    let trimmed: Vec<&str> = summary["opportunities"]["by_feature_model"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|fm| fm["input_tokens_above_p95"].as_u64().unwrap_or(0) > 0)
        .filter_map(|fm| fm["feature"].as_str())
        .collect();
    if let Some(feature) = interactive
        .iter()
        .take(3)
        .filter_map(|r| r["feature"].as_str())
        .find(|name| trimmed.contains(name))
    {
        advice.push(json!({
            "kind": "prompt_trimming",
            "title": format!("Trim the longest prompts of {feature}"),
            "detail": "Its largest prompts are far above its usual size; prompt length sets the time to the first token.",
        }));
    }
    if summary["opportunities"]["repeated_prompt_calls"].as_u64().unwrap_or(0) > 0 {
        advice.push(json!({
            "kind": "caching",
            "title": "Cache the answers to repeated prompts",
            "detail": format!(
                "{} calls repeated a prompt already sent; a cache answers them in milliseconds.",
                summary["opportunities"]["repeated_prompt_calls"]
            ),
        }));
    }
    let top = |rows: &[Value], key: &str| -> Vec<Value> {
        rows.iter()
            .take(3)
            .map(|r| json!({ key: r[key], "p50_latency_ms": r["p50_latency_ms"], "p95_latency_ms": r["p95_latency_ms"], "calls": r["calls"] }))
            .collect()
    };
    json!({
        "p50_latency_ms": overall["p50_latency_ms"],
        "p95_latency_ms": p95,
        "slowest_features": top(&features, "feature"),
        "slowest_models": top(&models, "model"),
        "slowest_hours": top(&hours, "hour"),
        "bulk_features": bulk,
        "advice": advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_store::{CallFigures, SummaryBuilder};

    const DAY: i64 = 86_400_000;
    const HOUR: i64 = 3_600_000;
    /// 2026-11-01T00:00:00Z.
    const NOV_1: i64 = 1_793_491_200_000;

    fn call(at_ms: i64, latency: f64, error: bool, cost: f64, output_tokens: u64) -> CallFigures {
        CallFigures {
            at_ms,
            input_tokens: 2000,
            output_tokens,
            latency_ms: Some(latency),
            error,
            cost_usd: cost,
            batch: false,
        }
    }

    /// Eight days of `chat` at noon (10 calls of $0.10, 500 ms), with 30 more calls on the 5th;
    /// and one night of `nightly` at 03:00 on the 7th: 20 calls of $0.01, 3 s, 12 failed,
    /// 1,000 answer tokens each.
    fn month() -> Summary {
        let mut builder = SummaryBuilder::default();
        for day in 0..8 {
            let extra = if day == 4 { 30 } else { 0 };
            for _ in 0..10 + extra {
                builder.add(
                    "gpt-4o",
                    Some("chat"),
                    None,
                    call(NOV_1 + day * DAY + 12 * HOUR, 500.0, false, 0.10, 200),
                );
            }
        }
        for index in 0..20 {
            let at = NOV_1 + 6 * DAY + 3 * HOUR;
            builder.add(
                "gpt-4o",
                Some("nightly"),
                None,
                call(at, 3000.0, index < 12, 0.01, 1000),
            );
        }
        builder.finish().unwrap()
    }

    #[test]
    fn days_and_hours_far_off_the_norm_are_found_and_said() {
        let found = anomalies(&month());
        let seen: Vec<(&str, String, &str, f64, f64)> = found
            .iter()
            .map(|a| {
                (
                    a.kind,
                    a.start.to_string(),
                    a.metric,
                    (a.value * 1e4).round() / 1e4,
                    (a.norm * 1e4).round() / 1e4,
                )
            })
            .collect();
        // Days cost 1, 1, 1, 1, 4, 1, 1.2, 1: median 1, MAD 0, so the floor of half the median
        // decides: only the 5th (3 off) is far. Noon has 10 calls on the median day; the 5th has
        // 40. 03:00 usually has none. 12 of all 130 calls failed (9.23 %); 12 of 20 at 03:00 on the
        // 7th (60 %) is more than three times that.
        assert_eq!(
            seen,
            [
                ("day", "2026-11-05T00:00:00.000Z".to_owned(), "cost_usd", 4.0, 1.0),
                ("hour", "2026-11-05T12:00:00.000Z".to_owned(), "calls", 40.0, 10.0),
                ("hour", "2026-11-07T03:00:00.000Z".to_owned(), "calls", 20.0, 0.0),
                ("hour", "2026-11-07T03:00:00.000Z".to_owned(), "error_rate", 0.6, 0.0923),
            ]
        );
        let texts: Vec<&str> = found.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "2026-11-05: $4.00 spent, 4.0× the usual day ($1.00).",
                "2026-11-05 12:00 UTC: 40 calls, 4.0× the usual 10 for that hour.",
                "2026-11-07 03:00 UTC: 20 calls, in an hour of the day that usually has none.",
                "2026-11-07 03:00 UTC: 60 % of 20 calls failed, against 9.2 % overall.",
            ]
        );
    }

    #[test]
    fn with_three_weeks_each_day_is_held_against_its_own_weekday() {
        let mut builder = SummaryBuilder::default();
        // 28 days from Sunday 2026-11-01: $1.00 on weekdays, $0.20 on weekends, and $3.00 on
        // Tuesday the 17th.
        for day in 0..28 {
            let weekend = matches!(day % 7, 0 | 6);
            let cost = match day {
                16 => 3.0,
                _ if weekend => 0.2,
                _ => 1.0,
            };
            builder.add(
                "m",
                None,
                None,
                call(NOV_1 + day * DAY + 9 * HOUR, 100.0, false, cost, 10),
            );
        }
        let texts: Vec<String> = anomalies(&builder.finish().unwrap())
            .into_iter()
            .map(|a| a.text)
            .collect();
        assert_eq!(texts, ["2026-11-17: $3.00 spent, 3.0× the usual Tuesday ($1.00)."]);
    }

    #[test]
    fn with_fewer_than_a_weeks_days_only_error_bursts_are_judged() {
        let mut builder = SummaryBuilder::default();
        for index in 0..40 {
            builder.add(
                "m",
                None,
                None,
                call(
                    NOV_1 + (index % 2) * HOUR,
                    100.0,
                    index % 2 == 1 && index < 25,
                    0.01,
                    10,
                ),
            );
        }
        let found = anomalies(&builder.finish().unwrap());
        // 12 of 40 failed (30 %), all at 01:00: 12 of 20 (60 %) is not three times 30 %.
        assert_eq!(found, Vec::new());
        assert_eq!(anomalies(&SummaryBuilder::default().finish().unwrap()), Vec::new());
    }

    #[test]
    fn a_day_far_above_a_usual_day_of_almost_nothing_is_not_counted_in_times() {
        // Eight days at noon of `usual` each, but the 5th, which costs `spent`.
        let text = |usual: f64, spent: f64| {
            let mut builder = SummaryBuilder::default();
            for day in 0..8 {
                let cost = if day == 4 { spent } else { usual };
                builder.add(
                    "m",
                    None,
                    None,
                    call(NOV_1 + day * DAY + 12 * HOUR, 100.0, false, cost, 10),
                );
            }
            let found: Vec<String> = anomalies(&builder.finish().unwrap())
                .into_iter()
                .map(|a| a.text)
                .collect();
            found.join(" ")
        };
        let cases: [(f64, f64, &str); 4] = [
            (1.0, 4.0, "2026-11-05: $4.00 spent, 4.0× the usual day ($1.00)."),
            (
                1.0,
                1000.0,
                "2026-11-05: $1000.00 spent, 1000.0× the usual day ($1.00).",
            ),
            (0.0, 5.0, "2026-11-05: $5.00 spent, far above the usual day ($0.0000)."),
            (
                0.001,
                10_000.0,
                "2026-11-05: $10000.00 spent, far above the usual day ($0.0010).",
            ),
        ];
        for (usual, spent, expected) in cases {
            assert_eq!(text(usual, spent), expected, "usual {usual}, spent {spent}");
        }
    }

    /// Eight days of `chat` at noon (10 calls, 500 ms) and of `nightly` at 03:00 (5 calls, 9 s, a
    /// bulk job); on the 7th, `report` at 15:00: 20 calls of 3 s, 12 failed, 1,000 answer tokens each.
    fn slow_month() -> Summary {
        let mut builder = SummaryBuilder::default();
        for day in 0..8 {
            for _ in 0..10 {
                builder.add(
                    "gpt-4o",
                    Some("chat"),
                    None,
                    call(NOV_1 + day * DAY + 12 * HOUR, 500.0, false, 0.10, 200),
                );
            }
            for _ in 0..5 {
                builder.add(
                    "gpt-4o",
                    Some("nightly"),
                    None,
                    call(NOV_1 + day * DAY + 3 * HOUR, 9000.0, false, 0.10, 200),
                );
            }
        }
        for index in 0..20 {
            let at = NOV_1 + 6 * DAY + 15 * HOUR;
            builder.add("gpt-4o", Some("report"), None, call(at, 3000.0, index < 12, 0.01, 1000));
        }
        builder.finish().unwrap()
    }

    #[test]
    fn latency_says_where_p95_is_worst_and_what_to_change_leaving_bulk_jobs_out() {
        let summary = crate::summary_json(&slow_month());
        let latency = &summary["latency"];
        // 80 calls at 500 ms, 20 at 3 s, 40 at 9 s: p50 rank 70 is 500, p95 rank 133 is 9000.
        assert_eq!(
            (latency["p50_latency_ms"].as_f64(), latency["p95_latency_ms"].as_f64()),
            (Some(500.0), Some(9000.0))
        );
        let slowest: Vec<&str> = latency["slowest_features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["feature"].as_str().unwrap())
            .collect();
        assert_eq!(slowest, ["nightly", "report", "chat"]);
        assert_eq!(latency["bulk_features"], json!(["nightly"]));
        assert_eq!(
            latency["slowest_hours"],
            json!([
                {"hour": 3, "calls": 40, "p50_latency_ms": null, "p95_latency_ms": 9000.0},
                {"hour": 15, "calls": 20, "p50_latency_ms": null, "p95_latency_ms": 3000.0},
                {"hour": 12, "calls": 80, "p50_latency_ms": null, "p95_latency_ms": 500.0}
            ])
        );
        let advice: Vec<(&str, &str)> = latency["advice"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["kind"].as_str().unwrap(), a["title"].as_str().unwrap()))
            .collect();
        // nightly is slowest but no user waits for it. report writes 1,000 tokens a call and 60 %
        // of its calls fail; 03:00 is the bulk job's hour, so 15:00 is judged: its p95 (3 s) is
        // more than 1.5 × the typical hour's (the median of 3000 and 500: 1750 ms).
        assert_eq!(
            advice,
            [
                ("output_length", "Cap the length of report's answers, or stream them"),
                ("error_reduction", "Fix the failures of report"),
                ("peak_hours", "Move work away from 15:00 UTC")
            ]
        );
        assert!(crate::latency(&json!({"totals": {"p95_latency_ms": null}})).is_null());
    }
}

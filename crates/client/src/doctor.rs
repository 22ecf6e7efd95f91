//! `switchboard doctor --server URL`: reads the server's live SLA report (`GET /api/sla`) and its
//! readiness checks (`GET /health/ready`) and says, in sentences, what is wrong and where:
//! which tier is slow or failing, by how much against its SLA, how many responses were too
//! slow, and which tiers are fine. Healthy (exit code 0) when the report is `ok` and every
//! readiness check too; otherwise exit code 1.

// A command of the terminal: it prints.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_protocol::http::{HealthStatus, Readiness};
use switchboard_protocol::sla::{SlaReport, SlaStatus, SlaWindow, Stalled, Thresholds, TierWindow};
use switchboard_protocol::tiers::Tier;

use crate::Client;

/// How long each of the two requests may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// `switchboard doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

/// What the doctor found.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// Whether chat meets its SLA and every tier is fine.
    pub healthy: bool,
    /// The tiers to blame, in the order of the report.
    pub degraded: Vec<Tier>,
    /// What it says, a sentence each.
    pub sentences: Vec<String>,
}

/// Runs the command: prints the diagnosis; `Ok(true)` when healthy.
pub async fn command(args: DoctorArgs) -> anyhow::Result<bool> {
    let diagnosis = diagnose(&Client::new(&args.server)).await?;
    for sentence in &diagnosis.sentences {
        println!("{sentence}");
    }
    Ok(diagnosis.healthy)
}

/// Reads the report and the readiness checks of the server of `client` and explains them.
pub async fn diagnose(client: &Client) -> anyhow::Result<Diagnosis> {
    // Readiness first: its checks of the tiers are in the report that follows.
    let ready = get(client, "/health/ready").await;
    let (sla_status, sla) = get(client, "/api/sla").await?;
    if sla_status != 200 {
        bail!(
            "{} is not a Switchboard server with an SLA report: GET /api/sla answered {sla_status}",
            client.base()
        );
    }
    let report: SlaReport = serde_json::from_value(sla).with_context(|| {
        format!(
            "{} answered GET /api/sla with something that is not an SLA report",
            client.base()
        )
    })?;
    // 503 is an answer too: the server is not ready, and says why.
    let readiness = match ready {
        Ok((200 | 503, ready)) => serde_json::from_value::<Readiness>(ready).ok(),
        _ => None,
    };
    Ok(explain(&report, readiness.as_ref()))
}

/// `GET path` within the deadline: the status and the JSON answer.
async fn get(client: &Client, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let base = client.base();
    tokio::time::timeout(REQUEST_DEADLINE, client.get(path, None))
        .await
        .with_context(|| format!("{base}{path} did not answer within {} s", REQUEST_DEADLINE.as_secs()))?
        .with_context(|| format!("cannot reach a server at {base}"))
}

/// The diagnosis of a report and (when the server answered it) its readiness checks.
pub fn explain(report: &SlaReport, readiness: Option<&Readiness>) -> Diagnosis {
    let thresholds = &report.thresholds;
    let minute = report.windows.get("1m").cloned().unwrap_or_default();
    let not_ready = |tier: &Tier| {
        readiness
            .and_then(|r| r.checks.get(tier.as_str()))
            .is_some_and(|check| check.status != HealthStatus::Ok)
    };
    // The report's, and those its readiness checks found degraded.
    let degraded: Vec<Tier> = Tier::ALL
        .into_iter()
        .filter(|tier| report.degraded.iter().any(|name| name == tier.as_str()) || not_ready(tier))
        .collect();
    let mut sentences = vec![headline(report.status, &minute, thresholds)];
    for tier in &degraded {
        let figures = minute.tiers.get(tier.as_str()).copied().unwrap_or_default();
        let check = readiness.and_then(|r| r.checks.get(tier.as_str()));
        sentences.push(blame(
            *tier,
            &figures,
            thresholds.tier_ms(*tier),
            report.stalled.get(tier.as_str()),
            check
                .filter(|c| c.status != HealthStatus::Ok)
                .and_then(|c| c.error.as_deref()),
        ));
    }
    sentences.extend(responses(&minute, thresholds));
    let fine = |busy: bool| -> Vec<String> {
        Tier::ALL
            .into_iter()
            .filter(|tier| !degraded.contains(tier))
            .filter(|tier| minute.tiers.get(tier.as_str()).is_some_and(|t| (t.ops > 0) == busy))
            .map(|tier| tier.to_string())
            .collect()
    };
    let (busy, idle) = (fine(true), fine(false));
    if !busy.is_empty() {
        sentences.push(capitalized(&format!("{} fine.", listed(&busy))));
    }
    if !idle.is_empty() {
        sentences.push(capitalized(&format!(
            "{} fine as far as known: no operations in the last minute.",
            listed(&idle)
        )));
    }
    let mut ready = true;
    match readiness {
        None => {
            ready = false;
            sentences.push("The server did not answer GET /health/ready with its checks.".to_owned());
        }
        Some(readiness) if readiness.status != HealthStatus::Ok => {
            ready = false;
            let failing: Vec<String> = readiness
                .checks
                .iter()
                .filter(|(_, check)| check.status != HealthStatus::Ok)
                .map(|(name, check)| match &check.error {
                    Some(error) => format!("{name} {} ({error})", check.status.as_str()),
                    None => format!("{name} {}", check.status.as_str()),
                })
                .collect();
            sentences.push(format!(
                "Readiness: {}; {}.",
                readiness.status.as_str(),
                failing.join("; ")
            ));
        }
        Some(_) => {}
    }
    Diagnosis {
        healthy: report.status == SlaStatus::Ok && degraded.is_empty() && ready,
        degraded,
        sentences,
    }
}

fn headline(status: SlaStatus, minute: &SlaWindow, thresholds: &Thresholds) -> String {
    let p95 = minute.response_ms.p95.map_or_else(
        || "no responses".to_owned(),
        |p95| format!("response p95 {} ms", grouped(p95)),
    );
    let over = format!(
        "over the last minute ({} runs; SLA p95 {} ms)",
        minute.runs,
        grouped(thresholds.response_p95_ms as f64)
    );
    match status {
        SlaStatus::Ok => format!("Chat meets its SLA: {p95} {over}."),
        SlaStatus::Degraded => format!("Chat meets its SLA, but a tier is degraded: {p95} {over}."),
        SlaStatus::Violating => format!("Chat is violating its SLA: {p95} {over}."),
    }
}

/// What is wrong with `tier`: over its limit, failing, stalled, or what readiness says.
fn blame(
    tier: Tier,
    figures: &TierWindow,
    limit_ms: u64,
    stalled: Option<&Stalled>,
    readiness_error: Option<&str>,
) -> String {
    let limit = grouped(limit_ms as f64);
    let mut parts = Vec::new();
    if let Some(p99) = figures.p99_ms {
        parts.push(format!(
            "p99 {} ms over the last minute (SLA {limit} ms), median {} ms, {} operations",
            grouped(p99),
            grouped(figures.p50_ms.unwrap_or(p99)),
            figures.ops
        ));
    }
    if figures.errors > 0 {
        parts.push(format!("{} of them failed", figures.errors));
    }
    if let Some(stalled) = stalled {
        parts.push(format!(
            "{} under way for over {limit} ms now, the oldest for {} ms",
            stalled.ops,
            grouped(stalled.oldest_ms)
        ));
    }
    if let Some(error) = readiness_error {
        parts.push(format!("its readiness check says: {error}"));
    }
    if parts.is_empty() {
        parts.push("degraded".to_owned());
    }
    // "PostgreSQL p99 …", but "ClickHouse: its readiness check says …".
    let joint = if figures.p99_ms.is_some() { " " } else { ": " };
    capitalized(&format!("{tier}{joint}{}.", parts.join("; ")))
}

fn responses(minute: &SlaWindow, thresholds: &Thresholds) -> Vec<String> {
    let count = |name: String| minute.violations.get(&name).copied().unwrap_or(0);
    let slow = count(thresholds.slow_response_violation());
    let failed = count(thresholds.failed_response_violation());
    let refused = count(thresholds.refused_violation());
    let seconds = |ms: u64| format!("{} s", ms as f64 / 1000.0);
    let mut sentences = Vec::new();
    if slow > 0 {
        let mut sentence = format!(
            "{slow} {} over {} in the last minute",
            if slow == 1 { "response" } else { "responses" },
            seconds(thresholds.response_p95_ms)
        );
        if failed > 0 {
            sentence.push_str(&format!(
                ", {failed} of them over {}",
                seconds(thresholds.response_failure_ms)
            ));
        }
        sentence.push('.');
        sentences.push(sentence);
    }
    if refused > 0 {
        sentences.push(format!(
            "{refused} {} refused in the last minute because a tier failed or the server was full: {} no answer.",
            if refused == 1 { "message" } else { "messages" },
            if refused == 1 {
                "its user got"
            } else {
                "their users got"
            }
        ));
    }
    sentences
}

/// "A", "A and B", "A, B and C".
fn listed(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}

/// A count of milliseconds with its thousands apart: `4 800`, `120`, `12.5`.
fn grouped(ms: f64) -> String {
    if ms < 100.0 && ms.fract() != 0.0 {
        return format!("{ms:.1}");
    }
    let digits = format!("{}", ms.round() as u64);
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use switchboard_protocol::http::Check;
    use switchboard_protocol::sla::{Percentiles, Thresholds};

    use super::*;

    fn window(runs: u64, p95: f64, tiers: &[(&str, TierWindow)], violations: &[(&str, u64)]) -> SlaWindow {
        SlaWindow {
            runs,
            runs_per_s: runs as f64 / 60.0,
            first_event_ms: Percentiles::default(),
            response_ms: Percentiles {
                p50: Some(p95 / 2.0),
                p95: Some(p95),
                p99: Some(p95),
            },
            violations: violations.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
            tiers: tiers.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
        }
    }

    fn tier(ops: u64, p50: f64, p99: f64, errors: u64) -> TierWindow {
        TierWindow {
            ops,
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            errors,
        }
    }

    fn ready(checks: &[(&str, HealthStatus, Option<&str>)]) -> Readiness {
        let checks: BTreeMap<String, Check> = checks
            .iter()
            .map(|(name, status, error)| {
                (
                    (*name).to_owned(),
                    Check {
                        status: *status,
                        latency_ms: 3,
                        error: error.map(str::to_owned),
                    },
                )
            })
            .collect();
        let status = if checks.values().all(|c| c.status == HealthStatus::Ok) {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        };
        Readiness { status, checks }
    }

    #[test]
    fn a_slow_tier_is_named_with_its_figures_the_slow_responses_counted_and_the_others_called_fine() {
        let minute = window(
            120,
            2400.0,
            &[
                ("postgres", tier(900, 310.0, 4800.0, 0)),
                ("redis", tier(400, 1.0, 3.0, 0)),
                ("clickhouse", tier(12, 40.0, 90.0, 0)),
            ],
            &[("response_over_2000ms", 37), ("response_over_3000ms", 5)],
        );
        let report = SlaReport {
            status: SlaStatus::Violating,
            degraded: vec!["postgres".into()],
            thresholds: Thresholds::INCIDENT,
            windows: BTreeMap::from([("1m".to_owned(), minute)]),
            stalled: BTreeMap::new(),
        };
        let checks = ready(&[
            (
                "postgres",
                HealthStatus::Degraded,
                Some("answered in 412 ms (slower than 200 ms)"),
            ),
            ("store", HealthStatus::Ok, None),
        ]);
        let diagnosis = explain(&report, Some(&checks));
        assert!(!diagnosis.healthy);
        assert_eq!(diagnosis.degraded, [Tier::Postgres]);
        assert_eq!(
            diagnosis.sentences,
            [
                "Chat is violating its SLA: response p95 2 400 ms over the last minute (120 runs; SLA p95 2 000 ms).",
                "PostgreSQL p99 4 800 ms over the last minute (SLA 200 ms), median 310 ms, 900 operations; its readiness check says: answered in 412 ms (slower than 200 ms).",
                "37 responses over 2 s in the last minute, 5 of them over 3 s.",
                "Redis and ClickHouse fine.",
                "Readiness: degraded; postgres degraded (answered in 412 ms (slower than 200 ms)).",
            ]
        );
    }

    #[test]
    fn a_failing_model_and_a_healthy_server_are_told_apart() {
        let healthy = SlaReport {
            status: SlaStatus::Ok,
            degraded: Vec::new(),
            thresholds: Thresholds::INCIDENT,
            windows: BTreeMap::from([(
                "1m".to_owned(),
                window(
                    30,
                    180.0,
                    &[("sqlite", tier(300, 0.4, 2.0, 0)), ("model", tier(60, 50.0, 90.0, 0))],
                    &[],
                ),
            )]),
            stalled: BTreeMap::new(),
        };
        let checks = ready(&[("sqlite", HealthStatus::Ok, None), ("store", HealthStatus::Ok, None)]);
        let diagnosis = explain(&healthy, Some(&checks));
        assert!(diagnosis.healthy);
        assert_eq!(
            diagnosis.sentences,
            [
                "Chat meets its SLA: response p95 180 ms over the last minute (30 runs; SLA p95 2 000 ms).",
                "SQLite and the model fine.",
            ]
        );

        let failing = SlaReport {
            status: SlaStatus::Degraded,
            degraded: vec!["model".into()],
            windows: BTreeMap::from([(
                "1m".to_owned(),
                window(
                    4,
                    900.0,
                    &[
                        ("sqlite", tier(40, 0.4, 2.0, 0)),
                        ("model", tier(8, 30_000.0, 30_000.0, 8)),
                    ],
                    &[],
                ),
            )]),
            ..healthy
        };
        let diagnosis = explain(&failing, None);
        assert!(!diagnosis.healthy);
        assert_eq!(
            diagnosis.sentences[1..],
            [
                "The model p99 30 000 ms over the last minute (SLA 10 000 ms), median 30 000 ms, 8 operations; 8 of them failed.",
                "SQLite fine.",
                "The server did not answer GET /health/ready with its checks.",
            ]
        );
    }

    #[test]
    fn a_stall_a_tier_only_readiness_blames_refused_messages_and_idle_tiers_are_each_told() {
        let minute = window(
            3,
            400.0,
            &[
                ("postgres", tier(20, 5.0, 9.0, 0)),
                ("redis", tier(0, 0.0, 0.0, 0)),
                ("clickhouse", TierWindow::default()),
            ],
            &[("messages_refused", 4)],
        );
        let report = SlaReport {
            status: SlaStatus::Violating,
            degraded: vec!["postgres".into()],
            thresholds: Thresholds::INCIDENT,
            windows: BTreeMap::from([("1m".to_owned(), minute)]),
            stalled: BTreeMap::from([(
                "postgres".to_owned(),
                Stalled {
                    ops: 4,
                    oldest_ms: 3400.0,
                },
            )]),
        };
        // ClickHouse is down, and no chat touched it: readiness alone says so.
        let checks = ready(&[
            ("clickhouse", HealthStatus::Degraded, Some("no answer within 800 ms")),
            ("store", HealthStatus::Ok, None),
        ]);
        let diagnosis = explain(&report, Some(&checks));
        assert!(!diagnosis.healthy);
        assert_eq!(diagnosis.degraded, [Tier::Postgres, Tier::ClickHouse]);
        assert_eq!(
            diagnosis.sentences[1..],
            [
                "PostgreSQL p99 9 ms over the last minute (SLA 200 ms), median 5 ms, 20 operations; 4 under way for over 200 ms now, the oldest for 3 400 ms.",
                "ClickHouse: its readiness check says: no answer within 800 ms.",
                "4 messages refused in the last minute because a tier failed or the server was full: their users got no answer.",
                "Redis fine as far as known: no operations in the last minute.",
                "Readiness: degraded; clickhouse degraded (no answer within 800 ms).",
            ]
        );
    }

    #[test]
    fn milliseconds_are_grouped_by_thousands() {
        assert_eq!(grouped(4800.0), "4 800");
        assert_eq!(grouped(1_234_567.0), "1 234 567");
        assert_eq!(grouped(120.0), "120");
        assert_eq!(grouped(12.5), "12.5");
        assert_eq!(grouped(0.4), "0.4");
    }
}

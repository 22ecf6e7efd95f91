//! The analysis' store query (`workload_summary`: totals, per model, per feature, per hour, with
//! p50/p95 latency) over 10 000, 100 000 and 1 000 000 workload events of one user, in SQLite. The baseline in the same run is a plain
//! `workload_event_count` (one indexed count) over the same rows. The ingest rate is the calls
//! stored per second through `insert_workload_events`, 50 000 a batch.
//!
//! `cargo bench -p switchboard-store --bench aggregates`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use switchboard_protocol::{Timestamp, UserId};
use switchboard_store::{AnalyticsStore, CallStatus, SqliteStore, TimeRange, WorkloadEvent};

const MODELS: [&str; 6] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-3-5-haiku",
    "claude-sonnet-4",
    "gemini-2.0-flash",
    "o3-mini",
];
const FEATURES: [&str; 5] = ["search", "chat", "summaries", "tagging", "nightly-report"];

/// A deterministic month of calls: a daily rhythm, a few error bursts, varied sizes.
fn events(count: usize) -> Vec<WorkloadEvent> {
    let start = Timestamp::parse("2026-10-01T00:00:00Z").unwrap().unix_millis();
    let month_ms = 30 * 24 * 3_600_000i64;
    (0..count)
        .map(|i| {
            let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let at = start + (x % month_ms as u64) as i64;
            WorkloadEvent {
                timestamp: Timestamp::from_unix_millis(at).unwrap(),
                model: MODELS[(x >> 8) as usize % MODELS.len()].to_owned(),
                input_tokens: 200 + (x >> 16) % 4000,
                output_tokens: 20 + (x >> 24) % 800,
                provider: None,
                latency_ms: Some(100.0 + ((x >> 32) % 3000) as f64),
                status: if (x >> 40).is_multiple_of(50) {
                    CallStatus::Error
                } else {
                    CallStatus::Ok
                },
                feature: Some(FEATURES[(x >> 44) as usize % FEATURES.len()].to_owned()),
                prompt_hash: Some(format!("h{}", (x >> 48) % 5000)),
                cost_usd: ((x >> 20) % 10_000) as f64 / 1e6,
                batch: false,
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("store aggregation: workload_summary over one user's events (SQLite, release build)");
        println!();
        println!("| events | insert (s) | ingest (calls/s) | baseline: count (ms) | workload_summary (ms) |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        for count in [10_000usize, 100_000, 1_000_000] {
            let dir = tempfile::tempdir()?;
            let store = SqliteStore::open(&dir.path().join("db.sqlite")).await?;
            let user = UserId::generate();
            let mut insert = Duration::ZERO;
            let all = events(count);
            for chunk in all.chunks(50_000) {
                let chunk = chunk.to_vec();
                let started = Instant::now();
                store.insert_workload_events(&user, chunk).await?;
                insert += started.elapsed();
            }
            let time = |d: Duration| d.as_secs_f64() * 1000.0;
            let started = Instant::now();
            let counted = store.workload_event_count(&user).await?;
            let baseline = started.elapsed();
            assert_eq!(counted as usize, count);
            let started = Instant::now();
            let all = TimeRange::default();
            let summary = store.workload_summary(&user, all).await?;
            let queries = started.elapsed();
            assert_eq!(summary.totals.usage.calls as usize, count);
            let shape = (summary.by_model.len(), summary.by_feature.len(), summary.hours.len());
            assert_eq!(shape, (MODELS.len(), FEATURES.len(), 24));
            println!(
                "| {count} | {:.1} | {:.0} | {:.1} | {:.1} |",
                insert.as_secs_f64(),
                count as f64 / insert.as_secs_f64(),
                time(baseline),
                time(queries)
            );
        }
        anyhow::Ok(())
    })
}

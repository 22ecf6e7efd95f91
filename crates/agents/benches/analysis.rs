//! The whole analysis, end to end: one user asks "How can we cut our LLM costs?" and the shipped
//! agents (triage, data, optimization, actions, reporting, with the offline model) answer from
//! 10 000, 100 000 and 1 000 000 of their workload events in SQLite (the demo month, scaled),
//! and 10 000 000 with `BENCH_10M=1` (a few minutes more, most of it making and storing the
//! rows). The baseline in the same run is the same question from a user without data (triage
//! and reporting only). Each figure is the median of three runs. The ingest rate is the demo
//! month's calls through `insert_workload_events`, 50 000 a batch.
//!
//! `cargo bench -p switchboard-agents --bench analysis` (`BENCH_10M=1 cargo bench ...`)

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_agents::demo::demo_month_of_about_by_day;
use switchboard_agents::workload::parse_row;
use switchboard_agents::{OfflineModel, PriceTable, register};
use switchboard_engine::testkit::MemorySink;
use switchboard_engine::{Engine, EngineConfig, RunRequest};
use switchboard_protocol::{EventPayload, RunStatus, ThreadId, UserId};
use switchboard_store::{AnalyticsStore, SqliteStore};

const RUNS: usize = 3;
const QUESTION: &str = "How can we cut our LLM costs?";

/// One run: its wall time and the time its tools took (from the final event's timings).
async fn run(engine: &Engine, user: &UserId) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let outcome = engine
        .start_run(RunRequest::new(user.clone(), ThreadId::generate(), QUESTION))?
        .outcome()
        .await;
    let took = started.elapsed();
    anyhow::ensure!(
        outcome.status == RunStatus::Completed,
        "the run ended {:?}",
        outcome.status
    );
    let Some(EventPayload::AgentCompleted(done)) = outcome.final_event.map(|e| e.payload) else {
        anyhow::bail!("no final event");
    };
    let tools = Duration::from_millis(done.timings.map_or(0, |t| t.tools_ms));
    Ok((took, tools))
}

fn median(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("analysis end to end: \"{QUESTION}\", five agents, offline model, SQLite, release build");
        println!("(median of {RUNS} runs each)");
        println!();
        println!(
            "| events | ingest (calls/s) | baseline: no data (ms) | whole analysis (ms) | of which tools (ms) | answer (chars) |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        let prices = PriceTable::embedded();
        let mut sizes = vec![10_000u32, 100_000, 1_000_000];
        if std::env::var_os("BENCH_10M").is_some_and(|v| v == "1") {
            sizes.push(10_000_000);
        }
        for count in sizes {
            let dir = tempfile::tempdir()?;
            let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await?);
            let (user, newcomer) = (UserId::generate(), UserId::generate());
            // Made and parsed a day at a time on a thread of its own, so that ten million rows
            // are never all in memory; only the inserts are timed.
            let (days, mut day_rows) = tokio::sync::mpsc::channel(2);
            let making = {
                let prices = prices.clone();
                std::thread::spawn(move || {
                    demo_month_of_about_by_day(count, |day| {
                        let rows: Result<Vec<_>, _> = day.iter().map(|row| parse_row(row, &prices)).collect();
                        // The receiver stops only on an error, which it reports.
                        let _ = days.blocking_send(rows);
                    });
                })
            };
            let (mut stored, mut ingest) = (0usize, Duration::ZERO);
            while let Some(rows) = day_rows.recv().await {
                let rows = rows.map_err(|e| anyhow::anyhow!(e))?;
                stored += rows.len();
                let mut rows = rows.into_iter();
                loop {
                    let chunk: Vec<_> = rows.by_ref().take(50_000).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    let started = Instant::now();
                    store.insert_workload_events(&user, chunk).await?;
                    ingest += started.elapsed();
                }
            }
            making.join().map_err(|_| anyhow::anyhow!("making the rows failed"))?;
            let config = EngineConfig {
                run_timeout: Duration::from_secs(600),
                agent_timeout: Duration::from_secs(600),
                tool_timeout: Duration::from_secs(600),
                ..EngineConfig::default()
            };
            let engine = register(Engine::builder(), store, Arc::new(prices.clone()))
                .config(config)
                .model(Arc::new(OfflineModel::default()))
                .build(MemorySink::new())?;
            let (mut baseline, mut whole, mut tools) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                baseline.push(run(&engine, &newcomer).await?.0);
                let (took, in_tools) = run(&engine, &user).await?;
                whole.push(took);
                tools.push(in_tools);
            }
            let answer = engine
                .start_run(RunRequest::new(user.clone(), ThreadId::generate(), QUESTION))?
                .outcome()
                .await
                .answer
                .unwrap_or_default();
            println!(
                "| {stored} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
                stored as f64 / ingest.as_secs_f64(),
                median(baseline),
                median(whole),
                median(tools),
                answer.len()
            );
        }
        anyhow::Ok(())
    })
}

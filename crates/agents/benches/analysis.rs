//! The whole analysis, end to end: one user asks "How can we cut our LLM costs?" and the shipped
//! agents (triage, data, optimization, actions, reporting, with the offline model) answer from
//! 10 000, 100 000 and 1 000 000 of their workload events in SQLite (the demo month, scaled),
//! and 10 000 000 with `BENCH_10M=1` (a few minutes more, most of it making and storing the
//! rows). The baseline in the same run is the same question from a user without data (triage
//! and reporting only). Each figure is the median of three runs. The ingest rate is the demo
//! month's calls through `insert_workload_events`, 50 000 a batch.
//!
//! With `SWITCHBOARD_BENCH_ANALYTICS_URL=http://127.0.0.1:PORT/` (a ClickHouse server) the same
//! question is answered over ClickHouse too (`ClickHouseAnalytics`, with deadlines of a minute),
//! from the same rows, in a scratch database per size that is dropped after it; the
//! answers over both stores are compared. SQLite's figures of a size are taken before its rows go
//! to ClickHouse, and ClickHouse's once its background merges of that upload have ended, so that
//! neither store's work runs under the other's figures (`SWITCHBOARD_BENCH_KEEP_DATABASE=1` keeps
//! the databases).
//!
//! `cargo bench -p switchboard-agents --bench analysis` (`BENCH_10M=1 cargo bench ...`)

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use switchboard_agents::demo::demo_month_of_about_by_day;
use switchboard_agents::workload::parse_row;
use switchboard_agents::{OfflineModel, PriceTable, register};
use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions, scratch_database};
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

/// The demo month of about `count` calls into `store` for `user`, 50 000 a batch: how many calls,
/// and the time the inserts took. The rows are made and parsed a day at a time on a thread of
/// their own, so that ten million rows are never all in memory; only the inserts are timed.
async fn upload(
    store: &dyn AnalyticsStore,
    user: &UserId,
    count: u32,
    prices: &PriceTable,
) -> anyhow::Result<(usize, Duration)> {
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
            store.insert_workload_events(user, chunk).await?;
            ingest += started.elapsed();
        }
    }
    making.join().map_err(|_| anyhow::anyhow!("making the rows failed"))?;
    Ok((stored, ingest))
}

/// What the analysis over one store measured.
struct Figures {
    stored: usize,
    ingest: Duration,
    baseline: f64,
    whole: f64,
    tools: f64,
    answer: String,
}

/// Uploads the month for one user (then lets `settle` wait for the store's work on it, if
/// given), and asks the question `RUNS` times as that user and as a user without data.
async fn measure(
    store: Arc<dyn AnalyticsStore>,
    count: u32,
    prices: &PriceTable,
    settle: Option<(&ClickHouse, &str)>,
) -> anyhow::Result<Figures> {
    let (user, newcomer) = (UserId::generate(), UserId::generate());
    let (stored, ingest) = upload(store.as_ref(), &user, count, prices).await?;
    if let Some((clickhouse, database)) = settle {
        clickhouse.settle(database).await?;
    }
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
    Ok(Figures {
        stored,
        ingest,
        baseline: median(baseline),
        whole: median(whole),
        tools: median(tools),
        answer,
    })
}

/// A ClickHouse server to answer over too, and what it answers SQL with.
struct ClickHouse {
    server: String,
    http: reqwest::Client,
}

impl ClickHouse {
    async fn sql(&self, sql: String) -> anyhow::Result<String> {
        let answer = self
            .http
            .post(&self.server)
            .body(sql)
            .send()
            .await
            .context("sending SQL to ClickHouse")?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "ClickHouse answered {status}: {text}");
        Ok(text)
    }

    /// The analysis over a new database, dropped after it.
    async fn measure(&self, count: u32, prices: &PriceTable) -> anyhow::Result<Figures> {
        let url = scratch_database(&self.server).await?;
        let database = url
            .split("database=")
            .nth(1)
            .and_then(|rest| rest.split('&').next())
            .context("the scratch database's URL")?
            .to_owned();
        // Longer than the server's default deadline (`analytics_timeout_ms`, 5 000 ms), so that a
        // slow summary is measured rather than refused; the tools' column tells whether it fits.
        let options = ClickHouseOptions {
            query_timeout: Duration::from_secs(60),
            insert_timeout: Duration::from_secs(120),
        };
        let result = async {
            let store = Arc::new(ClickHouseAnalytics::connect(&url, options).await?);
            measure(store, count, prices, Some((self, &database))).await
        }
        .await;
        if std::env::var_os("SWITCHBOARD_BENCH_KEEP_DATABASE").is_some() {
            println!("(kept the ClickHouse database {database})");
        } else {
            self.sql(format!("DROP DATABASE {database}")).await?;
        }
        result
    }

    /// Waits (at most two minutes) until the server merges none of `database`'s parts.
    async fn settle(&self, database: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let merging = self
                .sql(format!(
                    "SELECT count() FROM system.merges WHERE database = '{database}'"
                ))
                .await?;
            if merging.trim() == "0" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("(ClickHouse still merging {database} after two minutes; measured anyway)");
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let clickhouse = std::env::var("SWITCHBOARD_BENCH_ANALYTICS_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|server| ClickHouse {
                server,
                http: reqwest::Client::new(),
            });
        let stores = if clickhouse.is_some() {
            "SQLite and ClickHouse (HTTP on loopback, this machine)"
        } else {
            "SQLite"
        };
        println!("analysis end to end: \"{QUESTION}\", five agents, offline model, {stores}, release build");
        println!("(median of {RUNS} runs each)");
        println!();
        println!(
            "| events | store | ingest (calls/s) | baseline: no data (ms) | whole analysis (ms) | of which tools (ms) | answer (chars) |"
        );
        println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
        let prices = PriceTable::embedded();
        let mut sizes = vec![10_000u32, 100_000, 1_000_000];
        if std::env::var_os("BENCH_10M").is_some_and(|v| v == "1") {
            sizes.push(10_000_000);
        }
        let mut differing = Vec::new();
        for count in sizes {
            let dir = tempfile::tempdir()?;
            let sqlite: Arc<dyn AnalyticsStore> = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await?);
            let figures = measure(sqlite, count, &prices, None).await?;
            print_row("SQLite", &figures);
            drop(dir);
            if let Some(clickhouse) = &clickhouse {
                // A failure is a figure too: said, and the other sizes still measured.
                match clickhouse.measure(count, &prices).await {
                    Ok(on_clickhouse) => {
                        print_row("ClickHouse", &on_clickhouse);
                        if on_clickhouse.answer != figures.answer {
                            differing.push((figures.stored, figures.answer, on_clickhouse.answer));
                        }
                    }
                    Err(error) => println!("| {} | ClickHouse | failed: {error:#} | | | | |", figures.stored),
                }
            }
        }
        for (stored, sqlite, clickhouse) in differing {
            println!();
            println!("the answers differ at {stored} calls:");
            println!("--- SQLite\n{sqlite}\n--- ClickHouse\n{clickhouse}");
        }
        anyhow::Ok(())
    })
}

fn print_row(store: &str, figures: &Figures) {
    println!(
        "| {} | {store} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
        figures.stored,
        figures.stored as f64 / figures.ingest.as_secs_f64(),
        figures.baseline,
        figures.whole,
        figures.tools,
        figures.answer.len()
    );
}

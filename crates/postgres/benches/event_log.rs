//! The event log's write path, as `crates/store/benches/event_log.rs` measures it for SQLite,
//! on PostgreSQL and on SQLite in the same run: 20 000 run events of 1 000 users appended
//! through `append_events` in batches of 1, 16, 256 and 1 024 (the engine's queue hands the store
//! everything queued, up to 1 024, as one batch), one writer at a time as the engine's queue
//! writes. Prints events per second and the time per batch; the baseline numbers and serializes
//! the same events without a store.
//!
//! `SWITCHBOARD_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres cargo bench -p switchboard-postgres --bench event_log`
//! (a role that may create databases; each batch size gets a new database).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use switchboard_postgres::{PgOptions, PgStore, redacted, scratch_database};
use switchboard_protocol::{
    AgentName, AgentThinking, EntryKey, EventPayload, LogEntry, NewEvent, PartialResult, RunId, Seq, ThreadId,
    Timestamp, TraceId, UserId,
};
use switchboard_store::{SqliteStore, Store};

const EVENTS: usize = 20_000;
const USERS: usize = 1_000;
const BATCHES: [usize; 4] = [1, 16, 256, 1024];

/// A mix like a run's: narration and pieces of an answer of a few hundred characters.
fn entries(users: &[UserId]) -> Vec<LogEntry> {
    let (run, thread, trace) = (RunId::generate(), ThreadId::generate(), TraceId::generate());
    (0..EVENTS)
        .map(|i| {
            let payload = if i % 3 == 0 {
                EventPayload::PartialResult(PartialResult {
                    delta: "Route the short tagging calls to gpt-4o-mini: they are 41 % of calls. ".repeat(4),
                })
            } else {
                EventPayload::AgentThinking(AgentThinking {
                    text: "Reading 30 days of calls by model and feature.".into(),
                    step: None,
                    progress: None,
                })
            };
            LogEntry {
                key: EntryKey::generate(),
                user_id: users[i % users.len()].clone(),
                event: NewEvent {
                    run_id: run.clone(),
                    thread_id: thread.clone(),
                    agent_name: AgentName::parse("data").unwrap(),
                    timestamp: Timestamp::now(),
                    trace_id: trace.clone(),
                    payload,
                },
                end: None,
            }
        })
        .collect()
}

async fn append(store: &dyn Store, entries: Vec<LogEntry>, batch: usize) -> Duration {
    let started = Instant::now();
    for chunk in entries.chunks(batch) {
        store.append_events(chunk).await.unwrap();
    }
    started.elapsed()
}

/// Appends a run's worth per user first (a server that has been up a while), then measures.
async fn measure(store: &dyn Store, users: &[UserId], batch: usize) -> (f64, f64) {
    append(store, entries(users), 1024).await;
    let took = append(store, entries(users), batch).await;
    let batches = EVENTS.div_ceil(batch);
    (
        EVENTS as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / batches as f64,
    )
}

#[tokio::main]
async fn main() {
    let admin = std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("SWITCHBOARD_TEST_POSTGRES_URL"))
        .expect("set SWITCHBOARD_BENCH_POSTGRES_URL (or SWITCHBOARD_TEST_POSTGRES_URL) to a PostgreSQL admin URL");
    let users: Vec<UserId> = (0..USERS).map(|_| UserId::generate()).collect();
    let baseline_entries = entries(&users);
    let started = Instant::now();
    for (seq, entry) in baseline_entries.iter().enumerate() {
        std::hint::black_box(entry.event.to_json().unwrap().numbered(Seq::new(seq as u64)));
    }
    let baseline = started.elapsed();
    println!(
        "baseline (same run): numbering and serializing {EVENTS} events without a store: {:.0} events/s",
        EVENTS as f64 / baseline.as_secs_f64()
    );
    println!("PostgreSQL: {}", redacted(&admin));
    println!();
    println!("| batch | SQLite events/s | SQLite ms per batch | PostgreSQL events/s | PostgreSQL ms per batch |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for batch in BATCHES {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(&dir.path().join("bench.sqlite3")).await.unwrap();
        let (sqlite_rate, sqlite_ms) = measure(&sqlite, &users, batch).await;
        let url = scratch_database(&admin).await.unwrap();
        let postgres = PgStore::connect(&url, PgOptions::default()).await.unwrap();
        let (pg_rate, pg_ms) = measure(&postgres, &users, batch).await;
        println!("| {batch} | {sqlite_rate:.0} | {sqlite_ms:.2} | {pg_rate:.0} | {pg_ms:.2} |");
    }
}

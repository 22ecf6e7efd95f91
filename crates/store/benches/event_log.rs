//! The event log's write path in SQLite: 20 000 run events of 1 000 users appended through
//! `append_events` in batches of 1, 16, 256 and 1 024 (the engine's queue hands the store
//! everything queued, up to 1 024, as one batch). Prints events per second and the time per
//! batch; the baseline in the same run numbers and serializes the same events without a store.
//!
//! `cargo bench -p switchboard-store --bench event_log`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use switchboard_protocol::{
    AgentName, AgentThinking, EntryKey, EventPayload, LogEntry, NewEvent, PartialResult, RunId, Seq, ThreadId,
    Timestamp, TraceId, UserId,
};
use switchboard_store::{SqliteStore, Store};

const EVENTS: usize = 20_000;
const USERS: usize = 1_000;

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

async fn append(store: &SqliteStore, entries: Vec<LogEntry>, batch: usize) -> Duration {
    let started = Instant::now();
    for chunk in entries.chunks(batch) {
        store.append_events(chunk).await.unwrap();
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
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
    println!();
    println!("| batch | events/s | ms per batch |");
    println!("| ---: | ---: | ---: |");
    for batch in [1, 16, 256, 1024] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("bench.sqlite3")).await.unwrap();
        // A log that already holds a run's worth per user, as a server that has been up a while.
        append(&store, entries(&users), 1024).await;
        let took = append(&store, entries(&users), batch).await;
        let batches = EVENTS.div_ceil(batch);
        println!(
            "| {batch} | {:.0} | {:.2} |",
            EVENTS as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / batches as f64
        );
    }
}

//! Two server processes on one database append to one user's log at once: every seq is given
//! once, none is skipped, and each process's events keep its order. The second process is this
//! test binary again, running this same test as the writer (told so by an environment
//! variable).

mod support;

use std::process::Stdio;
use std::time::Duration;

use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{AgentStarted, EventPayload, LogEntry, RunId, Seq, ThreadId, UserId};
use switchboard_store::Store;
use switchboard_store::testsuite::entry;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Set in the second process: `url user`.
const WRITER: &str = "SWITCHBOARD_TEST_POSTGRES_WRITER";
const READY: &str = "writer ready";
/// Events each process appends, in batches of 1 to 3.
const EVENTS: usize = 300;
/// Generous: a whole process starts and writes within it.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

fn event(user: &UserId, writer: &str, i: usize) -> LogEntry {
    let task = format!("{writer} {i}");
    entry(
        user,
        &RunId::generate(),
        &ThreadId::generate(),
        EventPayload::AgentStarted(AgentStarted { task }),
        None,
    )
}

/// Appends this process's events for `user`, in batches of 1, 2 and 3.
async fn write(store: &PgStore, user: &UserId, writer: &str) {
    let mut i = 0;
    for size in [1, 2, 3].into_iter().cycle() {
        if i >= EVENTS {
            break;
        }
        let batch: Vec<LogEntry> = (i..(i + size).min(EVENTS)).map(|n| event(user, writer, n)).collect();
        i += batch.len();
        store.append_events(&batch).await.unwrap();
    }
}

/// The second process: says it is ready, waits for the word, writes.
async fn be_the_writer(spec: &str) {
    let (url, user) = spec.split_once(' ').expect("the writer is given `url user`");
    let user = UserId::parse(user).unwrap();
    let store = PgStore::connect(url, PgOptions::default()).await.unwrap();
    store.ping().await.unwrap();
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("{READY}\n").as_bytes()).await.unwrap();
    stdout.flush().await.unwrap();
    let mut go = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut go).await.unwrap();
    write(&store, &user, "child").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_appending_for_one_user_never_give_one_seq_twice() {
    if let Ok(spec) = std::env::var(WRITER) {
        return be_the_writer(&spec).await;
    }
    let url = support::fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let user = UserId::generate();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "two_processes_appending_for_one_user_never_give_one_seq_twice",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER, format!("{url} {user}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(TEST_DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest has written `test NAME ... ` before it on the same line.
            if line.trim_end().ends_with(READY) {
                return;
            }
        }
        panic!("the writer process ended before it was ready");
    })
    .await
    .expect("the writer process got ready");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    drop(stdin);
    tokio::time::timeout(TEST_DEADLINE, write(&store, &user, "parent"))
        .await
        .expect("this process wrote its events");
    let status = tokio::time::timeout(TEST_DEADLINE, child.wait())
        .await
        .expect("the writer process ended")
        .unwrap();
    assert!(status.success(), "the writer process failed: {status}");

    let stored = store.events_after(&user, Seq::ZERO, 10 * EVENTS).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq.get()).collect();
    assert_eq!(
        seqs,
        (1..=2 * EVENTS as u64).collect::<Vec<_>>(),
        "every seq once, none skipped"
    );
    let mut order: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for record in &stored {
        let event = record.event().unwrap();
        assert_eq!(event.seq, record.seq, "the JSON holds the seq it was stored with");
        let EventPayload::AgentStarted(AgentStarted { task }) = event.payload else {
            panic!("an event that neither process wrote: {}", record.json);
        };
        let (writer, i) = task.split_once(' ').unwrap();
        order.entry(writer.to_owned()).or_default().push(i.parse().unwrap());
    }
    for writer in ["parent", "child"] {
        assert_eq!(
            order.get(writer),
            Some(&(0..EVENTS).collect::<Vec<_>>()),
            "{writer}'s events are in the order it appended them"
        );
    }
    assert_eq!(store.last_seq(&user).await.unwrap(), Seq::new(2 * EVENTS as u64));
}

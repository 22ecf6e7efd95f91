//! A batch of the event log tried again (the engine's queue tries a failed batch again as it
//! was) is stored once: when its answer was lost after it committed, the retry is answered with
//! the seqs it got; when the first try is still under way, the retry waits for it.

mod support;

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{AgentStarted, EventPayload, LogEntry, Role, RunStatus, Seq, UserId};
use switchboard_store::testsuite::{entry, finished, new_message, started};
use switchboard_store::{RunState, Store, StoreError, StoredEvent};

/// Generous: only a lock held by the test holds these up.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

async fn all_events(store: &PgStore, user: &UserId) -> Vec<u64> {
    store
        .events_after(user, Seq::ZERO, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq.get())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_tried_again_is_answered_as_it_was_stored_and_stored_once() {
    let (store, _) = support::fresh_store(PgOptions::default()).await;
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let accepted = store
        .accept_message(new_message(&ann, None, "question", None))
        .await
        .unwrap();
    let (run, thread) = (accepted.run_id, accepted.thread_id);
    let appends = vec![
        entry(&bob, &run, &thread, started(), None),
        entry(&ann, &run, &thread, started(), None),
        entry(&bob, &run, &thread, started(), None),
    ];
    let ends = vec![
        entry(&ann, &run, &thread, started(), None),
        entry(
            &ann,
            &run,
            &thread,
            finished(RunStatus::Completed, Some("done")),
            Some("done"),
        ),
    ];
    for batch in [&appends, &ends] {
        let first = store.append_events(batch).await.unwrap();
        // Meanwhile other batches go on numbering.
        store
            .append_events(&[entry(&bob, &run, &thread, started(), None)])
            .await
            .unwrap();
        let again = store.append_events(batch).await.unwrap();
        assert_eq!(again, first, "the same seqs and JSON as the first time");
    }
    assert_eq!(all_events(&store, &ann).await, [1, 2, 3]);
    assert_eq!(all_events(&store, &bob).await, [1, 2, 3, 4]);
    let record = store.run(&ann, &run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Finished(RunStatus::Completed));
    let answers = store
        .messages(&ann, &thread)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.role == Role::Assistant)
        .count();
    assert_eq!(answers, 1, "the run's answer is stored once");

    // The same events in new entries are a new batch.
    let copies: Vec<LogEntry> = appends
        .iter()
        .map(|e| LogEntry::new(e.user_id.clone(), e.event.clone(), None))
        .collect();
    let seqs: Vec<u64> = store
        .append_events(&copies)
        .await
        .unwrap()
        .iter()
        .map(|s| s.record.seq.get())
        .collect();
    assert_eq!(seqs, [5, 4, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_was_lost_after_it_committed_is_stored_once_when_tried_again() {
    let url = support::fresh_database().await;
    let config = tokio_postgres::Config::from_str(&url).unwrap();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let (user, database) = (config.get_user().unwrap(), config.get_dbname().unwrap());
    let direct = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    // The server gets the append, commits it, and its answer never arrives.
    let (proxy, armed) = support::stalling_proxy(format!("127.0.0.1:{port}"), b"in doubt", support::Stall::After).await;
    let cut_off = PgStore::connect(
        // In the clear, so that the proxy sees the statement it stalls on.
        &format!("host=127.0.0.1 port={proxy} user={user} dbname={database} sslmode=disable"),
        PgOptions {
            query_timeout: Duration::from_millis(300),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let ann = UserId::generate();
    let (run, thread) = (
        switchboard_protocol::RunId::generate(),
        switchboard_protocol::ThreadId::generate(),
    );
    let doubt = EventPayload::AgentStarted(AgentStarted {
        task: "in doubt".into(),
    });
    let batch = vec![
        entry(&ann, &run, &thread, started(), None),
        entry(&ann, &run, &thread, doubt, None),
    ];
    armed.store(true, Ordering::SeqCst);
    let lost = cut_off.append_events(&batch).await;
    assert!(matches!(lost, Err(StoreError::TimedOut { .. })), "{lost:?}");
    assert_eq!(all_events(&direct, &ann).await, [1, 2], "the append committed");

    // The queue tries the batch again (here through another connection).
    let again = direct.append_events(&batch).await.unwrap();
    let seqs: Vec<u64> = again.iter().map(|s| s.record.seq.get()).collect();
    assert_eq!(seqs, [1, 2]);
    let stored = direct.events_after(&ann, Seq::ZERO, 10).await.unwrap();
    assert_eq!(
        stored,
        again.into_iter().map(|s| s.record).collect::<Vec<_>>(),
        "stored once, answered as stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_tried_again_while_its_first_try_is_under_way_waits_for_it_and_is_stored_once() {
    let (store, url) = support::fresh_store(PgOptions {
        query_timeout: TEST_DEADLINE,
        ..PgOptions::default()
    })
    .await;
    let other = PgStore::connect(
        &url,
        PgOptions {
            query_timeout: TEST_DEADLINE,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let ann = UserId::generate();
    let (run, thread) = (
        switchboard_protocol::RunId::generate(),
        switchboard_protocol::ThreadId::generate(),
    );
    store
        .append_events(&[entry(&ann, &run, &thread, started(), None)])
        .await
        .unwrap();
    let batch: Vec<LogEntry> = (0..3).map(|_| entry(&ann, &run, &thread, started(), None)).collect();

    // Both tries wait on ann's log row, held by the test, and are let go together.
    let lock = support::raw_connection(&url).await;
    lock.batch_execute("BEGIN").await.unwrap();
    lock.query(
        "SELECT last_seq FROM user_logs WHERE user_id = $1 FOR UPDATE",
        &[&ann.as_str()],
    )
    .await
    .unwrap();
    let first = tokio::spawn({
        let batch = batch.clone();
        async move { store.append_events(&batch).await.map(|s| (store, s)) }
    });
    let second = tokio::spawn({
        let batch = batch.clone();
        async move { other.append_events(&batch).await }
    });
    let watcher = support::raw_connection(&url).await;
    tokio::time::timeout(TEST_DEADLINE, async {
        while support::waiting_on_a_lock(&watcher).await < 2 {}
    })
    .await
    .expect("both tries wait on the lock");
    lock.batch_execute("COMMIT").await.unwrap();

    let (store, first) = first.await.unwrap().unwrap();
    let second: Vec<StoredEvent> = second.await.unwrap().unwrap();
    assert_eq!(first, second);
    let seqs: Vec<u64> = first.iter().map(|s| s.record.seq.get()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(all_events(&store, &ann).await, [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_of_batches_stored_more_than_a_day_ago_are_forgotten() {
    let (store, url) = support::fresh_store(PgOptions::default()).await;
    let raw = support::raw_connection(&url).await;
    let day_and_a_bit: i64 = 25 * 60 * 60 * 1000;
    raw.execute(
        "INSERT INTO log_batches (key, lasts, stored_at) VALUES ('\\x01', '{1}', $1), ('\\x02', '{1}', $2)",
        &[
            &(switchboard_protocol::Timestamp::now().unix_millis() - day_and_a_bit),
            &switchboard_protocol::Timestamp::now().unix_millis(),
        ],
    )
    .await
    .unwrap();
    // Every 4096th append sets a store forgetting, on a task of its own.
    let ann = UserId::generate();
    let (run, thread) = (
        switchboard_protocol::RunId::generate(),
        switchboard_protocol::ThreadId::generate(),
    );
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, ann, run, thread) = (store.clone(), ann.clone(), run.clone(), thread.clone());
        writers.spawn(async move {
            for _ in 0..512 {
                store
                    .append_events(&[entry(&ann, &run, &thread, started(), None)])
                    .await
                    .unwrap();
            }
        });
    }
    writers.join_all().await;
    let kept = |key: &'static [u8]| {
        let raw = &raw;
        async move {
            raw.query_one("SELECT count(*) FROM log_batches WHERE key = $1", &[&key])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    tokio::time::timeout(TEST_DEADLINE, async { while kept(&[1]).await > 0 {} })
        .await
        .expect("the old key is forgotten");
    assert_eq!(kept(&[2]).await, 1, "a recent key is kept");
}

//! Every operation runs under the query deadline, and one cut short leaves no stuck connection
//! behind: with a pool of one connection, the store goes on serving while the cut-short query
//! would still be waiting.

mod support;

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{RunId, RunStatus, Seq, ThreadId, UserId};
use switchboard_store::testsuite::{append, entry, finished, new_message, started};
use switchboard_store::{RunState, Store, StoreError, Tier};

/// A pool of one connection: an operation that kept a stuck connection in the pool would make
/// every later one wait behind it.
fn one_connection(query_timeout: Duration) -> PgOptions {
    PgOptions {
        max_connections: 1,
        query_timeout,
        ..PgOptions::default()
    }
}

/// Locks `user`'s log row from a connection of the test's own, so that any append for the user
/// waits until the returned transaction ends.
async fn lock_log_of(url: &str, user: &UserId) -> tokio_postgres::Client {
    let raw = support::raw_connection(url).await;
    raw.batch_execute("BEGIN").await.unwrap();
    let locked = raw
        .query(
            "SELECT last_seq FROM user_logs WHERE user_id = $1 FOR UPDATE",
            &[&user.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(locked.len(), 1, "the user has a log row to lock");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_held_past_the_deadline_times_out_and_the_store_serves_on() {
    let deadline = Duration::from_millis(300);
    let (store, url) = support::fresh_store(one_connection(deadline)).await;
    let (alice, bob) = (UserId::generate(), UserId::generate());
    let (run, thread) = (RunId::generate(), ThreadId::generate());
    assert_eq!(append(&store, entry(&alice, &run, &thread, started(), None)).await, 1);

    let lock = lock_log_of(&url, &alice).await;
    let held = store
        .append_events(&[entry(&alice, &run, &thread, started(), None)])
        .await;
    assert_eq!(
        held.unwrap_err(),
        StoreError::TimedOut {
            tier: Tier::Postgres,
            after: deadline
        }
    );
    // The query cut short is cancelled on the server too: it does not wait for the lock until
    // the server finds its socket gone.
    // (Asked on a connection outside the lock's transaction, which would see one snapshot.)
    let watcher = support::raw_connection(&url).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while support::waiting_on_a_lock(&watcher).await > 0 {}
    })
    .await
    .expect("the append that timed out was cancelled on the server");
    // Alice's row is still locked: these get a new connection, not the one still waiting.
    store.ping().await.unwrap();
    assert_eq!(append(&store, entry(&bob, &run, &thread, started(), None)).await, 1);
    assert_eq!(store.last_seq(&alice).await.unwrap(), Seq::new(1));

    lock.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        append(&store, entry(&alice, &run, &thread, started(), None)).await,
        2,
        "the append that timed out stored nothing"
    );
    let seqs: Vec<u64> = store
        .events_after(&alice, Seq::ZERO, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq.get())
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_its_caller_gives_up_on_does_not_hand_its_connection_on() {
    let (store, url) = support::fresh_store(one_connection(Duration::from_secs(60))).await;
    let alice = UserId::generate();
    let (run, thread) = (RunId::generate(), ThreadId::generate());
    append(&store, entry(&alice, &run, &thread, started(), None)).await;

    let lock = lock_log_of(&url, &alice).await;
    let batch = [entry(&alice, &run, &thread, started(), None)];
    let given_up = tokio::time::timeout(Duration::from_millis(200), store.append_events(&batch)).await;
    assert!(given_up.is_err(), "the append waits for the lock");
    // The query deadline is a minute: had the dropped append's connection gone back to the
    // pool, this would wait behind it until the lock is released, below.
    tokio::time::timeout(Duration::from_secs(30), store.ping())
        .await
        .expect("the store answers while the given-up append would still wait")
        .unwrap();
    // And its query is cancelled on the server (by a request sent in the background once it
    // was dropped): had it still waited when the lock goes, it would store its event.
    let watcher = support::raw_connection(&url).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while support::waiting_on_a_lock(&watcher).await > 0 {}
    })
    .await
    .expect("the given-up append was cancelled on the server");
    lock.batch_execute("COMMIT").await.unwrap();
    assert_eq!(append(&store, entry(&alice, &run, &thread, started(), None)).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_server_is_gone_is_unavailable_not_stuck() {
    let (store, url) = support::fresh_store(one_connection(Duration::from_secs(5))).await;
    store.ping().await.unwrap();
    // Ends the store's connection from the server's side, as a restart or a failover would.
    let raw = support::raw_connection(&url).await;
    let ended: bool = raw
        .query_one(
            "SELECT bool_and(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'switchboard'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    // The pool notices the closed connection and opens another: the next operations work,
    // whichever one first meets the closed connection.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(store.ping().await);
    }
    assert!(
        outcomes
            .iter()
            .all(|o| o.is_ok() || o.as_ref().is_err_and(StoreError::is_unavailable)),
        "{outcomes:?}"
    );
    assert!(outcomes.last().unwrap().is_ok(), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_off_behind_a_stalled_network_does_not_hold_the_log_for_long() {
    let url = support::fresh_database().await;
    let config = tokio_postgres::Config::from_str(&url).unwrap();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let (user, database) = (config.get_user().unwrap(), config.get_dbname().unwrap());
    // Another server, reaching the database directly, with all the time it may need.
    let direct = PgStore::connect(
        &url,
        PgOptions {
            query_timeout: Duration::from_secs(30),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let alice = UserId::generate();
    let accepted = direct
        .accept_message(new_message(&alice, None, "question", None))
        .await
        .unwrap();
    let (run, thread) = (accepted.run_id, accepted.thread_id);
    assert_eq!(append(&direct, entry(&alice, &run, &thread, started(), None)).await, 1);

    // This one's network stalls once its run-ending append has reached the server: no answer
    // comes back. The append (events, the run's end, the answer) is one statement, so the
    // server runs and commits it whatever the client's network does, and holds no transaction
    // open for the client: alice's log row is free at once.
    let (proxy, armed) = support::stalling_proxy(format!("127.0.0.1:{port}"), b"lost", support::Stall::After).await;
    let cut_off = PgStore::connect(
        // In the clear, so that the proxy sees the statement it stalls on.
        &format!("host=127.0.0.1 port={proxy} user={user} dbname={database} sslmode=disable"),
        one_connection(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    // Its statements prepared first, so that the stalled message is the one that runs it.
    let bob = UserId::generate();
    let warm = cut_off
        .accept_message(new_message(&bob, None, "question", None))
        .await
        .unwrap();
    let warm_end = entry(
        &bob,
        &warm.run_id,
        &warm.thread_id,
        finished(RunStatus::Completed, Some("fine")),
        Some("fine"),
    );
    assert_eq!(cut_off.append_events(&[warm_end]).await.unwrap().len(), 1);
    armed.store(true, Ordering::SeqCst);
    let end = entry(
        &alice,
        &run,
        &thread,
        finished(RunStatus::Completed, Some("lost")),
        Some("lost"),
    );
    let outcome = cut_off.append_events(&[end]).await;
    assert!(matches!(outcome, Err(StoreError::TimedOut { .. })), "{outcome:?}");

    // The other server's append takes the row at once, after the cut-off one, which was stored
    // whole: its event, the run's end and the answer.
    let started_at = std::time::Instant::now();
    assert_eq!(
        append(&direct, entry(&alice, &run, &thread, started(), None)).await,
        3,
        "the cut-off append was stored"
    );
    assert!(
        started_at.elapsed() < Duration::from_millis(500),
        "the log row was held for {:?}",
        started_at.elapsed()
    );
    let record = direct.run(&alice, &run).await.unwrap().unwrap();
    assert_eq!(
        record.state,
        RunState::Finished(RunStatus::Completed),
        "and finished the run"
    );
    let messages = direct.messages(&alice, &thread).await.unwrap();
    assert_eq!(messages.last().map(|m| m.text.as_str()), Some("lost"));
}

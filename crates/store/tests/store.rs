//! The storage suite. Every backend must pass it; `suite` takes the store as `dyn Store`.

use std::sync::Arc;

use serde_json::json;
use switchboard_protocol::{
    AgentCompleted, AgentName, AgentStarted, EventPayload, LogEntry, MessageId, ModelCallUsage, NewEvent, Role, RunEnd,
    RunId, RunStatus, RunTimings, Seq, ThreadId, Timestamp, TraceId, UserId,
};
use switchboard_store::{
    Accepted, NewMessage, RefreshFamilyId, RefreshTokenId, Rotation, RunState, SqliteStore, Store, StoreError,
};

/// An event for `user`'s log; a final payload comes with the run's end (and `answer`).
fn entry(user: &UserId, run: &RunId, thread: &ThreadId, payload: EventPayload, answer: Option<&str>) -> LogEntry {
    let event = NewEvent {
        run_id: run.clone(),
        thread_id: thread.clone(),
        agent_name: AgentName::supervisor(),
        timestamp: Timestamp::now(),
        trace_id: TraceId::generate(),
        payload,
    };
    LogEntry::new(user.clone(), event, answer.map(str::to_owned))
}

/// Appends one entry; returns its seq.
async fn append(store: &dyn Store, entry: LogEntry) -> u64 {
    let stored = store.append_events(&[entry]).await.unwrap();
    assert_eq!(stored.len(), 1);
    stored[0].record.seq.get()
}

fn started() -> EventPayload {
    EventPayload::AgentStarted(AgentStarted { task: "t".into() })
}

fn finished(status: RunStatus, text: Option<&str>) -> EventPayload {
    EventPayload::AgentCompleted(AgentCompleted {
        status,
        duration_ms: 1200,
        result: text.map(|t| json!({"text": t})),
        is_final: true,
        timings: Some(RunTimings {
            total_ms: 1200,
            ..RunTimings::default()
        }),
        missing: Vec::new(),
        model_calls: vec![model_call()],
    })
}

fn model_call() -> ModelCallUsage {
    ModelCallUsage {
        agent: AgentName::parse("reporting").unwrap(),
        model: "gpt-4o-mini".into(),
        input_tokens: 120,
        output_tokens: 30,
        cost_usd: Some(0.000036),
        duration_ms: 900,
        success: true,
    }
}

fn new_message(user: &UserId, thread: Option<ThreadId>, text: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        user_id: user.clone(),
        thread_id: thread,
        text: text.into(),
        client_message_id: client_id.map(Into::into),
        message_id: MessageId::generate(),
        run_id: RunId::generate(),
    }
}

async fn users(store: &dyn Store) {
    let alice = store.create_user("Alice@Example.com", "hash").await.unwrap();
    assert_eq!(alice.email, "alice@example.com");
    assert!(matches!(
        store.create_user("alice@example.COM", "x").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.user_by_email("ALICE@example.com").await.unwrap().unwrap().id,
        alice.id
    );
    assert_eq!(store.user_by_id(&alice.id).await.unwrap().unwrap().email, alice.email);
    assert!(store.user_by_email("nobody@example.com").await.unwrap().is_none());
}

async fn threads_and_messages(store: &dyn Store) {
    let alice = UserId::generate();
    let bob = UserId::generate();
    let first = store
        .accept_message(new_message(&alice, None, "How can we cut costs?\nmore", Some("c1")))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let thread = store.thread(&alice, &first.thread_id).await.unwrap().unwrap();
    assert_eq!(thread.title, "How can we cut costs?");
    let again = store
        .accept_message(new_message(&alice, None, "different text", Some("c1")))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.run_id.clone(), again.thread_id.clone()),
        (first.run_id.clone(), first.thread_id.clone())
    );
    let same_key_other_user = store
        .accept_message(new_message(&bob, None, "hi", Some("c1")))
        .await
        .unwrap();
    assert!(!same_key_other_user.duplicate, "idempotency keys are per user");
    let second = store
        .accept_message(new_message(&alice, Some(first.thread_id.clone()), "and latency?", None))
        .await
        .unwrap();
    assert_eq!(second.thread_id, first.thread_id);
    let foreign = store
        .accept_message(new_message(&bob, Some(first.thread_id.clone()), "sneaky", None))
        .await;
    assert!(matches!(foreign, Err(StoreError::NotFound(_))));
    assert!(store.thread(&bob, &first.thread_id).await.unwrap().is_none());
    assert!(matches!(
        store.messages(&bob, &first.thread_id).await,
        Err(StoreError::NotFound(_))
    ));
    let texts: Vec<String> = store
        .messages(&alice, &first.thread_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["How can we cut costs?\nmore", "and latency?"]);

    let run = store.run(&alice, &first.run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Running);
    assert!(store.run(&bob, &first.run_id).await.unwrap().is_none());

    let empty = store.create_thread(&alice, "").await.unwrap();
    assert_eq!(empty.title, "New thread");
    let listed: Vec<ThreadId> = store.threads(&alice).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(listed.len(), 2);
    assert!(store.threads(&bob).await.unwrap().iter().all(|t| t.user_id == bob));
    assert!(!store.delete_thread(&bob, &first.thread_id).await.unwrap());
    assert!(store.delete_thread(&alice, &first.thread_id).await.unwrap());
    assert!(store.thread(&alice, &first.thread_id).await.unwrap().is_none());

    assert!(!second.created_thread && first.created_thread);
    store
        .discard_run(&alice, &second.run_id, second.created_thread)
        .await
        .unwrap();
    assert!(store.run(&alice, &second.run_id).await.unwrap().is_none());
    let lone = store
        .accept_message(new_message(&alice, None, "refused", None))
        .await
        .unwrap();
    store
        .discard_run(&alice, &lone.run_id, lone.created_thread)
        .await
        .unwrap();
    assert!(
        store.thread(&alice, &lone.thread_id).await.unwrap().is_none(),
        "the thread it created went too"
    );
}

async fn event_log(store: &dyn Store) {
    let alice = UserId::generate();
    let bob = UserId::generate();
    let accepted = store
        .accept_message(new_message(&alice, None, "question", None))
        .await
        .unwrap();
    let (run, thread) = (accepted.run_id.clone(), accepted.thread_id.clone());
    assert_eq!(store.last_seq(&alice).await.unwrap(), Seq::ZERO);
    assert!(store.append_events(&[]).await.unwrap().is_empty());
    assert_eq!(append(store, entry(&alice, &run, &thread, started(), None)).await, 1);
    // One batch, two users: each user's seqs follow on from its own log, in the order given.
    let entries = [
        entry(&bob, &run, &thread, started(), None),
        entry(&alice, &run, &thread, started(), None),
        entry(&bob, &run, &thread, started(), None),
    ];
    let batch = store.append_events(&entries).await.unwrap();
    let seqs: Vec<(UserId, u64)> = batch.iter().map(|s| (s.user_id.clone(), s.record.seq.get())).collect();
    assert_eq!(seqs, [(bob.clone(), 1), (alice.clone(), 2), (bob.clone(), 2)]);
    assert_eq!(
        batch[1].record.event().unwrap(),
        entries[1].event.clone().numbered(Seq::new(2)),
        "the JSON is the event as numbered"
    );
    assert_eq!(
        store
            .running_runs()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.id == run)
            .count(),
        1,
        "events without the run's end leave it running"
    );
    let done = finished(RunStatus::Completed, Some("**Answer**"));
    assert_eq!(
        append(store, entry(&alice, &run, &thread, done, Some("**Answer**"))).await,
        3
    );
    assert_eq!(store.last_seq(&alice).await.unwrap(), Seq::new(3));
    assert_eq!(store.last_seq(&bob).await.unwrap(), Seq::new(2));

    let record = store.run(&alice, &run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Finished(RunStatus::Completed));
    assert_eq!(record.duration_ms, Some(1200));
    assert_eq!(record.timings.unwrap().total_ms, 1200);
    assert_eq!(record.model_calls, [model_call()]);
    assert!(store.running_runs().await.unwrap().iter().all(|r| r.id != run));
    let messages = store.messages(&alice, &thread).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        (messages[1].role, messages[1].text.as_str()),
        (Role::Assistant, "**Answer**")
    );
    assert_eq!(messages[1].run_id.as_ref(), Some(&run));

    let all = store.events_after(&alice, Seq::ZERO, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all[2].event().unwrap().seq, Seq::new(3));
    let page = store.events_after(&alice, Seq::new(1), 1).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [2]);
    assert!(store.events_after(&alice, Seq::new(3), 10).await.unwrap().is_empty());
    assert_eq!(store.run_events(&alice, &run).await.unwrap().len(), 3);
    assert!(store.run_events(&bob, &RunId::generate()).await.unwrap().is_empty());

    // The run's record comes from the end handed with the final event, not from its JSON.
    let failed = store
        .accept_message(new_message(&alice, Some(thread.clone()), "again", None))
        .await
        .unwrap();
    let mut gave_up = entry(&alice, &failed.run_id, &thread, finished(RunStatus::Failed, None), None);
    gave_up.end = Some(RunEnd {
        status: RunStatus::TimedOut,
        duration_ms: 61_000,
        timings: None,
        model_calls: Vec::new(),
        missing: vec![
            AgentName::parse("data").unwrap(),
            AgentName::parse("reporting").unwrap(),
        ],
        answer: Some("not stored: the run did not complete".into()),
    });
    append(store, gave_up).await;
    let record = store.run(&alice, &failed.run_id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.duration_ms, record.model_calls.len()),
        (RunState::Finished(RunStatus::TimedOut), Some(61_000), 0)
    );
    let missing: Vec<&str> = record.missing.iter().map(AgentName::as_str).collect();
    assert_eq!(missing, ["data", "reporting"]);
    assert_eq!(
        store.messages(&alice, &thread).await.unwrap().len(),
        3,
        "a run that did not complete stores no answer"
    );
    store.ping().await.unwrap();
}

/// Writers racing for one user's log (tasks on `store`, and on `other`, a second handle on the
/// same database, as another server process would hold) get consecutive seqs, never one twice.
async fn racing_writers(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let user = UserId::generate();
    let (run, thread) = (RunId::generate(), ThreadId::generate());
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let store = Arc::clone(if writer % 2 == 0 { &store } else { &other });
        let (user, run, thread) = (user.clone(), run.clone(), thread.clone());
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for _ in 0..10 {
                let batch: Vec<LogEntry> = (0..3).map(|_| entry(&user, &run, &thread, started(), None)).collect();
                let stored = store.append_events(&batch).await.unwrap();
                let mine: Vec<u64> = stored.iter().map(|s| s.record.seq.get()).collect();
                assert!(
                    mine.windows(2).all(|w| w[1] == w[0] + 1),
                    "a batch is consecutive: {mine:?}"
                );
                seqs.extend(mine);
            }
            seqs
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=240).collect::<Vec<_>>(), "every seq once, none skipped");
    let stored = store.events_after(&user, Seq::ZERO, 1000).await.unwrap();
    assert_eq!(stored.len(), 240);
    assert_eq!(other.last_seq(&user).await.unwrap(), Seq::new(240));
}

fn refresh_token(id: &str) -> RefreshTokenId {
    RefreshTokenId::parse(id).unwrap()
}

fn refresh_family(id: &str) -> RefreshFamilyId {
    RefreshFamilyId::parse(id).unwrap()
}

async fn refresh_rotation(store: &dyn Store) {
    let ann = store.create_user("ann.refresh@example.com", "hash").await.unwrap().id;
    let bob = store.create_user("bob.refresh@example.com", "hash").await.unwrap().id;
    let (chain, other) = (refresh_family("fam-chain"), refresh_family("fam-other"));
    let rotate = |user: &UserId, family: &RefreshFamilyId, presented: &str, next: &str| {
        let (user, family) = (user.clone(), family.clone());
        let (presented, next) = (refresh_token(presented), refresh_token(next));
        async move {
            store
                .rotate_refresh_token(&user, &family, &presented, &next)
                .await
                .unwrap()
        }
    };
    store
        .start_refresh_family(&ann, &chain, &refresh_token("t1"))
        .await
        .unwrap();
    store
        .start_refresh_family(&ann, &other, &refresh_token("o1"))
        .await
        .unwrap();
    assert!(matches!(
        store.start_refresh_family(&bob, &chain, &refresh_token("x")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .start_refresh_family(&UserId::generate(), &refresh_family("fam-nobody"), &refresh_token("x"))
            .await,
        Err(StoreError::NotFound(_))
    ));

    assert_eq!(rotate(&ann, &chain, "t1", "t2").await, Rotation::Rotated);
    assert_eq!(rotate(&ann, &chain, "t2", "t3").await, Rotation::Rotated);
    assert_eq!(
        rotate(&bob, &chain, "t3", "b1").await,
        Rotation::Unknown,
        "another user's family is not found"
    );
    assert_eq!(
        rotate(&ann, &refresh_family("fam-never"), "t3", "t4").await,
        Rotation::Unknown
    );
    assert_eq!(
        rotate(&ann, &chain, "t1", "t4").await,
        Rotation::Reused,
        "a spent token revokes its family"
    );
    assert_eq!(
        rotate(&ann, &chain, "t3", "t4").await,
        Rotation::Revoked,
        "the family's newest token is refused after a reuse"
    );
    assert_eq!(rotate(&ann, &chain, "t1", "t5").await, Rotation::Revoked);
    assert_eq!(
        rotate(&ann, &other, "o1", "o2").await,
        Rotation::Rotated,
        "another family of the same user is untouched"
    );

    // A sign-out revokes its family; another user cannot revoke it.
    assert!(!store.revoke_refresh_family(&bob, &other).await.unwrap());
    assert_eq!(rotate(&ann, &other, "o2", "o3").await, Rotation::Rotated);
    assert!(store.revoke_refresh_family(&ann, &other).await.unwrap());
    assert_eq!(rotate(&ann, &other, "o3", "o4").await, Rotation::Revoked);
    assert!(
        store.revoke_refresh_family(&ann, &other).await.unwrap(),
        "revoking twice is no error"
    );
    assert!(
        !store
            .revoke_refresh_family(&ann, &refresh_family("fam-never"))
            .await
            .unwrap()
    );
}

async fn concurrent_rotations(store: Arc<dyn Store>) {
    let user = store.create_user("cat.refresh@example.com", "hash").await.unwrap().id;
    let family = refresh_family("fam-race");
    store
        .start_refresh_family(&user, &family, &refresh_token("r0"))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=8 {
        let (store, user, family) = (Arc::clone(&store), user.clone(), family.clone());
        tasks.spawn(async move {
            let next = refresh_token(&format!("r{i}"));
            store
                .rotate_refresh_token(&user, &family, &refresh_token("r0"), &next)
                .await
                .unwrap()
        });
    }
    let outcomes = tasks.join_all().await;
    let won = outcomes.iter().filter(|o| **o == Rotation::Rotated).count();
    assert_eq!(won, 1, "exactly one rotation wins: {outcomes:?}");
    assert!(outcomes.contains(&Rotation::Reused), "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Rotation::Rotated | Rotation::Reused | Rotation::Revoked)),
        "{outcomes:?}"
    );
}

/// Messages sent at once (which a backend may store in one transaction): each is stored or
/// refused on its own, and a repeated `client_message_id` is stored once.
async fn concurrent_messages(store: Arc<dyn Store>) {
    let (ann, eve) = (UserId::generate(), UserId::generate());
    let eves = store
        .accept_message(new_message(&eve, None, "mine", None))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (store, ann) = (Arc::clone(&store), ann.clone());
        let eves_thread = eves.thread_id.clone();
        tasks.spawn(async move {
            let message = match i % 3 {
                0 => new_message(&ann, None, &format!("question {i}"), None),
                1 => new_message(&ann, None, "again and again", Some("same-key")),
                _ => new_message(&ann, Some(eves_thread), "into eve's thread", None),
            };
            (i % 3, store.accept_message(message).await)
        });
    }
    let results = tasks.join_all().await;
    let of = |kind: usize| results.iter().filter(move |(k, _)| *k == kind).map(|(_, r)| r);
    assert!(of(0).all(|r| r.as_ref().is_ok_and(|a| !a.duplicate && a.created_thread)));
    let repeated: Vec<&Accepted> = of(1).map(|r| r.as_ref().unwrap()).collect();
    assert_eq!(
        repeated.iter().filter(|a| !a.duplicate).count(),
        1,
        "one stored, the rest repeats"
    );
    assert!(repeated.iter().all(|a| a.run_id == repeated[0].run_id));
    assert!(
        of(2).all(|r| matches!(r, Err(StoreError::NotFound(_)))),
        "another user's thread is refused"
    );
    assert_eq!(store.threads(&ann).await.unwrap().len(), 11);
    assert_eq!(store.threads(&eve).await.unwrap().len(), 1);
    assert_eq!(store.messages(&eve, &eves.thread_id).await.unwrap().len(), 1);
}

/// `other` is a second handle on the same database (as a second server process holds).
async fn suite(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    users(store.as_ref()).await;
    threads_and_messages(store.as_ref()).await;
    event_log(store.as_ref()).await;
    racing_writers(Arc::clone(&store), other).await;
    concurrent_messages(Arc::clone(&store)).await;
    refresh_rotation(store.as_ref()).await;
    concurrent_rotations(Arc::clone(&store)).await;
}

#[tokio::test]
async fn the_sqlite_store_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let other = Arc::new(SqliteStore::open(&path).await.unwrap());
    suite(store, other).await;
}

#[tokio::test]
async fn the_sqlite_store_keeps_everything_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let alice = UserId::generate();
    let accepted = {
        let store = SqliteStore::open(&path).await.unwrap();
        let accepted = store
            .accept_message(new_message(&alice, None, "hello", Some("k")))
            .await
            .unwrap();
        append(
            &store,
            entry(&alice, &accepted.run_id, &accepted.thread_id, started(), None),
        )
        .await;
        accepted
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(&alice).await.unwrap(), Seq::new(1));
    assert_eq!(store.running_runs().await.unwrap()[0].id, accepted.run_id);
    let again = store
        .accept_message(new_message(&alice, None, "hello", Some("k")))
        .await
        .unwrap();
    assert!(again.duplicate);
    let found = store.message_by_client_id(&alice, "k").await.unwrap().unwrap();
    assert_eq!(
        (found.run_id, found.thread_id),
        (Some(accepted.run_id), accepted.thread_id)
    );
    assert!(store.message_by_client_id(&alice, "other").await.unwrap().is_none());
    assert!(
        store
            .message_by_client_id(&UserId::generate(), "k")
            .await
            .unwrap()
            .is_none(),
        "another user's id is not found"
    );
}

#[tokio::test]
async fn a_database_of_schema_2_is_brought_up_to_date_and_keeps_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let alice = UserId::generate();
    let accepted = {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .accept_message(new_message(&alice, None, "hello", None))
            .await
            .unwrap()
    };
    // Back to schema 2, as a server of that version left it: no `runs.model_calls` (schema 3)
    // and no `runs.missing` (schema 7).
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE runs DROP COLUMN model_calls; ALTER TABLE runs DROP COLUMN missing; PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let (run, thread) = (accepted.run_id.clone(), accepted.thread_id.clone());
    assert_eq!(store.running_runs().await.unwrap()[0].id, run);
    assert!(store.running_runs().await.unwrap()[0].missing.is_empty());
    append(&store, entry(&alice, &run, &thread, started(), None)).await;
    let EventPayload::AgentCompleted(mut done) = finished(RunStatus::Completed, Some("done")) else {
        unreachable!()
    };
    done.missing = vec![AgentName::parse("optimization").unwrap()];
    let done = EventPayload::AgentCompleted(done);
    append(&store, entry(&alice, &run, &thread, done, Some("done"))).await;
    let record = store.run(&alice, &run).await.unwrap().unwrap();
    assert_eq!(record.model_calls, [model_call()]);
    assert_eq!(record.missing, [AgentName::parse("optimization").unwrap()]);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 7);
}

#[tokio::test]
async fn a_database_of_schema_5_keeps_its_event_log_in_the_order_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let (run, thread) = (RunId::generate(), ThreadId::generate());
    {
        let store = SqliteStore::open(&path).await.unwrap();
        for user in [&ann, &bob, &ann] {
            append(&store, entry(user, &run, &thread, started(), None)).await;
        }
    }
    // Back to schema 5, as a server of that version left it: events clustered by user and seq.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE old (user_id TEXT NOT NULL, seq INTEGER NOT NULL, run_id TEXT NOT NULL,
                 json TEXT NOT NULL, PRIMARY KEY (user_id, seq)) WITHOUT ROWID;
             INSERT INTO old SELECT user_id, seq, run_id, json FROM events;
             DROP TABLE events;
             ALTER TABLE old RENAME TO events;
             CREATE INDEX events_by_run ON events (run_id);
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(&ann).await.unwrap(), Seq::new(2));
    assert_eq!(append(&store, entry(&ann, &run, &thread, started(), None)).await, 3);
    assert_eq!(append(&store, entry(&bob, &run, &thread, started(), None)).await, 2);
    let anns = store.events_after(&ann, Seq::ZERO, 10).await.unwrap();
    assert_eq!(anns.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(anns[0].event().unwrap().seq, Seq::new(1));
    assert_eq!(store.run_events(&bob, &run).await.unwrap().len(), 2);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (version, sql): (i64, String) = (
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap(),
        conn.query_row("SELECT sql FROM sqlite_master WHERE name = 'events'", [], |r| r.get(0))
            .unwrap(),
    );
    assert_eq!(version, 7);
    assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
}

#[tokio::test]
async fn a_database_of_schema_3_gains_refresh_families_and_keeps_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let ann = {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_user("ann@example.com", "hash").await.unwrap()
    };
    // Back to schema 3, as a server of that version left it: no `refresh_families`.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE refresh_families; PRAGMA user_version = 3;")
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.user_by_email("ann@example.com").await.unwrap().map(|u| u.id),
        Some(ann.id.clone())
    );
    let family = refresh_family("fam-upgraded");
    store
        .start_refresh_family(&ann.id, &family, &refresh_token("t1"))
        .await
        .unwrap();
    let rotation = store
        .rotate_refresh_token(&ann.id, &family, &refresh_token("t1"), &refresh_token("t2"))
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 7);
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 8).unwrap();
    }
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(error.to_string().contains("newer than this server's 7"), "{error}");
}

/// Puts back the workload table of schema 2 to 4 into the chat file at `path`, with `rows` calls
/// of `user`, as a server of that version left it.
fn legacy_workload_rows(path: &std::path::Path, user: &UserId, rows: usize) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE workload_events (user_id TEXT NOT NULL, ts INTEGER NOT NULL, model TEXT NOT NULL,
         provider TEXT, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, latency_ms REAL,
         status TEXT NOT NULL, feature TEXT, prompt_hash TEXT, cost_usd REAL NOT NULL, batch INTEGER NOT NULL);
         CREATE INDEX workload_by_user_time ON workload_events (user_id, ts);
         PRAGMA user_version = 4;",
    )
    .unwrap();
    for row in 0..rows {
        conn.execute(
            "INSERT INTO workload_events VALUES (?1, ?2, 'gpt-4o', NULL, 100, 10, 250.0, 'ok', 'search', NULL, 0.01, 0)",
            rusqlite::params![user.to_string(), 1_793_000_000_000_i64 + row as i64],
        )
        .unwrap();
    }
}

fn has_workload_table(path: &std::path::Path) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'workload_events'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

#[tokio::test]
async fn workload_rows_of_schema_4_move_to_their_own_file_once_even_when_a_move_was_cut_short() {
    use switchboard_store::AnalyticsStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let ann = UserId::generate();
    drop(SqliteStore::open(&path).await.unwrap());
    std::fs::remove_file(dir.path().join("db-workload.sqlite")).unwrap();
    legacy_workload_rows(&path, &ann, 3);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.workload_event_count(&ann).await.unwrap(), 3);
    drop(store);
    assert!(!has_workload_table(&path), "the chat file keeps no workload rows");
    assert!(dir.path().join("db-workload.sqlite").exists());

    // A move that copied the rows but stopped before dropping them from the chat file.
    legacy_workload_rows(&path, &ann, 3);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.workload_event_count(&ann).await.unwrap(),
        3,
        "nothing copied twice"
    );
    drop(store);
    assert!(!has_workload_table(&path));
}

#[tokio::test]
async fn a_workload_file_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(dir.path().join("db-workload.sqlite")).unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
    }
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("workload database has schema version 5, newer than this server's 4"),
        "{error}"
    );
}

#[tokio::test]
async fn the_refresh_families_of_a_deleted_user_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let ann = {
        let store = SqliteStore::open(&path).await.unwrap();
        let ann = store.create_user("ann@example.com", "hash").await.unwrap();
        store
            .start_refresh_family(&ann.id, &refresh_family("fam-gone"), &refresh_token("t1"))
            .await
            .unwrap();
        ann
    };
    // The store has no way to delete a user yet; the schema's cascade is what this checks
    // (foreign keys are enforced per connection, as the store's own connection does).
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute("DELETE FROM users WHERE id = ?1", [ann.id.as_str()])
            .unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM refresh_families", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let rotation = store
        .rotate_refresh_token(
            &ann.id,
            &refresh_family("fam-gone"),
            &refresh_token("t1"),
            &refresh_token("t2"),
        )
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Unknown);
}

#[tokio::test]
async fn opening_a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    std::fs::write(&path, "this is not sqlite, just text that fills the header and more of it ....................................................").unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(error.to_string().contains("not a database"), "{error}");
}

mod workload {
    use switchboard_protocol::{Timestamp, UserId};
    use switchboard_store::{
        AnalyticsStore, CallFigures, CallStatus, EARLIEST_CALL_MS, HourUsage, LATEST_CALL_MS, MAX_CALL_COST_USD,
        MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS, PERCENTILE_RELATIVE_ERROR, SqliteStore, SummaryBuilder, TimeRange,
        WorkloadEvent, nearest_rank,
    };

    fn call(
        at: &str,
        model: &str,
        feature: Option<&str>,
        tokens: (u64, u64),
        latency: Option<f64>,
        error: bool,
        cost: f64,
    ) -> WorkloadEvent {
        WorkloadEvent {
            timestamp: Timestamp::parse(at).unwrap(),
            model: model.into(),
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            provider: Some("openai".into()),
            latency_ms: latency,
            status: if error { CallStatus::Error } else { CallStatus::Ok },
            feature: feature.map(Into::into),
            prompt_hash: None,
            cost_usd: cost,
            batch: false,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Whether a percentile is the sketch's estimate of `exact`: within its relative error.
    fn estimates(estimate: Option<f64>, exact: f64) -> bool {
        estimate.is_some_and(|e| (e - exact).abs() <= PERCENTILE_RELATIVE_ERROR * exact)
    }

    /// Five calls whose figures are worked out by hand below.
    fn calls() -> Vec<WorkloadEvent> {
        vec![
            call(
                "2026-11-01T10:00:00Z",
                "gpt-4o",
                Some("search"),
                (1000, 100),
                Some(100.0),
                false,
                0.50,
            ),
            call(
                "2026-11-01T10:30:00Z",
                "gpt-4o",
                Some("search"),
                (2000, 200),
                Some(300.0),
                true,
                1.00,
            ),
            call(
                "2026-11-01T11:00:00Z",
                "gpt-4o",
                Some("chat"),
                (500, 50),
                Some(200.0),
                false,
                0.25,
            ),
            call(
                "2026-11-01T23:00:00Z",
                "gpt-4o-mini",
                Some("chat"),
                (100, 10),
                Some(50.0),
                false,
                0.01,
            ),
            call(
                "2026-11-02T10:15:00Z",
                "gpt-4o-mini",
                None,
                (100, 10),
                None,
                false,
                0.02,
            ),
        ]
    }

    #[tokio::test]
    async fn aggregates_match_figures_computed_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        let (user, other) = (UserId::generate(), UserId::generate());
        assert_eq!(store.insert_workload_events(&user, calls()).await.unwrap(), 5);
        let noise = vec![call(
            "2026-11-01T10:00:00Z",
            "gpt-4o",
            Some("search"),
            (9, 9),
            Some(9999.0),
            true,
            99.0,
        )];
        store.insert_workload_events(&other, noise).await.unwrap();
        let all = TimeRange::default();

        let summary = store.workload_summary(&user, all).await.unwrap();
        let totals = summary.totals.clone();
        let u = &totals.usage;
        assert_eq!((u.calls, u.errors, u.input_tokens, u.output_tokens), (5, 1, 3700, 370));
        assert!(close(u.cost_usd, 1.78), "{}", u.cost_usd);
        // Latencies 50, 100, 200, 300: p50 at rank ceil(2.0) = 2 (estimated within 1 %), p95 at
        // rank ceil(3.8) = 4, the largest (known exactly, as is the smallest).
        assert!(estimates(u.p50_latency_ms, 100.0), "{:?}", u.p50_latency_ms);
        assert_eq!(u.p95_latency_ms, Some(300.0));
        assert_eq!(totals.first.unwrap().to_string(), "2026-11-01T10:00:00.000Z");
        assert_eq!(totals.last.unwrap().to_string(), "2026-11-02T10:15:00.000Z");

        let models = summary.by_model.clone();
        let row = |key: &str| models.iter().find(|m| m.key.as_deref() == Some(key)).unwrap().clone();
        let (big, mini) = (row("gpt-4o"), row("gpt-4o-mini"));
        assert_eq!(models[0].key.as_deref(), Some("gpt-4o"), "most expensive first");
        assert_eq!(
            (big.calls, big.errors, big.input_tokens, big.output_tokens),
            (3, 1, 3500, 350)
        );
        assert!(close(big.cost_usd, 1.75));
        // 100, 200, 300: p50 rank ceil(1.5) = 2 (estimated), p95 rank ceil(2.85) = 3 (the largest).
        assert!(estimates(big.p50_latency_ms, 200.0), "{:?}", big.p50_latency_ms);
        assert_eq!(big.p95_latency_ms, Some(300.0));
        // One latency (the other call has none): both percentiles are it.
        assert_eq!(
            (mini.calls, mini.p50_latency_ms, mini.p95_latency_ms),
            (2, Some(50.0), Some(50.0))
        );
        assert!(close(mini.cost_usd, 0.03));

        let features = summary.by_feature.clone();
        let keys: Vec<Option<&str>> = features.iter().map(|f| f.key.as_deref()).collect();
        assert_eq!(keys, [Some("search"), Some("chat"), None]);
        assert_eq!(
            (
                features[0].calls,
                features[0].p50_latency_ms,
                features[0].p95_latency_ms
            ),
            (2, Some(100.0), Some(300.0))
        );
        assert_eq!(
            (
                features[1].calls,
                features[1].p50_latency_ms,
                features[1].p95_latency_ms
            ),
            (2, Some(50.0), Some(200.0))
        );
        assert!(close(features[1].cost_usd, 0.26));
        assert_eq!((features[2].calls, features[2].p50_latency_ms), (1, None));

        let hours = summary.hours.clone();
        let hours: Vec<(u8, u64, Option<f64>)> = hours
            .iter()
            .map(|h: &HourUsage| (h.hour, h.calls, h.p95_latency_ms))
            .collect();
        // 10:00 holds latencies 100 and 300 (the third call has none): p95 rank ceil(1.9) = 2.
        assert_eq!(hours, [(10, 3, Some(300.0)), (11, 1, Some(200.0)), (23, 1, Some(50.0))]);
        let hourly: Vec<(String, u64, u64, f64)> = summary
            .hourly
            .iter()
            .map(|b| {
                (
                    b.start.to_string(),
                    b.calls,
                    b.errors,
                    (b.cost_usd * 100.0).round() / 100.0,
                )
            })
            .collect();
        assert_eq!(
            hourly,
            [
                ("2026-11-01T10:00:00.000Z".to_owned(), 2, 1, 1.5),
                ("2026-11-01T11:00:00.000Z".to_owned(), 1, 0, 0.25),
                ("2026-11-01T23:00:00.000Z".to_owned(), 1, 0, 0.01),
                ("2026-11-02T10:00:00.000Z".to_owned(), 1, 0, 0.02)
            ]
        );

        let range = TimeRange {
            from: Some(Timestamp::parse("2026-11-01T10:15:00Z").unwrap()),
            to: Some(Timestamp::parse("2026-11-02T00:00:00Z").unwrap()),
        };
        let part = store.workload_summary(&user, range).await.unwrap().totals;
        assert_eq!((part.usage.calls, part.usage.errors), (3, 1));
        assert!(close(part.usage.cost_usd, 1.26));

        let empty = store.workload_summary(&UserId::generate(), all).await.unwrap();
        assert_eq!(
            (
                empty.totals.usage.calls,
                empty.totals.first,
                empty.totals.usage.p50_latency_ms
            ),
            (0, None, None)
        );
        assert!(empty.by_model.is_empty() && empty.hours.is_empty() && empty.hourly.is_empty());
        assert_eq!(store.workload_event_count(&user).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn the_savings_aggregates_match_figures_computed_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        let user = UserId::generate();
        let with = |mut event: WorkloadEvent, hash: &str| {
            event.prompt_hash = Some(hash.into());
            event
        };
        let calls = vec![
            with(
                call(
                    "2026-11-01T01:00:00Z",
                    "gpt-4o",
                    Some("nightly"),
                    (3000, 500),
                    None,
                    false,
                    0.02,
                ),
                "p1",
            ),
            with(
                call(
                    "2026-11-01T02:00:00Z",
                    "gpt-4o",
                    Some("nightly"),
                    (3000, 500),
                    None,
                    false,
                    0.02,
                ),
                "p1",
            ),
            with(
                call(
                    "2026-11-01T03:00:00Z",
                    "gpt-4o",
                    Some("nightly"),
                    (9000, 500),
                    None,
                    false,
                    0.04,
                ),
                "p2",
            ),
            with(
                call(
                    "2026-11-01T12:00:00Z",
                    "gpt-4o",
                    Some("chat"),
                    (400, 100),
                    None,
                    true,
                    0.005,
                ),
                "p1",
            ),
        ];
        store.insert_workload_events(&user, calls).await.unwrap();
        let o = store
            .workload_summary(&user, TimeRange::default())
            .await
            .unwrap()
            .opportunities;
        // p1 is called three times for 0.045: two repeats, two thirds of its cost.
        assert_eq!(o.repeated_prompt_calls, 2);
        assert!(
            close(o.repeated_prompt_cost_usd, 0.03),
            "{}",
            o.repeated_prompt_cost_usd
        );
        assert!(close(o.failed_cost_usd, 0.005));
        // Only the chat call is short (400 ≤ 1000 prompt tokens, 100 ≤ 300 answer tokens).
        assert_eq!(o.short_calls.len(), 1);
        assert_eq!((o.short_calls[0].0.as_str(), o.short_calls[0].1.calls), ("gpt-4o", 1));
        assert!(close(o.short_calls[0].1.cost_usd, 0.005));
        let nightly = &o.by_feature_model[0];
        assert_eq!(
            (nightly.feature.as_deref(), nightly.all.calls, nightly.off_hours.calls),
            (Some("nightly"), 3, 3)
        );
        assert!(close(nightly.off_hours.cost_usd, 0.08));
        assert_eq!(
            nightly.input_tokens_above_p95, 0,
            "the p95 of three prompts is the largest"
        );
        assert_eq!(
            (
                o.by_feature_model[1].feature.as_deref(),
                o.by_feature_model[1].off_hours.calls
            ),
            (Some("chat"), 0)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let cases: [(&[f64], usize, Option<f64>); 6] = [
            (&[], 50, None),
            (&[7.0], 95, Some(7.0)),
            (&[1.0, 2.0], 50, Some(1.0)),
            (&[1.0, 2.0], 95, Some(2.0)),
            (
                &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                50,
                Some(50.0),
            ),
            (
                &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                95,
                Some(100.0),
            ),
        ];
        for (values, percent, expected) in cases {
            assert_eq!(nearest_rank(values, percent), expected, "p{percent} of {values:?}");
        }
    }

    #[tokio::test]
    async fn stored_calls_with_figures_out_of_range_are_left_out_of_the_summary_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        let user = UserId::generate();
        let good = || {
            call(
                "2026-11-01T10:00:00Z",
                "gpt-4o",
                Some("search"),
                (1000, 100),
                Some(100.0),
                false,
                0.5,
            )
        };
        let with = |change: &dyn Fn(&mut WorkloadEvent)| {
            let mut event = good();
            change(&mut event);
            event
        };
        // Rows the upload would refuse, written directly as an older version or another
        // writer could have: each has one figure out of range.
        let absurd = vec![
            with(&|e| e.cost_usd = 1e308),
            with(&|e| e.cost_usd = f64::INFINITY),
            with(&|e| e.cost_usd = -1.0),
            with(&|e| e.cost_usd = MAX_CALL_COST_USD + 0.01),
            with(&|e| e.input_tokens = i64::MAX as u64),
            with(&|e| e.output_tokens = MAX_CALL_TOKENS + 1),
            with(&|e| e.latency_ms = Some(1e12)),
            with(&|e| e.latency_ms = Some(-5.0)),
            with(&|e| e.latency_ms = Some(f64::INFINITY)),
            with(&|e| e.timestamp = Timestamp::parse("1970-01-01T00:00:00Z").unwrap()),
            with(&|e| e.timestamp = Timestamp::parse("2200-06-01T00:00:00Z").unwrap()),
            with(&|e| e.model = "other".into()),
        ];
        let mut rows = absurd;
        // The last one is good (another model), and so are these at the very bounds.
        rows.push(with(&|e| {
            e.cost_usd = MAX_CALL_COST_USD;
            e.input_tokens = MAX_CALL_TOKENS;
            e.output_tokens = MAX_CALL_TOKENS;
            e.latency_ms = Some(MAX_CALL_LATENCY_MS);
        }));
        rows.push(with(&|e| {
            e.timestamp = Timestamp::from_unix_millis(EARLIEST_CALL_MS).unwrap()
        }));
        rows.push(with(&|e| {
            e.timestamp = Timestamp::from_unix_millis(LATEST_CALL_MS).unwrap()
        }));
        rows.push(good());
        store.insert_workload_events(&user, rows).await.unwrap();
        assert_eq!(
            store.workload_event_count(&user).await.unwrap(),
            16,
            "every row is stored"
        );

        let summary = store.workload_summary(&user, TimeRange::default()).await.unwrap();
        assert_eq!(summary.calls_left_out, 11);
        let u = &summary.totals.usage;
        assert_eq!(
            (u.calls, u.input_tokens, u.output_tokens),
            (5, 4 * 1000 + MAX_CALL_TOKENS, 4 * 100 + MAX_CALL_TOKENS)
        );
        assert!(close(u.cost_usd, 4.0 * 0.5 + MAX_CALL_COST_USD), "{}", u.cost_usd);
        assert_eq!(u.p95_latency_ms, Some(MAX_CALL_LATENCY_MS));
        assert_eq!(
            (
                summary.totals.first.unwrap().to_string(),
                summary.totals.last.unwrap().to_string()
            ),
            (
                "2000-01-01T00:00:00.000Z".to_owned(),
                "2100-12-31T23:59:59.999Z".to_owned()
            )
        );
        let models: Vec<(Option<&str>, u64)> = summary.by_model.iter().map(|m| (m.key.as_deref(), m.calls)).collect();
        assert_eq!(models, [(Some("gpt-4o"), 4), (Some("other"), 1)]);
        let hourly_calls: u64 = summary.hourly.iter().map(|b| b.calls).sum();
        let hourly_cost: f64 = summary.hourly.iter().map(|b| b.cost_usd).sum();
        assert_eq!(hourly_calls, 5);
        assert!(close(hourly_cost, u.cost_usd));
        assert!(close(summary.opportunities.failed_cost_usd, 0.0));
        assert!(
            summary.hours.iter().all(|h| h.cost_usd.is_finite())
                && summary.by_feature.iter().all(|f| f.cost_usd.is_finite()),
            "no figure is infinite: {summary:?}"
        );

        let none_left = SqliteStore::open(&dir.path().join("other.sqlite")).await.unwrap();
        none_left
            .insert_workload_events(&user, vec![with(&|e| e.cost_usd = 1e308)])
            .await
            .unwrap();
        let summary = none_left.workload_summary(&user, TimeRange::default()).await.unwrap();
        assert_eq!(
            (summary.calls_left_out, summary.totals.usage.calls, summary.totals.first),
            (1, 0, None)
        );
        assert!(summary.hourly.is_empty() && summary.by_model.is_empty());
    }

    #[test]
    fn the_summary_builder_leaves_out_figures_no_backend_could_store() {
        let call = |input_tokens: u64, latency_ms: Option<f64>, cost_usd: f64| CallFigures {
            at_ms: EARLIEST_CALL_MS,
            input_tokens,
            output_tokens: 1,
            latency_ms,
            error: true,
            cost_usd,
            batch: false,
        };
        let cases: [(CallFigures, bool); 9] = [
            (call(1, None, 0.0), true),
            (call(u64::MAX, None, 0.0), false),
            (call(1, Some(f64::NAN), 0.0), false),
            (call(1, Some(f64::NEG_INFINITY), 0.0), false),
            (call(1, None, f64::NAN), false),
            (call(1, None, f64::NEG_INFINITY), false),
            (call(1, None, -0.000_001), false),
            (
                CallFigures {
                    at_ms: i64::MIN,
                    ..call(1, None, 0.0)
                },
                false,
            ),
            (
                CallFigures {
                    at_ms: LATEST_CALL_MS + 1,
                    ..call(1, None, 0.0)
                },
                false,
            ),
        ];
        let mut builder = SummaryBuilder::default();
        for (figures, in_range) in cases {
            assert_eq!(figures.in_range(), in_range, "{figures:?}");
            builder.add("m", Some("f"), Some("p"), figures);
        }
        let summary = builder.finish().unwrap();
        assert_eq!((summary.calls_left_out, summary.totals.usage.calls), (8, 1));
        assert_eq!(summary.totals.usage.p95_latency_ms, None);
        assert!(summary.opportunities.failed_cost_usd == 0.0);
    }

    #[tokio::test]
    async fn an_upload_that_fails_halfway_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        let user = UserId::generate();
        let mut rows = calls();
        rows[3].input_tokens = u64::MAX; // cannot be stored as a SQLite integer
        assert!(store.insert_workload_events(&user, rows).await.is_err());
        assert_eq!(store.workload_event_count(&user).await.unwrap(), 0);
    }
}

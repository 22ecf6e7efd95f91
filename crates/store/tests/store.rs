//! The storage suite. Every backend must pass it; `suite` takes the store as `dyn Store`.

use std::sync::Arc;

use serde_json::json;
use switchboard_protocol::{
    AgentCompleted, AgentName, AgentStarted, Event, EventPayload, MessageId, Role, RunId, RunStatus, RunTimings, Seq,
    ThreadId, Timestamp, TraceId, UserId,
};
use switchboard_store::{NewMessage, RunState, SqliteStore, Store, StoreError};

fn event(seq: u64, run: &RunId, thread: &ThreadId, payload: EventPayload) -> Event {
    Event {
        seq: Seq::new(seq),
        run_id: run.clone(),
        thread_id: thread.clone(),
        agent_name: AgentName::supervisor(),
        timestamp: Timestamp::now(),
        trace_id: TraceId::generate(),
        payload,
    }
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
    })
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
    store
        .append_event(&alice, &event(1, &run, &thread, started()))
        .await
        .unwrap();
    let gap = store.append_event(&alice, &event(3, &run, &thread, started())).await;
    assert!(matches!(gap, Err(StoreError::Conflict(_))), "a gap is refused");
    let repeat = store.append_event(&alice, &event(1, &run, &thread, started())).await;
    assert!(matches!(repeat, Err(StoreError::Conflict(_))), "a duplicate is refused");
    store
        .append_event(&bob, &event(1, &run, &thread, started()))
        .await
        .unwrap();
    assert_eq!(
        store
            .running_runs()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.id == run)
            .count(),
        1
    );
    store
        .append_event(
            &alice,
            &event(2, &run, &thread, finished(RunStatus::Completed, Some("**Answer**"))),
        )
        .await
        .unwrap();
    assert_eq!(store.last_seq(&alice).await.unwrap(), Seq::new(2));
    assert_eq!(store.last_seq(&bob).await.unwrap(), Seq::new(1));

    let record = store.run(&alice, &run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Finished(RunStatus::Completed));
    assert_eq!(record.duration_ms, Some(1200));
    assert_eq!(record.timings.unwrap().total_ms, 1200);
    assert!(store.running_runs().await.unwrap().iter().all(|r| r.id != run));
    let messages = store.messages(&alice, &thread).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        (messages[1].role, messages[1].text.as_str()),
        (Role::Assistant, "**Answer**")
    );
    assert_eq!(messages[1].run_id.as_ref(), Some(&run));

    let all = store.events_after(&alice, Seq::ZERO, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(all[1].event().unwrap().seq, Seq::new(2));
    let page = store.events_after(&alice, Seq::new(1), 1).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [2]);
    assert!(store.events_after(&alice, Seq::new(2), 10).await.unwrap().is_empty());
    assert_eq!(store.run_events(&alice, &run).await.unwrap().len(), 2);
    assert!(store.run_events(&bob, &RunId::generate()).await.unwrap().is_empty());

    let failed = store
        .accept_message(new_message(&alice, Some(thread.clone()), "again", None))
        .await
        .unwrap();
    store
        .append_event(
            &alice,
            &event(3, &failed.run_id, &thread, finished(RunStatus::Failed, None)),
        )
        .await
        .unwrap();
    assert_eq!(
        store.messages(&alice, &thread).await.unwrap().len(),
        3,
        "a failed run stores no answer"
    );
    store.ping().await.unwrap();
}

async fn suite(store: Arc<dyn Store>) {
    users(store.as_ref()).await;
    threads_and_messages(store.as_ref()).await;
    event_log(store.as_ref()).await;
}

#[tokio::test]
async fn the_sqlite_store_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(
        SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap(),
    ))
    .await;
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
        store
            .append_event(&alice, &event(1, &accepted.run_id, &accepted.thread_id, started()))
            .await
            .unwrap();
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
}

#[tokio::test]
async fn opening_a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    std::fs::write(&path, "this is not sqlite, just text that fills the header and more of it ....................................................").unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(error.to_string().contains("not a database"), "{error}");
}

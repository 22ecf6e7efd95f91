//! The storage suite every backend passes, on PostgreSQL: two stores on one database stand for
//! two server processes.

mod support;

use std::sync::Arc;

use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{Role, RunStatus, Seq, UserId};
use switchboard_store::testsuite::{entry, finished, new_message, started};
use switchboard_store::{RunState, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_storage_suite() {
    let url = support::fresh_database().await;
    let store = Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    let other = Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    switchboard_store::testsuite::store(store, other).await;
}

/// The server sends an event's JSON as the store keeps it, so it must be the wire form of the
/// numbered event byte for byte, as stored and as `append_events` answers it: in a batch that
/// only appends (one statement) and in one that also ends a run (a transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_json_is_the_numbered_event_byte_for_byte() {
    let url = support::fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let accepted = store
        .accept_message(new_message(&ann, None, "question", None))
        .await
        .unwrap();
    let (run, thread) = (accepted.run_id, accepted.thread_id);
    let text = "Ünïcödé, \"quotes\", \\ and a tab\t: all escaped as serde_json writes them";
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
            finished(RunStatus::Completed, Some(text)),
            Some(text),
        ),
        entry(&bob, &run, &thread, started(), None),
    ];
    for batch in [appends, ends] {
        let answered = store.append_events(&batch).await.unwrap();
        for (entry, stored) in batch.iter().zip(&answered) {
            let wire = serde_json::to_string(&entry.event.clone().numbered(stored.record.seq)).unwrap();
            assert_eq!(stored.record.json, wire);
            let kept = store
                .events_after(&stored.user_id, Seq::new(stored.record.seq.get() - 1), 1)
                .await
                .unwrap();
            assert_eq!(kept, std::slice::from_ref(&stored.record));
        }
    }
    assert_eq!(store.last_seq(&ann).await.unwrap(), Seq::new(3));
    assert_eq!(store.last_seq(&bob).await.unwrap(), Seq::new(3));
    let record = store.run(&ann, &run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Finished(RunStatus::Completed));
    let answer = store.messages(&ann, &thread).await.unwrap().pop().unwrap();
    assert_eq!((answer.role, answer.text.as_str()), (Role::Assistant, text));
}

/// PostgreSQL's text cannot hold NUL, SQLite's can: a message, a title or an answer with one is
/// stored all the same, the NUL as U+FFFD, and found again by the key it was sent with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_a_nul_character_is_stored_with_a_replacement_character() {
    let url = support::fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let ann = UserId::generate();
    let accepted = store
        .accept_message(new_message(&ann, None, "a\0b", Some("key\0")))
        .await
        .unwrap();
    assert_eq!(accepted.message.text, "a\u{FFFD}b");
    let again = store
        .accept_message(new_message(&ann, None, "a\0b", Some("key\0")))
        .await
        .unwrap();
    assert!(again.duplicate);
    let found = store.message_by_client_id(&ann, "key\0").await.unwrap().unwrap();
    assert_eq!(found.id, accepted.message.id);
    let thread = store.thread(&ann, &accepted.thread_id).await.unwrap().unwrap();
    assert_eq!(thread.title, "a\u{FFFD}b");
    let answer = "the answer\0";
    let done = entry(
        &ann,
        &accepted.run_id,
        &accepted.thread_id,
        finished(RunStatus::Completed, Some(answer)),
        Some(answer),
    );
    store.append_events(&[done]).await.unwrap();
    let texts: Vec<String> = store
        .messages(&ann, &accepted.thread_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["a\u{FFFD}b", "the answer\u{FFFD}"]);
    let titled = store.create_thread(&ann, "x\0").await.unwrap();
    assert_eq!(titled.title, "x\u{FFFD}");
}

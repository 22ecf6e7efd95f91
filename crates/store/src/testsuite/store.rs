//! The storage suite: the cases every [`Store`] backend must pass, and the helpers they build
//! their data with (also used by a backend's own tests).

use std::sync::Arc;
use std::time::Duration;

use crate::{Accepted, NewMessage, RefreshFamilyId, RefreshTokenId, Rotation, RunState, Store, StoreError};
use serde_json::json;
use switchboard_protocol::{
    AgentCompleted, AgentName, AgentStarted, EventPayload, LogEntry, MessageId, ModelCallUsage, NewEvent, Role, RunEnd,
    RunId, RunStatus, RunTimings, Seq, ThreadId, Timestamp, TraceId, UserId,
};

/// An event for `user`'s log; a final payload comes with the run's end (and `answer`).
pub fn entry(user: &UserId, run: &RunId, thread: &ThreadId, payload: EventPayload, answer: Option<&str>) -> LogEntry {
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
pub async fn append(store: &dyn Store, entry: LogEntry) -> u64 {
    let stored = store.append_events(&[entry]).await.unwrap();
    assert_eq!(stored.len(), 1);
    stored[0].record.seq.get()
}

/// An `agent_started` payload.
pub fn started() -> EventPayload {
    EventPayload::AgentStarted(AgentStarted { task: "t".into() })
}

/// A final `agent_completed` payload with `status`, an answer `text` and one model call.
pub fn finished(status: RunStatus, text: Option<&str>) -> EventPayload {
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

/// The model call [`finished`] carries.
pub fn model_call() -> ModelCallUsage {
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

/// A user message with fresh message and run ids.
pub fn new_message(user: &UserId, thread: Option<ThreadId>, text: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        user_id: user.clone(),
        thread_id: thread,
        text: text.into(),
        client_message_id: client_id.map(Into::into),
        message_id: MessageId::generate(),
        run_id: RunId::generate(),
        new_thread_id: ThreadId::generate(),
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
    let asked = new_message(&alice, None, "How can we cut costs?\nmore", Some("c1"));
    let chosen = asked.new_thread_id.clone();
    let first = store.accept_message(asked).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.thread_id, chosen, "a new thread has the id the caller chose");
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
    assert_eq!(
        second.thread_id, first.thread_id,
        "a named thread, not the new thread's id"
    );
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
    // Discarded late, when another message came to the thread it created: the thread stays.
    let late = store
        .accept_message(new_message(&alice, None, "stored late", None))
        .await
        .unwrap();
    let since = store
        .accept_message(new_message(&alice, Some(late.thread_id.clone()), "sent since", None))
        .await
        .unwrap();
    store
        .discard_run(&alice, &late.run_id, late.created_thread)
        .await
        .unwrap();
    assert!(store.run(&alice, &late.run_id).await.unwrap().is_none());
    assert!(
        store.thread(&alice, &late.thread_id).await.unwrap().is_some(),
        "a thread in use stays"
    );
    let texts: Vec<String> = store
        .messages(&alice, &late.thread_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["sent since"]);
    assert!(store.run(&alice, &since.run_id).await.unwrap().is_some());
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
    let nobody = UserId::generate();
    assert_eq!(
        store
            .last_seqs(&[bob.clone(), nobody, alice.clone(), bob.clone()])
            .await
            .unwrap(),
        [2, 0, 3, 2].map(Seq::new),
        "each user's newest seq, in the order asked, 0 for a user without events"
    );

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

/// Presents token `presented` to `family`, `next` being the one it buys, with a retry window.
async fn rotate_within(
    store: &dyn Store,
    user: UserId,
    family: RefreshFamilyId,
    presented: String,
    next: String,
    window: Duration,
) -> Rotation {
    store
        .rotate_refresh_token(
            &user,
            &family,
            &refresh_token(&presented),
            &refresh_token(&next),
            window,
        )
        .await
        .unwrap()
}

async fn refresh_rotation(store: &dyn Store) {
    let ann = store.create_user("ann.refresh@example.com", "hash").await.unwrap().id;
    let bob = store.create_user("bob.refresh@example.com", "hash").await.unwrap().id;
    let (chain, other) = (refresh_family("fam-chain"), refresh_family("fam-other"));
    let rotate = |user: &UserId, family: &RefreshFamilyId, presented: &str, next: &str| {
        rotate_within(
            store,
            user.clone(),
            family.clone(),
            presented.into(),
            next.into(),
            Duration::ZERO,
        )
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

/// A retry window long enough for any test.
const RETRY_WINDOW: Duration = Duration::from_secs(600);

/// The token spent last, presented again within the retry window, is told the newest token
/// and changes nothing; outside the window, or once the chain moved on, it is a reuse.
async fn refresh_retries(store: &dyn Store) {
    let dan = store.create_user("dan.refresh@example.com", "hash").await.unwrap().id;
    let eve = store.create_user("eve.refresh@example.com", "hash").await.unwrap().id;
    let rotate = |user: &UserId, family: &RefreshFamilyId, presented: &str, next: &str, window: Duration| {
        rotate_within(
            store,
            user.clone(),
            family.clone(),
            presented.into(),
            next.into(),
            window,
        )
    };
    let chain = refresh_family("fam-retried");
    store
        .start_refresh_family(&dan, &chain, &refresh_token("d1"))
        .await
        .unwrap();
    assert_eq!(rotate(&dan, &chain, "d1", "d2", RETRY_WINDOW).await, Rotation::Rotated);
    assert_eq!(
        rotate(&dan, &chain, "d1", "lost", RETRY_WINDOW).await,
        Rotation::Retried(refresh_token("d2")),
        "the token spent last, presented again, is told the newest"
    );
    assert_eq!(
        rotate(&dan, &chain, "d1", "lost-again", RETRY_WINDOW).await,
        Rotation::Retried(refresh_token("d2")),
        "a retry changed nothing: the newest is still the same"
    );
    assert_eq!(
        rotate(&eve, &chain, "d1", "e1", RETRY_WINDOW).await,
        Rotation::Unknown,
        "another user's family is not found, retry or not"
    );
    assert_eq!(
        rotate(&dan, &chain, "d2", "d3", RETRY_WINDOW).await,
        Rotation::Rotated,
        "the newest still buys the next"
    );
    assert_eq!(
        rotate(&dan, &chain, "d1", "d4", RETRY_WINDOW).await,
        Rotation::Reused,
        "once the chain moved on, an older token is a reuse"
    );
    assert_eq!(rotate(&dan, &chain, "d2", "d4", RETRY_WINDOW).await, Rotation::Revoked);

    let closed = refresh_family("fam-window-closed");
    store
        .start_refresh_family(&dan, &closed, &refresh_token("c1"))
        .await
        .unwrap();
    assert_eq!(rotate(&dan, &closed, "c1", "c2", RETRY_WINDOW).await, Rotation::Rotated);
    assert_eq!(
        rotate(&dan, &closed, "c1", "c3", Duration::ZERO).await,
        Rotation::Reused,
        "past the window, the spent token revokes its family"
    );
    assert_eq!(rotate(&dan, &closed, "c2", "c3", RETRY_WINDOW).await, Rotation::Revoked);

    let first = refresh_family("fam-first");
    store
        .start_refresh_family(&dan, &first, &refresh_token("f1"))
        .await
        .unwrap();
    assert_eq!(
        rotate(&dan, &first, "never-issued", "f2", RETRY_WINDOW).await,
        Rotation::Reused,
        "a family never rotated has no spent token to retry"
    );
}

/// Rotations of one token at once: exactly one wins; with a retry window the others are told
/// the winner's token, without one they revoke the family.
async fn concurrent_rotations(store: Arc<dyn Store>) {
    for (n, window) in [Duration::ZERO, RETRY_WINDOW].into_iter().enumerate() {
        let user = store
            .create_user(&format!("cat{n}.refresh@example.com"), "hash")
            .await
            .unwrap()
            .id;
        let family = refresh_family(&format!("fam-race-{n}"));
        store
            .start_refresh_family(&user, &family, &refresh_token("r0"))
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 1..=8 {
            let (store, user, family) = (Arc::clone(&store), user.clone(), family.clone());
            tasks.spawn(async move {
                let next = refresh_token(&format!("r{i}"));
                let rotation = store
                    .rotate_refresh_token(&user, &family, &refresh_token("r0"), &next, window)
                    .await
                    .unwrap();
                (next, rotation)
            });
        }
        let outcomes = tasks.join_all().await;
        let winners: Vec<_> = outcomes
            .iter()
            .filter(|(_, o)| *o == Rotation::Rotated)
            .map(|(next, _)| next.clone())
            .collect();
        assert_eq!(winners.len(), 1, "exactly one rotation wins: {outcomes:?}");
        if window.is_zero() {
            assert!(outcomes.iter().any(|(_, o)| *o == Rotation::Reused), "{outcomes:?}");
            assert!(
                outcomes
                    .iter()
                    .all(|(_, o)| matches!(o, Rotation::Rotated | Rotation::Reused | Rotation::Revoked)),
                "{outcomes:?}"
            );
        } else {
            let told = Rotation::Retried(winners[0].clone());
            assert!(
                outcomes.iter().all(|(_, o)| *o == Rotation::Rotated || *o == told),
                "the others are told the winner's token: {outcomes:?}"
            );
        }
    }
}

/// Messages sent at once (which a backend may store in one transaction), on `store` and on
/// `other` (a second handle, as a second server process holds): each is stored or refused on
/// its own, a repeated `client_message_id` is stored once, and a refused message leaves no
/// thread behind.
async fn concurrent_messages(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let (ann, eve) = (UserId::generate(), UserId::generate());
    let eves = store
        .accept_message(new_message(&eve, None, "mine", None))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (store, ann) = (Arc::clone(if i % 2 == 0 { &store } else { &other }), ann.clone());
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

/// The storage suite: every case on a store with an empty database. `other` is a second handle
/// on the same database (as a second server process holds).
pub async fn store(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    users(store.as_ref()).await;
    threads_and_messages(store.as_ref()).await;
    event_log(store.as_ref()).await;
    racing_writers(Arc::clone(&store), Arc::clone(&other)).await;
    concurrent_messages(Arc::clone(&store), other).await;
    refresh_rotation(store.as_ref()).await;
    refresh_retries(store.as_ref()).await;
    concurrent_rotations(Arc::clone(&store)).await;
}

//! A store that stops answering: runs still end by their limits, their users are told in a
//! sentence naming the tier and the wait, and once the store answers again everything comes
//! through, in order, once.

use std::sync::Arc;

use futures_util::StreamExt;
use std::time::Duration;

use switchboard::Config;
use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions};
use switchboard_client::Socket;
use switchboard_engine::testkit::{check_gapless, check_run, final_status};
use switchboard_faultproxy::{Fault, FaultProxy};
use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{Control, ErrorCode, Event, EventPayload, RunStatus, ServerFrame, StoreDelayed};
use switchboard_store::{AnalyticsStore, SqliteAnalytics, SqliteStore};

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn a_run_that_ends_while_the_store_hangs_is_told_at_once_and_shown_whole_once_the_store_answers() {
    let app = spawn_app_with(|c| c.model_latency = Duration::from_millis(300)).await;
    let session = app.user("stalled").await;
    let mut socket = app.connect(&session).await;
    // An SSE stream of the same user's events, opened before the store hangs.
    let response = app
        .client
        .http()
        .get(format!("{}/api/events?after_seq=0", app.client.base()))
        .bearer_auth(&session.access_token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut sse = response.bytes_stream();
    let accepted = send(&mut socket, "where does my money go?").await;
    app.store.set_hanging(true);
    let hung = tokio::time::Instant::now();

    // Whatever was stored before the store hung arrives; then, once the run has ended, the
    // notice of its end.
    let mut events = Vec::new();
    let notice = loop {
        match next(&mut socket).await {
            ServerFrame::Event(event) => events.push(event),
            ServerFrame::Control(frame) => match frame.body {
                Control::StoreDelayed(notice) => break notice,
                other => panic!("unexpected {other:?}"),
            },
        }
    };
    assert_eq!(
        (
            &notice.run_id,
            &notice.thread_id,
            notice.status.as_str(),
            notice.tier.as_str()
        ),
        (&accepted.run_id, &accepted.thread_id, "completed", "sqlite")
    );
    assert!(
        notice.message.starts_with("The run finished after ")
            && notice.message.contains("but SQLite has not answered for ")
            && notice.message.ends_with("will be shown as soon as SQLite answers."),
        "{}",
        notice.message
    );
    let told = hung.elapsed();
    assert!(
        Duration::from_millis(notice.duration_ms) + Duration::from_secs(1) >= told,
        "told {told:?} after the hang, the run took {} ms",
        notice.duration_ms
    );
    assert!(events.iter().all(|e| !e.is_final()), "the end is not stored yet");
    // The SSE stream carries the notice too, as an event of its own name with no id.
    let mut text = String::new();
    while !text.contains("event: store_delayed") {
        text.push_str(std::str::from_utf8(&sse.next().await.unwrap().unwrap()).unwrap());
    }
    let notice_data = text
        .split("event: store_delayed\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|line| line.strip_prefix("data: "))
        .expect("the notice's data line");
    let frame: serde_json::Value = serde_json::from_str(notice_data).unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["payload"]["run_id"].as_str()),
        (Some("store_delayed"), Some(accepted.run_id.as_str()))
    );

    // The store answers again: the rest of the run follows, in order, each event once.
    app.store.set_hanging(false);
    events.extend(events_until_final(&mut socket, &accepted.run_id).await);
    let seqs = seqs(&events);
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gapless, no duplicate"
    );
    assert!(events.last().unwrap().is_final());
}

/// A server whose store is a fresh PostgreSQL database reached through a fault proxy, with a
/// deadline of 0.5 s, and the usage data in SQLite.
async fn app_on_postgres_through_a_proxy(configure: impl FnOnce(&mut Config)) -> (TestApp, FaultProxy) {
    let url = postgres_database().await;
    let proxy = FaultProxy::start(address_of(&url)).await.unwrap();
    let options = PgOptions {
        query_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..PgOptions::default()
    };
    let store = Arc::new(PgStore::connect(&through(&url, proxy.addr()), options).await.unwrap());
    let analytics = Arc::new(
        SqliteAnalytics::open(&tempfile::tempdir().unwrap().keep().join("w.sqlite"))
            .await
            .unwrap(),
    );
    (spawn_app_on(store, analytics, configure).await, proxy)
}

/// No event was stored twice: a write whose answer a stall cut off, and which then landed, is
/// not stored again when it is retried (each event is the same JSON but for its seq).
fn assert_each_stored_once(events: &[Event]) {
    let mut seen = std::collections::HashSet::new();
    for event in events {
        let mut json = serde_json::to_value(event).unwrap();
        json.as_object_mut().unwrap().remove("seq");
        assert!(seen.insert(json.to_string()), "stored twice: {event:?}");
    }
}

/// Once the store answers again: reads the rest of `run` into `events`, and checks that the
/// run's events are gapless, keep the contract, are each stored once and end with `status`.
async fn rest_of_run(
    socket: &mut Socket,
    run: &switchboard_protocol::RunId,
    events: &mut Vec<Event>,
    status: RunStatus,
) {
    let rest = tokio::time::timeout(Duration::from_secs(30), events_until_final(socket, run))
        .await
        .expect("the run's end arrives once the store answers");
    events.extend(rest);
    check_gapless(events).unwrap();
    check_run(events).unwrap();
    assert_each_stored_once(events);
    assert_eq!(final_status(events), Some(status));
}

/// Waits (on the real clock, at most `limit`) for the next `store_delayed` notice, collecting
/// the events before it.
async fn until_delayed(socket: &mut Socket, events: &mut Vec<Event>) -> StoreDelayed {
    let read = async {
        loop {
            match next(socket).await {
                ServerFrame::Event(event) => events.push(event),
                ServerFrame::Control(frame) => match frame.body {
                    Control::StoreDelayed(notice) => return notice,
                    other => panic!("unexpected {other:?}"),
                },
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("told within 30 s")
}

#[tokio::test]
async fn while_postgres_stalls_runs_end_their_users_are_told_messages_are_refused_and_then_everything_comes_through_once()
 {
    let (app, proxy) = app_on_postgres_through_a_proxy(|c| c.model_latency = Duration::from_millis(200)).await;
    let session = app.user("stalled").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "where does my money go?").await;

    proxy.set(Fault::Stall);
    let mut events = Vec::new();
    let notice = until_delayed(&mut socket, &mut events).await;
    assert_eq!(
        (&notice.run_id, notice.status.as_str(), notice.tier.as_str()),
        (&accepted.run_id, "completed", "postgres")
    );
    assert!(
        notice.message.contains("but PostgreSQL has not answered for ")
            && notice.message.ends_with("will be shown as soon as PostgreSQL answers."),
        "{}",
        notice.message
    );

    // Readiness answers, naming PostgreSQL as the tier that does not answer.
    let (status, ready) = app.client.get("/health/ready", None).await.unwrap();
    assert_eq!(status, 503, "{ready}");
    let postgres = &ready["checks"]["postgres"];
    assert_eq!(postgres["status"], "degraded", "{ready}");
    assert!(
        postgres["latency_ms"].as_u64().unwrap() >= 500,
        "waited the store's deadline: {ready}"
    );

    // A new message is refused with a sentence, not left hanging.
    socket
        .send(&message("and this one?", None, Some("second")))
        .await
        .unwrap();
    let refused = error(&mut socket).await;
    assert_code(&refused, ErrorCode::StoreUnavailable);
    assert!(
        refused.message.starts_with("PostgreSQL did not answer within 0.5 s"),
        "{}",
        refused.message
    );

    // PostgreSQL answers again: the run's events come through in order, each once, and the
    // service goes on by itself.
    proxy.set(Fault::None);
    rest_of_run(&mut socket, &accepted.run_id, &mut events, RunStatus::Completed).await;
    let again = send(&mut socket, "and now?").await;
    let after = tokio::time::timeout(Duration::from_secs(30), events_until_final(&mut socket, &again.run_id))
        .await
        .unwrap();
    assert_eq!(after.first().unwrap().seq.get(), events.last().unwrap().seq.get() + 1);
    // Ready again: PostgreSQL answers (on a loaded machine perhaps slower than the 200 ms that
    // counts as healthy, so not necessarily `ok`).
    let (status, ready) = app.client.get("/health/ready", None).await.unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_ne!(ready["checks"]["postgres"]["status"], "unavailable", "{ready}");
    assert_eq!(
        (status, ready["checks"]["postgres"]["status"].as_str()),
        (200, Some("ok"))
    );
}

#[tokio::test]
async fn while_clickhouse_is_down_chat_goes_on_uploads_are_refused_naming_the_analytics_store_and_readiness_says_so() {
    let url = clickhouse_database().await;
    let proxy = FaultProxy::start(address_of(&url)).await.unwrap();
    let analytics = ClickHouseAnalytics::connect(&through(&url, proxy.addr()), ClickHouseOptions::default())
        .await
        .unwrap();
    let store = Arc::new(
        SqliteStore::open(&tempfile::tempdir().unwrap().keep().join("db.sqlite"))
            .await
            .unwrap(),
    );
    let app = spawn_app_on(store, Arc::new(analytics), |_| {}).await;
    let session = app.user("no-analytics").await;
    proxy.set(Fault::Refuse);

    let row = serde_json::json!([{"timestamp": "2026-11-01T10:00:00Z", "model": "gpt-4o", "input_tokens": 10,
        "output_tokens": 5}]);
    let (status, body) = app
        .client
        .post("/api/workload-events", Some(&session.access_token), &row)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The analytics store: ClickHouse cannot be reached")
            && message.contains("nothing was stored"),
        "{message}"
    );

    let (status, ready) = app.client.get("/health/ready", None).await.unwrap();
    assert_eq!((status, ready["status"].as_str()), (200, Some("degraded")), "{ready}");
    assert_eq!(ready["checks"]["clickhouse"]["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["store"]["status"], "ok", "{ready}");

    // Chat goes on; an analysis says that the figures cannot be had now, and why.
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "How can we cut our LLM costs?").await;
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        events_until_final(&mut socket, &accepted.run_id),
    )
    .await
    .unwrap();
    check_run(&events).unwrap();
    assert_eq!(final_status(&events), Some(RunStatus::Completed));
    let EventPayload::AgentCompleted(done) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    let answer = done
        .result
        .as_ref()
        .and_then(|r| r["text"].as_str())
        .unwrap_or_default();
    assert!(
        answer.contains("Your usage data cannot be read right now (")
            && answer.contains("ClickHouse cannot be reached"),
        "{answer}"
    );

    proxy.set(Fault::None);
    let (status, body) = app
        .client
        .post("/api/workload-events", Some(&session.access_token), &row)
        .await
        .unwrap();
    assert_eq!((status, &body), (200, &serde_json::json!({"accepted": 1})));
}

/// An upload with an `Idempotency-Key` whose insert outlives its deadline on ClickHouse (the
/// proxy delays every chunk 400 ms, the insert has 300 ms) is answered 503, saying the rows may
/// have been stored and to send them again with the key; they land all the same, and sent again
/// with the key they are answered as stored, with `Idempotency-Replayed`, and counted once.
#[tokio::test]
async fn an_upload_stored_after_its_deadline_and_sent_again_with_its_key_is_counted_once() {
    let url = clickhouse_database().await;
    let proxy = FaultProxy::start(address_of(&url)).await.unwrap();
    let options = ClickHouseOptions {
        query_timeout: Duration::from_secs(10),
        insert_timeout: Duration::from_millis(300),
    };
    let analytics = ClickHouseAnalytics::connect(&through(&url, proxy.addr()), options)
        .await
        .unwrap();
    let direct = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
        .await
        .unwrap();
    let store = Arc::new(
        SqliteStore::open(&tempfile::tempdir().unwrap().keep().join("db.sqlite"))
            .await
            .unwrap(),
    );
    let app = spawn_app_on(store, Arc::new(analytics), |_| {}).await;
    let session = app.user("retrying").await;
    let rows = serde_json::json!([{"timestamp": "2026-11-01T10:00:00Z", "model": "gpt-4o", "input_tokens": 10,
        "output_tokens": 5}, {"timestamp": "2026-11-01T11:00:00Z", "model": "gpt-4o", "input_tokens": 20,
        "output_tokens": 5}]);
    let send = || async {
        let response = app
            .client
            .http()
            .post(format!("{}/api/workload-events", app.client.base()))
            .bearer_auth(&session.access_token)
            .header("idempotency-key", "upload-7")
            .json(&rows)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotency-replayed").is_some();
        (status, replayed, response.json::<serde_json::Value>().await.unwrap())
    };
    proxy.set(Fault::Latency(Duration::from_millis(400)));
    let (status, _, body) = send().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("may or may not have been stored (send them again with the same Idempotency-Key"),
        "{message}"
    );
    // The insert reaches ClickHouse after the server gave up on it, and is stored there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while direct.workload_event_count(&session.user_id).await.unwrap() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the timed-out insert never landed"
        );
        tokio::task::yield_now().await;
    }
    proxy.set(Fault::None);
    let answer = loop {
        let answer = send().await;
        // While ClickHouse still finishes the first insert, the key is in progress (409).
        if answer.0 != 409 {
            break answer;
        }
        assert!(
            answer.2["error"]["message"]
                .as_str()
                .unwrap()
                .contains("still being stored"),
            "{}",
            answer.2
        );
        assert!(std::time::Instant::now() < deadline, "the first insert never ended");
    };
    assert_eq!(answer, (200, true, serde_json::json!({"accepted": 2})));
    assert_eq!(direct.workload_event_count(&session.user_id).await.unwrap(), 2);
}

#[tokio::test]
async fn a_run_whose_deadline_passes_while_postgres_stalls_ends_by_it_and_is_told_as_timed_out() {
    let (app, proxy) = app_on_postgres_through_a_proxy(|c| {
        c.model_latency = Duration::from_secs(5);
        c.engine.run_timeout = Duration::from_millis(1_500);
        c.engine.agent_timeout = Duration::from_millis(1_200);
    })
    .await;
    let session = app.user("deadline").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "hello").await;
    proxy.set(Fault::Stall);

    let mut events = Vec::new();
    let notice = until_delayed(&mut socket, &mut events).await;
    assert_eq!(
        (&notice.run_id, notice.status, notice.tier.as_str()),
        (&accepted.run_id, RunStatus::TimedOut, "postgres")
    );
    assert!(notice.duration_ms <= 2_500, "ended by its deadline + 1 s: {notice:?}");
    assert!(
        notice.message.starts_with("The run ended (timed out) after "),
        "{}",
        notice.message
    );

    proxy.set(Fault::None);
    rest_of_run(&mut socket, &accepted.run_id, &mut events, RunStatus::TimedOut).await;
}

/// Every stored event of one run of the user, from the HTTP API.
async fn stored_events_of(app: &TestApp, token: &str, run: &switchboard_protocol::RunId) -> Vec<Event> {
    let (status, page) = app
        .client
        .get("/api/events?after_seq=0&limit=1000", Some(token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    serde_json::from_value::<Vec<Event>>(page["events"].clone())
        .unwrap()
        .into_iter()
        .filter(|e| &e.run_id == run)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_message_stored_after_its_deadline_starts_its_run_once_when_sent_again() {
    let app = spawn_app().await;
    let session = app.user("late-answer").await;
    let mut socket = app.connect(&session).await;
    app.store.lose_next_accept_answer();
    socket.send(&message("hello", None, Some("k1"))).await.unwrap();
    let refused = error(&mut socket).await;
    assert_code(&refused, ErrorCode::StoreUnavailable);
    assert!(
        refused
            .message
            .ends_with("so the message may not have been accepted; send it again in a moment."),
        "{}",
        refused.message
    );
    // Sent again: the message the store did keep starts its run, once.
    socket.send(&message("hello", None, Some("k1"))).await.unwrap();
    // (The check after the store answered may have started it just before: either way, once.)
    let (mut first, mut finals) = (None, Vec::new());
    while first
        .as_ref()
        .is_none_or(|f: &switchboard_protocol::MessageAccepted| !finals.contains(&f.run_id))
    {
        match next(&mut socket).await {
            ServerFrame::Control(frame) => match frame.body {
                Control::MessageAccepted(accepted) => first = Some(accepted),
                other => panic!("unexpected {other:?}"),
            },
            ServerFrame::Event(event) if event.is_final() => finals.push(event.run_id),
            ServerFrame::Event(_) => {}
        }
    }
    let first = first.unwrap();
    let events = stored_events_of(&app, &session.access_token, &first.run_id).await;
    check_run(&events).unwrap();
    assert_eq!(final_status(&events), Some(RunStatus::Completed));
    socket.send(&message("hello", None, Some("k1"))).await.unwrap();
    assert_eq!(
        accepted(&mut socket).await.run_id,
        first.run_id,
        "a third time starts nothing"
    );
    let finals = read_for(&mut socket, Duration::from_secs(5))
        .await
        .into_iter()
        .filter(|f| matches!(f, ServerFrame::Event(e) if e.is_final()))
        .count();
    assert_eq!(finals, 0, "one run, one final event");
}

#[tokio::test(start_paused = true)]
async fn a_message_stored_after_its_deadline_and_not_sent_again_gets_its_run_once_the_store_answers() {
    let app = spawn_app().await;
    let session = app.user("late-answer-alone").await;
    let mut socket = app.connect(&session).await;
    app.store.lose_next_accept_answer();
    socket.send(&message("hello", None, Some("k2"))).await.unwrap();
    assert_code(&error(&mut socket).await, ErrorCode::StoreUnavailable);
    assert_run_starts_by_itself(&mut socket).await;
}

#[tokio::test(start_paused = true)]
async fn a_message_stored_whose_answer_was_cut_off_gets_its_run_once_the_store_answers() {
    let app = spawn_app().await;
    let session = app.user("cut-answer").await;
    let mut socket = app.connect(&session).await;
    // The connection cut after the commit: the store says it cannot be reached, yet the
    // message is stored.
    app.store.cut_next_accept_answer();
    socket.send(&message("hello", None, Some("k3"))).await.unwrap();
    let refused = error(&mut socket).await;
    assert_code(&refused, ErrorCode::StoreUnavailable);
    assert_eq!(
        refused.message,
        "SQLite cannot be reached (the connection to the store failed: connection closed), so the message may \
         not have been accepted; send it again in a moment."
    );
    assert_run_starts_by_itself(&mut socket).await;
}

/// The run of a message stored though its sender was told it may not have been: it starts by
/// itself, streams, and ends once.
async fn assert_run_starts_by_itself(socket: &mut switchboard_client::Socket) {
    // Nobody sends it again: the run the store kept starts by itself and ends.
    let event = loop {
        if let ServerFrame::Event(event) = next(socket).await {
            break event;
        }
    };
    let events = events_until_final(socket, &event.run_id).await;
    let all: Vec<Event> = std::iter::once(event).chain(events).collect();
    check_run(&all).unwrap();
    assert_eq!(final_status(&all), Some(RunStatus::Completed));
}

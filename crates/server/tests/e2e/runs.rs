//! Runs over the socket: the event contract, every tab, isolation between users, idempotency,
//! stop, and deadlines.

use std::time::Duration;

use switchboard_engine::testkit::{check_gapless, check_run, final_status, summary};
use switchboard_protocol::{
    ClientFrame, Control, ErrorCode, Event, EventPayload, Role, RunStatus, ServerFrame, StopAgent,
};

use crate::support::{
    accepted, assert_code, error, events_until_final, message, next, run_events, send, seqs, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn a_message_streams_its_run_and_the_answer_joins_the_thread() {
    let app = spawn_app().await;
    let session = app.user("ann").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "How can we cut our LLM costs on gpt-4o?").await;
    let events = run_events(&mut socket, &accepted.run_id).await;
    check_run(&events).unwrap();
    check_gapless(&events).unwrap();
    assert_eq!(final_status(&events), Some(RunStatus::Completed));
    assert!(events.iter().all(|e| e.thread_id == accepted.thread_id));
    assert!(summary(&events).contains(&"triage tool_executing extract_entities".to_owned()));
    let EventPayload::AgentCompleted(done) = &events.last().unwrap().payload else {
        unreachable!()
    };
    let answer = done.result.as_ref().unwrap()["text"].as_str().unwrap().to_owned();
    let timings = done.timings.as_ref().unwrap();
    assert!(timings.agents.contains_key("triage") && timings.agents.contains_key("reporting"));

    socket
        .send(&ClientFrame::GetThreadHistory(switchboard_protocol::GetThreadHistory {
            thread_id: accepted.thread_id.clone(),
        }))
        .await
        .unwrap();
    let ServerFrame::Control(frame) = next(&mut socket).await else {
        panic!("expected thread_history")
    };
    let Control::ThreadHistory(history) = frame.body else {
        panic!("expected thread_history")
    };
    let messages: Vec<(Role, &str)> = history.messages.iter().map(|m| (m.role, m.text.as_str())).collect();
    assert_eq!(
        messages,
        [
            (Role::User, "How can we cut our LLM costs on gpt-4o?"),
            (Role::Assistant, answer.as_str())
        ]
    );
    assert_eq!(history.messages[0].id, accepted.message_id);

    let (status, run) = app
        .client
        .get(&format!("/api/runs/{}", accepted.run_id), Some(&session.access_token))
        .await
        .unwrap();
    assert_eq!((status, run["status"].as_str()), (200, Some("completed")));
    assert!(run["timings"]["total_ms"].is_u64());
}

#[tokio::test]
async fn every_tab_of_a_user_gets_every_event_and_another_user_none() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    // Tab 1 sends; tabs 2 and 3 only read.
    let (mut ann1, mut ann2, mut ann3) = (
        app.connect(&ann).await,
        app.connect(&ann).await,
        app.connect(&ann).await,
    );
    let mut bob1 = app.connect(&bob).await;
    let ann_runs = [send(&mut ann1, "first").await, send(&mut ann1, "second").await];
    let bob_run = send(&mut bob1, "bob asks").await;
    let mut ann2_events = events_until_final(&mut ann2, &ann_runs[0].run_id).await;
    if !ann2_events
        .iter()
        .any(|e| e.is_final() && e.run_id == ann_runs[1].run_id)
    {
        ann2_events.extend(events_until_final(&mut ann2, &ann_runs[1].run_id).await);
    }
    let mut ann3_events = Vec::new();
    while ann3_events.len() < ann2_events.len() {
        if let ServerFrame::Event(event) = next(&mut ann3).await {
            ann3_events.push(event);
        }
    }
    let bob_events = events_until_final(&mut bob1, &bob_run.run_id).await;
    assert_eq!(
        ann2_events, ann3_events,
        "both tabs saw the same events in the same order"
    );
    check_gapless(&ann2_events).unwrap();
    check_gapless(&bob_events).unwrap();
    assert!(
        ann2_events
            .iter()
            .all(|e| ann_runs.iter().any(|r| r.run_id == e.run_id))
    );
    assert!(bob_events.iter().all(|e| e.run_id == bob_run.run_id));
    for run in &ann_runs {
        let of_run: Vec<Event> = ann2_events.iter().filter(|e| e.run_id == run.run_id).cloned().collect();
        check_run(&of_run).unwrap();
    }
    let (status, _) = app
        .client
        .get(&format!("/api/runs/{}", bob_run.run_id), Some(&ann.access_token))
        .await
        .unwrap();
    assert_eq!(status, 404, "another user's run is not found");
    let mut bob_again = app.client.connect(&bob.access_token, Some(0)).await.unwrap();
    next(&mut bob_again).await;
    next(&mut bob_again).await;
    let replayed = events_until_final(&mut bob_again, &bob_run.run_id).await;
    assert_eq!(replayed, bob_events, "a resume replays the user's own events only");
}

#[tokio::test]
async fn the_same_client_message_id_starts_one_run_and_gets_the_same_ids() {
    let app = spawn_app().await;
    let session = app.user("retry").await;
    let mut socket = app.connect(&session).await;
    socket
        .send(&message("cut costs", None, Some("client-1")))
        .await
        .unwrap();
    let first = accepted(&mut socket).await;
    let events = run_events(&mut socket, &first.run_id).await;
    socket
        .send(&message("cut costs", None, Some("client-1")))
        .await
        .unwrap();
    let second = accepted(&mut socket).await;
    assert_eq!(second, first);
    let (_, page) = app
        .client
        .get("/api/events?after_seq=0&limit=1000", Some(&session.access_token))
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), events.len(), "no second run");
    let (_, messages) = app
        .client
        .get(
            &format!("/api/threads/{}/messages", first.thread_id),
            Some(&session.access_token),
        )
        .await
        .unwrap();
    assert_eq!(
        messages["messages"].as_array().unwrap().len(),
        2,
        "one question, one answer"
    );
}

#[tokio::test]
async fn a_message_the_store_refuses_leaves_no_event_and_its_place_is_free_at_once() {
    // The run of a message starts while the message is stored; one the store refuses (here: a
    // thread of another user) is abandoned unseen, and its place given back before the refusal.
    let app = spawn_app_with(|c| c.engine.max_active_runs_per_user = 1).await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let mut bobs = app.connect(&bob).await;
    let bobs_thread = send(&mut bobs, "bob's own thread").await.thread_id;
    let mut socket = app.connect(&ann).await;
    for _ in 0..3 {
        socket
            .send(&message("into bob's thread", Some(&bobs_thread), None))
            .await
            .unwrap();
        assert_code(&error(&mut socket).await, ErrorCode::ThreadNotFound);
    }
    socket.send(&message("my own", None, None)).await.unwrap();
    let mine = accepted(&mut socket).await;
    let events = run_events(&mut socket, &mine.run_id).await;
    assert_eq!(events[0].seq.get(), 1, "no event of a refused message came first");
    let (_, page) = app
        .client
        .get("/api/events?after_seq=0&limit=1000", Some(&ann.access_token))
        .await
        .unwrap();
    let stored: Vec<Event> = serde_json::from_value(page["events"].clone()).unwrap();
    assert_eq!(stored, events, "only the accepted message's run is in the log");
    let (_, bobs_page) = app
        .client
        .get("/api/events?after_seq=0&limit=1000", Some(&bob.access_token))
        .await
        .unwrap();
    let bobs_events: Vec<Event> = serde_json::from_value(bobs_page["events"].clone()).unwrap();
    assert!(
        bobs_events.iter().all(|e| e.thread_id == bobs_thread),
        "nothing of ann's in bob's log"
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_sent_again_at_the_limits_gets_its_first_answer_not_a_refusal() {
    // A client that lost its connection before `message_accepted` sends the message again: the
    // run it started is now one of the active runs, and the minute's budget is spent.
    let app = spawn_app_with(|c| {
        c.engine.max_active_runs_per_user = 1;
        c.rate_limit_per_minute = 1;
        c.model_latency = Duration::from_secs(10);
    })
    .await;
    let session = app.user("resender").await;
    let mut socket = app.connect(&session).await;
    socket.send(&message("slow", None, Some("again-1"))).await.unwrap();
    let first = accepted(&mut socket).await;
    let mut reconnected = app.connect(&session).await;
    reconnected.send(&message("slow", None, Some("again-1"))).await.unwrap();
    assert_eq!(
        accepted(&mut reconnected).await,
        first,
        "the same ids, with no place free"
    );
    // Another message is still refused, for the place and then (with a place free) the budget.
    reconnected
        .send(&message("another", None, Some("again-2")))
        .await
        .unwrap();
    assert_code(&error(&mut reconnected).await, ErrorCode::TooManyActiveRuns);
    events_until_final(&mut reconnected, &first.run_id).await;
    reconnected.send(&message("slow", None, Some("again-1"))).await.unwrap();
    assert_eq!(
        accepted(&mut reconnected).await,
        first,
        "the same ids, with no budget left"
    );
    reconnected
        .send(&message("another", None, Some("again-2")))
        .await
        .unwrap();
    assert_code(&error(&mut reconnected).await, ErrorCode::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn stop_agent_cancels_the_run_at_once() {
    let app = spawn_app_with(|c| c.model_latency = Duration::from_secs(20)).await;
    let session = app.user("stopper").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "slow").await;
    loop {
        if let ServerFrame::Event(e) = next(&mut socket).await
            && e.type_name() == "tool_completed"
        {
            break;
        }
    }
    let started = tokio::time::Instant::now();
    socket
        .send(&ClientFrame::StopAgent(StopAgent {
            run_id: accepted.run_id.clone(),
        }))
        .await
        .unwrap();
    let events = run_events(&mut socket, &accepted.run_id).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the model call was dropped, not awaited"
    );
    let tail: Vec<String> = summary(&events).into_iter().rev().take(4).collect();
    assert_eq!(
        tail,
        [
            "supervisor agent_completed cancelled final",
            "supervisor agent_error cancelled",
            "triage agent_completed cancelled",
            "triage agent_error cancelled",
        ]
    );
    let (_, run) = app
        .client
        .get(&format!("/api/runs/{}", accepted.run_id), Some(&session.access_token))
        .await
        .unwrap();
    assert_eq!(run["status"], "cancelled");
    socket
        .send(&ClientFrame::StopAgent(StopAgent {
            run_id: accepted.run_id.clone(),
        }))
        .await
        .unwrap();
    let refused = crate::support::error(&mut socket).await;
    assert_eq!(refused.code, switchboard_protocol::ErrorCode::RunNotFound);
}

#[tokio::test(start_paused = true)]
async fn a_slow_model_is_cut_off_by_the_run_deadline() {
    let app = spawn_app_with(|c| {
        c.model_latency = Duration::from_secs(5);
        c.engine.run_timeout = Duration::from_secs(3);
    })
    .await;
    let session = app.user("patient").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "why so slow?").await;
    let events = run_events(&mut socket, &accepted.run_id).await;
    check_run(&events).unwrap();
    assert_eq!(final_status(&events), Some(RunStatus::TimedOut));
    let EventPayload::AgentCompleted(done) = &events.last().unwrap().payload else {
        unreachable!()
    };
    assert!(done.duration_ms <= 4000, "final after {} ms", done.duration_ms);
    let messages: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::AgentError(err) => Some(err.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages[0],
        "The triage agent was stopped after 3 s because the run reached its 3 s deadline."
    );
    assert_eq!(seqs(&events).len(), events.len());
}

//! The socket's frames: the greeting, every error code with the connection staying open, the
//! limits, heartbeats and the token's expiry.

use std::time::Duration;

use switchboard_protocol::{ClientFrame, Control, ErrorCode, Event, ServerFrame, ThreadId};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    assert_code, close_frame, error, events_until_final, message, next, read_for, send, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn the_first_frame_is_connection_established() {
    let app = spawn_app().await;
    let session = app.user("first").await;
    let mut socket = app.client.connect(&session.access_token, None).await.unwrap();
    let ServerFrame::Control(frame) = socket.next_frame().await.unwrap().unwrap() else {
        panic!("an event came first");
    };
    let Control::ConnectionEstablished(hello) = frame.body else {
        panic!("not connection_established: {:?}", frame.body);
    };
    assert_eq!(hello.user_id, session.user_id);
    assert_eq!(hello.protocol, "switchboard.v1");
    assert_eq!(hello.heartbeat_interval_ms, 25_000);
    assert_eq!(hello.last_seq.get(), 0);
    assert!(hello.connection_id.as_str().starts_with("conn_"));
    assert_eq!(socket.protocol.as_deref(), Some("switchboard.v1"));
}

#[tokio::test]
async fn each_bad_frame_gets_its_error_code_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let mut bobs = app.connect(&bob).await;
    let bobs_thread = send(&mut bobs, "bob's private thread").await.thread_id;
    let mut socket = app.connect(&ann).await;
    let long = "x".repeat(16_001);
    let cases: Vec<(String, ErrorCode)> = vec![
        ("not json".into(), ErrorCode::InvalidJson),
        ("[1, 2]".into(), ErrorCode::InvalidJson),
        (r#"{"payload": {}}"#.into(), ErrorCode::InvalidJson),
        (r#"{"type": "dance"}"#.into(), ErrorCode::UnknownType),
        (
            r#"{"type": "user_message", "payload": {"text": "   "}}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        (
            format!(r#"{{"type": "user_message", "payload": {{"text": "{long}"}}}}"#),
            ErrorCode::InvalidPayload,
        ),
        (
            r#"{"type": "user_message", "payload": {"text": 5}}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        (
            r#"{"type": "user_message", "payload": {"text": "hi", "client_message_id": ""}}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        (
            format!(
                r#"{{"type": "user_message", "payload": {{"text": "hi", "thread_id": "{}"}}}}"#,
                ThreadId::generate()
            ),
            ErrorCode::ThreadNotFound,
        ),
        (
            format!(r#"{{"type": "user_message", "payload": {{"text": "hi", "thread_id": "{bobs_thread}"}}}}"#),
            ErrorCode::ThreadNotFound,
        ),
        (
            format!(r#"{{"type": "get_thread_history", "payload": {{"thread_id": "{bobs_thread}"}}}}"#),
            ErrorCode::ThreadNotFound,
        ),
        (
            r#"{"type": "stop_agent", "payload": {"run_id": "run_nope"}}"#.into(),
            ErrorCode::RunNotFound,
        ),
        (
            r#"{"type": "stop_agent", "payload": {}}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        (
            r#"{"type": "resume", "payload": {"after_seq": "x"}}"#.into(),
            ErrorCode::InvalidPayload,
        ),
    ];
    for (frame, code) in cases {
        socket.send_text(&frame).await.unwrap();
        assert_code(&error(&mut socket).await, code);
        socket.send(&ClientFrame::Ping(Default::default())).await.unwrap();
        match next(&mut socket).await {
            ServerFrame::Control(c) => assert!(matches!(c.body, Control::Pong(_)), "{frame}: {:?}", c.body),
            other => panic!("{frame}: expected pong, got {other:?}"),
        }
    }
    socket.send_raw(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_code(&error(&mut socket).await, ErrorCode::InvalidJson);
}

#[tokio::test]
async fn a_frame_over_the_size_limit_is_refused_and_closed_with_1009() {
    let app = spawn_app().await;
    let session = app.user("big").await;
    let mut socket = app.connect(&session).await;
    let text = format!(
        r#"{{"type": "user_message", "payload": {{"text": "{}"}}}}"#,
        "y".repeat(70 * 1024)
    );
    socket.send_text(&text).await.unwrap();
    assert_code(&error(&mut socket).await, ErrorCode::MessageTooLarge);
    let close = loop {
        match socket.next_raw().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Size);
}

#[tokio::test]
async fn a_frame_over_the_hard_cap_closes_the_connection_with_1009() {
    let app = spawn_app().await;
    let session = app.user("huge").await;
    let mut socket = app.connect(&session).await;
    socket.send_text(&"z".repeat(2 * 1024 * 1024)).await.unwrap();
    assert_eq!(close_frame(&mut socket).await.code, CloseCode::Size);
}

#[tokio::test(start_paused = true)]
async fn messages_over_the_rate_limit_are_refused_until_the_minute_passes() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 5;
        c.engine.max_active_runs_per_user = 100;
    })
    .await;
    let session = app.user("chatty").await;
    let mut socket = app.connect(&session).await;
    for _ in 0..5 {
        send(&mut socket, "hello").await;
    }
    socket.send(&message("one too many", None, Some("c6"))).await.unwrap();
    let refused = error(&mut socket).await;
    assert_code(&refused, ErrorCode::RateLimited);
    assert_eq!(refused.reference.as_deref(), Some("c6"));
    read_for(&mut socket, Duration::from_secs(61)).await;
    socket.send(&message("again", None, None)).await.unwrap();
    loop {
        if let ServerFrame::Control(c) = next(&mut socket).await
            && let Control::MessageAccepted(_) = c.body
        {
            break;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_message_holds_no_place_among_the_active_runs() {
    // One run at a time on the whole server, one message a minute per user: a message refused
    // for the rate limit must give back the place it was admitted to.
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 1;
        c.engine.max_active_runs = 1;
        c.model_latency = Duration::from_secs(5);
    })
    .await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let (mut ann_socket, mut bob_socket) = (app.connect(&ann).await, app.connect(&bob).await);
    let first = send(&mut ann_socket, "first").await;
    events_until_final(&mut ann_socket, &first.run_id).await;
    ann_socket.send(&message("second", None, None)).await.unwrap();
    assert_code(&error(&mut ann_socket).await, ErrorCode::RateLimited);
    let bobs = send(&mut bob_socket, "mine").await;
    let events = events_until_final(&mut bob_socket, &bobs.run_id).await;
    assert!(events.last().is_some_and(Event::is_final));
}

#[tokio::test(start_paused = true)]
async fn a_fourth_active_run_is_refused_and_leaves_nothing_stored() {
    let app = spawn_app_with(|c| c.model_latency = Duration::from_secs(10)).await;
    let session = app.user("busy").await;
    let mut socket = app.connect(&session).await;
    for _ in 0..3 {
        send(&mut socket, "slow question").await;
    }
    socket.send(&message("a fourth", None, None)).await.unwrap();
    assert_code(&error(&mut socket).await, ErrorCode::TooManyActiveRuns);
    let (_, threads) = app
        .client
        .get("/api/threads", Some(&session.access_token))
        .await
        .unwrap();
    assert_eq!(
        threads["threads"].as_array().unwrap().len(),
        3,
        "the refused message started no thread"
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_servers_run_limit_messages_are_refused_with_server_busy() {
    let app = spawn_app_with(|c| {
        c.model_latency = Duration::from_secs(10);
        c.engine.max_active_runs = 2;
    })
    .await;
    let mut sockets = Vec::new();
    for name in ["u1", "u2", "u3"] {
        sockets.push(app.connect(&app.user(name).await).await);
    }
    send(&mut sockets[0], "one").await;
    send(&mut sockets[1], "two").await;
    sockets[2].send(&message("three", None, None)).await.unwrap();
    let refused = error(&mut sockets[2]).await;
    assert_code(&refused, ErrorCode::ServerBusy);
    assert_eq!(
        refused.message,
        "The server is at its limit of 2 active runs; try again in a moment."
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_gets_heartbeats_and_a_silent_one_is_closed_with_1001() {
    let app = spawn_app().await;
    let session = app.user("idle").await;
    let mut lively = app.connect(&session).await;
    let mut silent = app.connect(&session).await;
    // The lively client reads (and so answers pings) for 60 s.
    let frames = read_for(&mut lively, Duration::from_secs(60)).await;
    let heartbeats = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Control(c) if matches!(c.body, Control::Heartbeat(_))))
        .count();
    assert_eq!(frames.len(), heartbeats, "nothing but heartbeats");
    assert_eq!(heartbeats, 2, "heartbeats at 25 s and 50 s");
    // The silent one read nothing, so it never answered the ping sent at 25 s: closed at 35 s.
    let mut saw_heartbeat = false;
    let close = loop {
        match silent.next_raw().await {
            Some(Ok(Message::Text(text))) => saw_heartbeat |= text.as_str().contains("\"heartbeat\""),
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(saw_heartbeat);
    assert_eq!(close.code, CloseCode::Away);
    let mut lively = lively;
    lively.send(&ClientFrame::Ping(Default::default())).await.unwrap();
    assert!(matches!(next(&mut lively).await, ServerFrame::Control(c) if matches!(c.body, Control::Pong(_))));
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let app = spawn_app_with(|c| c.access_token_ttl = Duration::from_secs(40)).await;
    let session = app.user("brief").await;
    let mut socket = app.connect(&session).await;
    let close = close_frame(&mut socket).await;
    assert_eq!(close.code, CloseCode::Policy);
}

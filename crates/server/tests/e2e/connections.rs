//! What bounds a connection: the server-wide cap on open connections, the header deadline that
//! frees the server from idle ones, and one per-user limit and token expiry for sockets and
//! server-sent-event streams alike.

use std::time::Duration;

use crate::raw::{Raw, Seen};
use crate::support::{TestApp, close_frame, spawn_app, spawn_app_with};

#[tokio::test(start_paused = true)]
async fn connections_past_the_cap_are_answered_503_until_open_ones_close() {
    let app = spawn_app_with(|config| config.max_open_connections = Some(4)).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(Raw::connect(&app).await);
    }
    let mut refused = Raw::connect(&app).await;
    refused.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(refused.next(Duration::from_secs(5)).await, Seen::Status(503));
    assert_eq!(refused.next(Duration::from_secs(5)).await, Seen::Ended);

    // The idle ones miss the header deadline and are closed; then the server takes new ones.
    for raw in &mut idle {
        assert_eq!(raw.next(Duration::from_secs(11)).await, Seen::Ended);
    }
    let mut served = Raw::connect(&app).await;
    served.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(served.next(Duration::from_secs(5)).await, Seen::Status(200));
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_idle_and_half_sent_connections_is_closed_by_the_header_deadline_while_others_are_served() {
    let app = spawn_app().await;
    let mut flood = Vec::new();
    for index in 0..300 {
        let mut raw = Raw::connect(&app).await;
        if index % 2 == 1 {
            raw.send(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n").await;
        }
        flood.push(raw);
    }
    let (status, _) = app.client.get("/health/live", None).await.unwrap();
    assert_eq!(status, 200, "served during the flood");
    let started = tokio::time::Instant::now();
    for raw in &mut flood {
        assert_eq!(raw.next(Duration::from_secs(11)).await, Seen::Ended);
    }
    assert!(started.elapsed() <= Duration::from_secs(11));
    let (status, _) = app.client.get("/health/live", None).await.unwrap();
    assert_eq!(status, 200, "served after the flood");
}

/// Opens `GET /api/events` as an SSE stream; the response, whatever its status.
async fn open_sse(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .http()
        .get(format!("{}/api/events", app.client.base()))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sockets_and_sse_streams_count_against_one_limit_per_user() {
    let app = spawn_app_with(|config| config.max_connections_per_user = 2).await;
    let ann = app.user("ann").await;
    let socket = app.connect(&ann).await;
    let stream = open_sse(&app, &ann.access_token).await;
    assert_eq!(stream.status(), 200);

    let third_stream = open_sse(&app, &ann.access_token).await;
    assert_eq!(third_stream.status(), 429);
    let body: serde_json::Value = third_stream.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    let Err(refused) = app.client.connect(&ann.access_token, None).await else {
        panic!("a third socket is refused too");
    };
    assert!(format!("{refused:#}").contains("429"), "{refused:#}");
    let bob = app.user("bob").await;
    assert_eq!(
        open_sse(&app, &bob.access_token).await.status(),
        200,
        "another user's own limit"
    );

    drop(stream);
    socket.close().await.unwrap();
    // The slots free as the server sees the connections end; a new stream then gets one.
    let mut status = 429;
    for _ in 0..100 {
        status = open_sse(&app, &ann.access_token).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(status, 200);
}

#[tokio::test(start_paused = true)]
async fn an_sse_stream_ends_with_an_error_event_when_its_token_expires() {
    let app = spawn_app_with(|config| config.access_token_ttl = Duration::from_secs(60)).await;
    let ann = app.user("ann").await;
    let mut stream = open_sse(&app, &ann.access_token).await;
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended; it said: {text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("\"code\":\"unauthorized\""), "{text}");
    assert!(text.contains("The access token expired"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_socket_and_a_stream_opened_with_one_token_both_end_when_it_expires() {
    let app = spawn_app_with(|config| config.access_token_ttl = Duration::from_secs(60)).await;
    let ann = app.user("ann").await;
    let mut socket = app.connect(&ann).await;
    let mut stream = open_sse(&app, &ann.access_token).await;
    let close = tokio::time::timeout(Duration::from_secs(120), close_frame(&mut socket))
        .await
        .expect("the socket closes");
    assert_eq!(u16::from(close.code), 1008);
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(chunk) = stream.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    })
    .await
    .expect("the stream ends too");
    assert!(rest.contains("event: error"), "{rest}");
}

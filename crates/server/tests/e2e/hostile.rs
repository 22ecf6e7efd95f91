//! Hostile and careless clients, one line of data a case: what is sent, over raw TCP or an open
//! WebSocket, and what must come back, and when (on the paused clock, so a 30 s deadline takes
//! no time). A new probe is one more line in `CASES`.

use std::time::Duration;

use switchboard_store::AnalyticsStore;

use crate::raw::{Raw, Seen, frame, upgrade_request};
use crate::support::spawn_app;

/// What a case sends.
enum Probe {
    /// These bytes on a fresh TCP connection (`{token}` becomes a valid access token), then
    /// nothing more.
    Http(&'static str),
    /// A fresh TCP connection on which nothing is sent.
    Nothing,
    /// The start of a request, then one more header line every 2 s, never the blank line.
    Trickle,
    /// This frame on an open WebSocket.
    Frame(Vec<u8>),
}

/// What must come back.
#[derive(Debug)]
enum Expect {
    /// An HTTP response with this status, at once.
    Status(u16),
    /// An HTTP response with this status after this many seconds (a deadline that passed).
    StatusAfter(u16, u64),
    /// Nothing; the server closes the connection after this many seconds.
    ClosedAfter(u64),
    /// A WebSocket close frame with this code, then the end of the connection.
    Close(u16),
    /// An `error` frame with this code, and the socket stays open (a ping still gets its pong).
    Error(&'static str),
    /// An `error` frame with this code, then a close frame with this close code.
    ErrorThenClose(&'static str, u16),
    /// A text frame that contains this, and the socket stays open.
    Reply(&'static str),
}

const FIN_TEXT: u8 = 0x81;
const FIN_BINARY: u8 = 0x82;
const FIN_CLOSE: u8 = 0x88;
const FIN_PING: u8 = 0x89;
const RSV1: u8 = 0x40;

// One line a case: kept that way by hand.
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, Probe, Expect)> {
    use Expect::*;
    use Probe::*;
    let upload = "POST /api/workload-events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                  Content-Type: application/x-ndjson\r\n";
    let json_post = |path: &str, length: usize, body: &str| {
        leak(format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {{token}}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"))
    };
    vec![
        ("a plain request", Http("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"), Status(200)),
        ("not HTTP at all", Http("HELLO THERE\r\n\r\n"), Status(400)),
        ("nothing at all", Nothing, ClosedAfter(10)),
        ("half the headers", Http("GET /health/live HTTP/1.1\r\nHost: x\r\n"), ClosedAfter(10)),
        ("a header line every 2 s", Trickle, ClosedAfter(10)),
        ("half a WebSocket handshake", Http("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"), ClosedAfter(10)),
        ("an upload that announces 5 MB and sends none", Http(leak(format!("{upload}Content-Length: 5000000\r\n\r\n"))), StatusAfter(408, 30)),
        ("an upload that stalls halfway", Http(leak(format!("{upload}Content-Length: 400\r\n\r\n{}", row()))), StatusAfter(408, 30)),
        ("a login body that stalls", Http(json_post("/api/auth/login", 60, "{\"email\":")), StatusAfter(408, 30)),
        ("a thread body that stalls", Http(json_post("/api/threads", 40, "{\"title\":")), StatusAfter(408, 30)),
        ("a dev-login body that stalls", Http(json_post("/api/auth/dev-login", 40, "{")), StatusAfter(408, 30)),
        ("a login body that is not JSON", Http(json_post("/api/auth/login", 1, "{")), Status(400)),
        ("an access token in the query", Http(leak(upgrade_request("/ws?token={token}", ""))), Status(401)),
        ("an unsigned token", Http(leak(upgrade_request("/ws", "Sec-WebSocket-Protocol: jwt.eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.\r\n"))), Status(401)),
        ("a text that is not UTF-8", Frame(frame(FIN_TEXT, &[0x7b, 0xff, 0xfe, 0x7d], true)), Close(1007)),
        ("an unmasked client frame", Frame(frame(FIN_TEXT, br#"{"type":"ping"}"#, false)), Close(1002)),
        ("RSV1 set without an extension", Frame(frame(FIN_TEXT | RSV1, br#"{"type":"ping"}"#, true)), Close(1002)),
        ("a ping of 200 bytes", Frame(frame(FIN_PING, &[0; 200], true)), Close(1002)),
        ("a fragmented ping", Frame(frame(0x09, b"", true)), Close(1002)),
        ("a reserved opcode", Frame(frame(0x83, b"", true)), Close(1002)),
        ("a continuation of nothing", Frame(frame(0x80, b"{}", true)), Close(1002)),
        ("a close with an invalid code", Frame(frame(FIN_CLOSE, &999u16.to_be_bytes(), true)), Close(1002)),
        ("a frame over the hard cap", Frame(frame(FIN_TEXT, &vec![b' '; 2 << 20], true)), Close(1009)),
        ("a frame over the limit", Frame(frame(FIN_TEXT, &vec![b' '; 70_000], true)), ErrorThenClose("message_too_large", 1009)),
        ("a text that is not JSON", Frame(frame(FIN_TEXT, b"hello", true)), Error("invalid_json")),
        ("a binary frame", Frame(frame(FIN_BINARY, b"{}", true)), Error("invalid_json")),
        ("an unknown type", Frame(frame(FIN_TEXT, br#"{"type":"nope"}"#, true)), Error("unknown_type")),
        ("an empty message", Frame(frame(FIN_TEXT, br#"{"type":"user_message","payload":{"text":""}}"#, true)), Error("invalid_payload")),
        ("a message in two fragments", Frame([frame(0x01, br#"{"type":"#, true), frame(0x80, br#""ping"}"#, true)].concat()), Reply("\"pong\"")),
    ]
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A valid workload row, as NDJSON.
fn row() -> &'static str {
    "{\"timestamp\":\"2026-11-01T12:00:00Z\",\"model\":\"gpt-4o\",\"input_tokens\":10,\"output_tokens\":5}\n"
}

#[tokio::test(start_paused = true)]
async fn every_hostile_probe_gets_its_answer_in_time_and_changes_nothing() {
    let app = spawn_app().await;
    let session = app.user("mallory").await;
    let token = session.access_token.as_str();
    let mut wrong = Vec::new();
    for (name, probe, expect) in cases() {
        let started = tokio::time::Instant::now();
        let mut raw = match &probe {
            Probe::Frame(_) => Raw::websocket(&app, token).await,
            _ => Raw::connect(&app).await,
        };
        match probe {
            Probe::Http(text) => raw.send(text.replace("{token}", token).as_bytes()).await,
            Probe::Frame(bytes) => raw.send(&bytes).await,
            Probe::Nothing => {}
            Probe::Trickle => {
                raw.send(b"GET /health/live HTTP/1.1\r\n").await;
                for line in 0..20 {
                    if raw.next(Duration::from_secs(2)).await != Seen::Silence {
                        break;
                    }
                    raw.send(format!("X-Line-{line}: still coming\r\n").as_bytes()).await;
                }
            }
        }
        let verdict = check(&mut raw, &expect, started).await;
        if let Err(problem) = verdict {
            wrong.push(format!("{name}: expected {expect:?}, but {problem}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        app.store.workload_event_count(&session.user_id).await.unwrap(),
        0,
        "nothing of a stalled upload is stored"
    );
    let (status, _) = app.client.get("/health/live", None).await.unwrap();
    assert_eq!(status, 200, "the server still serves");
}

/// Whether what `raw` sees now matches `expect`; time counts from `started`.
async fn check(raw: &mut Raw, expect: &Expect, started: tokio::time::Instant) -> Result<(), String> {
    let elapsed = || started.elapsed();
    let at = |seconds: u64| {
        let elapsed = elapsed();
        let due = Duration::from_secs(seconds);
        if elapsed >= due && elapsed <= due + Duration::from_secs(1) {
            Ok(())
        } else {
            Err(format!("it came after {elapsed:?}"))
        }
    };
    let wait = Duration::from_secs(60);
    match *expect {
        Expect::Status(status) => match raw.next(wait).await {
            Seen::Status(got) if got == status => Ok(()),
            other => Err(format!("got {other:?}")),
        },
        Expect::StatusAfter(status, seconds) => match raw.next(wait).await {
            Seen::Status(got) if got == status => at(seconds),
            other => Err(format!("got {other:?}")),
        },
        Expect::ClosedAfter(seconds) => match raw.next(wait).await {
            Seen::Ended => at(seconds),
            other => Err(format!("got {other:?}")),
        },
        Expect::Close(code) => match raw.until_closed(wait).await {
            (Some(got), true) if got == code => Ok(()),
            other => Err(format!("got (close code, ended) = {other:?}")),
        },
        Expect::Error(code) => {
            expect_error(raw, code).await?;
            stays_open(raw).await
        }
        Expect::ErrorThenClose(code, close) => {
            expect_error(raw, code).await?;
            match raw.until_closed(wait).await {
                (Some(got), true) if got == close => Ok(()),
                other => Err(format!("then got (close code, ended) = {other:?}")),
            }
        }
        Expect::Reply(text) => {
            match raw.next(wait).await {
                Seen::Text(got) if got.contains(text) => {}
                other => return Err(format!("got {other:?}")),
            }
            stays_open(raw).await
        }
    }
}

async fn expect_error(raw: &mut Raw, code: &str) -> Result<(), String> {
    match raw.next(Duration::from_secs(60)).await {
        Seen::Text(text) if text.contains("\"error\"") && text.contains(&format!("\"code\":\"{code}\"")) => Ok(()),
        other => Err(format!("got {other:?}")),
    }
}

async fn stays_open(raw: &mut Raw) -> Result<(), String> {
    raw.send(&frame(FIN_PING, b"still there?", true)).await;
    match raw.next(Duration::from_secs(5)).await {
        Seen::Pong => Ok(()),
        other => Err(format!("after it, a ping got {other:?}")),
    }
}

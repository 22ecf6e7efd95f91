//! A fake OpenAI-compatible server for tests: real HTTP and server-sent events over a local
//! socket, answering each request with the next scripted [`Reply`]. Its pauses run on tokio's
//! clock, so tests on the paused clock take no wall time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// What the fake server answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status with a JSON body and, maybe, `Retry-After` in seconds.
    Json(StatusCode, Value, Option<u64>),
    /// `text/event-stream`: each piece of raw text after its pause.
    Sse(Vec<(Duration, String)>),
    /// These pieces, then nothing ever again (the connection stays open).
    SseThenHang(Vec<String>),
    /// No answer ever.
    Hang,
}

impl Reply {
    /// A whole chat completion of `text` (50 prompt tokens, 7 answer tokens).
    pub fn completion(text: &str) -> Self {
        Reply::Json(
            StatusCode::OK,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
            }),
            None,
        )
    }

    /// An API error: `{"error": {"message"}}` with the status, and `Retry-After` when given.
    pub fn error(status: StatusCode, message: &str, retry_after: Option<u64>) -> Self {
        Reply::Json(
            status,
            json!({"error": {"message": message, "type": "server_error"}}),
            retry_after,
        )
    }

    /// A whole stream of these text pieces, sent at once (see [`stream`]).
    pub fn stream(pieces: &[&str]) -> Self {
        Self::raw(stream(pieces))
    }

    /// Raw event-stream text, sent at once.
    pub fn raw(pieces: Vec<String>) -> Self {
        Reply::Sse(pieces.into_iter().map(|p| (Duration::ZERO, p)).collect())
    }
}

/// One streamed chunk carrying `text`.
pub fn chunk(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

/// A whole stream as OpenAI sends it: the role, the pieces, the finish, the usage (120 prompt
/// tokens, 30 answer tokens), `[DONE]`.
pub fn stream(pieces: &[&str]) -> Vec<String> {
    let mut out = vec![format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    )];
    out.extend(pieces.iter().map(|p| chunk(p)));
    out.push(format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ));
    out.push(format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}})
    ));
    out.push("data: [DONE]\n\n".to_owned());
    out
}

#[derive(Debug, Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<(Value, Option<String>)>>,
    dropped: AtomicUsize,
    dropped_now: tokio::sync::Notify,
}

/// Counts a request whose handling was dropped before it finished.
struct DropCount(Arc<Shared>, bool);

impl Drop for DropCount {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            self.0.dropped_now.notify_waiters();
        }
    }
}

/// The running fake server.
#[derive(Debug, Clone)]
pub struct FakeServer {
    shared: Arc<Shared>,
    base_url: String,
}

impl FakeServer {
    /// Starts on a free local port with these replies, in order.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let shared = Arc::new(Shared {
            replies: Mutex::new(replies.into()),
            ..Shared::default()
        });
        let router = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("a bound address");
        // Without TCP_NODELAY small chunks wait for delayed ACKs, and the paused clock would
        // jump while they do.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            shared,
            base_url: format!("http://{addr}/v1"),
        }
    }

    /// The API root to configure a client with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Each request so far: its JSON body and its `Authorization` header.
    pub fn requests(&self) -> Vec<(Value, Option<String>)> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests whose answer was dropped before it finished (the client went away).
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests were dropped (the server learns it from the
    /// connection, a moment after the client let go); returns how many were.
    pub async fn dropped_at_least(&self, count: usize) -> usize {
        loop {
            let dropped_now = self.shared.dropped_now.notified();
            let dropped = self.dropped();
            if dropped >= count {
                return dropped;
            }
            dropped_now.await;
        }
    }
}

async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.seen.lock().unwrap().push((body, auth));
    let Some(reply) = shared.replies.lock().unwrap().pop_front() else {
        let error = Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "no reply is scripted", None);
        return respond(error, DropCount(shared, true)).await;
    };
    respond(reply, DropCount(Arc::clone(&shared), false)).await
}

async fn respond(reply: Reply, mut guard: DropCount) -> Response {
    match reply {
        Reply::Json(status, body, retry_after) => {
            guard.1 = true;
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
        Reply::Sse(pieces) => {
            guard.1 = true;
            let body = futures_util::stream::iter(pieces).then(|(pause, text)| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, Infallible>(Bytes::from(text))
            });
            event_stream(Body::from_stream(body))
        }
        Reply::SseThenHang(pieces) => {
            let first = futures_util::stream::iter(pieces).map(|text| Ok::<_, Infallible>(Bytes::from(text)));
            let hang = futures_util::stream::once(async move {
                let _guard = guard;
                std::future::pending::<Result<Bytes, Infallible>>().await
            });
            event_stream(Body::from_stream(first.chain(hang)))
        }
        Reply::Hang => {
            let _guard = guard;
            std::future::pending().await
        }
    }
}

fn event_stream(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

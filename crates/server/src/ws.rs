//! `GET /ws`: authentication before the upgrade, then one task per connection that consumes a
//! closed set of inputs (a client frame, a run event to deliver, a timer, the token's expiry,
//! shutdown) and a writer task fed through a bounded queue.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use switchboard_protocol::{
    ClientFrame, ConnectionEstablished, ConnectionId, Control, ControlFrame, ErrorBody, ErrorCode, ErrorPayload,
    Heartbeat, HistoryMessage, PROTOCOL_NAME, Resumed, Seq, ThreadHistory, Timestamp, UserId,
};
use switchboard_store::StoreError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::{TokenType, bearer_value};
use crate::delivery::Delivered;
use crate::delivery::Delivery;
use crate::error::ApiError;
use crate::limits::{Admission, admit};
use crate::listener::OpenConnection;

/// Frames waiting for the writer; when full, the connection task waits (and a lagging live
/// stream is re-read from the store).
const OUTBOUND_BUFFER: usize = 256;
/// A write that takes longer than this ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write buffer of a socket.
const SOCKET_BUFFER: usize = 8 * 1024;
/// How long to wait for the peer's close reply after sending a close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Close codes of PROTOCOL.md section 6.
mod close_code {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const PROTOCOL_ERROR: u16 = 1002;
    pub(super) const INVALID_DATA: u16 = 1007;
    pub(super) const POLICY: u16 = 1008;
    pub(super) const TOO_LARGE: u16 = 1009;
    pub(super) const INTERNAL: u16 = 1011;
}

/// Query of `GET /ws`.
#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    ticket: Option<String>,
    after_seq: Option<String>,
}

/// Who the connection belongs to, and what protocol to answer with.
struct Credential {
    user: UserId,
    /// Seconds since the epoch when the credential's token expires.
    token_exp: i64,
    /// The subprotocol to select.
    protocol: Option<String>,
}

async fn authenticate(state: &AppState, headers: &HeaderMap, ticket: Option<&str>) -> Result<Credential, String> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let speaks_v1 = offered.iter().any(|p| p == PROTOCOL_NAME);
    let carried = offered.iter().find_map(|p| {
        p.strip_prefix("jwt.")
            .or_else(|| p.strip_prefix("bearer."))
            .map(|t| (p.clone(), t.to_owned()))
    });
    let verify = |token: &str| {
        state
            .tokens
            .verify(token, TokenType::Access)
            .map_err(|e| format!("The access token was refused: {e}."))
    };
    if let Some((value, token)) = carried {
        let (user, claims) = verify(&token)?;
        let protocol = if speaks_v1 { PROTOCOL_NAME.to_owned() } else { value };
        return Ok(Credential {
            user,
            token_exp: claims.exp,
            protocol: Some(protocol),
        });
    }
    let protocol = speaks_v1.then(|| PROTOCOL_NAME.to_owned());
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_value)
    {
        let (user, claims) = verify(token)?;
        return Ok(Credential {
            user,
            token_exp: claims.exp,
            protocol,
        });
    }
    if let Some(ticket) = ticket {
        let (user, token_exp) = state
            .tickets
            .redeem_anywhere(ticket)
            .await
            .ok_or_else(|| "The ticket is unknown, expired or already used.".to_owned())?;
        return Ok(Credential {
            user,
            token_exp,
            protocol,
        });
    }
    Err(
        "Sign in first: offer the subprotocol jwt.<access token>, send Authorization: Bearer <access token>, \
         or use ?ticket= from POST /api/ws-ticket."
            .to_owned(),
    )
}

/// Opens the WebSocket (PROTOCOL.md sections 1 to 6).
///
/// The credential is checked before the upgrade, in this order: an offered subprotocol
/// `jwt.<access token>` (or `bearer.<access token>`; offer `switchboard.v1` beside it and that is
/// selected), `Authorization: Bearer <access token>`, or `?ticket=` from `POST /api/ws-ticket`.
/// Tokens are never accepted in the query string.
#[utoipa::path(
    get,
    path = "/ws",
    tag = crate::api::tag::SOCKET,
    security(("subprotocol" = []), ("bearer" = []), ("ticket" = [])),
    params(
        ("after_seq" = Option<u64>, Query, description = "Replay the user's durable events after this seq first."),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the socket speaks `switchboard.v1`; its first frame is \
            `connection_established`."),
        (status = 400, description = "Not a WebSocket handshake, or a query that cannot be read.", body = String,
            content_type = "text/plain"),
        (status = 401, description = "No valid credential (`unauthorized`).", body = ErrorBody),
        (status = 422, description = "`after_seq` is not a whole number (`invalid_request`).", body = ErrorBody),
        (status = 429, description = "The user has as many open connections (sockets and event streams) as \
            allowed (`too_many_connections`).", body = ErrorBody),
    )
)]
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    open: Option<Extension<OpenConnection>>,
    ws: WebSocketUpgrade,
) -> Response {
    let credential = match authenticate(&state, &headers, query.ticket.as_deref()).await {
        Ok(credential) => credential,
        Err(message) => {
            state.metrics.error(ErrorCode::Unauthorized);
            return ApiError::unauthorized(message).into_response();
        }
    };
    let after = match query.after_seq.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(after)) => Some(Seq::new(after)),
        Some(Err(_)) => return ApiError::invalid("after_seq must be a whole number.").into_response(),
    };
    let admission = match admit(&state, &credential.user, credential.token_exp).await {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    // Frames up to the hard cap are read whole, so that a frame over the protocol's limit can
    // be answered with `message_too_large` before the close.
    let hard_cap = state.config.max_frame_bytes.saturating_mul(16).max(1 << 20);
    let mut ws = socket_settings(ws, hard_cap);
    if let Some(protocol) = credential.protocol.clone() {
        ws = ws.protocols([protocol]);
    }
    let span = tracing::info_span!("connection", user_id = %credential.user);
    ws.on_upgrade(move |socket| {
        let serving = serve(state, socket, credential, after, admission);
        // The socket keeps its place under the server-wide connection cap while it is open.
        tracing::Instrument::instrument(
            async move {
                serving.await;
                drop(open)
            },
            span,
        )
    })
}

/// The settings of every socket the server upgrades: messages and frames up to `max_message`
/// bytes, and small buffers. tungstenite zero-fills its whole read buffer before each read, and
/// keeps both buffers for the life of the socket, so the 128 KiB defaults cost CPU on every
/// frame and memory on every idle connection. Larger frames still grow the buffer as needed.
pub(crate) fn socket_settings(ws: WebSocketUpgrade, max_message: usize) -> WebSocketUpgrade {
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
}

/// The close code and reason a failed read is answered with (RFC 6455 section 7.4.1), when the peer broke
/// the protocol rather than the connection: 1009 for a frame over the cap, 1007 for a text that
/// is not UTF-8, 1002 for any other protocol error (an unmasked frame, reserved bits, a control
/// frame over 125 bytes or fragmented, an unknown opcode, a stray continuation). `None`: the
/// connection itself failed, and there is nobody to tell.
pub(crate) fn close_for_read_error(error: axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let (code, reason) = match error.into_inner().downcast_ref::<Error>()? {
        Error::Capacity(_) => (close_code::TOO_LARGE, "the frame is too large"),
        Error::Utf8(_) => (close_code::INVALID_DATA, "the text is not valid UTF-8"),
        // The peer is gone, or has closed already: nobody to tell.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake | ProtocolError::ReceivedAfterClosing) => {
            return None;
        }
        Error::Protocol(_) => (close_code::PROTOCOL_ERROR, "protocol error"),
        _ => return None,
    };
    Some((code, reason))
}

/// The inputs of a connection's loop.
enum Input {
    Shutdown,
    TokenExpired,
    Frame(Option<Result<Message, axum::Error>>),
    /// The next event of the user's log, or a notice.
    Event(Result<Delivered, StoreError>),
    Timer,
}

/// What the loop does next.
enum Flow {
    Continue,
    Close(u16, &'static str),
    Stop,
}

struct Connection {
    state: AppState,
    user: UserId,
    out: mpsc::Sender<Message>,
    delivery: Delivery,
}

async fn serve(state: AppState, socket: WebSocket, credential: Credential, after: Option<Seq>, admission: Admission) {
    let _tracked = state.sockets.token();
    state.metrics.connections.inc();
    let connection_id = ConnectionId::generate();
    let (sink, mut stream) = socket.split();
    let (out, outbound) = mpsc::channel(OUTBOUND_BUFFER);
    let writer = tokio::spawn(write_loop(sink, outbound));
    let (delivery, last_seq) = match Delivery::start(Arc::clone(&state.log), credential.user.clone(), after).await {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(%error, "cannot read the user's events");
            let _ = out
                .send(close_message(close_code::INTERNAL, "the event store failed"))
                .await;
            finish(state, out, writer, stream).await;
            return;
        }
    };
    let mut connection = Connection {
        state: state.clone(),
        user: credential.user.clone(),
        out,
        delivery,
    };
    let established = Control::ConnectionEstablished(ConnectionEstablished {
        connection_id,
        user_id: credential.user.clone(),
        protocol: PROTOCOL_NAME.to_owned(),
        server_time: Timestamp::now(),
        heartbeat_interval_ms: state.config.heartbeat_interval.as_millis() as u64,
        last_seq,
    });
    let mut flow = connection.send_control(established).await;
    if let (Flow::Continue, Some(after)) = (&flow, after) {
        let resumed = Control::Resumed(Resumed {
            from_seq: after,
            to_seq: last_seq,
        });
        flow = connection.send_control(resumed).await;
    }
    if matches!(flow, Flow::Continue) {
        flow = connection.run(&mut stream, admission.expires).await;
    }
    if let Flow::Close(code, reason) = flow {
        let _ = connection.out.send(close_message(code, reason)).await;
    }
    let Connection { out, .. } = connection;
    finish(state, out, writer, stream).await;
}

/// Lets the writer flush (a close frame included), waits briefly for the peer's close reply,
/// and counts the connection out.
async fn finish(
    state: AppState,
    out: mpsc::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
) {
    drop(out);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer).await;
    // Reading on until the peer closes lets the close handshake finish.
    let _ = tokio::time::timeout(CLOSE_GRACE, async { while stream.next().await.is_some() {} }).await;
    state.metrics.connections.dec();
}

pub(crate) fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// The most frames written to the socket at once.
const WRITE_BATCH: usize = 64;

/// Writes the frames queued for the socket: as many as are waiting, up to `WRITE_BATCH`, then
/// one flush, so that the events of one stored batch leave in one write rather than one each.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut outbound: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while outbound.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let closing = batch.iter().any(|message| matches!(message, Message::Close(_)));
        let write = async {
            // Nothing after a close frame.
            for message in batch.drain(..) {
                let close = matches!(message, Message::Close(_));
                sink.feed(message).await?;
                if close {
                    break;
                }
            }
            sink.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) if !closing => {}
            _ => break,
        }
    }
}

impl Connection {
    async fn run(&mut self, stream: &mut futures_util::stream::SplitStream<WebSocket>, expiry: Instant) -> Flow {
        let config = Arc::clone(&self.state.config);
        let (interval, pong_timeout) = (config.heartbeat_interval, config.pong_timeout);
        let shutdown = self.state.closing.clone();
        let mut last_received = Instant::now();
        let mut last_beat = last_received;
        loop {
            let idle_deadline = last_received + interval + pong_timeout;
            let next_beat = last_received.max(last_beat) + interval;
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => Input::Shutdown,
                () = tokio::time::sleep_until(expiry) => Input::TokenExpired,
                frame = stream.next() => Input::Frame(frame),
                event = self.delivery.next() => Input::Event(event),
                () = tokio::time::sleep_until(idle_deadline.min(next_beat)) => Input::Timer,
            };
            let flow = match input {
                Input::Shutdown => Flow::Close(close_code::GOING_AWAY, "the server is shutting down"),
                Input::TokenExpired => Flow::Close(close_code::POLICY, "the access token expired"),
                Input::Frame(None) => Flow::Stop,
                Input::Frame(Some(Err(error))) => {
                    tracing::debug!(%error, "socket read failed");
                    match close_for_read_error(error) {
                        Some((code, reason)) => Flow::Close(code, reason),
                        None => Flow::Stop,
                    }
                }
                Input::Frame(Some(Ok(message))) => {
                    last_received = Instant::now();
                    self.on_message(message).await
                }
                Input::Event(Ok(Delivered::Event(record))) => {
                    self.state.metrics.events_sent.inc();
                    self.send(Message::Text(Utf8Bytes::from(record.json.as_str()))).await
                }
                Input::Event(Ok(Delivered::Notice(frame))) => self.send_frame(&frame).await,
                Input::Event(Err(error)) => {
                    tracing::error!(%error, "cannot read the user's events");
                    Flow::Close(close_code::INTERNAL, "the event store failed")
                }
                Input::Timer => {
                    let now = Instant::now();
                    if now >= idle_deadline {
                        Flow::Close(close_code::GOING_AWAY, "no answer to heartbeats")
                    } else {
                        last_beat = now;
                        let beat = Control::Heartbeat(Heartbeat {
                            server_time: Timestamp::now(),
                            last_seq: self.delivery.known(),
                        });
                        match self.send_control(beat).await {
                            Flow::Continue => self.send(Message::Ping(Default::default())).await,
                            other => other,
                        }
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    async fn send(&self, message: Message) -> Flow {
        match self.out.send(message).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    async fn send_control(&self, body: Control) -> Flow {
        self.send_frame(&ControlFrame::now(body)).await
    }

    async fn send_frame(&self, frame: &ControlFrame) -> Flow {
        match serde_json::to_string(frame) {
            Ok(text) => self.send(Message::Text(Utf8Bytes::from(text))).await,
            Err(error) => {
                tracing::error!(%error, "cannot write a control frame");
                Flow::Close(close_code::INTERNAL, "internal error")
            }
        }
    }

    async fn send_error(&self, code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Flow {
        self.state.metrics.error(code);
        let payload = ErrorPayload {
            code,
            message: message.into(),
            reference,
        };
        self.send_control(Control::Error(payload)).await
    }

    async fn on_message(&mut self, message: Message) -> Flow {
        match message {
            Message::Text(text) => {
                if text.len() > self.state.config.max_frame_bytes {
                    let limit = self.state.config.max_frame_bytes;
                    let sentence = format!("The frame has {} bytes; the limit is {limit}.", text.len());
                    return match self.send_error(ErrorCode::MessageTooLarge, sentence, None).await {
                        Flow::Continue => Flow::Close(close_code::TOO_LARGE, "the frame is too large"),
                        other => other,
                    };
                }
                self.on_text(text.as_str()).await
            }
            Message::Binary(_) => {
                self.send_error(
                    ErrorCode::InvalidJson,
                    "Binary frames are not accepted; send JSON in text frames.",
                    None,
                )
                .await
            }
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
            Message::Close(_) => Flow::Stop,
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(error) => return self.send_error(error.code, error.message, None).await,
        };
        let state = self.state.clone();
        match frame {
            ClientFrame::UserMessage(message) => {
                let reference = message.client_message_id.clone();
                match state.runs.submit(&self.user, message).await {
                    Ok(accepted) => self.send_control(Control::MessageAccepted(accepted)).await,
                    Err(refusal) => {
                        self.state.metrics.message_refused(refusal.code);
                        self.send_error(refusal.code, refusal.message, reference).await
                    }
                }
            }
            ClientFrame::StopAgent(stop) => match state.runs.cancel(&self.user, &stop.run_id).await {
                Ok(()) => Flow::Continue,
                Err(refusal) => {
                    self.send_error(refusal.code, refusal.message, Some(stop.run_id.to_string()))
                        .await
                }
            },
            ClientFrame::Resume(resume) => match self.delivery.resume(resume.after_seq).await {
                Ok(to_seq) => {
                    let resumed = Resumed {
                        from_seq: resume.after_seq,
                        to_seq,
                    };
                    self.send_control(Control::Resumed(resumed)).await
                }
                Err(error) => {
                    tracing::error!(%error, "resume failed");
                    self.send_error(ErrorCode::Internal, "The events could not be read; try again.", None)
                        .await
                }
            },
            ClientFrame::GetThreadHistory(request) => {
                match state.store.messages(&self.user, &request.thread_id).await {
                    Ok(messages) => {
                        let history = ThreadHistory {
                            thread_id: request.thread_id,
                            messages: messages.into_iter().map(history_message).collect(),
                        };
                        self.send_control(Control::ThreadHistory(history)).await
                    }
                    Err(StoreError::NotFound(_)) => {
                        let reference = Some(request.thread_id.to_string());
                        self.send_error(ErrorCode::ThreadNotFound, "No such thread.", reference)
                            .await
                    }
                    Err(error) => {
                        tracing::error!(%error, "reading a thread failed");
                        self.send_error(ErrorCode::Internal, "The thread could not be read; try again.", None)
                            .await
                    }
                }
            }
            ClientFrame::Ping(_) => self.send_control(Control::Pong(Default::default())).await,
        }
    }
}

/// A stored message as the protocol shows it.
pub(crate) fn history_message(message: switchboard_store::Message) -> HistoryMessage {
    HistoryMessage {
        id: message.id,
        role: message.role,
        text: message.text,
        run_id: message.run_id,
        created_at: message.created_at,
    }
}

//! Frames on the WebSocket: what clients send (section 5) and the control frames the server sends
//! (sections 1, 4, 5, 6). Run events live in [`crate::events`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ConnectionId, Event, MessageId, RunId, RunStatus, Seq, ThreadId, Timestamp, UserId};

/// The protocol name selected as WebSocket subprotocol and reported in `connection_established`.
pub const PROTOCOL_NAME: &str = "switchboard.v1";

/// Error codes of `error` frames and of HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object with a string `type` (or was binary).
    InvalidJson,
    /// The frame's `type` is not one the server knows.
    UnknownType,
    /// The payload does not fit the type (e.g. empty or too long text).
    InvalidPayload,
    /// No such thread for this user.
    ThreadNotFound,
    /// No such run for this user.
    RunNotFound,
    /// The user already has the maximum number of active runs.
    TooManyActiveRuns,
    /// Too many messages in the current minute.
    RateLimited,
    /// The frame is over the size limit.
    MessageTooLarge,
    /// No valid credential.
    Unauthorized,
    /// Too many open connections for the user.
    TooManyConnections,
    /// A resource was not found (HTTP).
    NotFound,
    /// The request conflicts with existing state (HTTP).
    Conflict,
    /// The request body is invalid (HTTP).
    InvalidRequest,
    /// The server is shutting down.
    ShuttingDown,
    /// The server runs as many runs as it may; try again shortly.
    ServerBusy,
    /// Uploaded rows are invalid; nothing was stored (HTTP).
    InvalidRows,
    /// The request body is over the size limit (HTTP).
    PayloadTooLarge,
    /// The request body did not arrive within its deadline; nothing of it was used (HTTP 408).
    RequestTimeout,
    /// A storage tier (PostgreSQL, ClickHouse, ...) is slow or cannot be reached; nothing was
    /// stored. Trying again shortly may work.
    StoreUnavailable,
    /// Something failed inside the server.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::ThreadNotFound => "thread_not_found",
            ErrorCode::RunNotFound => "run_not_found",
            ErrorCode::TooManyActiveRuns => "too_many_active_runs",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::InvalidRows => "invalid_rows",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client frames

/// Payload of `user_message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMessage {
    /// What the user wrote.
    pub text: String,
    /// The thread to continue; none starts a new thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<ThreadId>,
    /// The client's own id, for idempotent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

/// Payload of `stop_agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopAgent {
    /// The run to stop.
    pub run_id: RunId,
}

/// Payload of `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// Replay every durable event with a greater seq.
    pub after_seq: Seq,
}

/// Payload of `get_thread_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetThreadHistory {
    /// The thread to read.
    pub thread_id: ThreadId,
}

/// An empty payload, written `{}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// Every frame a client may send: the closed set of section 5.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Starts a run.
    UserMessage(UserMessage),
    /// Cancels a run.
    StopAgent(StopAgent),
    /// Asks for replay.
    Resume(Resume),
    /// Asks for a thread's messages.
    GetThreadHistory(GetThreadHistory),
    /// Asks for a `pong`.
    Ping(Empty),
}

/// Why a client frame was refused: the code and sentence of the `error` frame to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// `invalid_json`, `unknown_type` or `invalid_payload`.
    pub code: ErrorCode,
    /// What is wrong, for the client author.
    pub message: String,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Longest frame type an error message quotes, in characters.
const MAX_QUOTED_TYPE: usize = 64;
/// Longest reason from the JSON reader an error message gives, in characters: it can quote the
/// offending value, which may be as long as the frame.
const MAX_REASON: usize = 200;

/// `reason` cut to [`MAX_REASON`] characters: its start and its end (which says what was
/// expected) around an ellipsis.
fn shortened(reason: &str) -> String {
    let count = reason.chars().count();
    if count <= MAX_REASON {
        return reason.to_owned();
    }
    let half = (MAX_REASON - 1) / 2;
    let start: String = reason.chars().take(half).collect();
    let end: String = reason.chars().skip(count - half).collect();
    format!("{start}…{end}")
}

impl ClientFrame {
    /// Every client frame type, by wire name.
    pub const TYPES: [&'static str; 5] = ["user_message", "stop_agent", "resume", "get_thread_history", "ping"];

    /// Parses a text frame, telling apart the three ways it can be wrong.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| FrameError::new(ErrorCode::InvalidJson, format!("the frame is not valid JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(FrameError::new(
                ErrorCode::InvalidJson,
                "the frame must be a JSON object",
            ));
        };
        let Some(Value::String(kind)) = object.remove("type") else {
            return Err(FrameError::new(
                ErrorCode::InvalidJson,
                "the frame must have a string field `type`",
            ));
        };
        let payload = match object.remove("payload") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(p @ Value::Object(_)) => p,
            Some(_) => {
                let shown: String = kind.chars().take(MAX_QUOTED_TYPE).collect();
                return Err(FrameError::new(
                    ErrorCode::InvalidPayload,
                    format!("the payload of `{shown}` must be a JSON object"),
                ));
            }
        };
        fn payload_of<T: serde::de::DeserializeOwned>(kind: &str, payload: Value) -> Result<T, FrameError> {
            serde_json::from_value(payload).map_err(|e| {
                FrameError::new(
                    ErrorCode::InvalidPayload,
                    format!("invalid payload for `{kind}`: {}", shortened(&e.to_string())),
                )
            })
        }
        Ok(match kind.as_str() {
            "user_message" => ClientFrame::UserMessage(payload_of(&kind, payload)?),
            "stop_agent" => ClientFrame::StopAgent(payload_of(&kind, payload)?),
            "resume" => ClientFrame::Resume(payload_of(&kind, payload)?),
            "get_thread_history" => ClientFrame::GetThreadHistory(payload_of(&kind, payload)?),
            "ping" => ClientFrame::Ping(Empty {}),
            other => {
                let shown: String = other.chars().take(MAX_QUOTED_TYPE).collect();
                return Err(FrameError::new(
                    ErrorCode::UnknownType,
                    format!(
                        "unknown frame type `{shown}`; expected one of {}",
                        ClientFrame::TYPES.join(", ")
                    ),
                ));
            }
        })
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        ClientFrame::parse(&value.to_string()).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Server frames

/// Payload of `connection_established`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEstablished {
    /// This connection.
    pub connection_id: ConnectionId,
    /// The signed-in user.
    pub user_id: UserId,
    /// Always [`PROTOCOL_NAME`].
    pub protocol: String,
    /// The server's clock.
    pub server_time: Timestamp,
    /// How often the server sends heartbeats to an idle connection.
    pub heartbeat_interval_ms: u64,
    /// The newest durable seq of this user (0 when none).
    pub last_seq: Seq,
}

/// Payload of `message_accepted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAccepted {
    /// Echo of the client's id.
    pub client_message_id: Option<String>,
    /// The stored message.
    pub message_id: MessageId,
    /// The thread it belongs to.
    pub thread_id: ThreadId,
    /// The run it started.
    pub run_id: RunId,
}

/// Payload of `heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The server's clock.
    pub server_time: Timestamp,
    /// The newest durable seq of this user.
    pub last_seq: Seq,
}

/// Payload of `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorPayload {
    /// What kind of problem.
    pub code: ErrorCode,
    /// A sentence explaining it.
    pub message: String,
    /// What the error refers to (a run id, a client message id), when known.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Who wrote a message of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The user.
    User,
    /// The agents' answer.
    Assistant,
}

/// One message of a thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryMessage {
    /// The message.
    pub id: MessageId,
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub text: String,
    /// The run it started or answered.
    pub run_id: Option<RunId>,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// Payload of `thread_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadHistory {
    /// The thread.
    pub thread_id: ThreadId,
    /// Its messages, oldest first.
    pub messages: Vec<HistoryMessage>,
}

/// Payload of `resumed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    /// The replay starts after this seq.
    pub from_seq: Seq,
    /// The newest seq at the time of the request; live events follow it.
    pub to_seq: Seq,
}

/// Payload of `store_delayed`: a run of the user ended, but the store has not stored its last
/// events yet (it is slow or down). They are kept, and are sent as usual, in order, once the
/// store has them; until then this is all the client knows of the run's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreDelayed {
    /// The run.
    pub run_id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// How the run ended.
    pub status: RunStatus,
    /// How long the run took.
    pub duration_ms: u64,
    /// The tier that is late: `sqlite`, `postgres`.
    pub tier: String,
    /// How long the store has not answered.
    pub waited_ms: u64,
    /// The sentence to show, naming the tier and the wait.
    pub message: String,
}

/// The control frames: not durable, no `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Control {
    /// First frame of every connection.
    ConnectionEstablished(ConnectionEstablished),
    /// A `user_message` was stored and its run started.
    MessageAccepted(MessageAccepted),
    /// Keep-alive for an idle connection.
    Heartbeat(Heartbeat),
    /// Answer to `ping`.
    Pong(Empty),
    /// A problem with a client frame.
    Error(ErrorPayload),
    /// Answer to `get_thread_history`.
    ThreadHistory(ThreadHistory),
    /// Answer to `resume` (or `?after_seq`), before the replayed events.
    Resumed(Resumed),
    /// A run ended whose last events the store has not stored yet.
    StoreDelayed(StoreDelayed),
}

/// A control frame with its timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlFrame {
    /// When the frame was produced.
    pub timestamp: Timestamp,
    /// Type and payload.
    #[serde(flatten)]
    pub body: Control,
}

impl ControlFrame {
    /// A control frame stamped now.
    pub fn now(body: Control) -> Self {
        Self {
            timestamp: Timestamp::now(),
            body,
        }
    }
}

/// Every frame the server sends: a durable run event or a control frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    /// A run event (has `seq`).
    Event(Event),
    /// A control frame (no `seq`).
    Control(ControlFrame),
}

impl ServerFrame {
    /// The wire name of the frame's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Event(e) => e.type_name(),
            ServerFrame::Control(c) => c.body.type_name(),
        }
    }
}

impl Control {
    /// The wire name of the frame's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Control::ConnectionEstablished(_) => "connection_established",
            Control::MessageAccepted(_) => "message_accepted",
            Control::Heartbeat(_) => "heartbeat",
            Control::Pong(_) => "pong",
            Control::Error(_) => "error",
            Control::ThreadHistory(_) => "thread_history",
            Control::Resumed(_) => "resumed",
            Control::StoreDelayed(_) => "store_delayed",
        }
    }
}

/// The HTTP error body: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorPayload,
}

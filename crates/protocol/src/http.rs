//! The bodies of the HTTP API (PROTOCOL.md section 7 and its additions): what clients send and
//! what the server answers, as serde types. Every error is an [`ErrorBody`]; refused workload
//! rows are a [`RowsErrorBody`].
//!
//! With the `openapi` feature each type is also a `utoipa::ToSchema`, from which the server's
//! OpenAPI document is generated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::ErrorBody;
use crate::{
    AgentName, ErrorCode, Event, HistoryMessage, ModelCallUsage, RunId, RunStatus, RunTimings, ThreadId, Timestamp,
    UserId,
};

// ---------------------------------------------------------------------------------------------
// Signing in

/// Body of `POST /api/auth/register` and `POST /api/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    /// The email address (compared without surrounding spaces).
    #[cfg_attr(feature = "openapi", schema(examples("ada@example.com")))]
    pub email: String,
    /// The password: 8 to 1024 characters when registering.
    #[cfg_attr(feature = "openapi", schema(examples("correct horse battery staple")))]
    pub password: String,
}

/// Body of `POST /api/auth/refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshRequest {
    /// The newest refresh token of the sign-in.
    pub refresh_token: String,
}

/// Optional body of `POST /api/auth/dev-login`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevLoginRequest {
    /// Sign in as this user, created on first use; the dev user when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A user, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// The user.
    pub id: UserId,
    /// The email address, lower-cased.
    pub email: String,
}

/// Answer of `POST /api/auth/register` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    /// The new user.
    pub user: User,
}

/// The kind of the access token: always `Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TokenType {
    /// Sent as `Authorization: Bearer <access token>`.
    Bearer,
}

/// Answer of login, refresh and dev-login: a new pair of tokens and the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedIn {
    /// A JWT for the API and the socket.
    pub access_token: String,
    /// A JWT that buys one new pair (`POST /api/auth/refresh`).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: TokenType,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Who signed in.
    pub user: User,
}

/// Answer of `POST /api/ws-ticket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WsTicket {
    /// Single use: `GET /ws?ticket=...`.
    pub ticket: String,
    /// Seconds the ticket stays valid.
    pub expires_in: u64,
}

// ---------------------------------------------------------------------------------------------
// Threads and runs

/// Optional body of `POST /api/threads`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewThread {
    /// At most 200 characters; empty when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// A conversation thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Thread {
    /// The thread.
    pub id: ThreadId,
    /// Its title (may be empty).
    pub title: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When a message was last added.
    pub updated_at: Timestamp,
}

/// Answer of `GET /api/threads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Threads {
    /// The user's threads, most recently updated first.
    pub threads: Vec<Thread>,
}

/// Answer of `GET /api/threads/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Messages {
    /// The thread's messages, oldest first (as in `thread_history`).
    pub messages: Vec<HistoryMessage>,
}

/// Where a run stands: `running`, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Not finished yet.
    Running,
    /// Ended with an answer.
    Completed,
    /// Ended without one because something failed.
    Failed,
    /// A deadline ran out.
    TimedOut,
    /// Stopped on request.
    Cancelled,
    /// The server stopped or crashed while it was active.
    Interrupted,
}

impl From<RunStatus> for RunState {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Completed => RunState::Completed,
            RunStatus::Failed => RunState::Failed,
            RunStatus::TimedOut => RunState::TimedOut,
            RunStatus::Cancelled => RunState::Cancelled,
            RunStatus::Interrupted => RunState::Interrupted,
        }
    }
}

/// Answer of `GET /api/runs/{id}` and `POST /api/runs/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Run {
    /// The run.
    pub id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// `running` or the final status.
    pub status: RunState,
    /// When its message was accepted.
    pub started_at: Timestamp,
    /// When its final event was stored; `null` while running.
    pub finished_at: Option<Timestamp>,
    /// From the final event; `null` while running.
    pub duration_ms: Option<u64>,
    /// Where the run's time went, from the final event; `null` while running.
    pub timings: Option<RunTimings>,
    /// The run's language-model calls, from the final event (empty while running).
    pub model_calls: Vec<ModelCallUsage>,
    /// The agents whose part of the answer is missing, from the final event (empty while
    /// running).
    pub missing: Vec<AgentName>,
}

// ---------------------------------------------------------------------------------------------
// Events

/// Query of `GET /api/events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct EventsQuery {
    /// Events with a greater seq (0 when not given). `Last-Event-ID` takes its place on a
    /// stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// At most this many events (1 to 1000; 100 when not given). Not used by a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<usize>,
}

/// Answer of `GET /api/events` as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsPage {
    /// The user's durable events after `after_seq`, in seq order, as on the socket.
    pub events: Vec<Event>,
}

// ---------------------------------------------------------------------------------------------
// Workload data

/// Whether a workload call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// The model answered.
    Ok,
    /// The call failed.
    Error,
}

/// One row of `POST /api/workload-events`: one of the team's own model calls. The bounds of its
/// figures are those of `switchboard_store` (`MAX_CALL_TOKENS`, ...); a text field has 1 to 200
/// characters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkloadRow {
    /// When the call was made (RFC 3339, any offset), from 2000-01-01T00:00:00Z to
    /// 2100-12-31T23:59:59.999Z.
    pub timestamp: Timestamp,
    /// The model called; its price is looked up in the price table when `cost_usd` is not given.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub model: String,
    /// Prompt tokens.
    #[cfg_attr(feature = "openapi", schema(maximum = 10_000_000))]
    pub input_tokens: u64,
    /// Answer tokens.
    #[cfg_attr(feature = "openapi", schema(maximum = 10_000_000))]
    pub output_tokens: u64,
    /// Who serves the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub provider: Option<String>,
    /// How long the call took, in milliseconds (at most a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 86_400_000))]
    pub latency_ms: Option<f64>,
    /// `ok` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CallStatus>,
    /// The product feature that made the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub feature: Option<String>,
    /// A hash of the prompt, to find repeated prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub prompt_hash: Option<String>,
    /// What the call cost in US dollars; computed from the price table when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10_000))]
    pub cost_usd: Option<f64>,
    /// Whether the call went through a batch API (`false` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
}

/// Answer of `POST /api/workload-events` and `POST /api/dev/demo-data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accepted {
    /// How many rows were stored.
    pub accepted: u64,
}

/// A refused workload row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowError {
    /// The row's 1-based line (for a JSON array: its index + 1).
    pub line: u64,
    /// Every problem of the row, in one sentence.
    pub error: String,
}

/// The error of refused workload rows: [`ErrorBody`]'s fields and the rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowsError {
    /// Always `invalid_rows`.
    pub code: ErrorCode,
    /// How many rows are invalid; nothing was stored.
    pub message: String,
    /// The bad rows (at most 1000).
    pub rows: Vec<RowError>,
}

/// The 422 answer of `POST /api/workload-events` when rows are invalid: `{"error":{"code":
/// "invalid_rows","message","rows"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowsErrorBody {
    /// The error.
    pub error: RowsError,
}

/// Optional body of `POST /api/dev/demo-data`. `days` × `calls_per_day` is at most 1 000 000.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DemoDataRequest {
    /// Days of data, ending today (UTC midnight): 1 to 366, 30 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 366))]
    pub days: Option<u32>,
    /// Interactive calls on an average day: 1 to 20000, 2000 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 20000))]
    pub calls_per_day: Option<u32>,
    /// The generator's seed: the same seed gives the same calls (1 when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl DemoDataRequest {
    /// Days when not given.
    pub const DEFAULT_DAYS: u32 = 30;
    /// The most days.
    pub const MAX_DAYS: u32 = 366;
    /// Calls per day when not given.
    pub const DEFAULT_CALLS_PER_DAY: u32 = 2000;
    /// The most calls per day.
    pub const MAX_CALLS_PER_DAY: u32 = 20_000;
    /// Seed when not given.
    pub const DEFAULT_SEED: u64 = 1;
    /// The most `days` × `calls_per_day`: a demo is to try the product, and its calls are held in
    /// memory until they are stored (the nightly job and the hourly jitter add up to a quarter
    /// more: about 500 000 rows at most).
    pub const MAX_CALLS: u64 = 400_000;
}

// ---------------------------------------------------------------------------------------------
// The server

/// Answer of `GET /api/info`: what a client needs to know before it signs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    /// The wire protocol: `switchboard.v1`.
    #[cfg_attr(feature = "openapi", schema(examples("switchboard.v1")))]
    pub protocol: String,
    /// The server's version.
    pub version: String,
    /// Whether the server runs in dev mode (dev-login and demo data).
    pub dev: bool,
    /// The longest user message, in characters.
    pub max_text_chars: u64,
    /// The largest workload upload, in bytes.
    pub max_upload_bytes: u64,
    /// The largest client frame on the socket, in bytes (a bigger one closes it with 1009).
    pub max_frame_bytes: u64,
}

/// The state of the server or of one of its dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Working.
    Ok,
    /// Working, without something (e.g. the model's circuit is open).
    Degraded,
    /// Not working.
    Unavailable,
}

impl HealthStatus {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unavailable => "unavailable",
        }
    }
}

/// Answer of `GET /health/live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Liveness {
    /// Always `ok`.
    pub status: HealthStatus,
}

/// One check of `GET /health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    /// The dependency's state.
    pub status: HealthStatus,
    /// How long the check took.
    pub latency_ms: u64,
    /// What is wrong, when it is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `GET /health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    /// `unavailable` when the store does not answer, or the server is shutting down;
    /// `degraded` when a check is not `ok`; else `ok`.
    pub status: HealthStatus,
    /// Each check by name: `store`, `model`, and one per storage tier (`sqlite`, `postgres`,
    /// `clickhouse`).
    pub checks: BTreeMap<String, Check>,
}

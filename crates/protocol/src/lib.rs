//! The wire contract of Switchboard (`switchboard.v1`, see `shared/PROTOCOL.md`): every frame and
//! event as serde types, one closed enum per direction, and the HTTP API's bodies ([`http`]).
//! This crate does no I/O. The `openapi` feature gives the types OpenAPI schemas (`utoipa`).

pub mod contract;
mod events;
mod frames;
pub mod http;
mod ids;
mod log;
#[cfg(feature = "openapi")]
mod openapi;
pub mod sla;
pub mod tiers;
mod time;

pub use events::{
    AgentCompleted, AgentError, AgentErrorCode, AgentStarted, AgentThinking, Event, EventPayload, ModelCallUsage,
    PartialResult, RunStatus, RunTimings, ToolCompleted, ToolExecuting,
};
pub use frames::{
    ClientFrame, ConnectionEstablished, Control, ControlFrame, Empty, ErrorBody, ErrorCode, ErrorPayload, FrameError,
    GetThreadHistory, Heartbeat, HistoryMessage, MessageAccepted, PROTOCOL_NAME, Resume, Resumed, Role, ServerFrame,
    StopAgent, StoreDelayed, ThreadHistory, UserMessage,
};
pub use ids::{AgentName, ConnectionId, IdError, MessageId, RunId, Seq, ThreadId, TraceId, UserId};
pub use log::{EntryKey, LogEntry, NewEvent, RunEnd, UnnumberedJson};
pub use tiers::{OperationId, Tier, TierClock, TierObserver, TierTimes};
pub use time::Timestamp;

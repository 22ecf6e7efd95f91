//! Run events (PROTOCOL.md section 3): durable, sequenced per user.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AgentName, RunId, Seq, ThreadId, Timestamp, TraceId};

/// One durable event of a run, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Per-user sequence number: +1 from one durable event of the user to the next.
    pub seq: Seq,
    /// The run the event belongs to.
    pub run_id: RunId,
    /// The thread of the run.
    pub thread_id: ThreadId,
    /// The agent that produced the event.
    pub agent_name: AgentName,
    /// When the event was produced.
    pub timestamp: Timestamp,
    /// The run's trace id.
    pub trace_id: TraceId,
    /// The event's type and payload.
    #[serde(flatten)]
    pub payload: EventPayload,
}

impl Event {
    /// The wire name of the event's type.
    pub fn type_name(&self) -> &'static str {
        self.payload.type_name()
    }

    /// Whether this is the run's one final event (`agent_completed` with `final: true`).
    pub fn is_final(&self) -> bool {
        matches!(&self.payload, EventPayload::AgentCompleted(c) if c.is_final)
    }
}

/// The closed set of run event types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum EventPayload {
    /// An agent began its work.
    AgentStarted(AgentStarted),
    /// An agent narrates what it is doing.
    AgentThinking(AgentThinking),
    /// A tool call began.
    ToolExecuting(ToolExecuting),
    /// A tool call ended (also when it failed or timed out).
    ToolCompleted(ToolCompleted),
    /// A piece of the final answer.
    PartialResult(PartialResult),
    /// Something failed; always precedes the failed `agent_completed`.
    AgentError(AgentError),
    /// An agent ended; the supervisor's ending is the run's final event.
    AgentCompleted(AgentCompleted),
}

impl EventPayload {
    /// The wire name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventPayload::AgentStarted(_) => "agent_started",
            EventPayload::AgentThinking(_) => "agent_thinking",
            EventPayload::ToolExecuting(_) => "tool_executing",
            EventPayload::ToolCompleted(_) => "tool_completed",
            EventPayload::PartialResult(_) => "partial_result",
            EventPayload::AgentError(_) => "agent_error",
            EventPayload::AgentCompleted(_) => "agent_completed",
        }
    }
}

/// Payload of `agent_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentStarted {
    /// What the agent was asked to do.
    pub task: String,
}

/// Payload of `agent_thinking`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentThinking {
    /// The narration.
    pub text: String,
    /// Step number within the agent, when it counts steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// Progress from 0 to 1, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
}

/// Payload of `tool_executing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolExecuting {
    /// Pairs this event with its `tool_completed`.
    pub tool_call_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// The parameters, a JSON object.
    pub parameters: Value,
}

/// Payload of `tool_completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolCompleted {
    /// The id of the matching `tool_executing`.
    pub tool_call_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// Whether the tool returned a result.
    pub success: bool,
    /// The tool's result (`null` on failure).
    pub results: Value,
    /// How long the call took.
    pub duration_ms: u64,
    /// What went wrong, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Payload of `partial_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartialResult {
    /// The next piece of the answer.
    pub delta: String,
}

/// The codes of `agent_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorCode {
    /// A deadline ran out.
    Timeout,
    /// The user (or an API call) stopped the run.
    Cancelled,
    /// The language model failed.
    LlmError,
    /// A tool failed.
    ToolError,
    /// A circuit breaker refused the call.
    CircuitOpen,
    /// A bug: a panic or an unexpected error.
    Internal,
    /// The server stopped while the run was active.
    Interrupted,
}

impl AgentErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentErrorCode::Timeout => "timeout",
            AgentErrorCode::Cancelled => "cancelled",
            AgentErrorCode::LlmError => "llm_error",
            AgentErrorCode::ToolError => "tool_error",
            AgentErrorCode::CircuitOpen => "circuit_open",
            AgentErrorCode::Internal => "internal",
            AgentErrorCode::Interrupted => "interrupted",
        }
    }
}

/// Payload of `agent_error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentError {
    /// What kind of failure.
    pub code: AgentErrorCode,
    /// A sentence a user can read: which agent or tool, what happened, after how long.
    pub message: String,
    /// Whether sending the message again may help.
    pub retryable: bool,
    /// Time from the start of the failed agent to the failure.
    pub elapsed_ms: u64,
    /// The deadline that ran out, for timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// How an agent or a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
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

impl RunStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::TimedOut,
            RunStatus::Cancelled,
            RunStatus::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Payload of `agent_completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentCompleted {
    /// How the agent (or, when final, the run) ended.
    pub status: RunStatus,
    /// How long the agent (or the run) took.
    pub duration_ms: u64,
    /// The agent's result; on the final event of a completed run `{"text": ..., ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// True only on the run's one final event.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Where the run's time went, on the final event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<RunTimings>,
    /// Agents whose part is missing from the answer (failed, timed out or not reached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<AgentName>,
    /// The run's language-model calls, each with its tokens and cost, on the final event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_calls: Vec<ModelCallUsage>,
}

/// One language-model call of a run: who made it, what it used and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelCallUsage {
    /// The agent that made the call.
    pub agent: AgentName,
    /// The model that answered (or failed).
    pub model: String,
    /// Prompt tokens, as the model reported them (0 when it did not).
    pub input_tokens: u64,
    /// Answer tokens, as the model reported them (0 when it did not).
    pub output_tokens: u64,
    /// What the call cost in US dollars, when the model's price is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// How long the call took.
    pub duration_ms: u64,
    /// Whether the model answered in full.
    pub success: bool,
}

/// The run's duration broken down by stage, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunTimings {
    /// From the request to the start of the run's work.
    pub queue_ms: u64,
    /// Spent waiting for the event log (room in its queue when the store is behind).
    pub store_ms: u64,
    /// Spent in language-model calls.
    pub model_ms: u64,
    /// Spent in tool calls.
    pub tools_ms: u64,
    /// Wall time of each agent that ran.
    pub agents: BTreeMap<String, u64>,
    /// The whole run.
    pub total_ms: u64,
    /// Time in each tier the run touched, by the tier's short name (`postgres`, `sqlite`,
    /// `redis`, `clickhouse`, `model`): its operations done for the run, the storing of its
    /// message included. The event log's writes of its events are not: they happen beside the
    /// run (they hold it up only through `store_ms`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, u64>,
}

//! Switchboard's execution engine: runs a plan of agents for a user's message so that the run can
//! never hang, never go silent and never leak into another user's stream.
//!
//! Agents ([`Agent`]) call tools ([`Tool`]) and a language model ([`Model`]) through handles that
//! apply deadlines and circuit breakers; the engine turns everything that happens into the typed
//! events of `switchboard-protocol` and hands them to an [`EventSink`], the event log, which
//! numbers them per user as it stores them.
//! There is no HTTP here.

mod agent;
mod breaker;
mod closing;
mod config;
mod engine;
mod model;
mod report;
mod run;
mod sink;
pub mod testkit;
mod tool;

pub use agent::{Agent, AgentContext, AgentError, AgentOutcome, AgentOutput, AgentRecord, Events, RunInfo};
pub use breaker::{BreakerSnapshot, CircuitBreaker, Permit, Refused};
pub use closing::{Closing, OpenRun};
pub use config::{ConfigError, EngineConfig};
pub use engine::{
    BuildError, Engine, EngineBuilder, HeldRun, Plan, Reservation, RunHandle, RunNotFound, RunOutcome, RunRequest,
    StartError,
};
pub use model::{
    ChatMessage, ChatRole, Delta, DeltaStream, Model, ModelCallError, ModelError, ModelHandle, ModelRequest,
    ModelResponse, ModelStream, Usage,
};
pub use sink::{DelayedEnd, END_NOTICE_AFTER, EventSink, SinkError};
pub use tool::{Tool, ToolCallError, ToolError, Tools};

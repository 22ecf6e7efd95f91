//! Workload data: the log of a team's own language-model calls, which the analysis agents read.
//! It lives in the analytics store, behind [`AnalyticsStore`] (SQLite in the embedded default).

use async_trait::async_trait;
use switchboard_protocol::{Timestamp, UserId};

use crate::StoreError;

/// Whether a model call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// It returned an answer.
    Ok,
    /// It failed.
    Error,
}

impl CallStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Error => "error",
        }
    }
}

/// One model call of the user's product, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEvent {
    /// When the call was made.
    pub timestamp: Timestamp,
    /// The model called.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// The provider, when given.
    pub provider: Option<String>,
    /// How long the call took, when given.
    pub latency_ms: Option<f64>,
    /// Whether it succeeded.
    pub status: CallStatus,
    /// Which part of the user's product made the call.
    pub feature: Option<String>,
    /// Equal prompts share it.
    pub prompt_hash: Option<String>,
    /// What the call cost (given, or computed from the price table).
    pub cost_usd: f64,
    /// Whether it went through a batch API.
    pub batch: bool,
}

/// Where workload data is kept and aggregated. Every method sees one user's data only.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// Stores all the events, or none of them.
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError>;
    /// How many events the user has stored.
    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError>;
}

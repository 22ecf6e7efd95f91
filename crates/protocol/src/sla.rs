//! The SLA: its thresholds (those of the incident Switchboard was designed against), the names
//! of their violations, and the live report `GET /api/sla` answers. The server's report, the
//! load test and `switchboard doctor` all judge by these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tiers::Tier;

/// The SLA's limits (a limit a report leaves out, as an older server's does, is the incident's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Thresholds {
    /// The p95 of response times (message accepted → final event) stays under this.
    pub response_p95_ms: u64,
    /// A response slower than this is a failure.
    pub response_failure_ms: u64,
    /// A PostgreSQL operation takes less than this.
    pub postgres_ms: u64,
    /// An operation of the embedded SQLite store takes less than this (PostgreSQL's limit).
    pub sqlite_ms: u64,
    /// A Redis operation takes less than this.
    pub redis_ms: u64,
    /// A ClickHouse operation takes less than this.
    pub clickhouse_ms: u64,
    /// A language-model call takes less than this (an answer streams in seconds; one that
    /// takes longer has most likely hung).
    pub model_ms: u64,
    /// `/health/ready` answers within this.
    pub health_ms: u64,
    /// Sign-in → message → answer takes less than this (measured by clients).
    pub workflow_ms: u64,
    /// The server sustains at least this many runs a second (judged by a load that offers as
    /// many).
    pub throughput_per_s: u64,
}

impl Thresholds {
    /// The incident's: responses under 2 s (p95; over 3 s is a failure), a PostgreSQL query under
    /// 200 ms, a Redis operation under 50 ms, a health check under 1 s, a whole workflow under
    /// 15 s, at least 10 operations a second. ClickHouse, whose analyses scan millions of
    /// rows, gets 1 s; a model call 10 s.
    pub const INCIDENT: Thresholds = Thresholds {
        response_p95_ms: 2000,
        response_failure_ms: 3000,
        postgres_ms: 200,
        sqlite_ms: 200,
        redis_ms: 50,
        clickhouse_ms: 1000,
        model_ms: 10_000,
        health_ms: 1000,
        workflow_ms: 15_000,
        throughput_per_s: 10,
    };

    /// The limit of one operation of `tier`.
    pub fn tier_ms(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Postgres => self.postgres_ms,
            Tier::Sqlite => self.sqlite_ms,
            Tier::Redis => self.redis_ms,
            Tier::ClickHouse => self.clickhouse_ms,
            Tier::Model => self.model_ms,
        }
    }

    /// The name of the violation "the response p95 over its limit".
    pub fn response_p95_violation(&self) -> String {
        format!("response_p95_over_{}ms", self.response_p95_ms)
    }

    /// The name of the violation "a response over the p95 limit" (counted per response).
    pub fn slow_response_violation(&self) -> String {
        format!("response_over_{}ms", self.response_p95_ms)
    }

    /// The name of the violation "a response over the failure limit".
    pub fn failed_response_violation(&self) -> String {
        format!("response_over_{}ms", self.response_failure_ms)
    }

    /// The name of the violation "a health check over its limit".
    pub fn health_violation(&self) -> String {
        format!("health_check_over_{}ms", self.health_ms)
    }

    /// The name of the violation "a workflow over its limit".
    pub fn workflow_violation(&self) -> String {
        format!("workflow_over_{}s", self.workflow_ms / 1000)
    }

    /// The name of the violation "fewer runs a second than the limit".
    pub fn throughput_violation(&self) -> String {
        format!("throughput_under_{}_per_s", self.throughput_per_s)
    }

    /// The name of the violation "an operation of `tier` over its limit".
    pub fn tier_violation(&self, tier: Tier) -> String {
        format!("{}_over_{}ms", tier.as_str(), self.tier_ms(tier))
    }

    /// The name of the violation "a message refused because a tier failed or the server was
    /// full" (`store_unavailable`, `server_busy`, `internal`): its user got no answer.
    pub fn refused_violation(&self) -> String {
        "messages_refused".to_owned()
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::INCIDENT
    }
}

/// How the service meets its SLA right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SlaStatus {
    /// Within every threshold, every tier fine.
    Ok,
    /// Responses within the SLA, but a tier is slow or failing.
    Degraded,
    /// Over the last minute the response p95 passed its limit, a response the failure limit, or
    /// a message was refused because a tier failed or the server was full.
    Violating,
}

impl SlaStatus {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlaStatus::Ok => "ok",
            SlaStatus::Degraded => "degraded",
            SlaStatus::Violating => "violating",
        }
    }
}

/// Percentiles of durations in milliseconds; `null` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Percentiles {
    /// The median.
    pub p50: Option<f64>,
    /// The 95th percentile.
    pub p95: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
}

/// One tier over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TierWindow {
    /// Its operations.
    pub ops: u64,
    /// Their median, in milliseconds (`null` without operations).
    pub p50_ms: Option<f64>,
    /// Their 99th percentile, in milliseconds (`null` without operations).
    pub p99_ms: Option<f64>,
    /// The operations the tier failed (past their deadline, or it could not be reached).
    pub errors: u64,
}

/// The figures of one window (the last minute, 5 or 15 minutes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlaWindow {
    /// Runs that ended (their final event stored).
    pub runs: u64,
    /// Runs that ended, per second of the window (of the time the server has been up, when
    /// shorter).
    pub runs_per_s: f64,
    /// From a message accepted to its run's first event.
    pub first_event_ms: Percentiles,
    /// From a message accepted to its run's final event.
    pub response_ms: Percentiles,
    /// Each violation's name (as in the thresholds' names) and how often it happened.
    pub violations: BTreeMap<String, u64>,
    /// Each tier this server uses, by short name.
    pub tiers: BTreeMap<String, TierWindow>,
}

/// Operations of a tier under way for longer than its limit: a tier that stalls, seen before its
/// operations end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stalled {
    /// How many.
    pub ops: u64,
    /// How long the oldest has been under way, in milliseconds.
    pub oldest_ms: f64,
}

/// `GET /api/sla`: whether chat meets its SLA right now, and which tier is to blame if not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlaReport {
    /// `ok`, `degraded` (a tier is) or `violating` (responses are over their limits).
    pub status: SlaStatus,
    /// The tiers degraded now, by short name: over their limit (p99 over the last minute, or
    /// median over the last 10 to 20 s), an operation under way for longer than the limit,
    /// failing operations in the last minute, or found degraded by the latest readiness check.
    pub degraded: Vec<String>,
    /// The limits the report judges by.
    pub thresholds: Thresholds,
    /// `1m`, `5m` and `15m`.
    pub windows: BTreeMap<String, SlaWindow>,
    /// The tiers with operations under way for longer than their limit now, by short name.
    #[serde(default)]
    pub stalled: BTreeMap<String, Stalled>,
}

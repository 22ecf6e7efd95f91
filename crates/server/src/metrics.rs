//! Prometheus metrics, one registry per app instance (parallel test apps do not share counters).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use switchboard_protocol::{EventPayload, LogEntry, ModelCallUsage, OperationId, RunId, Seq, Tier, TierObserver};
use tokio::time::Instant;

use crate::log::Observer;
use crate::sla::Sla;

/// A label with one value: a status or an error code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    /// The run status.
    pub(crate) status: String,
}

/// A label with one value: an error code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    /// The error code.
    pub(crate) code: String,
}

/// The labels of a language-model call: the model, and whether it answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ModelLabel {
    /// The model's name.
    pub(crate) model: String,
    /// `ok` or `failed`.
    pub(crate) outcome: String,
}

/// The labels of tokens: the model, and `input` or `output`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TokenLabel {
    /// The model's name.
    pub(crate) model: String,
    /// `input` or `output`.
    pub(crate) direction: String,
}

/// The label of what came from other nodes: `redis` or `log`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ViaLabel {
    /// `redis` or `log`.
    pub(crate) via: &'static str,
}

/// The label of a tier's figures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TierLabel {
    /// `postgres`, `sqlite`, `redis`, `clickhouse` or `model`.
    pub(crate) tier: &'static str,
}

/// The label of a violation of the SLA: its name in the report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ViolationLabel {
    /// As in `/api/sla`'s `violations`.
    pub(crate) name: String,
}

/// The histogram of a tier's operations.
fn tier_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// A run accepted here and not yet ended.
#[derive(Debug, Clone, Copy)]
struct Open {
    accepted: Instant,
    /// Whether its first event was stored.
    started: bool,
}

/// Runs accepted and not ended past this many (and then twice as many as were left) are
/// looked through, and those accepted more than [`OPEN_FOR_AT_MOST`] ago forgotten (runs
/// another node ended, whose final event this node never stores).
const OPEN_AT_MOST: usize = 10_000;
/// See [`OPEN_AT_MOST`]: a run's deadline is far shorter.
const OPEN_FOR_AT_MOST: std::time::Duration = std::time::Duration::from_secs(600);

/// Every metric the server exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub(crate) connections: Gauge,
    /// Runs by final status.
    pub(crate) runs: Family<StatusLabel, Counter>,
    /// Run duration.
    pub(crate) run_duration: Histogram,
    /// From `message_accepted` to the run's first event.
    pub(crate) first_event_latency: Histogram,
    /// Run events written to sockets and SSE streams.
    pub(crate) events_sent: Counter,
    /// Run events stored.
    pub(crate) events_stored: Counter,
    /// Run events the store refused, and which are given up: of runs another node took over,
    /// or that cannot be stored as they are.
    pub(crate) events_refused: Counter,
    /// Events per batch the event log stored in one transaction.
    pub(crate) event_batch_size: Histogram,
    /// How long the store took for one batch of events.
    pub(crate) event_batch_seconds: Histogram,
    /// Errors told to clients, by code.
    pub(crate) errors: Family<CodeLabel, Counter>,
    /// Language-model calls, by model and outcome.
    pub(crate) model_calls: Family<ModelLabel, Counter>,
    /// Language-model tokens, by model and direction.
    pub(crate) model_tokens: Family<TokenLabel, Counter>,
    /// What the language-model calls cost, by model (calls of unpriced models count nothing).
    pub(crate) model_cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
    /// argon2 checks of a password at login: one per attempt that was not throttled, against
    /// the account's hash or, for an unknown email, the decoy.
    pub(crate) password_checks: Counter,
    /// On a node of a cluster: what reached the connections here from other nodes, by the way
    /// it came (`redis`: events published there; `log`: a user's connections told by the
    /// watcher that the log went further, as when Redis lost or delayed a message).
    pub(crate) from_other_nodes: Family<ViaLabel, Counter>,
    /// From a message accepted to its run's final event.
    pub(crate) response_latency: Histogram,
    /// Each tier's operations, by tier.
    pub(crate) tier_operations: Family<TierLabel, Histogram, fn() -> Histogram>,
    /// The operations each tier failed (past their deadline, or it could not be reached).
    pub(crate) tier_errors: Family<TierLabel, Counter>,
    /// How long each `/health/ready` took.
    pub(crate) health_check: Histogram,
    /// The SLA report's status when scraped: 0 ok, 1 degraded, 2 violating.
    pub(crate) sla_status: Gauge,
    /// 1 for each tier the SLA report finds degraded when scraped, else 0.
    pub(crate) tier_degraded: Family<TierLabel, Gauge>,
    /// Each violation of the SLA over the last minute, when scraped.
    pub(crate) sla_violations: Family<ViolationLabel, Gauge>,
    /// The live SLA report's figures.
    pub(crate) sla: Sla,
    /// When each run not yet ended was accepted, for `first_event_latency` and
    /// `response_latency`.
    accepted: Mutex<HashMap<RunId, Open>>,
    /// The size of `accepted` at which it is next looked through.
    sweep_at: AtomicUsize,
}

impl Metrics {
    /// The metrics of a server on `tiers` (the model's included).
    pub(crate) fn new(tiers: &[Tier]) -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Gauge::default();
        let runs = Family::<StatusLabel, Counter>::default();
        let run_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let first_event_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let events_sent = Counter::default();
        let events_stored = Counter::default();
        let events_refused = Counter::default();
        let event_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let event_batch_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let errors = Family::<CodeLabel, Counter>::default();
        let model_calls = Family::<ModelLabel, Counter>::default();
        let model_tokens = Family::<TokenLabel, Counter>::default();
        let model_cost = Family::<ModelLabel, Counter<f64, AtomicU64>>::default();
        let password_checks = Counter::default();
        let from_other_nodes = Family::<ViaLabel, Counter>::default();
        let response_latency = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let tier_operations = Family::<TierLabel, Histogram, fn() -> Histogram>::new_with_constructor(tier_histogram);
        let tier_errors = Family::<TierLabel, Counter>::default();
        let health_check = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let sla_status = Gauge::default();
        let tier_degraded = Family::<TierLabel, Gauge>::default();
        let sla_violations = Family::<ViolationLabel, Gauge>::default();
        registry.register(
            "health_check_seconds",
            "How long each readiness check (/health/ready) took",
            health_check.clone(),
        );
        registry.register(
            "sla_status",
            "The live SLA report's status: 0 ok, 1 degraded, 2 violating (as /api/sla)",
            sla_status.clone(),
        );
        registry.register(
            "tier_degraded",
            "1 for each tier the live SLA report finds degraded, else 0",
            tier_degraded.clone(),
        );
        registry.register(
            "sla_violations_last_minute",
            "Each violation of the SLA over the last minute, by name (as /api/sla's 1m window)",
            sla_violations.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from accepting a message to its run's final event",
            response_latency.clone(),
        );
        registry.register(
            "tier_operation_seconds",
            "How long each tier's operations took (postgres, sqlite, redis, clickhouse, model)",
            tier_operations.clone(),
        );
        registry.register(
            "tier_errors",
            "Operations a tier failed: past their deadline, or it could not be reached",
            tier_errors.clone(),
        );
        registry.register(
            "from_other_nodes",
            "Events of other nodes handed to connections here (via redis), and users' connections told the log went further (via log)",
            from_other_nodes.clone(),
        );
        registry.register("connections", "Open WebSocket connections", connections.clone());
        registry.register("runs", "Runs by final status", runs.clone());
        registry.register("run_duration_seconds", "Run duration", run_duration.clone());
        registry.register(
            "first_event_latency_seconds",
            "Time from accepting a message to its run's first event",
            first_event_latency.clone(),
        );
        registry.register(
            "events_sent",
            "Run events written to sockets and SSE streams",
            events_sent.clone(),
        );
        registry.register("events_stored", "Run events stored", events_stored.clone());
        registry.register(
            "events_refused",
            "Run events the store refused (of runs another node took over, or that cannot be stored)",
            events_refused.clone(),
        );
        registry.register(
            "event_batch_size",
            "Events the event log stored in one transaction",
            event_batch_size.clone(),
        );
        registry.register(
            "event_batch_seconds",
            "How long the store took for one batch of events",
            event_batch_seconds.clone(),
        );
        registry.register("errors", "Errors told to clients, by code", errors.clone());
        registry.register("model_calls", "Language-model calls", model_calls.clone());
        registry.register("model_tokens", "Language-model tokens", model_tokens.clone());
        registry.register(
            "model_cost_usd",
            "What language-model calls cost, in US dollars",
            model_cost.clone(),
        );
        registry.register(
            "password_checks",
            "Password hashes checked at login (also for unknown emails, so that both take as long)",
            password_checks.clone(),
        );
        Self {
            registry,
            connections,
            runs,
            run_duration,
            first_event_latency,
            events_sent,
            events_stored,
            events_refused,
            event_batch_size,
            event_batch_seconds,
            errors,
            model_calls,
            model_tokens,
            model_cost,
            password_checks,
            from_other_nodes,
            response_latency,
            tier_operations,
            tier_errors,
            health_check,
            sla_status,
            tier_degraded,
            sla_violations,
            sla: Sla::new(tiers),
            accepted: Mutex::default(),
            sweep_at: AtomicUsize::new(OPEN_AT_MOST),
        }
    }

    /// Notes when a run was accepted, to measure the latency of its first and final events.
    pub(crate) fn accepted(&self, run: &RunId, at: Instant) {
        let mut open = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        // Looked through when it has grown to twice what was left the last time, so that each
        // message pays for it once at most.
        if open.len() >= self.sweep_at.load(Ordering::Relaxed) {
            open.retain(|_, run| run.accepted.elapsed() < OPEN_FOR_AT_MOST);
            self.sweep_at
                .store((open.len() * 2).max(OPEN_AT_MOST), Ordering::Relaxed);
        }
        open.insert(
            run.clone(),
            Open {
                accepted: at,
                started: false,
            },
        );
    }

    /// Forgets a run that did not start.
    pub(crate) fn forget(&self, run: &RunId) {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
    }

    /// A message refused: one refused because a tier failed or the server was full (or failed
    /// itself) counts against the SLA, since its user got no answer; one refused for the user's
    /// own limits or input does not.
    pub(crate) fn message_refused(&self, code: switchboard_protocol::ErrorCode) {
        use switchboard_protocol::ErrorCode;
        if matches!(
            code,
            ErrorCode::StoreUnavailable | ErrorCode::ServerBusy | ErrorCode::Internal
        ) {
            self.sla.refused();
        }
    }

    /// Counts an error told to a client.
    pub(crate) fn error(&self, code: switchboard_protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a run's language-model calls: calls, tokens and cost per model.
    pub(crate) fn model_calls(&self, calls: &[ModelCallUsage]) {
        for call in calls {
            let labels = ModelLabel {
                model: call.model.clone(),
                outcome: if call.success { "ok" } else { "failed" }.to_owned(),
            };
            self.model_calls.get_or_create(&labels).inc();
            if let Some(cost) = call.cost_usd {
                self.model_cost.get_or_create(&labels).inc_by(cost);
            }
            for (direction, tokens) in [("input", call.input_tokens), ("output", call.output_tokens)] {
                self.model_tokens
                    .get_or_create(&TokenLabel {
                        model: call.model.clone(),
                        direction: direction.to_owned(),
                    })
                    .inc_by(tokens);
            }
        }
    }

    /// A readiness check that took `took` and found `degraded` tiers degraded.
    pub(crate) fn readiness(&self, took: std::time::Duration, degraded: Vec<Tier>) {
        self.health_check.observe(took.as_secs_f64());
        self.sla.readiness(took, degraded);
    }

    /// The Prometheus text format, with the SLA report's figures of now.
    pub(crate) fn encode(&self) -> String {
        let report = self.sla.report();
        self.sla_status.set(match report.status {
            switchboard_protocol::sla::SlaStatus::Ok => 0,
            switchboard_protocol::sla::SlaStatus::Degraded => 1,
            switchboard_protocol::sla::SlaStatus::Violating => 2,
        });
        if let Some(minute) = report.windows.get("1m") {
            for name in minute.tiers.keys() {
                if let Some(tier) = Tier::parse(name) {
                    let degraded = report.degraded.iter().any(|d| d == name);
                    self.tier_degraded
                        .get_or_create(&TierLabel { tier: tier.as_str() })
                        .set(i64::from(degraded));
                }
            }
            for (name, count) in &minute.violations {
                self.sla_violations
                    .get_or_create(&ViolationLabel { name: name.clone() })
                    .set(i64::try_from(*count).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

/// The metrics observe the event log: events stored, the first event's latency, and each final
/// event's status, duration and model calls.
impl Observer for Metrics {
    fn stored(&self, entry: &LogEntry, _seq: Seq) {
        let event = &entry.event;
        self.events_stored.inc();
        let is_final = matches!(&event.payload, EventPayload::AgentCompleted(done) if done.is_final);
        let open = {
            let mut open = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            let run = open.get_mut(&event.run_id).map(|run| {
                let seen = *run;
                run.started = true;
                seen
            });
            if is_final {
                open.remove(&event.run_id);
            }
            run
        };
        if let Some(run) = open {
            let took = run.accepted.elapsed();
            if !run.started {
                self.first_event_latency.observe(took.as_secs_f64());
                self.sla.first_event(took);
            }
            if is_final {
                self.response_latency.observe(took.as_secs_f64());
                self.sla.response(took);
            }
        }
        if let EventPayload::AgentCompleted(done) = &event.payload
            && done.is_final
        {
            self.runs
                .get_or_create(&StatusLabel {
                    status: done.status.as_str().to_owned(),
                })
                .inc();
            self.run_duration.observe(done.duration_ms as f64 / 1000.0);
            self.model_calls(&done.model_calls);
        }
    }

    fn batch_stored(&self, events: usize, took: std::time::Duration) {
        self.event_batch_size.observe(events as f64);
        self.event_batch_seconds.observe(took.as_secs_f64());
    }

    fn refused(&self) {
        self.events_refused.inc();
    }
}

/// The metrics (and the SLA report) are told of every tier operation: the stores', Redis's and
/// the model's.
impl TierObserver for Metrics {
    fn began(&self, tier: Tier, id: OperationId) {
        self.sla.began(tier, id);
    }

    fn operation(&self, tier: Tier, id: Option<OperationId>, took: std::time::Duration, failed: bool) {
        let label = TierLabel { tier: tier.as_str() };
        self.tier_operations.get_or_create(&label).observe(took.as_secs_f64());
        if failed {
            self.tier_errors.get_or_create(&label).inc();
        }
        self.sla.operation(tier, id, took, failed);
    }
}

//! Prometheus metrics, one registry per app instance (parallel test apps do not share counters).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use switchboard_protocol::{EventPayload, LogEntry, ModelCallUsage, RunId, Seq};
use tokio::time::Instant;

use crate::log::Observer;

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
    /// When each run not yet started was accepted, for `first_event_latency`.
    accepted: Mutex<HashMap<RunId, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
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
            accepted: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Notes when a run was accepted, to measure the latency of its first event.
    pub(crate) fn accepted(&self, run: &RunId, at: Instant) {
        self.accepted.lock().unwrap().insert(run.clone(), at);
    }

    /// Forgets a run that did not start.
    pub(crate) fn forget(&self, run: &RunId) {
        self.accepted.lock().unwrap().remove(run);
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

    /// The Prometheus text format.
    pub(crate) fn encode(&self) -> String {
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
        if let Some(at) = self.accepted.lock().unwrap().remove(&event.run_id) {
            self.first_event_latency.observe(at.elapsed().as_secs_f64());
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

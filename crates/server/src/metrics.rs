//! Prometheus metrics, one registry per app instance (parallel test apps do not share counters).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// Errors told to clients, by code.
    pub(crate) errors: Family<CodeLabel, Counter>,
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
        let errors = Family::<CodeLabel, Counter>::default();
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
        registry.register("errors", "Errors told to clients, by code", errors.clone());
        Self {
            registry,
            connections,
            runs,
            run_duration,
            first_event_latency,
            events_sent,
            events_stored,
            errors,
        }
    }
}

impl Metrics {
    /// Counts an error told to a client.
    pub(crate) fn error(&self, code: switchboard_protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_owned(),
            })
            .inc();
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

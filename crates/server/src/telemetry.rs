//! Logs and traces. Logs: `tracing` to stderr, filtered by the configured level (`RUST_LOG` wins
//! when set). Traces: with `otlp_endpoint`, the spans of the `switchboard` crates (a run, its
//! agents, their tool and model calls, the tiers they touch) are exported over OTLP/HTTP
//! (protobuf) to a collector by a batch processor, which sends from a thread of its own and drops
//! spans past its bounded queue, so a collector that is slow or gone never holds up a run. Each
//! run is one trace whose id is the run's `trace_id`, the one on its events. Without
//! `otlp_endpoint` no exporter, processor or layer exists.

use std::cell::Cell;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider, TracerProviderBuilder,
};
use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, TierUrl};

/// How long one export may take, retries included (the collector's answer, or a connection
/// that never opens).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans waiting to be exported at most; past it new spans are dropped.
const QUEUE_SPANS: usize = 8_192;
/// How often the spans gathered are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(2);
/// How long the exit waits for the last spans to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(6);

/// The installed telemetry: the trace exporter, when there is one, flushed by [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued (waiting up to a few seconds for the collector) and stops the
    /// exporter. Call it when the server has stopped, outside the async runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(%error, "the last spans could not all be exported");
        }
    }
}

/// Installs the global subscriber once (later calls install nothing) and, with `otlp_endpoint`,
/// the trace exporter.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let provider = tracer_provider(config)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    let traces = provider.as_ref().map(traces_layer);
    let _ = tracing_subscriber::registry().with(traces).with(logs).try_init();
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP to {endpoint}");
    }
    Ok(Telemetry { provider })
}

/// The tracer provider exporting to `otlp_endpoint`; `None` without it.
fn tracer_provider(config: &Config) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint)?)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("cannot export traces to {endpoint}"))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE_SPANS)
        .with_scheduled_delay(EXPORT_EVERY)
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    Ok(Some(
        provider_builder(config.node_id.as_deref())
            .with_span_processor(processor)
            .build(),
    ))
}

/// The provider's settings shared by the exporter and the tests: the resource (`service.name`
/// and, when given, the node's name as `service.instance.id`) and the trace ids of runs.
fn provider_builder(node_id: Option<&str>) -> TracerProviderBuilder {
    let mut resource = Resource::builder().with_service_name("switchboard");
    if let Some(node) = node_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", node.to_owned()));
    }
    SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_id_generator(RunTraceIds::default())
}

/// Where the collector takes traces: `/v1/traces` under the endpoint, unless it names that path.
fn traces_url(endpoint: &TierUrl) -> anyhow::Result<String> {
    let mut url = url::Url::parse(endpoint.expose()).with_context(|| format!("invalid OTLP endpoint {endpoint}"))?;
    if !url.path().ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url.to_string())
}

/// The layer that turns spans into OpenTelemetry spans: the `switchboard` crates' spans (debug
/// and up), with the trace id of each root span that has a `trace_id` field taken from it.
fn traces_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    // `AdoptTraceIds` must see each span before the OpenTelemetry layer does.
    AdoptTraceIds
        .and_then(tracing_opentelemetry::layer().with_tracer(provider.tracer("switchboard")))
        .with_filter(Targets::new().with_target("switchboard", tracing::Level::DEBUG))
}

thread_local! {
    /// The trace id the next root span started on this thread takes: set by [`AdoptTraceIds`]
    /// just before the OpenTelemetry layer starts a run's span, taken by [`RunTraceIds`].
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Ids for the SDK: random, except the trace id of a root span with a `trace_id` field.
#[derive(Debug, Default)]
struct RunTraceIds {
    random: RandomIdGenerator,
}

impl IdGenerator for RunTraceIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.take().unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.random.new_span_id()
    }
}

/// Makes the trace of a root span with a `trace_id` field (32 hex digits, as a run's span has)
/// that trace id, so the id a user sees on a run's events finds its trace. The OpenTelemetry
/// layer starts a span when it is first entered and asks the SDK for a trace id only for a root
/// span; this layer, called just before it, hands that id over through [`NEXT_TRACE_ID`].
#[derive(Debug, Clone, Copy)]
struct AdoptTraceIds;

/// The trace id a root span takes when it is first entered.
struct Adopted(TraceId);

impl<S> Layer<S> for AdoptTraceIds
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.parent().is_some() {
            return;
        }
        let mut field = TraceIdField(None);
        attrs.record(&mut field);
        if let Some(trace_id) = field.0 {
            span.extensions_mut().insert(Adopted(trace_id));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(Adopted(trace_id)) = span.extensions_mut().remove::<Adopted>()
        {
            NEXT_TRACE_ID.set(Some(trace_id));
        }
    }

    fn on_exit(&self, _id: &Id, _ctx: Context<'_, S>) {
        // Taken by then when the span started on entering; never left for another span.
        NEXT_TRACE_ID.set(None);
    }
}

/// Reads a span's `trace_id` field as an OpenTelemetry trace id.
struct TraceIdField(Option<TraceId>);

impl TraceIdField {
    fn read(&mut self, field: &tracing::field::Field, text: &str) {
        if field.name() == "trace_id"
            && text.len() == 32
            && let Ok(trace_id) = TraceId::from_hex(text)
            && trace_id != TraceId::INVALID
        {
            self.0 = Some(trace_id);
        }
    }
}

impl tracing::field::Visit for TraceIdField {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.read(field, value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "trace_id" {
            self.read(field, &format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};

    use super::*;

    /// The spans exported, in the order they ended.
    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn endpoint(text: &str) -> Config {
        Config {
            otlp_endpoint: Some(TierUrl::parse("otlp_endpoint", text, &["http", "https"]).unwrap()),
            ..Config::default()
        }
    }

    #[test]
    fn without_an_endpoint_nothing_exports_traces() {
        assert!(tracer_provider(&Config::default()).unwrap().is_none());
        let telemetry = init(&Config::default()).unwrap();
        assert!(!telemetry.exports_traces());
        telemetry.shutdown();
    }

    #[test]
    fn an_endpoint_builds_an_exporter_to_its_traces_path() {
        let provider = tracer_provider(&endpoint("http://127.0.0.1:4318")).unwrap();
        assert!(provider.is_some());
        provider.unwrap().shutdown().unwrap();
        for (given, expected) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("https://otel.example/otlp", "https://otel.example/otlp/v1/traces"),
            ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ] {
            let config = endpoint(given);
            assert_eq!(traces_url(config.otlp_endpoint.as_ref().unwrap()).unwrap(), expected);
        }
    }

    #[test]
    fn a_root_span_with_a_trace_id_field_is_a_trace_of_that_id_and_its_children_are_in_it() {
        let collected = Collected::default();
        let provider = provider_builder(Some("node-a"))
            .with_simple_exporter(collected.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(traces_layer(&provider));
        let run_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!(target: "switchboard_engine::run", "run", trace_id = %run_trace);
            run.in_scope(|| {
                tracing::info_span!(target: "switchboard_engine::run", "agent", name = "triage").in_scope(|| {});
            });
            drop(run);
            // A root span without the field, and one whose field is not a trace id, get ids of
            // their own.
            tracing::info_span!(target: "switchboard", "connection").in_scope(|| {});
            tracing::info_span!(target: "switchboard", "run", trace_id = "not-hex").in_scope(|| {});
            // Not a span of the `switchboard` crates: not exported.
            tracing::info_span!(target: "hyper", "request").in_scope(|| {});
        });
        provider.shutdown().unwrap();
        let spans = collected.0.lock().unwrap().clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["agent", "run", "connection", "run"]);
        let (agent, run) = (&spans[0], &spans[1]);
        assert_eq!(run.span_context.trace_id().to_string(), run_trace);
        assert_eq!(run.parent_span_id, SpanId::INVALID);
        assert_eq!(agent.span_context.trace_id(), run.span_context.trace_id());
        assert_eq!(agent.parent_span_id, run.span_context.span_id());
        let others = [&spans[2], &spans[3]];
        for other in others {
            assert_ne!(other.span_context.trace_id().to_string(), run_trace);
            assert_eq!(other.parent_span_id, SpanId::INVALID);
        }
        assert_ne!(others[0].span_context.trace_id(), others[1].span_context.trace_id());
    }
}

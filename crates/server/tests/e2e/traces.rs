//! Traces over OTLP/HTTP: the real binary with `--otlp-endpoint` against a collector of the
//! test's own (an axum server decoding protobuf bodies), and against collectors that never
//! answer. On the real clock: the tests wait for what arrives, with generous deadlines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use switchboard_protocol::{EventPayload, RunStatus};
use tokio::sync::mpsc;

use crate::support::{TestApp, run_events, send, spawn_server_process};

/// Long enough for a loaded machine; what arrives ends the wait, not the deadline.
const DEADLINE: Duration = Duration::from_secs(60);

/// A span as the collector received it, with its resource's attributes.
#[derive(Debug, Clone)]
struct Received {
    span: Span,
    resource: HashMap<String, String>,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// The attribute `key` as text (integers in decimal); `None` when the span has none.
    fn attribute(&self, key: &str) -> Option<String> {
        attributes(&self.span.attributes).remove(key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .filter_map(|pair| {
            let value = match pair.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(text) => text.clone(),
                any_value::Value::IntValue(number) => number.to_string(),
                any_value::Value::BoolValue(flag) => flag.to_string(),
                any_value::Value::DoubleValue(number) => number.to_string(),
                other => format!("{other:?}"),
            };
            Some((pair.key.clone(), value))
        })
        .collect()
}

/// An OTLP/HTTP collector on a free loopback port: `POST /v1/traces` with a protobuf body; each
/// span it decodes goes to `spans`, each body it cannot (or that is not protobuf) as an error.
struct Collector {
    addr: SocketAddr,
    spans: mpsc::UnboundedReceiver<Result<Received, String>>,
}

async fn collector() -> Collector {
    let (sender, spans) = mpsc::unbounded_channel();
    let export = move |headers: HeaderMap, body: Bytes| {
        let sender = sender.clone();
        async move {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            if content_type != Some("application/x-protobuf") {
                let _ = sender.send(Err(format!("an export with content type {content_type:?}")));
                return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
            }
            let request = match ExportTraceServiceRequest::decode(body) {
                Ok(request) => request,
                Err(error) => {
                    let _ = sender.send(Err(format!("an export that is not OTLP protobuf: {error}")));
                    return (StatusCode::BAD_REQUEST, Vec::new());
                }
            };
            for resource_spans in request.resource_spans {
                let resource = resource_spans
                    .resource
                    .map(|resource| attributes(&resource.attributes))
                    .unwrap_or_default();
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        let _ = sender.send(Ok(Received {
                            span,
                            resource: resource.clone(),
                        }));
                    }
                }
            }
            (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
        }
    };
    let router = axum::Router::new().route("/v1/traces", axum::routing::post(export));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Collector { addr, spans }
}

impl Collector {
    /// The spans of trace `trace_id` received by the time `complete` holds for them.
    async fn trace(&mut self, trace_id: &str, complete: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut trace = Vec::new();
        let wait = async {
            while !complete(&trace) {
                let received = self.spans.recv().await.expect("the collector runs on");
                let received = received.unwrap_or_else(|error| panic!("the collector got {error}"));
                if received.trace_id() == trace_id {
                    trace.push(received);
                }
            }
        };
        if tokio::time::timeout(DEADLINE, wait).await.is_err() {
            let names: Vec<&str> = trace.iter().map(|r| r.span.name.as_str()).collect();
            panic!("the trace {trace_id} did not arrive whole; received {names:?}");
        }
        trace
    }
}

fn named<'a>(trace: &'a [Received], name: &str) -> Vec<&'a Received> {
    trace.iter().filter(|r| r.span.name == name).collect()
}

fn agent<'a>(trace: &'a [Received], agent: &str) -> Option<&'a Received> {
    named(trace, "agent")
        .into_iter()
        .find(|r| r.attribute("name").as_deref() == Some(agent))
}

/// Signs in, sends one message, and returns the run's events up to its final one.
async fn one_run(app: &TestApp, user: &str) -> Vec<switchboard_protocol::Event> {
    let session = app.user(user).await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "Which of my models costs the most?").await;
    run_events(&mut socket, &accepted.run_id).await
}

fn final_status(events: &[switchboard_protocol::Event]) -> RunStatus {
    match &events.last().expect("the run has events").payload {
        EventPayload::AgentCompleted(done) if done.is_final => done.status,
        other => panic!("the run's last event is not final: {other:?}"),
    }
}

#[tokio::test]
async fn each_run_is_one_trace_under_its_trace_id_with_its_agents_tools_and_model_calls() {
    let mut collector = collector().await;
    let endpoint = format!("http://{}", collector.addr);
    let app = spawn_server_process(&["--otlp-endpoint", &endpoint, "--node-id", "node-traced"]).await;
    let session = app.user("traced").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "Which of my models costs the most?").await;
    let events = run_events(&mut socket, &accepted.run_id).await;
    assert_eq!(final_status(&events), RunStatus::Completed);
    let trace_id = events[0].trace_id.to_string();
    assert!(events.iter().all(|e| e.trace_id.to_string() == trace_id));
    drop(socket);
    // A graceful stop sends what is still queued before the process exits.
    tokio::time::timeout(DEADLINE, app.shutdown())
        .await
        .expect("the server stops")
        .unwrap();

    let trace = collector
        .trace(&trace_id, |trace| {
            !named(trace, "run").is_empty() && agent(trace, "triage").is_some() && agent(trace, "reporting").is_some()
        })
        .await;
    let runs = named(&trace, "run");
    assert_eq!(runs.len(), 1, "one run span in the trace");
    let run = runs[0];
    assert!(
        run.span.parent_span_id.iter().all(|b| *b == 0),
        "the run's span is the trace's root, not the child of {}",
        run.parent_id()
    );
    for (key, expected) in [
        ("run_id", accepted.run_id.to_string()),
        ("thread_id", accepted.thread_id.to_string()),
        ("user_id", session.user_id.to_string()),
        ("trace_id", trace_id.clone()),
        ("status", "completed".to_owned()),
    ] {
        assert_eq!(run.attribute(key), Some(expected), "the run span's {key}");
    }
    assert_eq!(
        run.resource.get("service.name").map(String::as_str),
        Some("switchboard")
    );
    assert_eq!(
        run.resource.get("service.instance.id").map(String::as_str),
        Some("node-traced")
    );

    // Every agent that ran is a child of the run, in the order they ran.
    let agents = named(&trace, "agent");
    let mut started: Vec<(u64, String)> = agents
        .iter()
        .map(|a| (a.span.start_time_unix_nano, a.attribute("name").unwrap()))
        .collect();
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(order.first(), Some(&"triage"));
    assert_eq!(order.last(), Some(&"reporting"));
    for agent in &agents {
        assert_eq!(
            agent.parent_id(),
            run.span_id(),
            "{:?} is the run's child",
            agent.attribute("name")
        );
        assert_eq!(agent.attribute("outcome").as_deref(), Some("ok"));
    }
    let agent_ids: Vec<String> = agents.iter().map(|a| a.span_id()).collect();

    // Model calls are children of agents, with their model, tokens and outcome.
    let models = named(&trace, "model");
    assert!(!models.is_empty(), "the trace has model calls");
    for model in &models {
        assert!(agent_ids.contains(&model.parent_id()), "a model call under an agent");
        assert_eq!(model.attribute("model").as_deref(), Some("offline"));
        assert_eq!(model.attribute("outcome").as_deref(), Some("ok"));
        let input: u64 = model.attribute("input_tokens").unwrap().parse().unwrap();
        let output: u64 = model.attribute("output_tokens").unwrap().parse().unwrap();
        assert!(
            input > 0 && output > 0,
            "a model call's tokens: {input} in, {output} out"
        );
    }
    let triage = agent(&trace, "triage").unwrap();
    assert!(
        models.iter().any(|m| m.parent_id() == triage.span_id()),
        "triage calls the model"
    );

    // Tool calls too: the events' calls, each under its agent, with its name, id and outcome.
    let tool_events: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::ToolCompleted(done) => Some((done.tool_call_id.clone(), done.tool_name.clone())),
            _ => None,
        })
        .collect();
    assert!(!tool_events.is_empty(), "the run calls tools");
    let tools = named(&trace, "tool");
    let mut traced: Vec<(String, String)> = tools
        .iter()
        .map(|t| (t.attribute("call_id").unwrap(), t.attribute("name").unwrap()))
        .collect();
    traced.sort();
    let mut expected = tool_events.clone();
    expected.sort();
    assert_eq!(traced, expected);
    for tool in &tools {
        assert!(agent_ids.contains(&tool.parent_id()), "a tool call under an agent");
        assert_eq!(tool.attribute("outcome").as_deref(), Some("ok"));
    }

    // Triage counts the user's workload data: a tier operation, under the agent or its tool.
    let tiers = named(&trace, "tier");
    assert!(!tiers.is_empty(), "the trace has the tier operations of the run");
    let tool_ids: Vec<_> = tools.iter().map(|t| t.span_id()).collect();
    for tier in &tiers {
        let parent = tier.parent_id();
        assert!(
            agent_ids.contains(&parent) || tool_ids.contains(&parent),
            "a tier operation under an agent or tool"
        );
        let name = tier.attribute("tier").unwrap();
        assert!(["sqlite", "postgres", "clickhouse"].contains(&name.as_str()), "{name}");
    }
}

/// A server exporting to `endpoint` serves two runs, the second after `between` (when given)
/// says that an export is under way, and then stops.
async fn two_runs_exporting_to(endpoint: &str, between: Option<&mut mpsc::UnboundedReceiver<()>>) {
    let app = spawn_server_process(&["--otlp-endpoint", endpoint]).await;
    let events = one_run(&app, "first").await;
    assert_eq!(final_status(&events), RunStatus::Completed, "a run with {endpoint}");
    if let Some(exporting) = between {
        tokio::time::timeout(DEADLINE, exporting.recv())
            .await
            .expect("the exporter sends the first run's spans");
    }
    let events = one_run(&app, "second").await;
    assert_eq!(final_status(&events), RunStatus::Completed, "a run with {endpoint}");
    // The exit waits for the exporter a bounded time, then goes on.
    tokio::time::timeout(DEADLINE, app.shutdown())
        .await
        .expect("the server stops although the collector never answered")
        .unwrap();
}

#[tokio::test]
async fn a_collector_that_never_answers_neither_slows_nor_breaks_a_run() {
    // A closed port (bound, then let go).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    two_runs_exporting_to(&format!("http://{closed}"), None).await;

    // A port that takes connections and never answers: the second run runs while an export of
    // the first one's spans waits on it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (connected, mut exporting) = mpsc::unbounded_channel();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
            let _ = connected.send(());
        }
    });
    two_runs_exporting_to(&format!("http://{silent_addr}"), Some(&mut exporting)).await;
    holding.abort();
}

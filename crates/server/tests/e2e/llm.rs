//! The server with an OpenAI-compatible model (a fake one over a real socket), on tokio's paused
//! clock: triage classifies through it, reporting streams its answer from it while the report's
//! figures come from the data, and when it fails the user is told why and the offline model answers.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use switchboard::config::LlmConfig;
use switchboard_engine::testkit::{check_run, final_status, thoughts};
use switchboard_llm::fake::{FakeServer, Reply};
use switchboard_protocol::{Event, EventPayload, RunStatus};

use crate::support::{TestApp, run_events, send, spawn_app_with};

async fn app_with(fake: &FakeServer) -> TestApp {
    app_configured(fake, |_| {}).await
}

/// A server using the fake's model, with `configure` applied last.
async fn app_configured(fake: &FakeServer, configure: impl FnOnce(&mut switchboard::Config)) -> TestApp {
    let base_url = fake.base_url().to_owned();
    spawn_app_with(move |c| {
        c.heartbeat_interval = Duration::from_secs(600);
        c.llm = Some(LlmConfig {
            base_url,
            api_key: Some(switchboard_llm::ApiKey::new("sk-test")),
            model: "gpt-4o-mini".into(),
            max_retries: 2,
        });
        configure(c);
    })
    .await
}

/// Uploads two calls that cost $0.50 and $0.25.
async fn upload(app: &TestApp, token: &str) {
    let rows = json!([
        {"timestamp": "2026-11-01T12:00:00Z", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300,
         "feature": "search", "latency_ms": 850, "cost_usd": 0.5},
        {"timestamp": "2026-11-02T12:00:00Z", "model": "gpt-4o", "input_tokens": 900, "output_tokens": 200,
         "feature": "search", "latency_ms": 650, "cost_usd": 0.25}
    ]);
    let response = app
        .client
        .http()
        .post(format!("{}/api/workload-events", app.client.base()))
        .bearer_auth(token)
        .json(&rows)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A server using the fake's model; a user who uploaded the two calls asks `question`; the run's
/// events, checked against the contract, and completed.
async fn ask(fake: &FakeServer, question: &str) -> Vec<Event> {
    let app = app_with(fake).await;
    let session = app.user("asker").await;
    upload(&app, &session.access_token).await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, question).await;
    let events = run_events(&mut socket, &accepted.run_id).await;
    check_run(&events).unwrap();
    assert_eq!(final_status(&events), Some(RunStatus::Completed));
    events
}

/// Each model call of a final event as (agent, model, success).
fn calls_of(done: &switchboard_protocol::AgentCompleted) -> Vec<(&str, &str, bool)> {
    done.model_calls
        .iter()
        .map(|c| (c.agent.as_str(), c.model.as_str(), c.success))
        .collect()
}

fn final_payload(events: &[Event]) -> &switchboard_protocol::AgentCompleted {
    match &events.last().unwrap().payload {
        EventPayload::AgentCompleted(done) if done.is_final => done,
        other => panic!("no final event: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_model_classifies_and_writes_the_answer_while_the_report_comes_from_the_data() {
    let fake = FakeServer::start(vec![
        Reply::completion("{\"category\": \"cost\"}"),
        Reply::stream(&["You spent ", "$0.75."]),
    ])
    .await;
    let events = ask(&fake, "where does our money go?").await;
    let done = final_payload(&events);
    let result = done.result.as_ref().unwrap();
    assert_eq!(result["text"], "You spent $0.75.");
    assert_eq!(result["report"]["total_cost_usd"], 0.75);
    assert_eq!(result["report"]["calls"], 2);

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let (classify, auth) = &requests[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(classify["model"], "gpt-4o-mini");
    assert_eq!(classify["response_format"], json!({"type": "json_object"}));
    assert_eq!(classify["messages"][1]["content"], "where does our money go?");
    let (write, _) = &requests[1];
    assert_eq!(write["stream"], true);
    let draft = write["messages"][1]["content"].as_str().unwrap();
    assert!(
        draft.contains("$0.75"),
        "the model writes from the computed figures: {draft}"
    );
    let system = write["messages"][0]["content"].as_str().unwrap();
    assert!(system.ends_with("The user asked: where does our money go?"), "{system}");

    let calls: Vec<Value> = done
        .model_calls
        .iter()
        .map(|c| json!([c.agent, c.model, c.input_tokens, c.output_tokens, c.cost_usd, c.success]))
        .collect();
    // gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
    let cost = |input: f64, output: f64| (input * 0.15 + output * 0.60) / 1e6;
    assert_eq!(
        calls,
        [
            json!(["triage", "gpt-4o-mini", 50, 7, cost(50.0, 7.0), true]),
            json!(["reporting", "gpt-4o-mini", 120, 30, cost(120.0, 30.0), true])
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_model_is_told_in_sentences_and_the_offline_model_still_answers() {
    let boom = Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "boom", None);
    let fake = FakeServer::start(vec![boom.clone(), boom.clone(), boom, Reply::Hang]).await;
    let events = ask(&fake, "how can we cut our costs?").await;
    let told: Vec<String> = thoughts(&events)
        .into_iter()
        .filter(|t| t.starts_with("The language model"))
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told[0].starts_with("The language model (gpt-4o-mini) failed after ")
            && told[0].ends_with(
                ": 127.0.0.1 answered 500 Internal Server Error (boom) (after 3 attempts); answering with the offline model instead."
            ),
        "{}",
        told[0]
    );
    assert_eq!(
        told[1],
        "The language model (gpt-4o-mini) did not answer within 20 s; answering with the offline model instead."
    );
    let done = final_payload(&events);
    let result = done.result.as_ref().unwrap();
    let text = result["text"].as_str().unwrap();
    assert!(text.contains("$0.75"), "the offline model wrote the figures: {text}");
    assert_eq!(result["report"]["total_cost_usd"], 0.75);
    let calls = calls_of(done);
    assert_eq!(
        calls,
        [
            ("triage", "gpt-4o-mini", false),
            ("triage", "offline", true),
            ("reporting", "gpt-4o-mini", false),
            ("reporting", "offline", true)
        ]
    );
    assert_eq!(fake.requests().len(), 4);
    let dropped = tokio::time::timeout(Duration::from_secs(60), fake.dropped_at_least(1)).await;
    assert_eq!(dropped.ok(), Some(1), "the hanging request was dropped");
    let category: &Value = &result["category"];
    assert_eq!(category, "cost", "the offline model classified it");
}

#[tokio::test(start_paused = true)]
async fn model_calls_cut_off_by_the_agent_deadline_are_on_the_final_event_with_their_time() {
    // The agents' deadline comes before the model's, so each hanging call is dropped with its
    // agent, before the offline model could answer instead.
    let fake = FakeServer::start(vec![Reply::Hang, Reply::Hang]).await;
    let app = app_configured(&fake, |c| c.engine.agent_timeout = Duration::from_secs(2)).await;
    let session = app.user("asker").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "how can we cut our costs?").await;
    let events = run_events(&mut socket, &accepted.run_id).await;
    check_run(&events).unwrap();
    assert_eq!(final_status(&events), Some(RunStatus::TimedOut));
    let done = final_payload(&events);
    let calls = calls_of(done);
    assert_eq!(
        calls,
        [("triage", "gpt-4o-mini", false), ("reporting", "gpt-4o-mini", false)]
    );
    for call in &done.model_calls {
        assert!(
            (1..=2_000).contains(&call.duration_ms),
            "a call waits until its agent is stopped: {call:?}"
        );
    }
    let waited: u64 = done.model_calls.iter().map(|c| c.duration_ms).sum();
    let model_ms = done.timings.as_ref().unwrap().model_ms;
    assert!(
        model_ms > 0 && model_ms.abs_diff(waited) <= 1,
        "model_ms {model_ms}, calls {waited}"
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_server_with_an_llm_url_that_cannot_work_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = switchboard::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..switchboard::Config::default()
    };
    config.llm = Some(LlmConfig {
        base_url: "api.openai.com/v1".into(),
        api_key: None,
        model: "gpt-4o-mini".into(),
        max_retries: 2,
    });
    let error = switchboard::Application::build(config).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the LLM base URL `api.openai.com/v1` is not an http:// or https:// URL"
    );
}

//! The OpenAI-compatible client against a local fake server speaking real HTTP and server-sent
//! events over a socket, on tokio's paused clock: a normal stream, a slow one, a hang, 429 then
//! success, 500, malformed streams, refused requests.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use serde_json::json;
use switchboard_engine::testkit::{ModelBehavior, Scenario, ScriptedModel, Step, thoughts};
use switchboard_engine::{Delta, Model, ModelError, ModelRequest, Usage};
use switchboard_llm::fake::{FakeServer, Reply, chunk, stream};
use switchboard_llm::{ApiKey, ConfigError, OpenAiConfig, OpenAiModel, Price};
use switchboard_protocol::{EventPayload, RunStatus};
use tokio::time::Instant;

const S: fn(u64) -> Duration = Duration::from_secs;

fn model(base_url: &str) -> OpenAiModel {
    let mut config = OpenAiConfig::new(base_url, "gpt-test");
    config.api_key = Some(ApiKey::new("sk-test"));
    config.price = Some(Price {
        input_per_mtok: 2.0,
        output_per_mtok: 8.0,
    });
    OpenAiModel::new(config).unwrap()
}

/// Everything a stream gives: its text pieces, its usage, or the error that ended it.
async fn read_stream(model: &OpenAiModel, request: ModelRequest) -> (Vec<String>, Option<Usage>, Option<ModelError>) {
    let mut stream = match model.stream(request).await {
        Ok(stream) => stream,
        Err(error) => return (Vec::new(), None, Some(error)),
    };
    let (mut pieces, mut usage) = (Vec::new(), None);
    while let Some(delta) = stream.next().await {
        match delta {
            Ok(Delta::Text(text)) => pieces.push(text),
            Ok(Delta::Usage(u)) => usage = Some(u),
            Err(error) => return (pieces, usage, Some(error)),
        }
    }
    (pieces, usage, None)
}

#[tokio::test(start_paused = true)]
async fn a_normal_stream_gives_its_pieces_in_order_and_its_usage() {
    let fake = FakeServer::start(vec![Reply::stream(&["Cut ", "your ", "costs."])]).await;
    let model = model(fake.base_url());
    let (pieces, usage, error) = read_stream(&model, ModelRequest::new("be brief", "how?")).await;
    assert_eq!(error, None);
    assert_eq!(pieces, ["Cut ", "your ", "costs."]);
    let usage = usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (120, 30));
    assert_eq!(model.cost_usd(usage), Some((120.0 * 2.0 + 30.0 * 8.0) / 1e6));
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    let (body, auth) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(
        body,
        &json!({
            "model": "gpt-test",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how?"}],
            "stream": true,
            "stream_options": {"include_usage": true}
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_whole_answer_asked_as_json_sends_the_response_format_and_reads_the_usage() {
    let fake = FakeServer::start(vec![Reply::completion("{\"category\": \"cost\"}")]).await;
    let mut request = ModelRequest::new("classify", "cut costs");
    request.json = true;
    request.max_tokens = Some(50);
    let response = model(fake.base_url()).complete(request).await.unwrap();
    assert_eq!(response.text, "{\"category\": \"cost\"}");
    assert_eq!((response.usage.input_tokens, response.usage.output_tokens), (50, 7));
    let body = &fake.requests()[0].0;
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["stream"], false);
}

#[tokio::test(start_paused = true)]
async fn a_slow_stream_is_read_to_its_end_as_it_comes() {
    let pieces: Vec<(Duration, String)> = stream(&["one ", "two ", "three"])
        .into_iter()
        .map(|p| (S(2), p))
        .collect();
    let fake = FakeServer::start(vec![Reply::Sse(pieces)]).await;
    let model = model(fake.base_url());
    let started = Instant::now();
    let mut stream = model.stream(ModelRequest::new("s", "u")).await.unwrap();
    let mut arrivals = Vec::new();
    while let Some(delta) = stream.next().await {
        if let Delta::Text(text) = delta.unwrap() {
            arrivals.push((text, started.elapsed().as_secs()));
        }
    }
    // The role chunk comes at 2 s, then one piece every 2 s.
    assert_eq!(
        arrivals,
        [("one ".to_owned(), 4), ("two ".to_owned(), 6), ("three".to_owned(), 8)]
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_then_success_waits_as_asked_and_answers() {
    let fake = FakeServer::start(vec![
        Reply::error(StatusCode::TOO_MANY_REQUESTS, "Rate limit reached", Some(2)),
        Reply::error(StatusCode::TOO_MANY_REQUESTS, "Rate limit reached", None),
        Reply::stream(&["fine"]),
    ])
    .await;
    let started = Instant::now();
    let (pieces, _, error) = read_stream(&model(fake.base_url()), ModelRequest::new("s", "u")).await;
    assert_eq!(error, None);
    assert_eq!(pieces, ["fine"]);
    assert_eq!(fake.requests().len(), 3);
    let waited = started.elapsed();
    // Retry-After: 2 s, then the second backoff: between half and all of 2 × 500 ms.
    assert!(
        waited >= Duration::from_millis(2500) && waited <= S(3),
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_calls_say_what_the_server_said_and_are_retried_only_when_that_can_help() {
    let boom = Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "boom", None);
    let cases = [
        (
            vec![boom.clone(), boom.clone(), boom],
            "127.0.0.1 answered 500 Internal Server Error (boom) (after 3 attempts)",
            true,
            3,
        ),
        (
            vec![Reply::error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided",
                None,
            )],
            "127.0.0.1 answered 401 Unauthorized (Incorrect API key provided)",
            false,
            1,
        ),
        (
            // Waiting a minute would outlast the model deadline: it fails at once.
            vec![Reply::error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", Some(60))],
            "127.0.0.1 answered 503 Service Unavailable (overloaded); it asks to wait 60 s",
            true,
            1,
        ),
        (
            vec![Reply::Json(StatusCode::OK, json!({"result": "hi"}), None)],
            "the answer is not a chat completion (no choices[0].message.content)",
            false,
            1,
        ),
    ];
    for (replies, message, retryable, requests) in cases {
        let fake = FakeServer::start(replies).await;
        let failure = model(fake.base_url())
            .complete(ModelRequest::new("s", "u"))
            .await
            .unwrap_err();
        assert_eq!(failure.message, message);
        assert_eq!(failure.retryable, retryable, "{message}");
        assert_eq!(fake.requests().len(), requests, "{message}");
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_streams_end_with_an_error_after_the_text_that_was_good() {
    let cases = [
        (
            vec![chunk("Hello "), "data: {\"choices\": [\n\n".to_owned()],
            "the stream is malformed (EOF while parsing a list at line 1 column 13)",
        ),
        (
            vec![chunk("Hello "), "data: [1, 2]\n\n".to_owned()],
            "the stream is malformed (an event is not a JSON object)",
        ),
        (vec![chunk("Hello ")], "the stream broke off before its end"),
        (
            vec![
                chunk("Hello "),
                "data: {\"error\": {\"message\": \"overloaded\"}}\n\n".to_owned(),
            ],
            "the stream ended with an error (overloaded)",
        ),
        (
            vec![chunk("Hello "), "data: \u{0}\u{fffd}\n\n".to_owned()],
            "the stream is malformed (expected value at line 1 column 1)",
        ),
    ];
    for (stream, expected) in cases {
        let fake = FakeServer::start(vec![Reply::raw(stream)]).await;
        let (pieces, _, error) = read_stream(&model(fake.base_url()), ModelRequest::new("s", "u")).await;
        assert_eq!(pieces, ["Hello "], "{expected}");
        assert_eq!(error.map(|e| e.message).as_deref(), Some(expected));
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_that_answers_a_stream_request_whole_is_read_as_one_piece() {
    let fake = FakeServer::start(vec![Reply::completion("All at once.")]).await;
    let (pieces, usage, error) = read_stream(&model(fake.base_url()), ModelRequest::new("s", "u")).await;
    assert_eq!(error, None);
    assert_eq!(pieces, ["All at once."]);
    assert_eq!(usage.unwrap().output_tokens, 7);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_server_is_tried_again_then_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let failure = model(&format!("http://127.0.0.1:{port}/v1"))
        .complete(ModelRequest::new("s", "u"))
        .await
        .unwrap_err();
    assert!(
        failure.message.starts_with("127.0.0.1 could not be reached (")
            && failure.message.ends_with(" (after 3 attempts)"),
        "{}",
        failure.message
    );
    assert!(failure.retryable);
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    for url in ["api.openai.com/v1", "ftp://host/v1", "http://", "not a url"] {
        assert_eq!(
            OpenAiModel::new(OpenAiConfig::new(url, "gpt-4o")).unwrap_err(),
            ConfigError::BadUrl(url.to_owned())
        );
    }
    assert_eq!(
        OpenAiModel::new(OpenAiConfig::new("https://host/v1", " ")).unwrap_err(),
        ConfigError::NoModel
    );
    let mut config = OpenAiConfig::new("https://host/v1/", "gpt-4o");
    config.api_key = Some(ApiKey::new("sk-secret"));
    assert!(OpenAiModel::new(config.clone()).is_ok());
    assert!(!format!("{config:?}").contains("sk-secret"), "the key is never printed");
}

/// A run whose reporting agent streams its answer from the fake server's model, with an offline
/// stand-in that answers "The answer." when it fails.
fn reporting_with_fallback(fake: &FakeServer) -> Scenario {
    Scenario::new()
        .model(Arc::new(model(fake.base_url())))
        .fallback_model(ScriptedModel::named(
            "offline",
            vec![ModelBehavior::Reply("The answer.".into())],
        ))
        .agent("reporting", vec![Step::StreamAnswer("write".into())])
}

#[tokio::test(start_paused = true)]
async fn in_a_run_a_hanging_model_is_dropped_at_its_deadline_and_the_offline_model_answers() {
    let fake = FakeServer::start(vec![Reply::Hang]).await;
    let scenario = reporting_with_fallback(&fake);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(outcome.answer.as_deref(), Some("The answer."));
    assert_eq!(
        thoughts(&events),
        ["The language model (gpt-test) did not answer within 20 s; answering with the offline model instead."]
    );
    tokio::task::yield_now().await;
    assert_eq!(fake.dropped(), 1, "the hanging request was really dropped");
}

#[tokio::test(start_paused = true)]
async fn in_a_run_a_stream_that_stalls_midway_keeps_its_text_and_the_offline_model_finishes() {
    let fake = FakeServer::start(vec![Reply::SseThenHang(vec![chunk("Your spend ")])]).await;
    let scenario = reporting_with_fallback(&fake);
    let (events, outcome) = scenario.run_with_outcome("go", None).await;
    assert_eq!(outcome.answer.as_deref(), Some("Your spend \n\nThe answer."));
    let EventPayload::AgentCompleted(last) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    let calls: Vec<(&str, bool, u64)> = last
        .model_calls
        .iter()
        .map(|c| (c.model.as_str(), c.success, c.duration_ms))
        .collect();
    assert_eq!(calls, [("gpt-test", false, 20_000), ("offline", true, 0)]);
    tokio::task::yield_now().await;
    assert_eq!(fake.dropped(), 1, "the stalled stream was really dropped");
}

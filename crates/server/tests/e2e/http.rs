//! The HTTP API: threads, messages, runs, events (JSON and SSE), health and metrics.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use switchboard_protocol::{EventPayload, ServerFrame};

use crate::support::{events_until_final, next, send, spawn_app, spawn_app_with};

#[tokio::test]
async fn threads_are_created_listed_read_and_deleted_by_their_owner_only() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let (a, b) = (ann.access_token.as_str(), bob.access_token.as_str());
    let (status, thread) = app
        .client
        .post("/api/threads", Some(a), &json!({"title": "Q3 budget"}))
        .await
        .unwrap();
    assert_eq!((status, thread["title"].as_str()), (201, Some("Q3 budget")));
    let id = thread["id"].as_str().unwrap().to_owned();
    let (status, untitled) = app.client.post("/api/threads", Some(a), &json!({})).await.unwrap();
    assert_eq!((status, untitled["title"].as_str()), (201, Some("New thread")));
    let (_, list) = app.client.get("/api/threads", Some(a)).await.unwrap();
    assert_eq!(list["threads"].as_array().unwrap().len(), 2);
    let (_, list) = app.client.get("/api/threads", Some(b)).await.unwrap();
    assert_eq!(list["threads"].as_array().unwrap().len(), 0);
    let too_long = json!({"title": "t".repeat(201)});
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        ("GET", format!("/api/threads/{id}"), Some(a), 200),
        ("GET", format!("/api/threads/{id}"), Some(b), 404),
        ("GET", format!("/api/threads/{id}/messages"), Some(a), 200),
        ("GET", format!("/api/threads/{id}/messages"), Some(b), 404),
        ("GET", "/api/threads/not-an-id".into(), Some(a), 404),
        ("GET", "/api/threads/thr_unknown/messages".into(), Some(a), 404),
        ("GET", format!("/api/threads/{id}"), None, 401),
        ("GET", "/api/runs/run_unknown".into(), Some(a), 404),
        ("GET", "/api/threads/%FF".into(), Some(a), 404),
        ("POST", "/api/runs/%FF/cancel".into(), Some(a), 404),
        ("GET", "/api/no-such-route".into(), Some(a), 404),
        ("DELETE", format!("/api/threads/{id}"), Some(b), 404),
        ("DELETE", format!("/api/threads/{id}"), Some(a), 204),
        ("DELETE", format!("/api/threads/{id}"), Some(a), 404),
        ("GET", format!("/api/threads/{id}"), Some(a), 404),
    ];
    for (method, path, token, status) in cases {
        let url = format!("{}{path}", app.client.base());
        let mut request = app.client.http().request(method.parse().unwrap(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        if status >= 400 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
        }
    }
    let (status, _) = app.client.post("/api/threads", Some(a), &too_long).await.unwrap();
    assert_eq!(status, 422);
    let raw = app
        .client
        .http()
        .post(format!("{}/api/threads", app.client.base()))
        .bearer_auth(a)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
}

#[tokio::test(start_paused = true)]
async fn a_run_is_read_and_cancelled_over_http() {
    let app = spawn_app_with(|c| c.model_latency = Duration::from_secs(30)).await;
    let session = app.user("http").await;
    let token = session.access_token.as_str();
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "slow one").await;
    let path = format!("/api/runs/{}", accepted.run_id);
    let (status, run) = app.client.get(&path, Some(token)).await.unwrap();
    assert_eq!(
        (status, run["status"].as_str(), run["thread_id"].as_str()),
        (200, Some("running"), Some(accepted.thread_id.as_str()))
    );
    let (status, _) = app
        .client
        .post(&format!("{path}/cancel"), Some(token), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 202);
    events_until_final(&mut socket, &accepted.run_id).await;
    let (_, run) = app.client.get(&path, Some(token)).await.unwrap();
    assert_eq!(run["status"], "cancelled");
    assert!(run["finished_at"].is_string() && run["duration_ms"].is_u64());
    let (status, body) = app
        .client
        .post(&format!("{path}/cancel"), Some(token), &json!({}))
        .await
        .unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")));
    let other = app.user("other").await;
    let (status, _) = app
        .client
        .post(&format!("{path}/cancel"), Some(&other.access_token), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn events_come_as_json_pages_or_as_an_sse_stream_that_stays_open() {
    let app = spawn_app().await;
    let session = app.user("sse").await;
    let token = session.access_token.as_str();
    let mut socket = app.connect(&session).await;
    let first = send(&mut socket, "one").await;
    let stored = events_until_final(&mut socket, &first.run_id).await;
    let (status, page) = app
        .client
        .get("/api/events?after_seq=0&limit=1000", Some(token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let page: Vec<serde_json::Value> = page["events"].as_array().unwrap().clone();
    assert_eq!(
        page,
        stored
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect::<Vec<_>>()
    );
    for bad in [
        "/api/events?limit=0",
        "/api/events?limit=1001",
        "/api/events?after_seq=x",
    ] {
        let (status, body) = app.client.get(bad, Some(token)).await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_request")),
            "{bad}"
        );
    }

    let response = app
        .client
        .http()
        .get(format!("{}/api/events?after_seq=2", app.client.base()))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let second = send(&mut socket, "two").await;
    let live = events_until_final(&mut socket, &second.run_id).await;
    let expected = stored.len() - 2 + live.len();
    let mut text = String::new();
    let mut ids: Vec<u64> = Vec::new();
    while ids.len() < expected {
        text.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
        ids = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|n| n.parse().unwrap())
            .collect();
    }
    assert_eq!(ids, (3..=(stored.len() + live.len()) as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn health_and_metrics_tell_the_truth() {
    let app = spawn_app().await;
    let (status, live) = app.client.get("/health/live", None).await.unwrap();
    assert_eq!((status, live), (200, json!({"status": "ok"})));
    let (status, ready) = app.client.get("/health/ready", None).await.unwrap();
    assert_eq!(
        (
            status,
            ready["status"].as_str(),
            ready["checks"]["store"]["status"].as_str()
        ),
        (200, Some("ok"), Some("ok"))
    );
    // A check per tier (SQLite, or PostgreSQL and ClickHouse in the pass on the tiers), all `ok`.
    let checks = ready["checks"].as_object().unwrap();
    let tiers: Vec<&str> = checks
        .keys()
        .map(String::as_str)
        .filter(|k| ["sqlite", "postgres", "clickhouse"].contains(k))
        .collect();
    assert!(tiers == ["sqlite"] || tiers == ["clickhouse", "postgres"], "{ready}");
    assert!(checks.values().all(|c| c["status"] == "ok"), "{ready}");

    let session = app.user("metered").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "count me").await;
    let events = events_until_final(&mut socket, &accepted.run_id).await;
    let EventPayload::AgentCompleted(last) = &events.last().unwrap().payload else {
        panic!("no final event");
    };
    let calls: Vec<(&str, &str)> = last
        .model_calls
        .iter()
        .map(|c| (c.agent.as_str(), c.model.as_str()))
        .collect();
    assert_eq!(calls, [("triage", "offline"), ("reporting", "offline")]);
    let input: u64 = last.model_calls.iter().map(|c| c.input_tokens).sum();
    let output: u64 = last.model_calls.iter().map(|c| c.output_tokens).sum();
    assert!(input > 0 && output > 0);
    let (_, run) = app
        .client
        .get(&format!("/api/runs/{}", accepted.run_id), Some(&session.access_token))
        .await
        .unwrap();
    assert_eq!(
        run["model_calls"],
        serde_json::to_value(&last.model_calls).unwrap(),
        "the run keeps its model calls"
    );
    assert_eq!(
        run["missing"],
        serde_json::to_value(&last.missing).unwrap(),
        "the run keeps the agents whose part is missing"
    );
    socket.send_text("nonsense").await.unwrap();
    assert!(matches!(next(&mut socket).await, ServerFrame::Control(_)));
    let text = app.metrics().await;
    for line in [
        "switchboard_connections 1".to_owned(),
        "switchboard_runs_total{status=\"completed\"} 1".to_owned(),
        format!("switchboard_events_sent_total {}", events.len()),
        format!("switchboard_events_stored_total {}", events.len()),
        "switchboard_errors_total{code=\"invalid_json\"} 1".to_owned(),
        "switchboard_run_duration_seconds_count 1".to_owned(),
        "switchboard_first_event_latency_seconds_count 1".to_owned(),
        "switchboard_model_calls_total{model=\"offline\",outcome=\"ok\"} 2".to_owned(),
        format!("switchboard_model_tokens_total{{model=\"offline\",direction=\"input\"}} {input}"),
        format!("switchboard_model_tokens_total{{model=\"offline\",direction=\"output\"}} {output}"),
        "switchboard_model_cost_usd_total{model=\"offline\",outcome=\"ok\"} 0.0".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_answers_within_a_second_when_the_store_hangs() {
    let app = spawn_app().await;
    app.store.set_hanging(true);
    let started = tokio::time::Instant::now();
    let (status, ready) = app.client.get("/health/ready", None).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!((status, ready["status"].as_str()), (503, Some("unavailable")));
    assert_eq!(ready["checks"]["store"]["status"], "unavailable");
    assert!(
        ready["checks"]["store"]["error"]
            .as_str()
            .unwrap()
            .contains("no answer within")
    );
    // The tier itself is degraded: it does not answer in time, and the check says how long it
    // waited.
    let tier = &ready["checks"]["sqlite"];
    assert_eq!(
        (tier["status"].as_str(), tier["latency_ms"].as_u64()),
        (Some("degraded"), Some(800))
    );
    let (status, _) = app.client.get("/health/live", None).await.unwrap();
    assert_eq!(status, 200, "liveness does no I/O");
    app.store.set_hanging(false);
    let (status, _) = app.client.get("/health/ready", None).await.unwrap();
    assert_eq!(status, 200);
}

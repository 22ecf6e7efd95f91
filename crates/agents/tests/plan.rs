//! The shipped plan end to end through the engine, with the offline model.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_agents::{OfflineModel, register};
use switchboard_engine::testkit::{MemorySink, check_run, summary};
use switchboard_engine::{Engine, RunRequest};
use switchboard_protocol::{EventPayload, RunStatus, ThreadId, UserId};
use switchboard_store::{
    AnalyticsStore, PERCENTILE_RELATIVE_ERROR, StoreError, Summary, Tier, TimeRange, Upload, UploadKey, WorkloadEvent,
};

/// An analytics store that says the user has `0` calls uploaded, and cannot summarise them.
struct Uploaded(u64);

#[async_trait]
impl AnalyticsStore for Uploaded {
    async fn insert_workload_events(&self, _: &UserId, _: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        Err(StoreError::Backend("read-only in this test".into()))
    }
    async fn insert_workload_upload(
        &self,
        _: &UserId,
        _: &UploadKey,
        _: Vec<WorkloadEvent>,
    ) -> Result<Upload, StoreError> {
        Err(StoreError::Backend("read-only in this test".into()))
    }
    async fn workload_event_count(&self, _: &UserId) -> Result<u64, StoreError> {
        Ok(self.0)
    }
    async fn workload_summary(&self, _: &UserId, _: TimeRange) -> Result<Summary, StoreError> {
        Err(StoreError::Backend("the analytics store is down".into()))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn tier(&self) -> Tier {
        Tier::Sqlite
    }
}

/// An analytics store that cannot be reached.
struct Down;

#[async_trait]
impl AnalyticsStore for Down {
    async fn insert_workload_events(&self, _: &UserId, _: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        Err(down())
    }
    async fn insert_workload_upload(
        &self,
        _: &UserId,
        _: &UploadKey,
        _: Vec<WorkloadEvent>,
    ) -> Result<Upload, StoreError> {
        Err(down())
    }
    async fn workload_event_count(&self, _: &UserId) -> Result<u64, StoreError> {
        Err(down())
    }
    async fn workload_summary(&self, _: &UserId, _: TimeRange) -> Result<Summary, StoreError> {
        Err(down())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(down())
    }
    fn tier(&self) -> Tier {
        Tier::ClickHouse
    }
}

fn down() -> StoreError {
    StoreError::Unavailable {
        tier: Tier::ClickHouse,
        reason: "connection refused".into(),
    }
}

/// The shipped agents over `analytics`, answering with `model`, and the sink of their events.
fn engine_over(analytics: Arc<dyn AnalyticsStore>, model: OfflineModel) -> (Engine, Arc<MemorySink>) {
    let sink = MemorySink::new();
    let engine = register(
        Engine::builder(),
        analytics,
        Arc::new(switchboard_agents::PriceTable::embedded()),
    )
    .model(Arc::new(model))
    .build(sink.clone())
    .unwrap();
    (engine, sink)
}

async fn answer(uploaded: u64, text: &str) -> String {
    let (engine, _sink) = engine_over(Arc::new(Uploaded(uploaded)), OfflineModel::default());
    let user = UserId::parse("usr_a").unwrap();
    let outcome = engine
        .start_run(RunRequest::new(user, ThreadId::generate(), text))
        .unwrap()
        .outcome()
        .await;
    assert_eq!(outcome.status, RunStatus::Completed);
    outcome.answer.unwrap()
}

#[tokio::test(start_paused = true)]
async fn without_data_the_answer_says_what_to_send_and_unreadable_data_is_said_to_be_missing() {
    let none = answer(0, "How can we cut our LLM costs?").await;
    for expected in [
        "I have no usage data of yours",
        "POST /api/workload-events",
        "application/x-ndjson",
        "\"input_tokens\": 1200",
    ] {
        assert!(none.contains(expected), "missing `{expected}` in:\n{none}");
    }
    let some = answer(3, "How can we cut our LLM costs?").await;
    assert!(
        some.contains("You have uploaded 3 model calls, but they could not be read"),
        "{some}"
    );
    assert!(
        some.contains("Missing from this answer: the data, optimization, actions steps did not finish."),
        "{some}"
    );
    assert!(!some.contains("POST /api/workload-events"), "{some}");
}

#[tokio::test(start_paused = true)]
async fn a_cost_question_is_classified_and_answered_without_invented_figures() {
    let (engine, sink) = engine_over(Arc::new(Uploaded(0)), OfflineModel::new(Duration::from_millis(50)));
    let user = UserId::parse("usr_a").unwrap();
    let text = "How can we cut our LLM costs on gpt-4o below $500?";
    let outcome = engine
        .start_run(RunRequest::new(user.clone(), ThreadId::generate(), text))
        .unwrap()
        .outcome()
        .await;
    let events = sink.events_of(&user);
    check_run(&events).unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(
        summary(&events),
        [
            "supervisor agent_started",
            "triage agent_started",
            "triage tool_executing extract_entities",
            "triage tool_completed extract_entities ok",
            "triage tool_executing workload_overview",
            "triage tool_completed workload_overview ok",
            "triage agent_completed completed",
            "reporting agent_started",
            "reporting agent_completed completed",
            "supervisor agent_completed completed final",
        ]
    );
    let answer = outcome.answer.unwrap();
    assert!(answer.contains("**a cost question**"), "{answer}");
    assert!(answer.contains("models: gpt-4o; budgets: $500"), "{answer}");
    assert!(answer.contains("cannot give figures"), "{answer}");
    let streamed: String = events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::PartialResult(p) => Some(p.delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, answer, "the answer arrives as partial results");
    // The offline model streams its pieces at once: they go out coalesced, in one event or few.
    assert!(events.iter().any(|e| e.type_name() == "partial_result"));
    let timings = match &events.last().unwrap().payload {
        EventPayload::AgentCompleted(done) => done.timings.clone().unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(timings.model_ms, 100, "two model calls of 50 ms");
}

/// A fresh SQLite store in a folder that lives as long as the first value.
async fn sqlite() -> (tempfile::TempDir, Arc<switchboard_store::SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = switchboard_store::SqliteStore::open(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    (dir, Arc::new(store))
}

fn call(
    at: &str,
    model: &str,
    feature: &str,
    tokens: (u64, u64),
    latency: f64,
    error: bool,
    cost: f64,
) -> WorkloadEvent {
    WorkloadEvent {
        timestamp: switchboard_protocol::Timestamp::parse(at).unwrap(),
        model: model.into(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        provider: None,
        latency_ms: Some(latency),
        status: if error {
            switchboard_store::CallStatus::Error
        } else {
            switchboard_store::CallStatus::Ok
        },
        feature: Some(feature.into()),
        prompt_hash: None,
        cost_usd: cost,
        batch: false,
    }
}

/// Four calls; every figure of the report below is worked out by hand from them.
#[tokio::test]
async fn with_data_the_report_holds_the_figures_of_the_users_own_calls() {
    let (_dir, store) = sqlite().await;
    let user = UserId::parse("usr_team").unwrap();
    let calls = vec![
        call(
            "2026-11-01T09:00:00Z",
            "gpt-4o",
            "search",
            (2000, 500),
            800.0,
            false,
            0.0100,
        ),
        call(
            "2026-11-01T09:30:00Z",
            "gpt-4o",
            "search",
            (4000, 500),
            1200.0,
            true,
            0.0150,
        ),
        call(
            "2026-11-02T14:00:00Z",
            "gpt-4o-mini",
            "tagging",
            (1000, 100),
            200.0,
            false,
            0.0002,
        ),
        call(
            "2026-11-03T09:10:00Z",
            "gpt-4o-mini",
            "tagging",
            (1000, 100),
            400.0,
            false,
            0.0002,
        ),
    ];
    store.insert_workload_events(&user, calls).await.unwrap();
    let (engine, sink) = engine_over(store, OfflineModel::default());
    let outcome = engine
        .start_run(RunRequest::new(
            user.clone(),
            ThreadId::generate(),
            "Why is search so slow?",
        ))
        .unwrap()
        .outcome()
        .await;
    let events = sink.events_of(&user);
    check_run(&events).unwrap();
    assert!(summary(&events).contains(&"data tool_completed workload_summary ok".to_owned()));
    assert_eq!(outcome.status, RunStatus::Completed);
    let report = &outcome.result.as_ref().unwrap()["report"];
    let close = |v: &serde_json::Value, expected: f64| (v.as_f64().unwrap() - expected).abs() < 1e-9;
    assert_eq!(report["period"]["from"], "2026-11-01T09:00:00.000Z");
    assert_eq!(report["period"]["to"], "2026-11-03T09:10:00.000Z");
    assert_eq!(
        (
            report["calls"].as_u64(),
            report["input_tokens"].as_u64(),
            report["output_tokens"].as_u64()
        ),
        (Some(4), Some(8000), Some(1200))
    );
    assert!(close(&report["total_cost_usd"], 0.0254));
    let big = &report["by_model"][0];
    assert_eq!(
        (big["model"].as_str(), big["calls"].as_u64()),
        (Some("gpt-4o"), Some(2))
    );
    assert!(close(&big["cost_usd"], 0.025) && close(&big["error_rate"], 0.5));
    // 800 and 1200: p50 at rank ceil(1.0) = 1, p95 at rank ceil(1.9) = 2 (the smallest and the
    // largest, which the sketch knows exactly).
    assert_eq!(
        (big["p50_latency_ms"].as_f64(), big["p95_latency_ms"].as_f64()),
        (Some(800.0), Some(1200.0))
    );
    let mini = &report["by_model"][1];
    assert!(close(&mini["cost_usd"], 0.0004) && close(&mini["error_rate"], 0.0));
    assert_eq!(
        (mini["p50_latency_ms"].as_f64(), mini["p95_latency_ms"].as_f64()),
        (Some(200.0), Some(400.0))
    );
    assert_eq!(report["by_feature"][0]["feature"], "search");
    assert_eq!(report["by_feature"][1]["feature"], "tagging");
    // Calls per hour of the day (UTC): three at 09, one at 14.
    let hours: Vec<(u64, u64)> = report["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hour"].as_u64().unwrap(), h["calls"].as_u64().unwrap()))
        .filter(|&(_, calls)| calls > 0)
        .collect();
    assert_eq!(hours, [(9, 3), (14, 1)]);
    // Only the failed call saves anything: $0.015 over 2.007 days is $0.22 in 30 days. Routing the
    // short gpt-4o-mini calls to gpt-5-nano saves $0.00022 (under a cent a month); no prompt repeats,
    // no off-hours work, no prompt above its feature's p95.
    assert_eq!(
        report["strategies"],
        serde_json::json!([{
            "kind": "error_reduction", "title": "Fix the causes of failed calls", "monthly_savings_usd": 0.22,
            "assumption": "Failed calls are paid for and then retried; removing their cause saves their whole cost."
        }])
    );
    // A latency question: the latency changes come first, and the saving from fixing failed
    // calls is already their second step (it stays in the strategies' table). search writes 1,000 answer tokens in
    // 2 calls (500 each, at the threshold) and half of its calls fail; no model has short calls
    // to route, no hour has enough calls to judge, no prompt is above its feature's p95.
    let titles: Vec<(u64, &str)> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["step"].as_u64().unwrap(), a["title"].as_str().unwrap()))
        .collect();
    assert_eq!(
        titles,
        [
            (1, "Cap the length of search's answers, or stream them"),
            (2, "Fix the failures of search")
        ]
    );
    // Latencies 200, 400, 800, 1200: p50 at rank ceil(2.0) = 2 (estimated within 1 %), p95 at
    // rank ceil(3.8) = 4, the largest (known exactly).
    let latency = &report["latency"];
    let p50 = latency["p50_latency_ms"].as_f64().unwrap();
    assert!((p50 - 400.0).abs() <= PERCENTILE_RELATIVE_ERROR * 400.0, "{p50}");
    assert_eq!(latency["p95_latency_ms"].as_f64(), Some(1200.0));
    assert_eq!(
        latency["slowest_features"],
        serde_json::json!([
            {"feature": "search", "calls": 2, "p50_latency_ms": 800.0, "p95_latency_ms": 1200.0},
            {"feature": "tagging", "calls": 2, "p50_latency_ms": 200.0, "p95_latency_ms": 400.0}
        ])
    );
    assert_eq!(latency["slowest_hours"], serde_json::json!([]));
    assert_eq!(
        report["anomalies"],
        serde_json::json!([]),
        "three days are too few for a norm"
    );

    let answer = outcome.answer.unwrap();
    for expected in [
        "From 2026-11-01 to 2026-11-03: **4 calls**, 8,000 input and 1,200 output tokens, **$0.0254** in total; 1 failed (25.0 %).",
        "| gpt-4o | 2 | $0.0250 | 98.4 % | 800 ms | 1200 ms | 50.0 % |",
        "Busiest hours (UTC): 09:00 (3 calls), 14:00 (1 calls).",
        "## Latency\n\nOverall p50 399 ms, p95 1200 ms. Slowest features: search (p95 1200 ms), tagging (p95 400 ms). \
         Slowest models: gpt-4o (p95 1200 ms), gpt-4o-mini (p95 400 ms).",
        "- **Fix the failures of search.** 50.0 % of its calls fail, and each retry adds a whole call's wait.",
        "1. **Cap the length of search's answers, or stream them** Its calls write 500 tokens on average;",
        "_These figures are computed from your data; latency percentiles are estimates within 1 %._",
        "| Fix the causes of failed calls | $0.2200 |",
        "In all about **$0.2200 a month**, projected to 30 days from your data's period at the list prices of 2025-11-24.",
    ] {
        assert!(answer.contains(expected), "missing `{expected}` in:\n{answer}");
    }
}

/// Runs one request over `store` and returns the answer and `result.report` as JSON text.
async fn ask(store: Arc<switchboard_store::SqliteStore>, user: &UserId, text: &str) -> (String, serde_json::Value) {
    let (engine, sink) = engine_over(store, OfflineModel::default());
    let outcome = engine
        .start_run(RunRequest::new(user.clone(), ThreadId::generate(), text))
        .unwrap()
        .outcome()
        .await;
    check_run(&sink.events_of(user)).unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let report = outcome.result.as_ref().unwrap()["report"].clone();
    (outcome.answer.unwrap(), report)
}

/// Fails when `text` holds `inf`, `NaN` (as words) or a run of more than 15 digits.
fn assert_no_absurd_figure(text: &str) {
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let lower = word.to_ascii_lowercase();
        assert!(
            !matches!(lower.as_str(), "inf" | "infinity" | "nan"),
            "`{word}` in:\n{text}"
        );
    }
    let longest = text
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest <= 15, "a run of {longest} digits in:\n{text}");
}

#[tokio::test]
async fn stored_calls_with_absurd_figures_are_left_out_and_said_to_be_and_no_figure_is_inf_or_overflows() {
    let (_dir, store) = sqlite().await;
    let user = UserId::parse("usr_team").unwrap();
    // Four weeks of one ordinary call a day at noon, from Sunday 2026-11-01.
    let mut calls: Vec<WorkloadEvent> = (1..=28)
        .map(|day| {
            call(
                &format!("2026-11-{day:02}T12:00:00Z"),
                "gpt-4o",
                "search",
                (2000, 500),
                800.0,
                false,
                1.0,
            )
        })
        .collect();
    // Rows the upload refuses, stored directly (as an older version could have): a cost of 1e308
    // on Sunday the 8th, an infinite cost, a negative one, the most tokens SQLite can hold, a
    // latency of thirty years, a call from 1970.
    let absurd = [
        ("2026-11-08T12:00:00Z", (2000, 500), 800.0, 1e308),
        ("2026-11-09T12:00:00Z", (2000, 500), 800.0, f64::INFINITY),
        ("2026-11-10T12:00:00Z", (2000, 500), 800.0, -1.0),
        ("2026-11-11T12:00:00Z", (i64::MAX as u64, i64::MAX as u64), 800.0, 1.0),
        ("2026-11-12T12:00:00Z", (2000, 500), 1e12, 1.0),
        ("1970-01-01T00:00:00Z", (2000, 500), 800.0, 1.0),
    ];
    for (at, tokens, latency, cost) in absurd {
        calls.push(call(at, "gpt-4o", "search", tokens, latency, true, cost));
    }
    store.insert_workload_events(&user, calls).await.unwrap();

    for question in ["How can we cut our LLM costs?", "Why is search so slow?"] {
        let (answer, report) = ask(Arc::clone(&store), &user, question).await;
        assert_no_absurd_figure(&answer);
        assert_no_absurd_figure(&report.to_string());
        assert!(
            answer.contains("6 stored calls were left out because their figures are out of range"),
            "{question}:\n{answer}"
        );
        assert!(
            answer.contains("From 2026-11-01 to 2026-11-28: **28 calls**, 56,000 input and 14,000 output tokens, **$28.00** in total; 0 failed (0.0 %)."),
            "{question}:\n{answer}"
        );
        assert_eq!(report["calls_left_out"], 6, "{report}");
        assert_eq!(
            (report["calls"].as_u64(), report["total_cost_usd"].as_f64()),
            (Some(28), Some(28.0))
        );
        assert_eq!(report["anomalies"], serde_json::json!([]), "every day costs the same");
    }
}

#[tokio::test]
async fn when_every_stored_call_is_out_of_range_the_answer_gives_no_figures_and_says_why() {
    let (_dir, store) = sqlite().await;
    let user = UserId::parse("usr_team").unwrap();
    let calls = vec![
        call(
            "2026-11-01T12:00:00Z",
            "gpt-4o",
            "search",
            (2000, 500),
            800.0,
            false,
            1e308,
        ),
        call(
            "2026-11-02T12:00:00Z",
            "gpt-4o",
            "search",
            (2000, 500),
            -3.0,
            false,
            1.0,
        ),
    ];
    store.insert_workload_events(&user, calls).await.unwrap();
    let (answer, report) = ask(store, &user, "How can we cut our LLM costs?").await;
    assert_no_absurd_figure(&answer);
    assert_no_absurd_figure(&report.to_string());
    assert!(
        answer.contains(
            "2 stored calls were left out because their figures are out of range (each call needs at most 10,000,000 \
             prompt and answer tokens each, a latency from 0 to 86,400,000 ms (a day), a cost from $0 to $10,000, \
             made in the years 2000 to 2100), and none is left, so I give no figures rather than guess."
        ),
        "{answer}"
    );
    assert_eq!(
        (report["calls"].as_u64(), report["calls_left_out"].as_u64()),
        (Some(0), Some(2))
    );
}

#[tokio::test(start_paused = true)]
async fn when_the_analytics_store_cannot_be_reached_the_answer_says_the_figures_are_unavailable_and_why() {
    let (engine, sink) = engine_over(Arc::new(Down), OfflineModel::default());
    let user = UserId::parse("usr_a").unwrap();
    let outcome = engine
        .start_run(RunRequest::new(
            user.clone(),
            ThreadId::generate(),
            "How can we cut our LLM costs?",
        ))
        .unwrap()
        .outcome()
        .await;
    let events = sink.events_of(&user);
    check_run(&events).unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let answer = outcome.answer.unwrap();
    assert!(
        answer.contains("Your usage data cannot be read right now (")
            && answer.contains("ClickHouse cannot be reached: connection refused")
            && answer.contains("so I give no figures rather than guess"),
        "{answer}"
    );
    assert!(!answer.contains('$'), "no figure: {answer}");
    assert!(
        summary(&events).contains(&"triage tool_completed workload_overview failed".to_owned()),
        "{:?}",
        summary(&events)
    );
}

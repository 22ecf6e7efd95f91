//! One user's heavy analysis does not hold up another user's chat: in the embedded store the
//! workload data has its own file and connections, so a long scan never holds what event appends
//! need. Checked by the order of events, never by their times. (On SQLite even in the pass on
//! PostgreSQL + ClickHouse: there a summary of all calls reads roll-ups and is not long.)

use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{EventPayload, ServerFrame, Timestamp};
use switchboard_store::{AnalyticsStore, CallStatus, SqliteStore, WorkloadEvent};

use crate::support::{next, run_events, send, spawn_app_on};

/// Enough calls that scanning them takes far longer than a trivial run.
const CALLS: usize = 150_000;

fn call(index: usize) -> WorkloadEvent {
    WorkloadEvent {
        timestamp: Timestamp::from_unix_millis(1_793_000_000_000 + index as i64 * 10_000).unwrap(),
        model: ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"][index % 3].to_owned(),
        input_tokens: 500 + (index % 700) as u64,
        output_tokens: 100 + (index % 300) as u64,
        provider: None,
        latency_ms: Some(200.0 + (index % 1000) as f64),
        status: if index.is_multiple_of(50) {
            CallStatus::Error
        } else {
            CallStatus::Ok
        },
        feature: Some(["search", "chat", "tagging"][index % 3].to_owned()),
        prompt_hash: Some(format!("p{}", index % 5000)),
        cost_usd: 0.001,
        batch: false,
    }
}

#[tokio::test]
async fn another_users_run_ends_while_a_long_analysis_is_still_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap());
    let app = spawn_app_on(sqlite.clone(), sqlite, |_| {}).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let calls: Vec<_> = (0..CALLS).map(call).collect();
    for chunk in calls.chunks(25_000) {
        app.store
            .insert_workload_events(&ann.user_id, chunk.to_vec())
            .await
            .unwrap();
    }
    let mut ann_socket = app.connect(&ann).await;
    let mut bob_socket = app.connect(&bob).await;

    let analysis = send(&mut ann_socket, "How can we cut our LLM costs?").await;
    // Wait until ann's run is scanning her calls.
    loop {
        if let ServerFrame::Event(event) = next(&mut ann_socket).await
            && matches!(&event.payload, EventPayload::ToolExecuting(t) if t.tool_name == "workload_summary")
        {
            break;
        }
    }
    let trivial = send(&mut bob_socket, "hello, what can you do?").await;
    let bob_events = tokio::time::timeout(Duration::from_secs(120), run_events(&mut bob_socket, &trivial.run_id))
        .await
        .expect("bob's run ends");
    assert!(bob_events.last().unwrap().is_final());

    // By then ann's scan has not answered yet: its tool_completed is not in her log.
    let (status, page) = app
        .client
        .get("/api/events?after_seq=0&limit=1000", Some(&ann.access_token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let scanned = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|event| event["type"] == "tool_completed" && event["payload"]["tool_name"] == "workload_summary");
    assert!(!scanned, "bob's run waited for ann's scan");

    let ann_events = tokio::time::timeout(Duration::from_secs(300), run_events(&mut ann_socket, &analysis.run_id))
        .await
        .expect("ann's analysis ends");
    let last = ann_events.last().unwrap();
    assert!(
        matches!(&last.payload, EventPayload::AgentCompleted(c) if c.status == switchboard_protocol::RunStatus::Completed),
        "{last:?}"
    );
}

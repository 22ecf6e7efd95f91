//! The live SLA report (`GET /api/sla`), the tiers in a run's timings, and `switchboard doctor`,
//! with a tier made slow through the fault proxy: the report and the doctor name it, and count
//! its operations and their violations (the tests assert names and counts, never times).

use std::sync::Arc;
use std::time::Duration;

use switchboard_client::doctor;
use switchboard_faultproxy::{Fault, FaultProxy};
use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::sla::{SlaReport, SlaStatus, Thresholds};
use switchboard_protocol::{EventPayload, RunTimings, Tier};
use switchboard_store::SqliteAnalytics;

use crate::support::*;

async fn report(app: &TestApp) -> SlaReport {
    let (status, body) = app.client.get("/api/sla", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// One message's run, to its end; its final timings.
async fn one_run(app: &TestApp, socket: &mut switchboard_client::Socket, text: &str) -> RunTimings {
    let accepted = send(socket, text).await;
    let events = run_events(socket, &accepted.run_id).await;
    match &events.last().unwrap().payload {
        EventPayload::AgentCompleted(done) if done.is_final => done.timings.clone().unwrap(),
        other => panic!("the run ended with {other:?} on {}", app.client.base()),
    }
}

#[tokio::test]
async fn the_report_counts_each_run_and_each_tier_s_operations_and_a_run_s_timings_name_its_tiers() {
    let app = spawn_app().await;
    let session = app.user("counted").await;
    let mut socket = app.connect(&session).await;
    let timings = one_run(&app, &mut socket, "How much did we spend last week?").await;

    let report = report(&app).await;
    let store = report.windows["1m"]
        .tiers
        .keys()
        .find(|name| *name == "sqlite" || *name == "postgres")
        .cloned()
        .expect("the store's tier is in the report");
    assert!(timings.tiers.contains_key(&store), "{timings:?}");
    assert!(timings.tiers.contains_key("model"), "{timings:?}");
    assert_eq!(report.thresholds, Thresholds::INCIDENT);
    for name in ["1m", "5m", "15m"] {
        let window = &report.windows[name];
        assert_eq!(window.runs, 1, "{name}");
        assert!(window.response_ms.p95.is_some() && window.first_event_ms.p50.is_some());
        assert!(window.tiers[&store].ops > 0);
        assert!(window.tiers["model"].ops > 0);
        for violation in [
            "response_over_2000ms",
            "response_over_3000ms",
            "health_check_over_1000ms",
        ] {
            assert!(window.violations.contains_key(violation), "{violation} in {name}");
        }
    }
    // The same figures for Prometheus.
    let metrics = app.metrics().await;
    for line in [
        format!("switchboard_tier_operation_seconds_count{{tier=\"{store}\"}}"),
        "switchboard_tier_operation_seconds_count{tier=\"model\"}".to_owned(),
        "switchboard_response_latency_seconds_count 1".to_owned(),
        format!("switchboard_tier_degraded{{tier=\"{store}\"}}"),
        "switchboard_sla_status ".to_owned(),
        "switchboard_sla_violations_last_minute{name=\"response_over_3000ms\"} 0".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

/// A server whose store is a fresh PostgreSQL database behind a fault proxy.
async fn app_on_postgres_through_a_proxy() -> (TestApp, FaultProxy) {
    let url = postgres_database().await;
    let proxy = FaultProxy::start(address_of(&url)).await.unwrap();
    let store = PgStore::connect(&through(&url, proxy.addr()), PgOptions::default())
        .await
        .unwrap();
    let analytics = SqliteAnalytics::open(&tempfile::tempdir().unwrap().keep().join("w.sqlite"))
        .await
        .unwrap();
    (spawn_app_on(Arc::new(store), Arc::new(analytics), |_| {}).await, proxy)
}

#[tokio::test]
async fn postgresql_made_slow_is_named_by_the_report_the_run_s_timings_and_the_doctor() {
    let (app, proxy) = app_on_postgres_through_a_proxy().await;
    let session = app.user("slowed").await;
    let mut socket = app.connect(&session).await;
    proxy.set(Fault::Latency(Duration::from_millis(300)));
    let timings = one_run(&app, &mut socket, "Where does our latency go?").await;
    assert!(timings.tiers.contains_key("postgres"), "{timings:?}");

    let report = report(&app).await;
    assert!(report.degraded.contains(&"postgres".to_owned()), "{report:?}");
    assert_ne!(report.status, SlaStatus::Ok);
    let minute = &report.windows["1m"];
    assert!(minute.violations["postgres_over_200ms"] >= 1, "{minute:?}");
    assert!(minute.tiers["postgres"].ops >= minute.violations["postgres_over_200ms"]);
    assert_eq!(minute.tiers["sqlite"].errors, 0);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("switchboard_tier_degraded{tier=\"postgres\"} 1"),
        "{metrics}"
    );

    let diagnosis = doctor::diagnose(&app.client).await.unwrap();
    assert!(!diagnosis.healthy);
    assert!(diagnosis.degraded.contains(&Tier::Postgres), "{diagnosis:?}");
    let blamed: Vec<&String> = diagnosis
        .sentences
        .iter()
        .filter(|s| s.starts_with("PostgreSQL p99"))
        .collect();
    assert_eq!(blamed.len(), 1, "{diagnosis:?}");
    assert!(blamed[0].contains("(SLA 200 ms)"), "{blamed:?}");

    // The command says it too, and exits 1.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["doctor", "--server", app.client.base()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PostgreSQL p99"), "{stdout}");
    proxy.set(Fault::None);
}

#[tokio::test]
async fn the_doctor_says_when_a_server_is_not_switchboard_or_cannot_be_reached() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await });
    let error = doctor::diagnose(&switchboard_client::Client::new(&format!("http://{addr}")))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is not a Switchboard server with an SLA report: GET /api/sla answered 404"),
        "{error:#}"
    );

    // Nothing listens there any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["doctor", "--server", &format!("http://{closed}")])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: cannot reach a server at http://"),
        "{stderr}"
    );
}

//! `switchboard loadtest` against the real server: the library's report, the files it writes,
//! the binary's exit status, and the options it refuses.

use switchboard_client::SignIn;
use switchboard_client::loadtest::{self, LoadtestArgs};

use crate::support::{address_of, spawn_app, spawn_app_with};

fn args(server: &str, users: usize, runs: u64) -> LoadtestArgs {
    LoadtestArgs {
        sign_in: SignIn {
            server: server.to_owned(),
            email: None,
            password: None,
        },
        users,
        duration: None,
        runs: Some(runs),
        think_ms: 0,
        rate: None,
        json: None,
        html: None,
        marks: Vec::new(),
        message: "How can we cut our LLM costs?".into(),
        drain_secs: 70,
    }
}

#[tokio::test]
async fn three_users_get_six_runs_answered_with_no_contract_problem_and_the_files_written() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("report.json"), dir.path().join("report.html"));
    let mut args = args(app.client.base(), 3, 6);
    args.json = Some(json.clone());
    args.html = Some(html.clone());
    args.marks = vec!["0..1:first second".parse().unwrap()];

    let report = loadtest::run(args).await.unwrap();

    assert_eq!(report.runs, 6, "{}", report.table());
    assert_eq!(report.errors, 0, "{}", report.table());
    assert!(report.contract_problems.is_empty(), "{}", report.table());
    assert_eq!(report.statuses.get("completed"), Some(&6));
    assert_eq!(report.response_ms.count, 6);
    assert_eq!(report.workflow_ms.count, 3, "one workflow per user");

    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(written["runs"], 6);
    assert_eq!(written["errors"], 0);
    for figure in ["response_ms", "first_event_ms", "accept_ms"] {
        for p in ["p50", "p95", "p99"] {
            assert!(written[figure][p].is_number(), "{figure}.{p} in {written}");
        }
    }
    assert_eq!(written["violations"]["contract_problems"], 0);
    assert_eq!(written["violations"]["errors"], 0);
    assert_eq!(written["contract_problems"], serde_json::json!([]));
    assert!(written["throughput"]["runs_per_s"].is_number());
    assert!(written["thresholds"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(written["series"].as_array().is_some_and(|s| !s.is_empty()));
    assert_eq!(written["fault_windows"][0]["label"], "first second");
    let records = written["run_records"].as_array().unwrap();
    assert_eq!(records.len(), 6, "one record per answered run");
    for record in records {
        assert_eq!(record["status"], "completed", "{record}");
        assert!(
            record["accepted_s"].as_f64().unwrap() <= record["ended_s"].as_f64().unwrap(),
            "{record}"
        );
    }

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert_eq!(
        page.matches("<svg").count(),
        3,
        "latency over time, distribution, violations"
    );
    assert!(page.contains(r#"class="series""#) && page.contains(r#"class="window""#));
    // Self-contained: nothing to run and nothing to fetch.
    for outside in ["<script", "<link", "src=", "href=", "url(", "@import"] {
        assert!(!page.contains(outside), "the page has {outside}");
    }
}

#[tokio::test]
async fn users_whose_logins_the_server_throttles_sign_in_again_until_they_are_in() {
    // Without dev-login each user registers and signs in with a password; two logins at a time
    // from one address are all this server takes.
    let app = spawn_app_with(|c| {
        c.dev = false;
        c.login_max_failures = 2;
    })
    .await;
    let report = loadtest::run(args(app.client.base(), 6, 6)).await.unwrap();
    assert_eq!(report.errors, 0, "{}", report.table());
    assert_eq!(report.runs, 6, "{}", report.table());
    assert_eq!(report.workflow_ms.count, 6, "every user signed in and got its answer");
}

#[tokio::test]
async fn users_whose_sockets_are_cut_open_them_again_and_resume_their_streams_with_nothing_lost() {
    let app = spawn_app_with(|c| c.model_latency = std::time::Duration::from_millis(50)).await;
    let proxy = switchboard_faultproxy::FaultProxy::start(address_of(app.client.base()))
        .await
        .unwrap();
    let test = tokio::spawn(loadtest::run(args(&format!("http://{}", proxy.addr()), 3, 30)));
    // Once some runs have ended, every connection through the proxy is cut, runs under way.
    let ended = |metrics: &str| {
        metrics
            .lines()
            .filter(|line| line.starts_with("switchboard_runs_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    while ended(&app.metrics().await) < 5 {
        tokio::task::yield_now().await;
    }
    proxy.cut_all();
    let report = test.await.unwrap().unwrap();

    assert!(report.contract_problems.is_empty(), "{}", report.table());
    let kinds = &report.errors_by_kind;
    assert!(kinds.get("socket").is_some_and(|n| *n >= 1), "{}", report.table());
    let unanswered = kinds.get("unanswered").copied().unwrap_or(0);
    assert_eq!(
        report.runs + unanswered,
        30,
        "every message answered, or given up with its socket: {}",
        report.table()
    );
    assert_eq!(
        report.errors,
        kinds.get("socket").copied().unwrap_or(0) + unanswered,
        "no other error: {}",
        report.table()
    );
}

#[tokio::test]
async fn a_server_that_refuses_the_sign_in_gives_errors_and_exit_status_1() {
    let app = spawn_app().await;
    app.client
        .register("loadtest-refused@test.example", "the right password")
        .await
        .unwrap();
    let mut refused = args(app.client.base(), 2, 2);
    refused.sign_in.email = Some("loadtest-refused@test.example".into());
    refused.sign_in.password = Some("a wrong password".into());

    let report = loadtest::run(refused).await.unwrap();

    assert_eq!(report.runs, 0);
    assert_eq!(report.errors, 2, "{}", report.table());
    assert_eq!(report.errors_by_kind.get("sign_in"), Some(&2));
    assert!(report.violations["errors"] > 0);
    assert!(!report.passed());
    assert_eq!(report.exit_code(), 1);

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["loadtest", "--server", app.client.base(), "--users", "1", "--runs", "1"])
        .args([
            "--email",
            "loadtest-refused@test.example",
            "--password",
            "a wrong password",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: ") && stderr.contains("no errors"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("| threshold |"));
}

#[tokio::test]
async fn options_that_cannot_make_a_test_are_refused_with_a_sentence() {
    let server = "http://127.0.0.1:9";
    type Change = fn(&mut LoadtestArgs);
    let cases: [(Change, &str); 5] = [
        (|a| a.users = 0, "--users must be at least 1"),
        (
            |a| a.runs = None,
            "give --duration SECS (more than 0), --runs N, or both",
        ),
        (
            |a| {
                a.runs = None;
                a.duration = Some(0);
            },
            "give --duration SECS",
        ),
        (|a| a.runs = Some(0), "--runs must be at least 1"),
        (|a| a.rate = Some(0.0), "--rate must be a positive number"),
    ];
    for (change, expected) in cases {
        let mut refused = args(server, 1, 1);
        change(&mut refused);
        let error = loadtest::run(refused).await.unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} should say {expected:?}");
    }

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "loadtest", "--server", server, "--users", "1", "--runs", "1", "--mark", "5:stall",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--mark takes START_S..END_S:LABEL"), "{stderr}");
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_an_error_of_the_tool() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let error = loadtest::run(args(&server, 1, 1)).await.unwrap_err();

    assert!(format!("{error:#}").contains("cannot reach the server"), "{error:#}");
}

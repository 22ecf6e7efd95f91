//! Password sign-in under attack: throttled per email and per client address, the same cost for
//! an unknown email as for a wrong password, emails that cannot be real refused, and a command
//! that fails says so in a sentence.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery";

/// `POST /api/auth/login` from the client address `from` (any of 127.0.0.0/8 reaches the app):
/// the status, the `Retry-After` header and the body.
async fn login_from(app: &TestApp, from: &str, email: &str, password: &str) -> (u16, Option<u64>, Value) {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/api/auth/login", app.client.base()))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/auth/register` with `PASSWORD`: the status and the body.
async fn try_register(app: &TestApp, email: &str) -> (u16, Value) {
    let body = json!({ "email": email, "password": PASSWORD });
    app.client.post("/api/auth/register", None, &body).await.unwrap()
}

async fn register(app: &TestApp, email: &str) {
    let (status, body) = try_register(app, email).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(start_paused = true)]
async fn after_ten_failed_logins_an_email_is_refused_for_fifteen_minutes_and_others_are_not() {
    let app = spawn_app().await;
    register(&app, "ann@example.com").await;
    register(&app, "bob@example.com").await;
    for attempt in 1..=10 {
        let (status, _, _) = login_from(&app, "127.0.0.2", "ann@example.com", "wrong horse").await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    // From another address, with the right password and another case: still refused.
    let (status, retry_after, body) = login_from(&app, "127.0.0.3", "ANN@example.com", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry_after = retry_after.expect("a Retry-After header");
    assert!((899..=900).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("try again in {retry_after} s"))
    );
    let (status, _, _) = login_from(&app, "127.0.0.3", "bob@example.com", PASSWORD).await;
    assert_eq!(status, 200, "another user signs in normally");

    tokio::time::advance(Duration::from_secs(15 * 60)).await;
    let (status, _, body) = login_from(&app, "127.0.0.3", "ann@example.com", PASSWORD).await;
    assert_eq!(status, 200, "the window has passed: {body}");
}

#[tokio::test(start_paused = true)]
async fn after_ten_failed_logins_from_one_address_it_is_refused_and_other_addresses_are_not() {
    let app = spawn_app().await;
    register(&app, "bob@example.com").await;
    for attempt in 1..=10 {
        let email = format!("guess{attempt}@example.com");
        let (status, _, _) = login_from(&app, "127.0.0.4", &email, "anything at all").await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    let (status, retry_after, body) = login_from(&app, "127.0.0.4", "bob@example.com", PASSWORD).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")));
    assert!(retry_after.is_some());
    let (status, _, _) = login_from(&app, "127.0.0.5", "bob@example.com", PASSWORD).await;
    assert_eq!(status, 200, "from another address bob signs in");
}

#[tokio::test]
async fn fifty_wrong_passwords_sent_at_once_get_ten_answers_and_forty_refusals() {
    let app = spawn_app().await;
    register(&app, "dan@example.com").await;
    let attempts = (0..50).map(|_| login_from(&app, "127.0.0.11", "dan@example.com", "a wrong guess"));
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(status, _, _)| status)
        .collect();
    let count = |wanted: u16| statuses.iter().filter(|s| **s == wanted).count();
    assert_eq!((count(401), count(429)), (10, 40), "{statuses:?}");
}

#[tokio::test]
async fn a_successful_login_clears_the_failures_of_its_email() {
    let app = spawn_app().await;
    register(&app, "cy@example.com").await;
    for _ in 0..9 {
        assert_eq!(
            login_from(&app, "127.0.0.6", "cy@example.com", "wrong one").await.0,
            401
        );
    }
    assert_eq!(login_from(&app, "127.0.0.7", "cy@example.com", PASSWORD).await.0, 200);
    for _ in 0..9 {
        assert_eq!(
            login_from(&app, "127.0.0.8", "cy@example.com", "wrong one").await.0,
            401
        );
    }
    assert_eq!(login_from(&app, "127.0.0.9", "cy@example.com", PASSWORD).await.0, 200);
}

/// The value of a counter in `/metrics`.
async fn counter(app: &TestApp, name: &str) -> u64 {
    app.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn an_unknown_email_costs_a_password_check_like_a_wrong_password() {
    let app = spawn_app().await;
    register(&app, "dee@example.com").await;
    app.user("devonly").await; // signs in through dev-login only: its hash is no hash
    let checks = "switchboard_password_checks_total";
    for (email, password) in [
        ("dee@example.com", "wrong horse"),
        ("nobody@example.com", "wrong horse"),
        ("devonly@test.example", "any password"),
        ("dee@example.com", PASSWORD),
    ] {
        let before = counter(&app, checks).await;
        let (status, _, body) = login_from(&app, "127.0.0.10", email, password).await;
        assert!(status == 401 || status == 200, "{body}");
        assert_eq!(counter(&app, checks).await, before + 1, "{email}: one argon2 check");
    }
}

#[tokio::test]
async fn emails_with_control_characters_are_refused() {
    let app = spawn_app().await;
    for email in [
        "nul\u{0}@example.com",
        "bell\u{7}@example.com",
        "del\u{7f}x@example.com",
    ] {
        let (status, body) = try_register(&app, email).await;
        assert_eq!(status, 422, "{email:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}

#[tokio::test]
async fn a_command_that_fails_prints_a_sentence_and_no_backtrace() {
    let app = spawn_app().await;
    register(&app, "eve@example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.ndjson");
    std::fs::write(&file, "{}\n").unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["ingest", file.to_str().unwrap(), "--server", app.client.base()])
        .args(["--email", "eve@example.com", "--password", "not the password"])
        .env("RUST_BACKTRACE", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("The email or the password is wrong."), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert!(stderr.lines().count() <= 4, "{stderr}");
}

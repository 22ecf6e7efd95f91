//! Workload figures out of range: an upload with an absurd figure is refused with the row's
//! line and the bound, and stores nothing.

use serde_json::{Value, json};
use switchboard_store::AnalyticsStore;

use crate::support::spawn_app;

const ROW: &str = r#""timestamp": "2026-11-01T12:00:00Z", "model": "gpt-4o""#;

#[tokio::test]
async fn an_upload_with_a_figure_out_of_range_is_refused_naming_its_line_and_stores_nothing() {
    let app = spawn_app().await;
    let session = app.user("figures").await;
    let good = format!(r#"{{{ROW}, "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.01}}"#);
    let row = |figures: &str| format!("{{{ROW}, {figures}}}");
    // (case, content type, body, status, code, the rows named: line and error)
    let cases: Vec<(&str, &str, String, u16, &str, Value)> = vec![
        (
            "a cost of 1e308 in a JSON array",
            "application/json",
            format!(
                "[{good}, {}]",
                row(r#""input_tokens": 1, "output_tokens": 1, "cost_usd": 1e308"#)
            ),
            422,
            "invalid_rows",
            json!([{"line": 2, "error": "cost_usd must be a number from 0 to 10000 (US dollars for the call), not 1e+308"}]),
        ),
        (
            "absurd figures in NDJSON",
            "application/x-ndjson",
            format!(
                "{good}\n{}\n{good}\n{}\n",
                row(r#""input_tokens": 18446744073709551615, "output_tokens": 1, "latency_ms": 1e12"#),
                row(r#""input_tokens": 1, "output_tokens": 1, "cost_usd": -1"#)
            ),
            422,
            "invalid_rows",
            json!([
                {"line": 2, "error": "input_tokens must be a whole number from 0 to 10000000, not 18446744073709551615; \
                                      latency_ms must be a number from 0 to 86400000 (milliseconds, a day), not 1000000000000.0"},
                {"line": 4, "error": "cost_usd must be a number from 0 to 10000 (US dollars for the call), not -1"}
            ]),
        ),
        (
            "a number beyond any float in NDJSON",
            "application/x-ndjson",
            format!(
                "{}\n",
                row(r#""input_tokens": 1, "output_tokens": 1, "cost_usd": 1e400"#)
            ),
            422,
            "invalid_rows",
            Value::Null,
        ),
        (
            "a number beyond any float in a JSON array",
            "application/json",
            format!(
                "[{}]",
                row(r#""input_tokens": 1, "output_tokens": 1, "cost_usd": 1e400"#)
            ),
            400,
            "invalid_request",
            Value::Null,
        ),
    ];
    for (name, content_type, body, status, code, rows) in cases {
        let (got, answer) = app.upload(&session.access_token, content_type, body).await;
        assert_eq!(got, status, "case: {name}");
        assert_eq!(answer["error"]["code"], code, "case: {name}: {answer}");
        if rows.is_null() {
            let message = if status == 422 {
                answer["error"]["rows"][0]["error"].as_str().unwrap()
            } else {
                answer["error"]["message"].as_str().unwrap()
            };
            assert!(message.contains("number out of range"), "case: {name}: {answer}");
        } else {
            assert_eq!(answer["error"]["rows"], rows, "case: {name}");
        }
    }
    assert_eq!(
        app.store.workload_event_count(&session.user_id).await.unwrap(),
        0,
        "no row of a refused upload is stored"
    );
}

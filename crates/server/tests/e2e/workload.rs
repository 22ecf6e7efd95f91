//! Uploading workload data: every kind of bad upload is refused with a clear error and stores
//! nothing; good uploads are stored whole.

use serde_json::{Value, json};
use switchboard_store::AnalyticsStore;

use crate::support::spawn_app;

fn row(model: &str) -> Value {
    json!({"timestamp": "2026-11-01T12:00:00Z", "model": model, "input_tokens": 1200, "output_tokens": 300,
           "feature": "search", "latency_ms": 850})
}

#[tokio::test]
async fn uploads_are_stored_whole_or_refused_with_every_bad_row_named() {
    let app = spawn_app().await;
    let session = app.user("uploader").await;
    let array = |rows: Vec<Value>| serde_json::to_vec(&Value::Array(rows)).unwrap();
    let ndjson = |rows: Vec<Value>| rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes();
    let mut missing_model = row("gpt-4o");
    missing_model.as_object_mut().unwrap().remove("model");
    let too_large = {
        let mut body = b"[".to_vec();
        let one = serde_json::to_vec(&row("gpt-4o")).unwrap();
        while body.len() <= 10 * 1024 * 1024 {
            body.extend_from_slice(&one);
            body.push(b',');
        }
        body.extend_from_slice(&one);
        body.push(b']');
        body
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16, Value)> = vec![
        (
            "a JSON array",
            "application/json",
            array(vec![row("gpt-4o"), row("claude-3-5-haiku")]),
            200,
            json!({"accepted": 2}),
        ),
        (
            "NDJSON",
            "application/x-ndjson",
            ndjson(vec![row("gpt-4o"), row("gpt-4o-mini"), row("gemini-2.0-flash")]),
            200,
            json!({"accepted": 3}),
        ),
        (
            "an empty array",
            "application/json",
            b"[]".to_vec(),
            200,
            json!({"accepted": 0}),
        ),
        (
            "bad rows",
            "application/json",
            array(vec![row("gpt-4o"), missing_model.clone(), row("our-finetune")]),
            422,
            json!("invalid_rows"),
        ),
        (
            "a bad NDJSON line",
            "application/x-ndjson",
            b"{\"timestamp\": 1}\n".to_vec(),
            422,
            json!("invalid_rows"),
        ),
        (
            "not JSON",
            "application/json",
            b"[{".to_vec(),
            400,
            json!("invalid_request"),
        ),
        (
            "an object, not an array",
            "application/json",
            b"{\"rows\": []}".to_vec(),
            400,
            json!("invalid_request"),
        ),
        (
            "a wrong content type",
            "text/csv",
            b"timestamp,model\n".to_vec(),
            415,
            json!("invalid_request"),
        ),
        (
            "over 10 MB",
            "application/json",
            too_large,
            413,
            json!("payload_too_large"),
        ),
    ];
    for (name, content_type, body, status, expected) in cases {
        let (got, answer) = app.upload(&session.access_token, content_type, body).await;
        assert_eq!(got, status, "case: {name}");
        if status == 200 {
            assert_eq!(answer, expected, "case: {name}");
        } else {
            assert_eq!(answer["error"]["code"], expected, "case: {name}: {answer}");
            assert!(answer["error"]["message"].as_str().unwrap().len() > 10, "case: {name}");
        }
    }
    assert_eq!(
        app.store.workload_event_count(&session.user_id).await.unwrap(),
        5,
        "only the good uploads were stored"
    );

    let body = array(vec![row("gpt-4o"), missing_model, row("gpt-4o"), row("our-finetune")]);
    let (_, answer) = app.upload(&session.access_token, "application/json", body).await;
    assert_eq!(answer["error"]["message"], "2 row(s) are invalid; nothing was stored.");
    assert_eq!(
        answer["error"]["rows"][0],
        json!({"line": 2, "error": "model is required"})
    );
    assert_eq!(answer["error"]["rows"][1]["line"], 4);
    assert!(
        answer["error"]["rows"][1]["error"]
            .as_str()
            .unwrap()
            .contains("`our-finetune` is not in the price table")
    );

    let (status, _) = app
        .client
        .post("/api/workload-events", None, &json!([row("gpt-4o")]))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let other = app.user("other").await;
    assert_eq!(
        app.store.workload_event_count(&other.user_id).await.unwrap(),
        0,
        "rows belong to their uploader"
    );
}

async fn cli(args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn ingest_uploads_csv_ndjson_and_the_demo_month_and_names_bad_lines_by_their_file_line() {
    let app = spawn_app().await;
    let dev = app.client.dev_login(None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let server = app.client.base().to_owned();

    std::fs::write(
        path("calls.csv"),
        "timestamp,model,input_tokens,output_tokens,latency_ms,status,feature,batch\n\
         2026-11-01T12:00:00Z,gpt-4o,1000,200,850,ok,search,false\n\
         2026-11-01T12:01:00Z,gpt-4o-mini,300,50,,error,tagging,\n",
    )
    .unwrap();
    let output = cli(&["ingest", &path("calls.csv"), "--server", &server]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("stored 2 calls"), "{stdout}");
    assert_eq!(app.store.workload_event_count(&dev.user_id).await.unwrap(), 2);

    let good = row("gpt-4o").to_string();
    let mut bad = row("gpt-4o");
    bad.as_object_mut().unwrap().remove("model");
    std::fs::write(path("calls.ndjson"), format!("{good}\n\n{bad}\n")).unwrap();
    let output = cli(&["ingest", &path("calls.ndjson"), "--server", &server]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("line 3: model is required"), "{stderr}");
    assert_eq!(
        app.store.workload_event_count(&dev.user_id).await.unwrap(),
        2,
        "nothing of the refused file"
    );

    let output = cli(&[
        "demo-data",
        "--days",
        "3",
        "--calls-per-day",
        "200",
        "--out",
        &path("demo.ndjson"),
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = std::fs::read_to_string(path("demo.ndjson")).unwrap().lines().count() as u64;
    assert!(lines > 300, "{lines} demo calls");
    let output = cli(&["ingest", &path("demo.ndjson"), "--server", &server]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(app.store.workload_event_count(&dev.user_id).await.unwrap(), 2 + lines);
}

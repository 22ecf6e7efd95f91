//! Uploading workload data: every kind of bad upload is refused with a clear error and stores
//! nothing; good uploads are stored whole.

use serde_json::{Value, json};
use switchboard_store::AnalyticsStore;

use crate::support::{spawn_app, upload_with_keys};

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

#[tokio::test]
async fn an_upload_with_an_idempotency_key_is_stored_once_and_answered_as_the_first_time() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let rows = vec![row("gpt-4o"), row("claude-3-5-haiku")];
    let array = serde_json::to_vec(&Value::Array(rows.clone())).unwrap();
    let ndjson = rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes();
    let other = serde_json::to_vec(&json!([row("gpt-4o")])).unwrap();
    let count = |user| app.store.workload_event_count(user);
    let key: &[u8] = b"nightly-2026-11-01";

    let first = upload_with_keys(&app, &ann.access_token, &[key], "application/json", array.clone()).await;
    assert_eq!(first, (200, None, json!({"accepted": 2})));
    // The same rows again, as NDJSON this time: the same calls, so a replay.
    for (content_type, body) in [("application/json", array.clone()), ("application/x-ndjson", ndjson)] {
        let again = upload_with_keys(&app, &ann.access_token, &[key], content_type, body).await;
        assert_eq!(again, (200, Some("true".to_owned()), json!({"accepted": 2})));
    }
    assert_eq!(count(&ann.user_id).await.unwrap(), 2);

    // The key with other rows: refused, nothing stored.
    let (status, replayed, answer) =
        upload_with_keys(&app, &ann.access_token, &[key], "application/json", other.clone()).await;
    assert_eq!(
        (status, replayed, &answer["error"]["code"]),
        (409, None, &json!("conflict")),
        "{answer}"
    );
    assert_eq!(
        answer["error"]["message"],
        "This Idempotency-Key was sent before with other rows, so nothing was stored; send new rows with a new key."
    );
    assert_eq!(count(&ann.user_id).await.unwrap(), 2);

    // Another user's same key is theirs; without a key, rows are stored each time.
    let theirs = upload_with_keys(&app, &bob.access_token, &[key], "application/json", other.clone()).await;
    assert_eq!(theirs, (200, None, json!({"accepted": 1})));
    for _ in 0..2 {
        let (status, _) = app.upload(&ann.access_token, "application/json", array.clone()).await;
        assert_eq!(status, 200);
    }
    assert_eq!(count(&ann.user_id).await.unwrap(), 6);
    assert_eq!(count(&bob.user_id).await.unwrap(), 1);

    // An upload refused for its rows keeps no key: the key then stores the good rows.
    let mut bad = row("gpt-4o");
    bad.as_object_mut().unwrap().remove("model");
    let refused = serde_json::to_vec(&json!([bad])).unwrap();
    let (status, _, answer) =
        upload_with_keys(&app, &ann.access_token, &[b"second"], "application/json", refused).await;
    assert_eq!((status, &answer["error"]["code"]), (422, &json!("invalid_rows")));
    let stored = upload_with_keys(&app, &ann.access_token, &[b"second"], "application/json", other).await;
    assert_eq!(stored, (200, None, json!({"accepted": 1})));
    assert_eq!(count(&ann.user_id).await.unwrap(), 7);
}

#[tokio::test]
async fn an_idempotency_key_that_is_not_one_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let session = app.user("keys").await;
    let body = serde_json::to_vec(&json!([row("gpt-4o")])).unwrap();
    let long = vec![b'k'; 256];
    let cases: [(&str, Vec<&[u8]>, &str); 5] = [
        ("empty", vec![b""], "it is empty"),
        ("too long", vec![&long], "it has 256"),
        ("a space", vec![b"two words"], "it has a space"),
        ("not ASCII", vec!["clé".as_bytes()], "which is not ASCII"),
        (
            "twice",
            vec![b"a", b"b"],
            "must be given once; it was given more than once",
        ),
    ];
    for (name, keys, problem) in cases {
        let (status, replayed, answer) =
            upload_with_keys(&app, &session.access_token, &keys, "application/json", body.clone()).await;
        assert_eq!(
            (status, replayed, &answer["error"]["code"]),
            (400, None, &json!("invalid_request")),
            "{name}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("The Idempotency-Key header "), "{name}: {message}");
        assert!(
            message.ends_with(&format!("{problem}; nothing was stored.")),
            "{name}: {message}"
        );
        if name != "twice" {
            assert!(
                message.contains("must be 1 to 255 visible ASCII characters"),
                "{name}: {message}"
            );
        }
    }
    assert_eq!(app.store.workload_event_count(&session.user_id).await.unwrap(), 0);
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

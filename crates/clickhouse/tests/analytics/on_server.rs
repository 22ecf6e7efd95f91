// The tests of this file run once per server: `include!`d by `tests/analytics.rs` in a module
// that names the server (`SERVER`, `Server`). They read the server's URL from its variable.

use std::sync::Arc;

use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions, scratch_database};
use switchboard_protocol::{Timestamp, UserId};
use switchboard_store::{
    AnalyticsStore, Sketch, StoreError, Tier, TimeRange, Upload, UploadKey, WorkloadEvent, testsuite,
};

/// The URL of the server these tests run against.
fn server_url() -> String {
    SERVER.url()
}

/// A store on an empty database of its own.
async fn fresh_store() -> ClickHouseAnalytics {
    let url = scratch_database(&server_url()).await.unwrap();
    ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
        .await
        .unwrap()
}

/// The URL of the test server with its database or credentials changed by `change`.
fn url_with(change: impl FnOnce(&mut reqwest::Url)) -> String {
    let mut url = reqwest::Url::parse(&server_url()).unwrap();
    change(&mut url);
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytics_suite_passes() {
    testsuite::analytics(|| async { Arc::new(fresh_store().await) as Arc<dyn AnalyticsStore> }).await;
}

#[tokio::test]
async fn the_store_names_its_tier_and_answers_a_ping() {
    let store = fresh_store().await;
    assert_eq!(store.tier(), Tier::ClickHouse);
    store.ping().await.unwrap();
}

/// Strings that would end or bend a literal that was not escaped.
const HOSTILE: [&str; 8] = [
    "x' OR 1 = 1 OR '",
    "\\' OR 1 = 1 --",
    "a\tb\nc\\N",
    "'; DROP TABLE workload_events; --",
    "\0nul",
    "é ü 模型 🙂",
    "",
    "\\x27",
];

fn hostile_calls() -> Vec<WorkloadEvent> {
    HOSTILE
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut call = testsuite::call(
                "2026-11-01T10:00:00Z",
                text,
                Some(text),
                (100 + i as u64, 10),
                Some(100.0 * (i + 1) as f64),
                false,
                0.25,
            );
            call.prompt_hash = Some((*text).to_owned());
            call.provider = Some((*text).to_owned());
            call
        })
        .collect()
}

#[tokio::test]
async fn each_user_sees_only_their_own_calls_whatever_the_names_and_hashes_hold() {
    let store = fresh_store().await;
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let calls = hostile_calls();
    store.insert_workload_events(&ann, calls.clone()).await.unwrap();
    store.insert_workload_events(&ann, calls.clone()).await.unwrap();
    store
        .insert_workload_events(&bob, testsuite::sample_calls(5, 300))
        .await
        .unwrap();

    let summary = store.workload_summary(&ann, TimeRange::default()).await.unwrap();
    assert_eq!(summary.totals.usage.calls, 2 * HOSTILE.len() as u64);
    let mut models: Vec<(String, u64)> = summary
        .by_model
        .iter()
        .map(|m| (m.key.clone().unwrap(), m.calls))
        .collect();
    models.sort();
    let mut expected: Vec<(String, u64)> = HOSTILE.iter().map(|t| ((*t).to_owned(), 2)).collect();
    expected.sort();
    assert_eq!(models, expected, "every name comes back as it was");
    let mut features: Vec<Option<String>> = summary.by_feature.iter().map(|f| f.key.clone()).collect();
    features.sort();
    let mut expected: Vec<Option<String>> = HOSTILE.iter().map(|t| Some((*t).to_owned())).collect();
    expected.sort();
    assert_eq!(features, expected);
    // Each hostile hash is one prompt called twice.
    assert_eq!(summary.opportunities.repeated_prompt_calls, HOSTILE.len() as u64);
    assert_eq!(store.workload_event_count(&ann).await.unwrap(), 16);
    assert_eq!(store.workload_event_count(&bob).await.unwrap(), 300);

    let bobs = store.workload_summary(&bob, TimeRange::default()).await.unwrap();
    assert_eq!(bobs.totals.usage.calls + bobs.calls_left_out, 300);
    assert!(
        bobs.by_model
            .iter()
            .all(|m| !HOSTILE.contains(&m.key.as_deref().unwrap()))
    );
    let nobody = store
        .workload_summary(&UserId::generate(), TimeRange::default())
        .await
        .unwrap();
    assert_eq!((nobody.totals.usage.calls, nobody.calls_left_out), (0, 0));
}

#[tokio::test]
async fn a_range_takes_its_calls_to_the_millisecond() {
    let store = fresh_store().await;
    let user = UserId::generate();
    let at = |ms: i64| {
        let mut call = testsuite::call("2026-11-01T10:00:00Z", "m", None, (1, 1), Some(1.0), false, 0.5);
        call.timestamp = Timestamp::from_unix_millis(ms).unwrap();
        call
    };
    let t = Timestamp::parse("2026-11-01T10:20:00.500Z").unwrap().unix_millis();
    store
        .insert_workload_events(&user, vec![at(t - 1), at(t), at(t + 1), at(t + 2)])
        .await
        .unwrap();
    let range = TimeRange {
        from: Timestamp::from_unix_millis(t),
        to: Timestamp::from_unix_millis(t + 2),
    };
    let summary = store.workload_summary(&user, range).await.unwrap();
    assert_eq!(summary.totals.usage.calls, 2);
    assert_eq!(summary.totals.first.map(|t| t.unix_millis()), Some(t));
    assert_eq!(summary.totals.last.map(|t| t.unix_millis()), Some(t + 1));
}

#[tokio::test]
async fn a_batch_with_a_token_count_no_backend_stores_is_refused_whole() {
    let store = fresh_store().await;
    let user = UserId::generate();
    let mut calls = testsuite::sample_calls(3, 10);
    calls[7].input_tokens = u64::MAX;
    assert!(matches!(
        store.insert_workload_events(&user, calls).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 0);
}

#[tokio::test]
async fn clickhouse_puts_each_value_in_the_sketch_bin_rust_does() {
    // The summary counts sketch bins in SQL; they must be the bins `Sketch::bin_of` gives (at
    // the very edge of a bin, its neighbour would still be within the bound). Each value is
    // the median of a feature of its own (beside a zero and a day), so the feature's p50 is
    // its bin's value.
    let store = fresh_store().await;
    let user = UserId::generate();
    let mut values: Vec<f64> = vec![1e-12, 1e-9, 2e-9, 0.5, 1.0, 3.0, 86_399_999.0];
    let gamma = Sketch::ln_gamma().exp();
    for k in -1000..=920 {
        let edge = gamma.powi(k);
        values.extend([edge * (1.0 - 1e-9), edge * (1.0 + 1e-9)]);
    }
    values.retain(|v| *v < 86_400_000.0);
    let mut calls = Vec::new();
    let mut builder = switchboard_store::SummaryBuilder::default();
    for (i, v) in values.iter().enumerate() {
        let feature = format!("f{i}");
        for latency in [0.0, *v, 86_400_000.0] {
            let call = testsuite::call(
                "2026-11-01T10:00:00Z",
                "m",
                Some(&feature),
                (1, 1),
                Some(latency),
                false,
                0.0,
            );
            builder.add("m", Some(&feature), None, call.figures());
            calls.push(call);
        }
    }
    store.insert_workload_events(&user, calls).await.unwrap();
    let summary = store.workload_summary(&user, TimeRange::default()).await.unwrap();
    let direct = builder.finish().unwrap();
    let medians = |s: &switchboard_store::Summary| {
        let mut medians: Vec<(Option<String>, Option<f64>)> =
            s.by_feature.iter().map(|f| (f.key.clone(), f.p50_latency_ms)).collect();
        medians.sort_by(|a, b| a.0.cmp(&b.0));
        medians
    };
    let (got, expected) = (medians(&summary), medians(&direct));
    assert_eq!(got.len(), values.len());
    let differ: Vec<_> = got.iter().zip(&expected).filter(|(a, b)| a != b).collect();
    assert!(
        differ.is_empty(),
        "{} of {} bins differ: {:?}",
        differ.len(),
        got.len(),
        &differ[..differ.len().min(5)]
    );
    assert_eq!(summary.totals.usage, direct.totals.usage);
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused() {
    let url = scratch_database(&server_url()).await.unwrap();
    drop(
        ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
            .await
            .unwrap(),
    );
    let database = url.split("database=").nth(1).unwrap().split('&').next().unwrap();
    let http = reqwest::Client::new();
    let answer = http
        .post(server_url())
        .body(format!("INSERT INTO {database}.schema_version (version) VALUES (5)"))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
    match ClickHouseAnalytics::connect(&url, ClickHouseOptions::default()).await {
        Err(StoreError::Corrupt(message)) => {
            assert!(message.contains("version 5, newer than this server's 4"), "{message}");
            assert!(
                message.contains("ClickHouse at 127.0.0.1") && message.contains(database),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Connecting again to a current one changes nothing.
    let url = scratch_database(&server_url()).await.unwrap();
    for _ in 0..2 {
        ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_error_that_names_the_server_but_not_the_password() {
    let url = scratch_database(&server_url()).await.unwrap();
    let in_userinfo = url_with(|u| {
        u.set_username("default").unwrap();
        u.set_password(Some("hunter2-secret")).unwrap();
    });
    let in_params = format!("{url}&user=default&password=hunter2-secret");
    for url in [in_userinfo, in_params] {
        let error = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
            .await
            .unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("ClickHouse at 127.0.0.1:"), "{text}");
        assert!(text.to_lowercase().contains("password"), "{text}");
        assert!(matches!(error, StoreError::Backend(_)), "{text}");
    }
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_named_in_the_error() {
    let url = url_with(|u| u.set_query(Some("database=no_such_database_here")));
    let error = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no_such_database_here"), "{error}");
}

/// Sends `sql` to the test server, which must accept it.
async fn run_sql(sql: String) {
    answer_of(sql).await;
}

/// Ranges whose ends fall mid-hour, on hours, mid-day, on days, open, and inside one hour.
fn ranges() -> Vec<TimeRange> {
    let start = Timestamp::parse("2026-10-01T00:00:00Z").unwrap().unix_millis();
    let (hour, day) = (3_600_000, 86_400_000);
    let at = |ms: i64| Timestamp::from_unix_millis(start + ms);
    vec![
        TimeRange::default(),
        TimeRange {
            from: at(5 * hour + 1_234_567),
            to: at(2 * day + 3 * hour + 17),
        },
        TimeRange {
            from: at(day),
            to: at(2 * day),
        },
        TimeRange {
            from: at(3 * hour),
            to: at(40 * hour),
        },
        TimeRange {
            from: None,
            to: at(day + 7 * hour + 5),
        },
        TimeRange {
            from: at(day + 30 * 60_000),
            to: None,
        },
        TimeRange {
            from: at(10 * hour + 60_000),
            to: at(10 * hour + 50 * 60_000),
        },
        TimeRange {
            from: at(2 * day),
            to: at(day),
        },
    ]
}

/// The prompt roll-ups keyed by text of schema versions 1 and 2 (version 1 had the first
/// only), as those versions made them but for the costs, which the move to version 3 does not
/// read (it builds from the rows and drops these).
fn text_prompt_tables(version: u32) -> Vec<String> {
    let mut statements = vec![
        "CREATE TABLE workload_prompts (user String, prompt_hash String, calls UInt64, cost_hi UInt64, \
         cost_lo UInt64) ENGINE = SummingMergeTree() ORDER BY (user, prompt_hash)"
            .to_owned(),
        "CREATE MATERIALIZED VIEW workload_prompts_view TO workload_prompts AS SELECT user, prompt_hash, \
         count() AS calls, toUInt64(0) AS cost_hi, toUInt64(0) AS cost_lo FROM workload_events \
         WHERE has_prompt = 1 GROUP BY user, prompt_hash"
            .to_owned(),
    ];
    if version == 2 {
        statements.extend([
            "CREATE TABLE workload_day_prompts (user String, day Int64, prompt_hash String, calls UInt64, \
             cost_hi UInt64, cost_lo UInt64) ENGINE = SummingMergeTree() ORDER BY (user, day, prompt_hash)"
                .to_owned(),
            "CREATE MATERIALIZED VIEW workload_day_prompts_view TO workload_day_prompts AS SELECT user, \
             intDiv(ts, 86400000) AS day, prompt_hash, count() AS calls, toUInt64(0) AS cost_hi, \
             toUInt64(0) AS cost_lo FROM workload_events WHERE has_prompt = 1 GROUP BY user, day, prompt_hash"
                .to_owned(),
        ]);
    }
    statements
}

/// Sends `sql` to the test server and returns its answer, which must be a success.
async fn answer_of(sql: String) -> String {
    let answer = reqwest::Client::new()
        .post(server_url())
        .body(sql)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    text
}

/// A database of schema `version` (1, 2 or 3), with calls uploaded before and after it became one
/// (the latter as a server of that version stores them: its views only), is brought to the
/// current version when connected to, with the same summaries as a database that had the
/// current schema all along; uploads after the move reach the new roll-ups; connecting again
/// changes nothing.
async fn check_move_from(version: u32) {
    // The older database is the current one without what came since: made here by dropping
    // that from a new one and making what that version had and this one dropped, with its
    // version set back.
    let url = scratch_database(&server_url()).await.unwrap();
    let database = url
        .split("database=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let calls = testsuite::sample_calls(21, 8_000);
    let (user, other) = (UserId::generate(), UserId::generate());
    let old = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
        .await
        .unwrap();
    old.insert_workload_events(&user, calls[..3_000].to_vec())
        .await
        .unwrap();
    // Version 3 had neither the upload keys nor each call's upload.
    run_sql(format!("ALTER TABLE {database}.workload_events DROP COLUMN upload")).await;
    let mut dropped = vec!["workload_uploads", "schema_version"];
    if version < 3 {
        dropped.extend([
            "workload_prompt_keys_view",
            "workload_day_prompt_keys_view",
            "workload_prompt_keys",
            "workload_day_prompt_keys",
        ]);
    }
    if version == 1 {
        dropped.extend([
            "workload_latency_hour_bins_view",
            "workload_prompt_hour_bins_view",
            "workload_hour_bins",
        ]);
    }
    for table in dropped {
        run_sql(format!("DROP TABLE {database}.{table}")).await;
    }
    for statement in text_prompt_tables(version).into_iter().filter(|_| version < 3) {
        let statement = statement
            .replacen("CREATE TABLE ", &format!("CREATE TABLE {database}."), 1)
            .replacen("VIEW ", &format!("VIEW {database}."), 1)
            .replace(" TO ", &format!(" TO {database}."))
            .replace("FROM workload_events", &format!("FROM {database}.workload_events"));
        run_sql(statement).await;
    }
    run_sql(format!(
        "CREATE TABLE {database}.schema_version (version UInt32, written_at DateTime DEFAULT now()) \
         ENGINE = MergeTree() ORDER BY version"
    ))
    .await;
    run_sql(format!(
        "INSERT INTO {database}.schema_version (version) VALUES ({version})"
    ))
    .await;
    for chunk in calls[3_000..].chunks(1_700) {
        old.insert_workload_events(&user, chunk.to_vec()).await.unwrap();
    }
    old.insert_workload_events(&other, testsuite::sample_calls(22, 500))
        .await
        .unwrap();

    let migrated = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
        .await
        .unwrap();
    let reference = fresh_store().await;
    reference.insert_workload_events(&user, calls.clone()).await.unwrap();
    assert_same_summaries(&migrated, &reference, &user).await;
    let tables = answer_of(format!(
        "SELECT name FROM system.tables WHERE database = '{database}' AND name LIKE '%prompts%' ORDER BY name"
    ))
    .await;
    assert_eq!(tables, "", "the prompts keyed by text are dropped");
    let more = testsuite::sample_calls(23, 1_000);
    migrated.insert_workload_events(&user, more.clone()).await.unwrap();
    reference.insert_workload_events(&user, more).await.unwrap();
    let again = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default())
        .await
        .unwrap();
    assert_same_summaries(&again, &reference, &user).await;
    let versions = answer_of(format!(
        "SELECT groupArray(version) FROM (SELECT version FROM {database}.schema_version ORDER BY version)"
    ))
    .await;
    assert_eq!(versions, format!("[{version},4]\n"));
    // The upload keys work on the moved database; its earlier calls are of no upload.
    let key = UploadKey::parse("after-the-move").unwrap();
    let keyed = testsuite::sample_calls(24, 40);
    for expected in [Upload::Stored(40), Upload::Replayed(40)] {
        assert_eq!(again.insert_workload_upload(&user, &key, keyed.clone()).await.unwrap(), expected);
    }
    assert_eq!(again.workload_event_count(&user).await.unwrap(), 9_040);
    let uploads = answer_of(format!(
        "SELECT countIf(upload = 0), countIf(upload != 0) FROM {database}.workload_events"
    ))
    .await;
    assert_eq!(uploads, "9500\t40\n");
}

/// `store` summarises `user`'s calls as `reference` does, over every range of `ranges`.
async fn assert_same_summaries(store: &ClickHouseAnalytics, reference: &ClickHouseAnalytics, user: &UserId) {
    for range in ranges() {
        assert_eq!(
            store.workload_summary(user, range).await.unwrap(),
            reference.workload_summary(user, range).await.unwrap(),
            "{range:?}"
        );
    }
}

#[tokio::test]
async fn a_version_1_database_is_brought_to_version_4_with_the_same_summaries() {
    check_move_from(1).await;
}

#[tokio::test]
async fn a_version_2_database_is_brought_to_version_4_with_the_same_summaries() {
    check_move_from(2).await;
}

#[tokio::test]
async fn a_version_3_database_is_brought_to_version_4_with_the_same_summaries() {
    check_move_from(3).await;
}

/// The test server's `host:port`.
fn server_address() -> std::net::SocketAddr {
    let url = reqwest::Url::parse(&server_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()).parse().unwrap()
}

/// An upload whose insert outlives its deadline (the fault proxy delays each chunk 400 ms, the
/// insert is given 300 ms) is answered as timed out, and its calls are stored all the same;
/// sent again with its key it stores nothing and is answered with their count, and the
/// summary counts each call once.
#[tokio::test]
async fn an_upload_stored_after_its_deadline_is_sent_again_with_its_key_and_stored_once() {
    let url = scratch_database(&server_url()).await.unwrap();
    let direct = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default()).await.unwrap();
    let proxy = switchboard_faultproxy::FaultProxy::start(server_address()).await.unwrap();
    let through = url.replacen(&server_address().to_string(), &proxy.addr().to_string(), 1);
    let slow = ClickHouseAnalytics::connect(
        &through,
        ClickHouseOptions {
            query_timeout: std::time::Duration::from_secs(10),
            insert_timeout: std::time::Duration::from_millis(300),
        },
    )
    .await
    .unwrap();
    proxy.set(switchboard_faultproxy::Fault::Latency(std::time::Duration::from_millis(400)));
    let user = UserId::generate();
    let key = UploadKey::parse("month-1/part-1").unwrap();
    let calls = testsuite::sample_calls(41, 60);
    match slow.insert_workload_upload(&user, &key, calls.clone()).await {
        Err(StoreError::TimedOut { tier, .. }) => assert_eq!(tier, Tier::ClickHouse),
        other => panic!("{other:?}"),
    }
    // The insert reaches the server after its client gave up, and is stored there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while direct.workload_event_count(&user).await.unwrap() < 60 {
        assert!(std::time::Instant::now() < deadline, "the timed-out insert never landed");
        tokio::task::yield_now().await;
    }
    // Sent again, it is a replay (or, while the server still finishes the first insert, in
    // progress, and a replay once it has).
    let answer = loop {
        match direct.insert_workload_upload(&user, &key, calls.clone()).await.unwrap() {
            Upload::InProgress => {
                assert!(std::time::Instant::now() < deadline, "the first insert never ended");
                tokio::task::yield_now().await;
            }
            answer => break answer,
        }
    };
    assert_eq!(answer, Upload::Replayed(60));
    proxy.set(switchboard_faultproxy::Fault::None);
    assert_eq!(slow.insert_workload_upload(&user, &key, calls.clone()).await.unwrap(), Upload::Replayed(60));
    let mut other = calls.clone();
    other.pop();
    assert_eq!(direct.insert_workload_upload(&user, &key, other).await.unwrap(), Upload::KeyReused);
    assert_eq!(direct.workload_event_count(&user).await.unwrap(), 60);
    let summary = direct.workload_summary(&user, TimeRange::default()).await.unwrap();
    assert_eq!(summary.totals.usage.calls + summary.calls_left_out, 60);
}

/// An upload key recorded more than a day ago is forgotten: an upload with it is a new one.
#[tokio::test]
async fn an_upload_key_older_than_a_day_is_forgotten() {
    let url = scratch_database(&server_url()).await.unwrap();
    let database = url.split("database=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let store = ClickHouseAnalytics::connect(&url, ClickHouseOptions::default()).await.unwrap();
    let user = UserId::generate();
    let calls = testsuite::sample_calls(42, 10);
    let digest: String = switchboard_store::upload_digest(&calls).iter().map(|b| format!("{b:02x}")).collect();
    run_sql(format!(
        "INSERT INTO {database}.workload_uploads (user, key, digest, upload, calls, done, stored_at) \
         VALUES ('{user}', 'old', '{digest}', 77, 10, 1, now() - 86401), ('{user}', 'recent', '{digest}', 78, 10, 1, now() - 86000)"
    ))
    .await;
    let key = |text| UploadKey::parse(text).unwrap();
    assert_eq!(store.insert_workload_upload(&user, &key("old"), calls.clone()).await.unwrap(), Upload::Stored(10));
    assert_eq!(store.insert_workload_upload(&user, &key("recent"), calls.clone()).await.unwrap(), Upload::Replayed(10));
    assert_eq!(store.insert_workload_upload(&user, &key("old"), calls).await.unwrap(), Upload::Replayed(10));
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 10);
}

#[tokio::test]
async fn a_bounded_range_reads_the_same_figures_from_roll_ups_and_rows_however_the_calls_were_uploaded() {
    // Every range of `ranges`, against the summary built from its own calls: whole hours and
    // days from the roll-ups, the edges from the rows, the repeated prompts among the range's
    // calls only; and the same to the bit for one upload and many.
    let (one, many) = (fresh_store().await, fresh_store().await);
    let user = UserId::generate();
    let calls = testsuite::sample_calls(31, 6_000);
    one.insert_workload_events(&user, calls.clone()).await.unwrap();
    for chunk in calls.chunks(777) {
        many.insert_workload_events(&user, chunk.to_vec()).await.unwrap();
    }
    for range in ranges() {
        let (from, to) = (
            range.from.map_or(i64::MIN, |t| t.unix_millis()),
            range.to.map_or(i64::MAX, |t| t.unix_millis()),
        );
        let mut direct = switchboard_store::SummaryBuilder::default();
        for call in calls.iter().filter(|c| (from..to).contains(&c.timestamp.unix_millis())) {
            direct.add(
                &call.model,
                call.feature.as_deref(),
                call.prompt_hash.as_deref(),
                call.figures(),
            );
        }
        let direct = direct.finish().unwrap();
        let summary = one.workload_summary(&user, range).await.unwrap();
        assert_eq!(summary, many.workload_summary(&user, range).await.unwrap(), "{range:?}");
        let o = &summary.opportunities;
        assert_eq!(
            (
                summary.totals.usage.calls,
                summary.totals.first,
                summary.totals.last,
                summary.calls_left_out
            ),
            (
                direct.totals.usage.calls,
                direct.totals.first,
                direct.totals.last,
                direct.calls_left_out
            ),
            "{range:?}"
        );
        assert_eq!(
            o.repeated_prompt_calls, direct.opportunities.repeated_prompt_calls,
            "{range:?}"
        );
        assert!(
            (o.repeated_prompt_cost_usd - direct.opportunities.repeated_prompt_cost_usd).abs() < 1e-9,
            "{range:?}"
        );
        let percentiles = |s: &switchboard_store::Summary| {
            let mut rows: Vec<_> = s
                .by_model
                .iter()
                .chain(&s.by_feature)
                .map(|u| {
                    (
                        u.key.clone(),
                        u.calls,
                        u.errors,
                        u.input_tokens,
                        u.p50_latency_ms,
                        u.p95_latency_ms,
                    )
                })
                .collect();
            rows.extend(
                s.hours
                    .iter()
                    .map(|h| (None, u64::from(h.hour), h.calls, 0, h.p95_latency_ms, None)),
            );
            rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            rows
        };
        assert_eq!(percentiles(&summary), percentiles(&direct), "{range:?}");
        let hourly = |s: &switchboard_store::Summary| -> Vec<_> {
            s.hourly.iter().map(|b| (b.start, b.calls, b.errors)).collect()
        };
        assert_eq!(hourly(&summary), hourly(&direct), "{range:?}");
    }
}

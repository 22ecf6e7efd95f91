//! The workload roll-ups: what a summary reads instead of the rows. Their percentiles are
//! within the sketch's bound of the exact nearest-rank values, any split of an upload gives the
//! same figures, a version-1 file gets them built when opened, and a corrupt cell is reported
//! as corrupt.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use switchboard_protocol::{Timestamp, UserId};
use switchboard_store::testsuite::sample_calls;
use switchboard_store::{
    AnalyticsStore, CallFigures, MAX_CALL_LATENCY_MS, PERCENTILE_RELATIVE_ERROR, SqliteAnalytics, StoreError, Summary,
    SummaryBuilder, TimeRange, Upload, UploadKey, WorkloadEvent, nearest_rank,
};

/// 2026-10-01T00:00:00Z.
const START_MS: i64 = 1_790_812_800_000;
const HOUR_MS: i64 = 3_600_000;

async fn store(dir: &Path, name: &str) -> SqliteAnalytics {
    SqliteAnalytics::open(&dir.join(name)).await.unwrap()
}

#[tokio::test]
async fn the_sqlite_analytics_store_passes_the_analytics_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = 0;
    switchboard_store::testsuite::analytics(|| {
        files += 1;
        let path = dir.path().join(format!("w{files}.sqlite"));
        async move { Arc::new(SqliteAnalytics::open(&path).await.unwrap()) as Arc<dyn AnalyticsStore> }
    })
    .await;
}

/// Whether `estimate` is within the sketch's relative error of `exact` (both absent, or both
/// present).
fn estimates(estimate: Option<f64>, exact: Option<f64>) -> bool {
    match (estimate, exact) {
        (None, None) => true,
        (Some(e), Some(x)) => (e - x).abs() <= PERCENTILE_RELATIVE_ERROR * x + 1e-9,
        _ => false,
    }
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn percentiles_are_within_one_percent_of_the_exact_nearest_rank_values(
        latencies in prop::collection::vec(
            prop_oneof![
                Just(0.0),
                0.0..1.0f64,
                1.0..2_000.0f64,
                (0.0..7.93f64).prop_map(|e| 10f64.powf(e).min(MAX_CALL_LATENCY_MS)),
                Just(MAX_CALL_LATENCY_MS),
            ],
            1..400,
        ),
        groups in prop::collection::vec(0usize..3, 400),
    ) {
        let mut builder = SummaryBuilder::default();
        let models = ["a", "b", "c"];
        for (i, latency) in latencies.iter().enumerate() {
            let call = CallFigures {
                at_ms: START_MS + (i as i64 % 30) * HOUR_MS,
                input_tokens: 1,
                output_tokens: 1,
                latency_ms: Some(*latency),
                error: false,
                cost_usd: 0.0,
                batch: false,
            };
            builder.add(models[groups[i]], None, None, call);
        }
        let summary = builder.finish().unwrap();
        let all = sorted(latencies.clone());
        for percent in [50, 95] {
            let estimate = if percent == 50 { summary.totals.usage.p50_latency_ms } else { summary.totals.usage.p95_latency_ms };
            prop_assert!(estimates(estimate, nearest_rank(&all, percent)), "p{} {:?} of {:?}", percent, estimate, all);
        }
        for usage in &summary.by_model {
            let group = models.iter().position(|m| Some(*m) == usage.key.as_deref()).unwrap();
            let own = sorted(latencies.iter().zip(&groups).filter(|(_, g)| **g == group).map(|(l, _)| *l).collect());
            prop_assert!(estimates(usage.p95_latency_ms, nearest_rank(&own, 95)));
            prop_assert!(estimates(usage.p50_latency_ms, nearest_rank(&own, 50)));
        }
    }
}

/// The workload file as version 1 of the schema left it.
const VERSION_1: &str = "
CREATE TABLE workload_events (
    user_id TEXT NOT NULL, ts INTEGER NOT NULL, model TEXT NOT NULL, provider TEXT,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, latency_ms REAL, status TEXT NOT NULL,
    feature TEXT, prompt_hash TEXT, cost_usd REAL NOT NULL, batch INTEGER NOT NULL
);
CREATE INDEX workload_by_user_time ON workload_events (user_id, ts);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version = 1;
";

fn write_version_1(path: &Path, user: &UserId, events: &[WorkloadEvent]) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(VERSION_1).unwrap();
    let tx = conn.transaction().unwrap();
    for e in events {
        tx.execute(
            "INSERT INTO workload_events VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                user.to_string(),
                e.timestamp.unix_millis(),
                e.model,
                e.input_tokens as i64,
                e.output_tokens as i64,
                e.latency_ms,
                e.status.as_str(),
                e.feature,
                e.prompt_hash,
                e.cost_usd,
                e.batch
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[tokio::test]
async fn a_version_1_file_gets_its_roll_ups_built_from_its_rows_once_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserId::generate();
    let mut events = sample_calls(7, 3_000);
    events[5].latency_ms = Some(-1.0); // left out, as before
    write_version_1(&dir.path().join("old.sqlite"), &user, &events);
    let fresh = store(dir.path(), "fresh.sqlite").await;
    fresh.insert_workload_events(&user, events.clone()).await.unwrap();
    let expected = fresh.workload_summary(&user, TimeRange::default()).await.unwrap();

    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(
        old.workload_summary(&user, TimeRange::default()).await.unwrap(),
        expected
    );
    assert_eq!(expected.calls_left_out, 1);
    drop(old);
    let version: i64 = rusqlite::Connection::open(dir.path().join("old.sqlite"))
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    // Opened again, nothing is rolled up twice; a new upload adds to the built roll-ups.
    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(
        old.workload_summary(&user, TimeRange::default()).await.unwrap(),
        expected
    );
    old.insert_workload_events(&user, sample_calls(8, 10)).await.unwrap();
    fresh.insert_workload_events(&user, sample_calls(8, 10)).await.unwrap();
    assert_eq!(
        old.workload_summary(&user, TimeRange::default()).await.unwrap(),
        fresh.workload_summary(&user, TimeRange::default()).await.unwrap()
    );
    assert_eq!(old.workload_event_count(&user).await.unwrap(), 3_010);
}

#[tokio::test]
async fn a_version_1_file_whose_rows_cannot_be_read_is_left_at_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    let user = UserId::generate();
    write_version_1(&path, &user, &sample_calls(9, 10));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE workload_events SET model = x'ff00' WHERE rowid = 5", [])
            .unwrap();
    }
    assert!(SqliteAnalytics::open(&path).await.is_err());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'workload_rollups'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((version, tables), (1, 0), "the migration is one transaction");
}

/// A version-2 file as the server of that version wrote it (`sqlite3 .dump`): the calls of
/// [`version_2_calls`] uploaded 70 at a time by one user, and 40 of another's.
const VERSION_2: &str = include_str!("fixtures/workload-v2.sql");

fn version_2_users() -> (UserId, UserId) {
    (
        UserId::parse("usr_00000000000000000000000000000a00").unwrap(),
        UserId::parse("usr_00000000000000000000000000000b00").unwrap(),
    )
}

fn version_2_calls() -> Vec<WorkloadEvent> {
    let mut events = sample_calls(21, 300);
    events[7].cost_usd = f64::INFINITY;
    events
}

fn user_version(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_version_2_file_moves_to_version_5_with_the_same_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob) = version_2_users();
    let fresh = store(dir.path(), "fresh.sqlite").await;
    for chunk in version_2_calls().chunks(70) {
        fresh.insert_workload_events(&ann, chunk.to_vec()).await.unwrap();
    }
    fresh.insert_workload_events(&bob, sample_calls(22, 40)).await.unwrap();
    let path = dir.path().join("old.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(VERSION_2)
        .unwrap();
    assert_eq!(user_version(&path), 2);

    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(user_version(&path), 5);
    let mid_hours = TimeRange {
        from: Timestamp::from_unix_millis(START_MS + 3 * HOUR_MS + 999_999),
        to: Timestamp::from_unix_millis(START_MS + 40 * HOUR_MS + 5),
    };
    for user in [&ann, &bob] {
        for range in [TimeRange::default(), mid_hours] {
            assert_eq!(
                old.workload_summary(user, range).await.unwrap(),
                fresh.workload_summary(user, range).await.unwrap(),
                "{user} {range:?}"
            );
        }
        assert_eq!(
            old.workload_event_count(user).await.unwrap(),
            fresh.workload_event_count(user).await.unwrap()
        );
    }
    let summary = old.workload_summary(&ann, TimeRange::default()).await.unwrap();
    assert_eq!((summary.totals.usage.calls, summary.calls_left_out), (299, 1));
    assert!(summary.opportunities.repeated_prompt_calls > 0);

    // Uploads after the move repeat prompts counted before it, as on a fresh file.
    for store in [&old, &fresh] {
        store.insert_workload_events(&ann, sample_calls(21, 120)).await.unwrap();
        store.insert_workload_events(&bob, sample_calls(23, 30)).await.unwrap();
    }
    for user in [&ann, &bob] {
        assert_eq!(
            old.workload_summary(user, TimeRange::default()).await.unwrap(),
            fresh.workload_summary(user, TimeRange::default()).await.unwrap()
        );
    }
    drop(old);
    let tables: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'old_%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(tables, 0);
}

/// Makes the current file at `path` one of version 3, which kept every prompt in one table
/// and no upload keys.
fn write_version_3(path: &Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "BEGIN;
             INSERT INTO workload_prompts SELECT * FROM workload_new_prompts;
             DROP TABLE workload_new_prompts;
             DROP TABLE workload_uploads;
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .unwrap();
}

#[tokio::test]
async fn a_version_3_file_moves_to_version_5_and_counts_its_prompts_on() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob) = version_2_users();
    let (fresh, old) = (
        store(dir.path(), "fresh.sqlite").await,
        store(dir.path(), "old.sqlite").await,
    );
    for store in [&fresh, &old] {
        for chunk in version_2_calls().chunks(70) {
            store.insert_workload_events(&ann, chunk.to_vec()).await.unwrap();
        }
        store.insert_workload_events(&bob, sample_calls(22, 40)).await.unwrap();
    }
    drop(old);
    let path = dir.path().join("old.sqlite");
    write_version_3(&path);
    assert_eq!(user_version(&path), 3);

    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(user_version(&path), 5);
    // Uploads after the move repeat prompts counted before it, as on a file that never moved.
    for store in [&old, &fresh] {
        store.insert_workload_events(&ann, sample_calls(21, 120)).await.unwrap();
        store.insert_workload_events(&bob, sample_calls(23, 30)).await.unwrap();
    }
    for user in [&ann, &bob] {
        let summary = old.workload_summary(user, TimeRange::default()).await.unwrap();
        assert_eq!(
            summary,
            fresh.workload_summary(user, TimeRange::default()).await.unwrap(),
            "{user}"
        );
        assert!(summary.opportunities.repeated_prompt_calls > 0);
    }
}

#[tokio::test]
async fn a_version_4_file_moves_to_version_5_keeps_its_calls_and_takes_upload_keys() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserId::generate();
    let path = dir.path().join("old.sqlite");
    let before = {
        let old = store(dir.path(), "old.sqlite").await;
        old.insert_workload_events(&user, sample_calls(24, 90)).await.unwrap();
        old.workload_summary(&user, TimeRange::default()).await.unwrap()
    };
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("BEGIN; DROP TABLE workload_uploads; PRAGMA user_version = 4; COMMIT;")
        .unwrap();
    assert_eq!(user_version(&path), 4);

    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(user_version(&path), 5);
    assert_eq!(old.workload_summary(&user, TimeRange::default()).await.unwrap(), before);
    let key = UploadKey::parse("after-the-move").unwrap();
    let calls = sample_calls(25, 10);
    assert_eq!(
        old.insert_workload_upload(&user, &key, calls.clone()).await.unwrap(),
        Upload::Stored(10)
    );
    drop(old);
    // The key is in the file: a reopened store knows it.
    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(
        old.insert_workload_upload(&user, &key, calls).await.unwrap(),
        Upload::Replayed(10)
    );
    assert_eq!(old.workload_event_count(&user).await.unwrap(), 100);
}

#[tokio::test]
async fn a_version_2_file_that_cannot_be_moved_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(VERSION_2).unwrap();
        conn.execute(
            "UPDATE workload_prompts SET calls = -1 WHERE prompt_hash = (SELECT MIN(prompt_hash) FROM workload_prompts)",
            [],
        )
        .unwrap();
    }
    match SqliteAnalytics::open(&path).await {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("calls"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(user_version(&path), 2, "the move is one transaction");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (rows, users): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM workload_events),
                    (SELECT COUNT(*) FROM sqlite_master WHERE name = 'workload_users')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, users), (340, 0));
}

#[tokio::test]
async fn a_workload_file_of_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    drop(store(dir.path(), "w.sqlite").await);
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 6)
        .unwrap();
    match SqliteAnalytics::open(&path).await {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("newer than this server's 5"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_roll_up_is_reported_as_corrupt_and_never_panics() {
    let good = {
        let mut sketch = vec![1u8, 0, 1, 0x8a, 0x0b, 1];
        sketch.extend(100.0f64.to_le_bytes());
        sketch.extend(100.0f64.to_le_bytes());
        sketch
    };
    let mut bad_bounds = good.clone();
    bad_bounds.truncate(6);
    bad_bounds.extend(f64::NAN.to_le_bytes());
    bad_bounds.extend(100.0f64.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an empty sketch", vec![], "ends early"),
        ("an unknown format", vec![9, 0, 0], "unknown sketch format 9"),
        ("a cut-short sketch", good[..10].to_vec(), "ends early"),
        (
            "bytes after it",
            [good.clone(), vec![0]].concat(),
            "1 bytes after the sketch",
        ),
        ("a key no value has", vec![1, 0, 1, 0xff, 0xff, 0x7f, 1], "bin key"),
        ("an empty bin", vec![1, 0, 1, 2, 0], "an empty bin"),
        (
            "a number too long",
            vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            "a number too",
        ),
        ("bounds that are not numbers", bad_bounds, "bounds NaN"),
        (
            "more latencies than calls",
            {
                let mut many = good.clone();
                many[5] = 100;
                many
            },
            "do not add up",
        ),
    ];
    for (what, blob, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite");
        let store = store(dir.path(), "w.sqlite").await;
        let user = UserId::generate();
        let mut event = sample_calls(11, 1).remove(0);
        event.latency_ms = Some(100.0);
        store.insert_workload_events(&user, vec![event.clone()]).await.unwrap();
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute("UPDATE workload_rollups SET latency = ?1", [&blob])
                .unwrap();
        }
        let check = |result: Result<Summary, StoreError>| match result {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains(expected), "{what}: {message}");
                assert!(
                    message.contains("latency sketch") || message.contains("do not add up"),
                    "{what}: {message}"
                );
            }
            other => panic!("{what}: {other:?}"),
        };
        check(store.workload_summary(&user, TimeRange::default()).await);
        // An upload to the same cell meets the corrupt cell too, and stores nothing.
        let upload = store.insert_workload_events(&user, vec![event]).await;
        assert!(matches!(upload, Err(StoreError::Corrupt(_))), "{what}: {upload:?}");
        assert_eq!(store.workload_event_count(&user).await.unwrap(), 1, "{what}");
    }

    // Figures a cell can only have when written by something else.
    let columns: [(&str, &str); 4] = [
        ("calls = -1", "a negative count"),
        ("cost_usd = 9e999", "a cost of inf"),
        ("failed_cost_usd = -1.0", "a cost of -1"),
        ("errors = calls + 1", "do not add up"),
    ];
    for (change, expected) in columns {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), "w.sqlite").await;
        let user = UserId::generate();
        store.insert_workload_events(&user, sample_calls(12, 1)).await.unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("w.sqlite")).unwrap();
            conn.execute(&format!("UPDATE workload_rollups SET {change}"), [])
                .unwrap();
        }
        match store.workload_summary(&user, TimeRange::default()).await {
            Err(StoreError::Corrupt(message)) => assert!(message.contains(expected), "{change}: {message}"),
            other => panic!("{change}: {other:?}"),
        }
    }
}

//! The SQLite store: the storage suite, and what only the embedded backend does (reopening its
//! file, moving older schemas forward).

use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{AgentName, EventPayload, RunId, RunStatus, Seq, ThreadId, UserId};
use switchboard_store::testsuite::{self, append, entry, finished, model_call, new_message, started};
use switchboard_store::{RefreshFamilyId, RefreshTokenId, Rotation, SqliteStore, Store};

fn refresh_token(id: &str) -> RefreshTokenId {
    RefreshTokenId::parse(id).unwrap()
}

fn refresh_family(id: &str) -> RefreshFamilyId {
    RefreshFamilyId::parse(id).unwrap()
}

#[tokio::test]
async fn the_sqlite_store_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let other = Arc::new(SqliteStore::open(&path).await.unwrap());
    testsuite::store(store, other).await;
}

#[tokio::test]
async fn the_sqlite_store_keeps_everything_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let alice = UserId::generate();
    let accepted = {
        let store = SqliteStore::open(&path).await.unwrap();
        let accepted = store
            .accept_message(new_message(&alice, None, "hello", Some("k")))
            .await
            .unwrap();
        append(
            &store,
            entry(&alice, &accepted.run_id, &accepted.thread_id, started(), None),
        )
        .await;
        accepted
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(&alice).await.unwrap(), Seq::new(1));
    assert_eq!(store.running_runs().await.unwrap()[0].id, accepted.run_id);
    let again = store
        .accept_message(new_message(&alice, None, "hello", Some("k")))
        .await
        .unwrap();
    assert!(again.duplicate);
    let found = store.message_by_client_id(&alice, "k").await.unwrap().unwrap();
    assert_eq!(
        (found.run_id, found.thread_id),
        (Some(accepted.run_id), accepted.thread_id)
    );
    assert!(store.message_by_client_id(&alice, "other").await.unwrap().is_none());
    assert!(
        store
            .message_by_client_id(&UserId::generate(), "k")
            .await
            .unwrap()
            .is_none(),
        "another user's id is not found"
    );
}

#[tokio::test]
async fn a_database_of_schema_2_is_brought_up_to_date_and_keeps_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let alice = UserId::generate();
    let accepted = {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .accept_message(new_message(&alice, None, "hello", None))
            .await
            .unwrap()
    };
    // Back to schema 2, as a server of that version left it: no `runs.model_calls` (schema 3)
    // and no `runs.missing` (schema 7).
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE runs DROP COLUMN model_calls; ALTER TABLE runs DROP COLUMN missing; PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let (run, thread) = (accepted.run_id.clone(), accepted.thread_id.clone());
    assert_eq!(store.running_runs().await.unwrap()[0].id, run);
    assert!(store.running_runs().await.unwrap()[0].missing.is_empty());
    append(&store, entry(&alice, &run, &thread, started(), None)).await;
    let EventPayload::AgentCompleted(mut done) = finished(RunStatus::Completed, Some("done")) else {
        unreachable!()
    };
    done.missing = vec![AgentName::parse("optimization").unwrap()];
    let done = EventPayload::AgentCompleted(done);
    append(&store, entry(&alice, &run, &thread, done, Some("done"))).await;
    let record = store.run(&alice, &run).await.unwrap().unwrap();
    assert_eq!(record.model_calls, [model_call()]);
    assert_eq!(record.missing, [AgentName::parse("optimization").unwrap()]);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 8);
}

#[tokio::test]
async fn a_database_of_schema_5_keeps_its_event_log_in_the_order_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let (run, thread) = (RunId::generate(), ThreadId::generate());
    {
        let store = SqliteStore::open(&path).await.unwrap();
        for user in [&ann, &bob, &ann] {
            append(&store, entry(user, &run, &thread, started(), None)).await;
        }
    }
    // Back to schema 5, as a server of that version left it: events clustered by user and seq.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE old (user_id TEXT NOT NULL, seq INTEGER NOT NULL, run_id TEXT NOT NULL,
                 json TEXT NOT NULL, PRIMARY KEY (user_id, seq)) WITHOUT ROWID;
             INSERT INTO old SELECT user_id, seq, run_id, json FROM events;
             DROP TABLE events;
             ALTER TABLE old RENAME TO events;
             CREATE INDEX events_by_run ON events (run_id);
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(&ann).await.unwrap(), Seq::new(2));
    assert_eq!(append(&store, entry(&ann, &run, &thread, started(), None)).await, 3);
    assert_eq!(append(&store, entry(&bob, &run, &thread, started(), None)).await, 2);
    let anns = store.events_after(&ann, Seq::ZERO, 10).await.unwrap();
    assert_eq!(anns.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(anns[0].event().unwrap().seq, Seq::new(1));
    assert_eq!(store.run_events(&bob, &run).await.unwrap().len(), 2);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (version, sql): (i64, String) = (
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap(),
        conn.query_row("SELECT sql FROM sqlite_master WHERE name = 'events'", [], |r| r.get(0))
            .unwrap(),
    );
    assert_eq!(version, 8);
    assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
}

#[tokio::test]
async fn a_database_of_schema_7_keeps_its_refresh_families_and_can_retry_their_next_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let family = refresh_family("fam-schema-7");
    let ann = {
        let store = SqliteStore::open(&path).await.unwrap();
        let ann = store.create_user("ann@example.com", "hash").await.unwrap();
        store
            .start_refresh_family(&ann.id, &family, &refresh_token("t1"))
            .await
            .unwrap();
        ann
    };
    // Back to schema 7, as a server of that version left it: no `previous_token`.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("ALTER TABLE refresh_families DROP COLUMN previous_token; PRAGMA user_version = 7;")
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let window = Duration::from_secs(600);
    let (t1, t2, t3) = (refresh_token("t1"), refresh_token("t2"), refresh_token("t3"));
    let rotated = store
        .rotate_refresh_token(&ann.id, &family, &t1, &t2, window)
        .await
        .unwrap();
    assert_eq!(rotated, Rotation::Rotated);
    let retried = store
        .rotate_refresh_token(&ann.id, &family, &t1, &t3, window)
        .await
        .unwrap();
    assert_eq!(retried, Rotation::Retried(t2));
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 8);
}

#[tokio::test]
async fn a_database_of_schema_3_gains_refresh_families_and_keeps_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let ann = {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_user("ann@example.com", "hash").await.unwrap()
    };
    // Back to schema 3, as a server of that version left it: no `refresh_families`.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE refresh_families; PRAGMA user_version = 3;")
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.user_by_email("ann@example.com").await.unwrap().map(|u| u.id),
        Some(ann.id.clone())
    );
    let family = refresh_family("fam-upgraded");
    store
        .start_refresh_family(&ann.id, &family, &refresh_token("t1"))
        .await
        .unwrap();
    let rotation = store
        .rotate_refresh_token(
            &ann.id,
            &family,
            &refresh_token("t1"),
            &refresh_token("t2"),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 8);
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 9).unwrap();
    }
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(error.to_string().contains("newer than this server's 8"), "{error}");
}

/// Puts back the workload table of schema 2 to 4 into the chat file at `path`, with `rows` calls
/// of `user`, as a server of that version left it.
fn legacy_workload_rows(path: &std::path::Path, user: &UserId, rows: usize) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE workload_events (user_id TEXT NOT NULL, ts INTEGER NOT NULL, model TEXT NOT NULL,
         provider TEXT, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, latency_ms REAL,
         status TEXT NOT NULL, feature TEXT, prompt_hash TEXT, cost_usd REAL NOT NULL, batch INTEGER NOT NULL);
         CREATE INDEX workload_by_user_time ON workload_events (user_id, ts);
         PRAGMA user_version = 4;",
    )
    .unwrap();
    for row in 0..rows {
        conn.execute(
            "INSERT INTO workload_events VALUES (?1, ?2, 'gpt-4o', NULL, 100, 10, 250.0, 'ok', 'search', NULL, 0.01, 0)",
            rusqlite::params![user.to_string(), 1_793_000_000_000_i64 + row as i64],
        )
        .unwrap();
    }
}

fn has_workload_table(path: &std::path::Path) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'workload_events'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

#[tokio::test]
async fn workload_rows_of_schema_4_move_to_their_own_file_once_even_when_a_move_was_cut_short() {
    use switchboard_store::AnalyticsStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let ann = UserId::generate();
    drop(SqliteStore::open(&path).await.unwrap());
    std::fs::remove_file(dir.path().join("db-workload.sqlite")).unwrap();
    legacy_workload_rows(&path, &ann, 3);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.workload_event_count(&ann).await.unwrap(), 3);
    drop(store);
    assert!(!has_workload_table(&path), "the chat file keeps no workload rows");
    assert!(dir.path().join("db-workload.sqlite").exists());

    // A move that copied the rows but stopped before dropping them from the chat file.
    legacy_workload_rows(&path, &ann, 3);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.workload_event_count(&ann).await.unwrap(),
        3,
        "nothing copied twice"
    );
    drop(store);
    assert!(!has_workload_table(&path));
}

#[tokio::test]
async fn a_workload_file_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(dir.path().join("db-workload.sqlite")).unwrap();
        conn.pragma_update(None, "user_version", 6).unwrap();
    }
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("workload database has schema version 6, newer than this server's 5"),
        "{error}"
    );
}

#[tokio::test]
async fn the_refresh_families_of_a_deleted_user_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let ann = {
        let store = SqliteStore::open(&path).await.unwrap();
        let ann = store.create_user("ann@example.com", "hash").await.unwrap();
        store
            .start_refresh_family(&ann.id, &refresh_family("fam-gone"), &refresh_token("t1"))
            .await
            .unwrap();
        ann
    };
    // The store has no way to delete a user yet; the schema's cascade is what this checks
    // (foreign keys are enforced per connection, as the store's own connection does).
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute("DELETE FROM users WHERE id = ?1", [ann.id.as_str()])
            .unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM refresh_families", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let rotation = store
        .rotate_refresh_token(
            &ann.id,
            &refresh_family("fam-gone"),
            &refresh_token("t1"),
            &refresh_token("t2"),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Unknown);
}

#[tokio::test]
async fn opening_a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    std::fs::write(&path, "this is not sqlite, just text that fills the header and more of it ....................................................").unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(error.to_string().contains("not a database"), "{error}");
}

mod workload {
    use std::sync::Arc;

    use switchboard_protocol::UserId;
    use switchboard_store::testsuite::sample_calls;
    use switchboard_store::{
        AnalyticsStore, CallFigures, EARLIEST_CALL_MS, LATEST_CALL_MS, SqliteStore, SummaryBuilder, nearest_rank,
    };

    #[tokio::test]
    async fn the_sqlite_store_passes_the_analytics_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = 0;
        switchboard_store::testsuite::analytics(|| {
            files += 1;
            let path = dir.path().join(format!("db{files}.sqlite"));
            async move { Arc::new(SqliteStore::open(&path).await.unwrap()) as Arc<dyn AnalyticsStore> }
        })
        .await;
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let cases: [(&[f64], usize, Option<f64>); 6] = [
            (&[], 50, None),
            (&[7.0], 95, Some(7.0)),
            (&[1.0, 2.0], 50, Some(1.0)),
            (&[1.0, 2.0], 95, Some(2.0)),
            (
                &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                50,
                Some(50.0),
            ),
            (
                &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                95,
                Some(100.0),
            ),
        ];
        for (values, percent, expected) in cases {
            assert_eq!(nearest_rank(values, percent), expected, "p{percent} of {values:?}");
        }
    }

    #[test]
    fn the_summary_builder_leaves_out_figures_no_backend_could_store() {
        let call = |input_tokens: u64, latency_ms: Option<f64>, cost_usd: f64| CallFigures {
            at_ms: EARLIEST_CALL_MS,
            input_tokens,
            output_tokens: 1,
            latency_ms,
            error: true,
            cost_usd,
            batch: false,
        };
        let cases: [(CallFigures, bool); 9] = [
            (call(1, None, 0.0), true),
            (call(u64::MAX, None, 0.0), false),
            (call(1, Some(f64::NAN), 0.0), false),
            (call(1, Some(f64::NEG_INFINITY), 0.0), false),
            (call(1, None, f64::NAN), false),
            (call(1, None, f64::NEG_INFINITY), false),
            (call(1, None, -0.000_001), false),
            (
                CallFigures {
                    at_ms: i64::MIN,
                    ..call(1, None, 0.0)
                },
                false,
            ),
            (
                CallFigures {
                    at_ms: LATEST_CALL_MS + 1,
                    ..call(1, None, 0.0)
                },
                false,
            ),
        ];
        let mut builder = SummaryBuilder::default();
        for (figures, in_range) in cases {
            assert_eq!(figures.in_range(), in_range, "{figures:?}");
            builder.add("m", Some("f"), Some("p"), figures);
        }
        let summary = builder.finish().unwrap();
        assert_eq!((summary.calls_left_out, summary.totals.usage.calls), (8, 1));
        assert_eq!(summary.totals.usage.p95_latency_ms, None);
        assert!(summary.opportunities.failed_cost_usd == 0.0);
    }

    #[tokio::test]
    async fn an_upload_that_fails_halfway_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
        let user = UserId::generate();
        let mut rows = sample_calls(1, 5);
        rows[3].input_tokens = u64::MAX; // cannot be stored as a SQLite integer
        assert!(store.insert_workload_events(&user, rows).await.is_err());
        assert_eq!(store.workload_event_count(&user).await.unwrap(), 0);
    }
}

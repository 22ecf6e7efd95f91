//! The workload roll-ups: what a summary reads instead of the rows. Their percentiles are
//! within the sketch's bound of the exact nearest-rank values, any split of an upload gives the
//! same figures, a version-1 file gets them built when opened, and a corrupt cell is reported
//! as corrupt.

use std::path::Path;

use proptest::prelude::*;
use switchboard_protocol::{Timestamp, UserId};
use switchboard_store::{
    AnalyticsStore, CallFigures, CallStatus, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS,
    PERCENTILE_RELATIVE_ERROR, SqliteAnalytics, StoreError, Summary, SummaryBuilder, TimeRange, Usage, WorkloadEvent,
    nearest_rank,
};

/// 2026-10-01T00:00:00Z.
const START_MS: i64 = 1_790_812_800_000;
const HOUR_MS: i64 = 3_600_000;

/// A small deterministic generator (xorshift64*), so the data is the same on every run.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Calls over three days: several models and features, latencies from zero to a day spread
/// over many orders of magnitude, some without latency, failures, batch calls, repeated prompts.
fn calls(seed: u64, count: usize) -> Vec<WorkloadEvent> {
    let mut rng = Seeded(seed | 1);
    (0..count)
        .map(|_| {
            let latency = match rng.below(6) {
                0 => None,
                1 => Some(0.0),
                2 => Some(rng.unit() * 5.0),
                3 => Some(10f64.powf(rng.unit() * 7.9).min(MAX_CALL_LATENCY_MS)),
                _ => Some((200.0 + rng.unit() * 3000.0).round()),
            };
            WorkloadEvent {
                timestamp: Timestamp::from_unix_millis(START_MS + rng.below(3 * 24 * HOUR_MS as u64) as i64).unwrap(),
                model: ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"][rng.below(3) as usize].to_owned(),
                input_tokens: match rng.below(4) {
                    0 => rng.below(1000),
                    1 => rng.below(MAX_CALL_TOKENS + 1),
                    _ => 500 + rng.below(5000),
                },
                output_tokens: rng.below(800),
                provider: None,
                latency_ms: latency,
                status: if rng.below(20) == 0 {
                    CallStatus::Error
                } else {
                    CallStatus::Ok
                },
                feature: [None, Some("search"), Some("chat"), Some("nightly")][rng.below(4) as usize]
                    .map(str::to_owned),
                prompt_hash: match rng.below(3) {
                    0 => None,
                    1 => Some(format!("faq-{}", rng.below(50))),
                    _ => Some(format!("p-{:x}", rng.next())),
                },
                cost_usd: rng.unit() * 0.05,
                batch: rng.below(10) == 0,
            }
        })
        .collect()
}

async fn store(dir: &Path, name: &str) -> SqliteAnalytics {
    SqliteAnalytics::open(&dir.join(name)).await.unwrap()
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

/// Checks every percentile of `summary` against the exact nearest-rank values of `events`, and
/// every count and sum against the events' own.
fn check_against_the_calls(summary: &Summary, events: &[&WorkloadEvent]) {
    let exact = |of: &dyn Fn(&WorkloadEvent) -> bool| {
        let chosen: Vec<&&WorkloadEvent> = events.iter().filter(|e| of(e)).collect();
        let latencies = sorted(chosen.iter().filter_map(|e| e.latency_ms).collect());
        let cost: f64 = chosen.iter().map(|e| e.cost_usd).sum();
        let input: u64 = chosen.iter().map(|e| e.input_tokens).sum();
        (chosen.len() as u64, input, cost, latencies)
    };
    let check = |usage: &Usage, of: &dyn Fn(&WorkloadEvent) -> bool| {
        let (calls, input, cost, latencies) = exact(of);
        assert_eq!((usage.calls, usage.input_tokens), (calls, input), "{:?}", usage.key);
        assert!(
            (usage.cost_usd - cost).abs() < 1e-9,
            "{} against {cost}",
            usage.cost_usd
        );
        for (estimate, percent) in [(usage.p50_latency_ms, 50), (usage.p95_latency_ms, 95)] {
            let exact = nearest_rank(&latencies, percent);
            assert!(
                estimates(estimate, exact),
                "p{percent} of {:?}: {estimate:?} against {exact:?}",
                usage.key
            );
        }
    };
    check(&summary.totals.usage, &|_| true);
    for usage in &summary.by_model {
        check(usage, &|e| Some(&e.model) == usage.key.as_ref());
    }
    for usage in &summary.by_feature {
        check(usage, &|e| e.feature == usage.key);
    }
    for hour in &summary.hours {
        let (calls, _, _, latencies) =
            exact(&|e| e.timestamp.unix_millis().div_euclid(HOUR_MS) % 24 == i64::from(hour.hour));
        assert_eq!(hour.calls, calls);
        let exact = nearest_rank(&latencies, 95);
        assert!(estimates(hour.p95_latency_ms, exact), "{hour:?} against {exact:?}");
    }
    let bucketed: u64 = summary.hourly.iter().map(|b| b.calls).sum();
    assert_eq!(bucketed, events.len() as u64);
    // The prompt tokens above each feature's p95: the p95 is within the bound of the exact
    // one, and the sum above it within the bound of the prompts above (a little below) it.
    for fm in &summary.opportunities.by_feature_model {
        let inputs = sorted(
            events
                .iter()
                .filter(|e| !e.batch && e.feature == fm.feature)
                .map(|e| e.input_tokens as f64)
                .collect(),
        );
        let exact_p95 = nearest_rank(&inputs, 95).unwrap();
        let own: Vec<f64> = events
            .iter()
            .filter(|e| !e.batch && e.feature == fm.feature && e.model == fm.model)
            .map(|e| e.input_tokens as f64)
            .collect();
        let lowest = exact_p95 * (1.0 - PERCENTILE_RELATIVE_ERROR) / (1.0 + PERCENTILE_RELATIVE_ERROR);
        let above: f64 = own.iter().filter(|i| **i > lowest).sum();
        let exact_excess: f64 = own.iter().map(|i| (i - exact_p95).max(0.0)).sum();
        let slack = 3.0 * PERCENTILE_RELATIVE_ERROR * above + 1.0;
        assert!(
            (fm.input_tokens_above_p95 as f64 - exact_excess).abs() <= slack,
            "{:?} on {}: {} against {exact_excess} (slack {slack})",
            fm.feature,
            fm.model,
            fm.input_tokens_above_p95
        );
    }
    assert_all_finite(summary);
}

fn assert_all_finite(summary: &Summary) {
    let usages = std::iter::once(&summary.totals.usage)
        .chain(&summary.by_model)
        .chain(&summary.by_feature);
    let mut figures: Vec<f64> = Vec::new();
    for usage in usages {
        figures.push(usage.cost_usd);
        figures.extend(usage.p50_latency_ms);
        figures.extend(usage.p95_latency_ms);
    }
    figures.extend(
        summary
            .hours
            .iter()
            .flat_map(|h| [Some(h.cost_usd), h.p95_latency_ms])
            .flatten(),
    );
    figures.extend(summary.hourly.iter().map(|b| b.cost_usd));
    let o = &summary.opportunities;
    figures.extend([o.repeated_prompt_cost_usd, o.failed_cost_usd]);
    figures.extend(
        o.by_feature_model
            .iter()
            .flat_map(|fm| [fm.all.cost_usd, fm.off_hours.cost_usd]),
    );
    assert!(
        figures.iter().all(|f| f.is_finite() && *f >= 0.0),
        "a figure is not a finite amount: {summary:?}"
    );
}

#[tokio::test]
async fn the_stored_summary_has_the_calls_counts_and_sums_and_their_percentiles_within_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "w.sqlite").await;
    let user = UserId::generate();
    let events = calls(1, 20_000);
    store.insert_workload_events(&user, events.clone()).await.unwrap();
    store
        .insert_workload_events(&UserId::generate(), calls(2, 500))
        .await
        .unwrap();
    let summary = store.workload_summary(&user, TimeRange::default()).await.unwrap();
    check_against_the_calls(&summary, &events.iter().collect::<Vec<_>>());
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 20_000);

    // A range whose bounds fall mid-hour: the whole hours from the roll-ups, the edges from
    // the rows.
    let (from, to) = (START_MS + 5 * HOUR_MS + 1_234_567, START_MS + 50 * HOUR_MS + 17);
    let range = TimeRange {
        from: Timestamp::from_unix_millis(from),
        to: Timestamp::from_unix_millis(to),
    };
    let part = store.workload_summary(&user, range).await.unwrap();
    let inside: Vec<&WorkloadEvent> = events
        .iter()
        .filter(|e| (from..to).contains(&e.timestamp.unix_millis()))
        .collect();
    check_against_the_calls(&part, &inside);
    assert_eq!(
        (part.totals.first, part.totals.last),
        (
            inside.iter().map(|e| e.timestamp).min(),
            inside.iter().map(|e| e.timestamp).max()
        )
    );
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

#[tokio::test]
async fn uploads_in_many_batches_give_the_same_summary_as_one_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (one, many) = (
        store(dir.path(), "one.sqlite").await,
        store(dir.path(), "many.sqlite").await,
    );
    let user = UserId::generate();
    let mut events = calls(3, 6_000);
    // Out-of-range rows too (stored as an older version could have): left out either way.
    events[10].cost_usd = f64::INFINITY;
    events[20].timestamp = Timestamp::parse("1970-01-01T00:00:00Z").unwrap();
    one.insert_workload_events(&user, events.clone()).await.unwrap();
    let mut rng = Seeded(99);
    let mut rest = &events[..];
    while !rest.is_empty() {
        let size = (1 + rng.below(700) as usize).min(rest.len());
        many.insert_workload_events(&user, rest[..size].to_vec()).await.unwrap();
        rest = &rest[size..];
    }
    let whole = one.workload_summary(&user, TimeRange::default()).await.unwrap();
    assert_eq!(whole, many.workload_summary(&user, TimeRange::default()).await.unwrap());
    assert_eq!(whole.calls_left_out, 2);
    assert_eq!(many.workload_event_count(&user).await.unwrap(), 6_000);

    // And the summary built from the calls themselves has the same counts and percentiles.
    let mut builder = SummaryBuilder::default();
    for e in &events {
        builder.add(&e.model, e.feature.as_deref(), e.prompt_hash.as_deref(), e.figures());
    }
    let direct = builder.finish().unwrap();
    let shape = |s: &Summary| {
        let usage = |u: &Usage| {
            (
                u.key.clone(),
                u.calls,
                u.errors,
                u.input_tokens,
                u.p50_latency_ms,
                u.p95_latency_ms,
            )
        };
        (
            s.by_model.iter().map(usage).collect::<Vec<_>>(),
            s.by_feature.iter().map(usage).collect::<Vec<_>>(),
            s.calls_left_out,
            s.opportunities.repeated_prompt_calls,
            s.hourly
                .iter()
                .map(|b| (b.start, b.calls, b.errors))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(shape(&whole), shape(&direct));
    assert!(
        (whole.opportunities.repeated_prompt_cost_usd - direct.opportunities.repeated_prompt_cost_usd).abs() < 1e-9
    );
}

#[tokio::test]
async fn repeated_prompts_are_known_across_uploads_and_only_within_the_users_own_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "w.sqlite").await;
    let (user, other) = (UserId::generate(), UserId::generate());
    let call = |at: i64, hash: &str, cost: f64| WorkloadEvent {
        prompt_hash: Some(hash.to_owned()),
        cost_usd: cost,
        timestamp: Timestamp::from_unix_millis(START_MS + at * HOUR_MS).unwrap(),
        ..calls(5, 1).remove(0)
    };
    store
        .insert_workload_events(&user, vec![call(0, "p1", 0.01), call(0, "p2", 0.5)])
        .await
        .unwrap();
    store
        .insert_workload_events(&user, vec![call(1, "p1", 0.02)])
        .await
        .unwrap();
    store
        .insert_workload_events(&user, vec![call(30, "p1", 0.03)])
        .await
        .unwrap();
    store
        .insert_workload_events(&other, vec![call(1, "p2", 0.5)])
        .await
        .unwrap();
    let o = store
        .workload_summary(&user, TimeRange::default())
        .await
        .unwrap()
        .opportunities;
    // p1 three times for 0.06: two repeats, two thirds of its cost; p2 once (the other user's
    // call of it is not this user's).
    assert_eq!(o.repeated_prompt_calls, 2);
    assert!(
        (o.repeated_prompt_cost_usd - 0.04).abs() < 1e-12,
        "{}",
        o.repeated_prompt_cost_usd
    );
    // A bounded range counts the repeats among its own calls.
    let first_day = TimeRange {
        from: None,
        to: Timestamp::from_unix_millis(START_MS + 24 * HOUR_MS),
    };
    let o = store.workload_summary(&user, first_day).await.unwrap().opportunities;
    assert_eq!(o.repeated_prompt_calls, 1);
    assert!((o.repeated_prompt_cost_usd - 0.015).abs() < 1e-12);
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
    let mut events = calls(7, 3_000);
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
    assert_eq!(version, 4);
    // Opened again, nothing is rolled up twice; a new upload adds to the built roll-ups.
    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(
        old.workload_summary(&user, TimeRange::default()).await.unwrap(),
        expected
    );
    old.insert_workload_events(&user, calls(8, 10)).await.unwrap();
    fresh.insert_workload_events(&user, calls(8, 10)).await.unwrap();
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
    write_version_1(&path, &user, &calls(9, 10));
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
    let mut events = calls(21, 300);
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
async fn a_version_2_file_moves_to_version_4_with_the_same_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bob) = version_2_users();
    let fresh = store(dir.path(), "fresh.sqlite").await;
    for chunk in version_2_calls().chunks(70) {
        fresh.insert_workload_events(&ann, chunk.to_vec()).await.unwrap();
    }
    fresh.insert_workload_events(&bob, calls(22, 40)).await.unwrap();
    let path = dir.path().join("old.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(VERSION_2)
        .unwrap();
    assert_eq!(user_version(&path), 2);

    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(user_version(&path), 4);
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
        store.insert_workload_events(&ann, calls(21, 120)).await.unwrap();
        store.insert_workload_events(&bob, calls(23, 30)).await.unwrap();
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

/// Makes the version-4 file at `path` one of version 3, which kept every prompt in one table.
fn write_version_3(path: &Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "BEGIN;
             INSERT INTO workload_prompts SELECT * FROM workload_new_prompts;
             DROP TABLE workload_new_prompts;
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .unwrap();
}

#[tokio::test]
async fn a_version_3_file_moves_to_version_4_and_counts_its_prompts_on() {
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
        store.insert_workload_events(&bob, calls(22, 40)).await.unwrap();
    }
    drop(old);
    let path = dir.path().join("old.sqlite");
    write_version_3(&path);
    assert_eq!(user_version(&path), 3);

    let old = store(dir.path(), "old.sqlite").await;
    assert_eq!(user_version(&path), 4);
    // Uploads after the move repeat prompts counted before it, as on a file that never moved.
    for store in [&old, &fresh] {
        store.insert_workload_events(&ann, calls(21, 120)).await.unwrap();
        store.insert_workload_events(&bob, calls(23, 30)).await.unwrap();
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
        .pragma_update(None, "user_version", 5)
        .unwrap();
    match SqliteAnalytics::open(&path).await {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("newer than this server's 4"), "{message}"),
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
        let mut event = calls(11, 1).remove(0);
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
        store.insert_workload_events(&user, calls(12, 1)).await.unwrap();
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

#[tokio::test]
async fn figures_at_their_bounds_sum_to_finite_amounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "w.sqlite").await;
    let user = UserId::generate();
    let events: Vec<WorkloadEvent> = calls(13, 2_000)
        .into_iter()
        .map(|mut e| {
            e.cost_usd = MAX_CALL_COST_USD;
            e.input_tokens = MAX_CALL_TOKENS;
            e.output_tokens = MAX_CALL_TOKENS;
            e.latency_ms = Some(MAX_CALL_LATENCY_MS);
            e
        })
        .collect();
    for chunk in events.chunks(300) {
        store.insert_workload_events(&user, chunk.to_vec()).await.unwrap();
    }
    let summary = store.workload_summary(&user, TimeRange::default()).await.unwrap();
    assert_all_finite(&summary);
    assert_eq!(summary.totals.usage.p95_latency_ms, Some(MAX_CALL_LATENCY_MS));
    assert_eq!(summary.totals.usage.input_tokens, 2_000 * MAX_CALL_TOKENS);
}

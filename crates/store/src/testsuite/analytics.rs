//! The analytics suite: the cases every [`AnalyticsStore`] backend must pass, run on fresh,
//! empty stores, and the calls they are made of (also used by a backend's own tests).

use std::future::Future;
use std::sync::Arc;

use switchboard_protocol::{Timestamp, UserId};

use crate::{
    AnalyticsStore, CallStatus, EARLIEST_CALL_MS, HourUsage, LATEST_CALL_MS, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS,
    MAX_CALL_TOKENS, PERCENTILE_RELATIVE_ERROR, Summary, SummaryBuilder, TimeRange, Upload, UploadKey, Usage,
    WorkloadEvent, nearest_rank,
};

/// 2026-10-01T00:00:00Z.
const START_MS: i64 = 1_790_812_800_000;
const HOUR_MS: i64 = 3_600_000;

/// Runs every case; `fresh` gives a new, empty store each time it is called.
pub async fn analytics<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn AnalyticsStore>>,
{
    aggregates_match_figures_computed_by_hand(fresh().await.as_ref()).await;
    the_savings_aggregates_match_figures_computed_by_hand(fresh().await.as_ref()).await;
    stored_calls_with_figures_out_of_range_are_left_out_and_counted(fresh().await.as_ref(), fresh().await.as_ref())
        .await;
    the_summary_has_the_calls_counts_and_sums_and_their_percentiles_within_one_percent(fresh().await.as_ref()).await;
    uploads_in_many_batches_give_the_same_summary_as_one_upload(fresh().await.as_ref(), fresh().await.as_ref()).await;
    repeated_prompts_are_known_across_uploads_and_only_within_the_users_own_calls(fresh().await.as_ref()).await;
    figures_at_their_bounds_sum_to_finite_amounts(fresh().await.as_ref()).await;
    counts_asked_at_once_are_each_of_its_own_user(fresh().await).await;
    an_upload_sent_again_with_its_key_stores_nothing_and_is_answered_as_the_first_time(fresh().await.as_ref()).await;
    upload_keys_are_each_users_own(fresh().await.as_ref()).await;
    a_key_sent_again_with_other_calls_is_refused_and_stores_nothing(fresh().await.as_ref()).await;
    uploads_with_one_key_sent_at_once_store_once(fresh().await).await;
}

fn key(text: &str) -> UploadKey {
    UploadKey::parse(text).unwrap()
}

/// The first upload with a key stores its calls; sent again with the key it stores nothing and
/// is answered with the count of the first time; without a key or with another key the same
/// calls are stored again, as any upload.
async fn an_upload_sent_again_with_its_key_stores_nothing_and_is_answered_as_the_first_time(
    store: &dyn AnalyticsStore,
) {
    let user = UserId::generate();
    let calls = sample_calls(31, 40);
    let first = store
        .insert_workload_upload(&user, &key("batch-1"), calls.clone())
        .await
        .unwrap();
    assert_eq!(first, Upload::Stored(40));
    let before = store.workload_summary(&user, TimeRange::default()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            store
                .insert_workload_upload(&user, &key("batch-1"), calls.clone())
                .await
                .unwrap(),
            Upload::Replayed(40)
        );
    }
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 40);
    assert_eq!(
        store.workload_summary(&user, TimeRange::default()).await.unwrap(),
        before
    );
    assert_eq!(
        store
            .insert_workload_upload(&user, &key("batch-2"), calls.clone())
            .await
            .unwrap(),
        Upload::Stored(40)
    );
    store.insert_workload_events(&user, calls[..5].to_vec()).await.unwrap();
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 85);
    // An empty upload's key is kept as well.
    assert_eq!(
        store
            .insert_workload_upload(&user, &key("empty"), Vec::new())
            .await
            .unwrap(),
        Upload::Stored(0)
    );
    assert_eq!(
        store
            .insert_workload_upload(&user, &key("empty"), Vec::new())
            .await
            .unwrap(),
        Upload::Replayed(0)
    );
    assert_eq!(
        store
            .insert_workload_upload(&user, &key("empty"), calls[..1].to_vec())
            .await
            .unwrap(),
        Upload::KeyReused
    );
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 85);
}

/// Another user's same key is another key: it stores that user's calls.
async fn upload_keys_are_each_users_own(store: &dyn AnalyticsStore) {
    let (ann, bob) = (UserId::generate(), UserId::generate());
    let calls = sample_calls(32, 12);
    assert_eq!(
        store
            .insert_workload_upload(&ann, &key("k"), calls.clone())
            .await
            .unwrap(),
        Upload::Stored(12)
    );
    assert_eq!(
        store
            .insert_workload_upload(&bob, &key("k"), calls.clone())
            .await
            .unwrap(),
        Upload::Stored(12)
    );
    assert_eq!(
        store
            .insert_workload_upload(&bob, &key("k"), calls[..3].to_vec())
            .await
            .unwrap(),
        Upload::KeyReused
    );
    assert_eq!(
        store
            .insert_workload_upload(&ann, &key("k"), calls.clone())
            .await
            .unwrap(),
        Upload::Replayed(12)
    );
    for user in [&ann, &bob] {
        assert_eq!(store.workload_event_count(user).await.unwrap(), 12);
    }
}

/// A key given again with other calls (fewer, more, or one figure changed, or the same calls
/// in another order) is refused and stores nothing; the key keeps its first calls.
async fn a_key_sent_again_with_other_calls_is_refused_and_stores_nothing(store: &dyn AnalyticsStore) {
    let user = UserId::generate();
    let calls = sample_calls(33, 20);
    assert_eq!(
        store
            .insert_workload_upload(&user, &key("once"), calls.clone())
            .await
            .unwrap(),
        Upload::Stored(20)
    );
    let mut changed = calls.clone();
    changed[7].cost_usd += 0.001;
    let mut reordered = calls.clone();
    reordered.swap(0, 1);
    let mut more = calls.clone();
    more.push(calls[0].clone());
    for other in [calls[..19].to_vec(), more, changed, reordered] {
        assert_eq!(
            store.insert_workload_upload(&user, &key("once"), other).await.unwrap(),
            Upload::KeyReused
        );
    }
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 20);
    assert_eq!(
        store.insert_workload_upload(&user, &key("once"), calls).await.unwrap(),
        Upload::Replayed(20)
    );
}

/// Uploads with one key sent at once store their calls once: one is stored, each other is
/// answered as a replay of it or as still in progress (then a replay when sent again).
async fn uploads_with_one_key_sent_at_once_store_once(store: Arc<dyn AnalyticsStore>) {
    let user = UserId::generate();
    let calls = sample_calls(34, 300);
    let at_once = key("at-once");
    let answers =
        futures_util::future::join_all((0..6).map(|_| store.insert_workload_upload(&user, &at_once, calls.clone())))
            .await;
    let answers: Vec<Upload> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        answers.iter().filter(|a| **a == Upload::Stored(300)).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Upload::Stored(300) | Upload::Replayed(300) | Upload::InProgress)),
        "{answers:?}"
    );
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 300);
    assert_eq!(
        store
            .insert_workload_upload(&user, &key("at-once"), calls)
            .await
            .unwrap(),
        Upload::Replayed(300)
    );
    let summary = store.workload_summary(&user, TimeRange::default()).await.unwrap();
    assert_eq!(summary.totals.usage.calls + summary.calls_left_out, 300);
}

/// Counts of many users asked at once (which a backend may answer in one query): each user is
/// told the number of its own calls, a user asked for twice both times, a user without calls 0.
async fn counts_asked_at_once_are_each_of_its_own_user(store: Arc<dyn AnalyticsStore>) {
    let users: Vec<UserId> = (0..12).map(|_| UserId::generate()).collect();
    for (n, user) in users.iter().enumerate().skip(1) {
        let calls = vec![five_calls()[0].clone(); n];
        store.insert_workload_events(user, calls).await.unwrap();
    }
    let asked: Vec<usize> = (0..users.len()).chain([3, 3, 0]).collect();
    let counts = futures_util::future::join_all(asked.iter().map(|&n| store.workload_event_count(&users[n]))).await;
    let counts: Vec<u64> = counts.into_iter().map(Result::unwrap).collect();
    let expected: Vec<u64> = asked.iter().map(|&n| n as u64).collect();
    assert_eq!(counts, expected, "each user's own count, in the order asked");
}

/// A call made at `at` (RFC 3339).
pub fn call(
    at: &str,
    model: &str,
    feature: Option<&str>,
    tokens: (u64, u64),
    latency: Option<f64>,
    error: bool,
    cost: f64,
) -> WorkloadEvent {
    WorkloadEvent {
        timestamp: Timestamp::parse(at).unwrap(),
        model: model.into(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        provider: Some("openai".into()),
        latency_ms: latency,
        status: if error { CallStatus::Error } else { CallStatus::Ok },
        feature: feature.map(Into::into),
        prompt_hash: None,
        cost_usd: cost,
        batch: false,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Whether a percentile is the sketch's estimate of `exact`: within its relative error.
fn estimates_exactly(estimate: Option<f64>, exact: f64) -> bool {
    estimate.is_some_and(|e| (e - exact).abs() <= PERCENTILE_RELATIVE_ERROR * exact)
}

/// Five calls whose figures are worked out by hand below.
fn five_calls() -> Vec<WorkloadEvent> {
    vec![
        call(
            "2026-11-01T10:00:00Z",
            "gpt-4o",
            Some("search"),
            (1000, 100),
            Some(100.0),
            false,
            0.50,
        ),
        call(
            "2026-11-01T10:30:00Z",
            "gpt-4o",
            Some("search"),
            (2000, 200),
            Some(300.0),
            true,
            1.00,
        ),
        call(
            "2026-11-01T11:00:00Z",
            "gpt-4o",
            Some("chat"),
            (500, 50),
            Some(200.0),
            false,
            0.25,
        ),
        call(
            "2026-11-01T23:00:00Z",
            "gpt-4o-mini",
            Some("chat"),
            (100, 10),
            Some(50.0),
            false,
            0.01,
        ),
        call(
            "2026-11-02T10:15:00Z",
            "gpt-4o-mini",
            None,
            (100, 10),
            None,
            false,
            0.02,
        ),
    ]
}

async fn aggregates_match_figures_computed_by_hand(store: &dyn AnalyticsStore) {
    let (user, other) = (UserId::generate(), UserId::generate());
    assert_eq!(store.insert_workload_events(&user, five_calls()).await.unwrap(), 5);
    let noise = vec![call(
        "2026-11-01T10:00:00Z",
        "gpt-4o",
        Some("search"),
        (9, 9),
        Some(9999.0),
        true,
        99.0,
    )];
    store.insert_workload_events(&other, noise).await.unwrap();
    let all = TimeRange::default();

    let summary = store.workload_summary(&user, all).await.unwrap();
    let totals = summary.totals.clone();
    let u = &totals.usage;
    assert_eq!((u.calls, u.errors, u.input_tokens, u.output_tokens), (5, 1, 3700, 370));
    assert!(close(u.cost_usd, 1.78), "{}", u.cost_usd);
    // Latencies 50, 100, 200, 300: p50 at rank ceil(2.0) = 2 (estimated within 1 %), p95 at
    // rank ceil(3.8) = 4, the largest (known exactly, as is the smallest).
    assert!(estimates_exactly(u.p50_latency_ms, 100.0), "{:?}", u.p50_latency_ms);
    assert_eq!(u.p95_latency_ms, Some(300.0));
    assert_eq!(totals.first.unwrap().to_string(), "2026-11-01T10:00:00.000Z");
    assert_eq!(totals.last.unwrap().to_string(), "2026-11-02T10:15:00.000Z");

    let models = summary.by_model.clone();
    let row = |key: &str| models.iter().find(|m| m.key.as_deref() == Some(key)).unwrap().clone();
    let (big, mini) = (row("gpt-4o"), row("gpt-4o-mini"));
    assert_eq!(models[0].key.as_deref(), Some("gpt-4o"), "most expensive first");
    assert_eq!(
        (big.calls, big.errors, big.input_tokens, big.output_tokens),
        (3, 1, 3500, 350)
    );
    assert!(close(big.cost_usd, 1.75));
    // 100, 200, 300: p50 rank ceil(1.5) = 2 (estimated), p95 rank ceil(2.85) = 3 (the largest).
    assert!(estimates_exactly(big.p50_latency_ms, 200.0), "{:?}", big.p50_latency_ms);
    assert_eq!(big.p95_latency_ms, Some(300.0));
    // One latency (the other call has none): both percentiles are it.
    assert_eq!(
        (mini.calls, mini.p50_latency_ms, mini.p95_latency_ms),
        (2, Some(50.0), Some(50.0))
    );
    assert!(close(mini.cost_usd, 0.03));

    let features = summary.by_feature.clone();
    let keys: Vec<Option<&str>> = features.iter().map(|f| f.key.as_deref()).collect();
    assert_eq!(keys, [Some("search"), Some("chat"), None]);
    assert_eq!(
        (
            features[0].calls,
            features[0].p50_latency_ms,
            features[0].p95_latency_ms
        ),
        (2, Some(100.0), Some(300.0))
    );
    assert_eq!(
        (
            features[1].calls,
            features[1].p50_latency_ms,
            features[1].p95_latency_ms
        ),
        (2, Some(50.0), Some(200.0))
    );
    assert!(close(features[1].cost_usd, 0.26));
    assert_eq!((features[2].calls, features[2].p50_latency_ms), (1, None));

    let hours = summary.hours.clone();
    let hours: Vec<(u8, u64, Option<f64>)> = hours
        .iter()
        .map(|h: &HourUsage| (h.hour, h.calls, h.p95_latency_ms))
        .collect();
    // 10:00 holds latencies 100 and 300 (the third call has none): p95 rank ceil(1.9) = 2.
    assert_eq!(hours, [(10, 3, Some(300.0)), (11, 1, Some(200.0)), (23, 1, Some(50.0))]);
    let hourly: Vec<(String, u64, u64, f64)> = summary
        .hourly
        .iter()
        .map(|b| {
            (
                b.start.to_string(),
                b.calls,
                b.errors,
                (b.cost_usd * 100.0).round() / 100.0,
            )
        })
        .collect();
    assert_eq!(
        hourly,
        [
            ("2026-11-01T10:00:00.000Z".to_owned(), 2, 1, 1.5),
            ("2026-11-01T11:00:00.000Z".to_owned(), 1, 0, 0.25),
            ("2026-11-01T23:00:00.000Z".to_owned(), 1, 0, 0.01),
            ("2026-11-02T10:00:00.000Z".to_owned(), 1, 0, 0.02)
        ]
    );

    let range = TimeRange {
        from: Some(Timestamp::parse("2026-11-01T10:15:00Z").unwrap()),
        to: Some(Timestamp::parse("2026-11-02T00:00:00Z").unwrap()),
    };
    let part = store.workload_summary(&user, range).await.unwrap().totals;
    assert_eq!((part.usage.calls, part.usage.errors), (3, 1));
    assert!(close(part.usage.cost_usd, 1.26));

    let empty = store.workload_summary(&UserId::generate(), all).await.unwrap();
    assert_eq!(
        (
            empty.totals.usage.calls,
            empty.totals.first,
            empty.totals.usage.p50_latency_ms
        ),
        (0, None, None)
    );
    assert!(empty.by_model.is_empty() && empty.hours.is_empty() && empty.hourly.is_empty());
    assert_eq!(store.workload_event_count(&user).await.unwrap(), 5);
}

async fn the_savings_aggregates_match_figures_computed_by_hand(store: &dyn AnalyticsStore) {
    let user = UserId::generate();
    let with = |mut event: WorkloadEvent, hash: &str| {
        event.prompt_hash = Some(hash.into());
        event
    };
    let calls = vec![
        with(
            call(
                "2026-11-01T01:00:00Z",
                "gpt-4o",
                Some("nightly"),
                (3000, 500),
                None,
                false,
                0.02,
            ),
            "p1",
        ),
        with(
            call(
                "2026-11-01T02:00:00Z",
                "gpt-4o",
                Some("nightly"),
                (3000, 500),
                None,
                false,
                0.02,
            ),
            "p1",
        ),
        with(
            call(
                "2026-11-01T03:00:00Z",
                "gpt-4o",
                Some("nightly"),
                (9000, 500),
                None,
                false,
                0.04,
            ),
            "p2",
        ),
        with(
            call(
                "2026-11-01T12:00:00Z",
                "gpt-4o",
                Some("chat"),
                (400, 100),
                None,
                true,
                0.005,
            ),
            "p1",
        ),
    ];
    store.insert_workload_events(&user, calls).await.unwrap();
    let o = store
        .workload_summary(&user, TimeRange::default())
        .await
        .unwrap()
        .opportunities;
    // p1 is called three times for 0.045: two repeats, two thirds of its cost.
    assert_eq!(o.repeated_prompt_calls, 2);
    assert!(
        close(o.repeated_prompt_cost_usd, 0.03),
        "{}",
        o.repeated_prompt_cost_usd
    );
    assert!(close(o.failed_cost_usd, 0.005));
    // Only the chat call is short (400 ≤ 1000 prompt tokens, 100 ≤ 300 answer tokens).
    assert_eq!(o.short_calls.len(), 1);
    assert_eq!((o.short_calls[0].0.as_str(), o.short_calls[0].1.calls), ("gpt-4o", 1));
    assert!(close(o.short_calls[0].1.cost_usd, 0.005));
    let nightly = &o.by_feature_model[0];
    assert_eq!(
        (nightly.feature.as_deref(), nightly.all.calls, nightly.off_hours.calls),
        (Some("nightly"), 3, 3)
    );
    assert!(close(nightly.off_hours.cost_usd, 0.08));
    assert_eq!(
        nightly.input_tokens_above_p95, 0,
        "the p95 of three prompts is the largest"
    );
    assert_eq!(
        (
            o.by_feature_model[1].feature.as_deref(),
            o.by_feature_model[1].off_hours.calls
        ),
        (Some("chat"), 0)
    );
}

async fn stored_calls_with_figures_out_of_range_are_left_out_and_counted(
    store: &dyn AnalyticsStore,
    none_left: &dyn AnalyticsStore,
) {
    let user = UserId::generate();
    let good = || {
        call(
            "2026-11-01T10:00:00Z",
            "gpt-4o",
            Some("search"),
            (1000, 100),
            Some(100.0),
            false,
            0.5,
        )
    };
    let with = |change: &dyn Fn(&mut WorkloadEvent)| {
        let mut event = good();
        change(&mut event);
        event
    };
    // Rows the upload would refuse, written directly as an older version or another
    // writer could have: each has one figure out of range.
    let absurd = vec![
        with(&|e| e.cost_usd = 1e308),
        with(&|e| e.cost_usd = f64::INFINITY),
        with(&|e| e.cost_usd = -1.0),
        with(&|e| e.cost_usd = MAX_CALL_COST_USD + 0.01),
        with(&|e| e.input_tokens = i64::MAX as u64),
        with(&|e| e.output_tokens = MAX_CALL_TOKENS + 1),
        with(&|e| e.latency_ms = Some(1e12)),
        with(&|e| e.latency_ms = Some(-5.0)),
        with(&|e| e.latency_ms = Some(f64::INFINITY)),
        with(&|e| e.timestamp = Timestamp::parse("1970-01-01T00:00:00Z").unwrap()),
        with(&|e| e.timestamp = Timestamp::parse("2200-06-01T00:00:00Z").unwrap()),
        with(&|e| e.model = "other".into()),
    ];
    let mut rows = absurd;
    // The last one is good (another model), and so are these at the very bounds.
    rows.push(with(&|e| {
        e.cost_usd = MAX_CALL_COST_USD;
        e.input_tokens = MAX_CALL_TOKENS;
        e.output_tokens = MAX_CALL_TOKENS;
        e.latency_ms = Some(MAX_CALL_LATENCY_MS);
    }));
    rows.push(with(&|e| {
        e.timestamp = Timestamp::from_unix_millis(EARLIEST_CALL_MS).unwrap()
    }));
    rows.push(with(&|e| {
        e.timestamp = Timestamp::from_unix_millis(LATEST_CALL_MS).unwrap()
    }));
    rows.push(good());
    store.insert_workload_events(&user, rows).await.unwrap();
    assert_eq!(
        store.workload_event_count(&user).await.unwrap(),
        16,
        "every row is stored"
    );

    let summary = store.workload_summary(&user, TimeRange::default()).await.unwrap();
    assert_eq!(summary.calls_left_out, 11);
    let u = &summary.totals.usage;
    assert_eq!(
        (u.calls, u.input_tokens, u.output_tokens),
        (5, 4 * 1000 + MAX_CALL_TOKENS, 4 * 100 + MAX_CALL_TOKENS)
    );
    assert!(close(u.cost_usd, 4.0 * 0.5 + MAX_CALL_COST_USD), "{}", u.cost_usd);
    assert_eq!(u.p95_latency_ms, Some(MAX_CALL_LATENCY_MS));
    assert_eq!(
        (
            summary.totals.first.unwrap().to_string(),
            summary.totals.last.unwrap().to_string()
        ),
        (
            "2000-01-01T00:00:00.000Z".to_owned(),
            "2100-12-31T23:59:59.999Z".to_owned()
        )
    );
    let models: Vec<(Option<&str>, u64)> = summary.by_model.iter().map(|m| (m.key.as_deref(), m.calls)).collect();
    assert_eq!(models, [(Some("gpt-4o"), 4), (Some("other"), 1)]);
    let hourly_calls: u64 = summary.hourly.iter().map(|b| b.calls).sum();
    let hourly_cost: f64 = summary.hourly.iter().map(|b| b.cost_usd).sum();
    assert_eq!(hourly_calls, 5);
    assert!(close(hourly_cost, u.cost_usd));
    assert!(close(summary.opportunities.failed_cost_usd, 0.0));
    assert!(
        summary.hours.iter().all(|h| h.cost_usd.is_finite())
            && summary.by_feature.iter().all(|f| f.cost_usd.is_finite()),
        "no figure is infinite: {summary:?}"
    );

    none_left
        .insert_workload_events(&user, vec![with(&|e| e.cost_usd = 1e308)])
        .await
        .unwrap();
    let summary = none_left.workload_summary(&user, TimeRange::default()).await.unwrap();
    assert_eq!(
        (summary.calls_left_out, summary.totals.usage.calls, summary.totals.first),
        (1, 0, None)
    );
    assert!(summary.hourly.is_empty() && summary.by_model.is_empty());
}

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

/// `count` calls from `seed`, the same on every run, over three days: several models and features, latencies from zero to a day spread
/// over many orders of magnitude, some without latency, failures, batch calls, repeated prompts.
pub fn sample_calls(seed: u64, count: usize) -> Vec<WorkloadEvent> {
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

async fn the_summary_has_the_calls_counts_and_sums_and_their_percentiles_within_one_percent(
    store: &dyn AnalyticsStore,
) {
    let user = UserId::generate();
    let events = sample_calls(1, 20_000);
    store.insert_workload_events(&user, events.clone()).await.unwrap();
    store
        .insert_workload_events(&UserId::generate(), sample_calls(2, 500))
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

async fn uploads_in_many_batches_give_the_same_summary_as_one_upload(
    one: &dyn AnalyticsStore,
    many: &dyn AnalyticsStore,
) {
    let user = UserId::generate();
    let mut events = sample_calls(3, 6_000);
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

async fn repeated_prompts_are_known_across_uploads_and_only_within_the_users_own_calls(store: &dyn AnalyticsStore) {
    let (user, other) = (UserId::generate(), UserId::generate());
    let call = |at: i64, hash: &str, cost: f64| WorkloadEvent {
        prompt_hash: Some(hash.to_owned()),
        cost_usd: cost,
        timestamp: Timestamp::from_unix_millis(START_MS + at * HOUR_MS).unwrap(),
        ..sample_calls(5, 1).remove(0)
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

async fn figures_at_their_bounds_sum_to_finite_amounts(store: &dyn AnalyticsStore) {
    let user = UserId::generate();
    let events: Vec<WorkloadEvent> = sample_calls(13, 2_000)
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

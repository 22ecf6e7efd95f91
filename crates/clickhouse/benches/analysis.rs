//! The analysis' store query (`workload_summary`) over N calls of one user (default ten
//! million; `SWITCHBOARD_BENCH_CALLS`) among other users' calls, in ClickHouse, over all of
//! the user's calls and over a bounded range (the month but its first and last half hour:
//! whole hours and days from the roll-ups, the edges from the rows), with the
//! embedded SQLite store's figure for a million calls beside it (`SWITCHBOARD_BENCH_SQLITE_CALLS`,
//! 0 to leave it out). The calls are the month of `crates/store/benches/aggregates.rs`, made by
//! ClickHouse itself (`INSERT … SELECT … FROM numbers(N)`, the same formulas); the ingest rate
//! through `insert_workload_events` is measured on a smaller upload in batches of 50 000.
//!
//! The prompts (`SWITCHBOARD_BENCH_PROMPTS`): `few` (default), 5 000 prompt hashes that every
//! call repeats; `demo`, as in the demo month (`crates/agents/src/demo.rs`): 13 % of the calls
//! one of 40 frequent prompts of their feature, the rest a prompt of their own, so about 870 000
//! distinct prompts per million calls. Beside each summary's time, each of its queries run alone.
//!
//! `SWITCHBOARD_BENCH_CLICKHOUSE_URL=http://127.0.0.1:PORT/ cargo bench -p switchboard-clickhouse --bench analysis`
//! (or `SWITCHBOARD_TEST_CLICKHOUSE_URL`; the current engine of `scripts/tiers --clickhouse-current`
//! with `SWITCHBOARD_BENCH_CLICKHOUSE_URL=$SWITCHBOARD_TEST_CLICKHOUSE_CURRENT_URL`, its engine's own
//! time per query in `scripts/chdb-server --query-log`); `SWITCHBOARD_BENCH_DATABASE=NAME` measures a database
//! kept by an earlier run (or by the agents' bench) instead, and `SWITCHBOARD_BENCH_OPTIMIZE=0`
//! leaves its parts unmerged. The bench works in a scratch database it drops at the end
//! (kept with `SWITCHBOARD_BENCH_KEEP_DATABASE=1`).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_clickhouse::{ClickHouseAnalytics, ClickHouseOptions, scratch_database};
use switchboard_protocol::{Timestamp, UserId};
use switchboard_store::{AnalyticsStore, CallStatus, SqliteStore, TimeRange, WorkloadEvent};

const MODELS: [&str; 6] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-3-5-haiku",
    "claude-sonnet-4",
    "gemini-2.0-flash",
    "o3-mini",
];
const FEATURES: [&str; 5] = ["search", "chat", "summaries", "tagging", "nightly-report"];
const START: &str = "2026-10-01T00:00:00Z";
const MONTH_MS: i64 = 30 * 24 * 3_600_000;
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// How the calls' prompts repeat (see the top of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prompts {
    Few,
    Demo,
}

impl Prompts {
    /// Call `x`'s prompt hash (`x` as in [`event`]) in Rust.
    fn of(self, x: u64) -> String {
        let feature = FEATURES[(x >> 44) as usize % FEATURES.len()];
        match self {
            Prompts::Few => format!("h{}", (x >> 48) % 5000),
            Prompts::Demo if x % 100 < 13 => format!("{feature}-faq-{}", (x >> 52) % 40),
            Prompts::Demo => format!("{feature}-{x:016x}"),
        }
    }

    /// The same in SQL, of `x` and the call's `feature`.
    fn sql(self) -> &'static str {
        match self {
            Prompts::Few => "concat('h', toString(bitShiftRight(x, 48) % 5000))",
            Prompts::Demo => {
                "if(x % 100 < 13, concat(feature, '-faq-', toString(bitShiftRight(x, 52) % 40)), \
                 concat(feature, '-', lower(hex(x))))"
            }
        }
    }
}

/// Call `i` of the month, as `aggregates.rs` makes it.
fn event(i: u64) -> WorkloadEvent {
    event_with(i, Prompts::Few)
}

/// Call `i` of the month with its prompt as `prompts` has it.
fn event_with(i: u64, prompts: Prompts) -> WorkloadEvent {
    let start = Timestamp::parse(START).unwrap().unix_millis();
    let x = i.wrapping_mul(MULTIPLIER);
    WorkloadEvent {
        timestamp: Timestamp::from_unix_millis(start + (x % MONTH_MS as u64) as i64).unwrap(),
        model: MODELS[(x >> 8) as usize % MODELS.len()].to_owned(),
        input_tokens: 200 + (x >> 16) % 4000,
        output_tokens: 20 + (x >> 24) % 800,
        provider: None,
        latency_ms: Some(100.0 + ((x >> 32) % 3000) as f64),
        status: if (x >> 40).is_multiple_of(50) {
            CallStatus::Error
        } else {
            CallStatus::Ok
        },
        feature: Some(FEATURES[(x >> 44) as usize % FEATURES.len()].to_owned()),
        prompt_hash: Some(prompts.of(x)),
        cost_usd: ((x >> 20) % 10_000) as f64 / 1e6,
        batch: false,
    }
}

/// The same calls as [`event`], made by ClickHouse from `numbers()`, for `user`: numbers
/// `first..first + count`. The columns are `workload_events`' (the same in schema versions 1
/// and 2).
fn insert_select(database: &str, user: &UserId, first: u64, count: u64, prompts: Prompts) -> String {
    let list = |names: &[&str]| {
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let start = Timestamp::parse(START).unwrap().unix_millis();
    format!(
        "INSERT INTO {database}.workload_events \
         SELECT '{user}', {start} + toInt64(x % {MONTH_MS}), {models}[(bitShiftRight(x, 8) % 6) + 1], 0, '', \
                200 + bitShiftRight(x, 16) % 4000, 20 + bitShiftRight(x, 24) % 800, \
                1, toFloat64(100 + bitShiftRight(x, 32) % 3000), bitShiftRight(x, 40) % 50 = 0, \
                1, feature, 1, {prompt}, (bitShiftRight(x, 20) % 10000) / 1e6, 0 \
         FROM (SELECT x, {features}[(bitShiftRight(x, 44) % 5) + 1] AS feature \
               FROM (SELECT number * {MULTIPLIER} AS x FROM numbers({first}, {count})))",
        prompt = prompts.sql(),
        user = user.as_str(),
        models = list(&MODELS),
        features = list(&FEATURES),
    )
}

async fn run_sql(url: &str, sql: String) -> anyhow::Result<()> {
    let answer = reqwest::Client::new()
        .post(url)
        .body(sql)
        .send()
        .await
        .context("sending SQL to ClickHouse")?;
    let status = answer.status();
    if !status.is_success() {
        bail!(
            "ClickHouse answered {status}: {}",
            answer.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// The median, smallest and largest of `times` in milliseconds.
fn spread(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(times[times.len() / 2]), ms(times[0]), ms(times[times.len() - 1]))
}

/// Times `runs` summaries of `user` over `range` after one to warm up, which must count
/// `calls` calls (any number when `None`).
async fn time_summaries(
    store: &dyn AnalyticsStore,
    user: &UserId,
    range: TimeRange,
    runs: usize,
    calls: Option<u64>,
) -> anyhow::Result<Vec<Duration>> {
    let summary = store.workload_summary(user, range).await?;
    if let Some(calls) = calls
        && summary.totals.usage.calls != calls
    {
        bail!("the summary has {} calls, not {calls}", summary.totals.usage.calls);
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        store.workload_summary(user, range).await?;
        times.push(started.elapsed());
    }
    Ok(times)
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.parse().with_context(|| format!("{name}={text} is not a number")),
        Err(_) => Ok(default),
    }
}

async fn bench() -> anyhow::Result<()> {
    let server = std::env::var("SWITCHBOARD_BENCH_CLICKHOUSE_URL")
        .or_else(|_| std::env::var("SWITCHBOARD_TEST_CLICKHOUSE_URL"))
        .context(
            "set SWITCHBOARD_BENCH_CLICKHOUSE_URL (or SWITCHBOARD_TEST_CLICKHOUSE_URL) to a ClickHouse server's URL",
        )?;
    let calls = env_number("SWITCHBOARD_BENCH_CALLS", 10_000_000)?;
    let sqlite_calls = env_number("SWITCHBOARD_BENCH_SQLITE_CALLS", 1_000_000)?;
    let prompts = match std::env::var("SWITCHBOARD_BENCH_PROMPTS").as_deref() {
        Ok("few") | Err(_) => Prompts::Few,
        Ok("demo") => Prompts::Demo,
        Ok(other) => bail!("SWITCHBOARD_BENCH_PROMPTS={other}: expected few or demo"),
    };
    // A database kept by an earlier run (its calls loaded, connected to again: a database of an
    // older schema is brought to the current one), or a new one.
    let (url, database, kept) = match std::env::var("SWITCHBOARD_BENCH_DATABASE") {
        Ok(database) => {
            let mut url = reqwest::Url::parse(&server)?;
            url.query_pairs_mut().append_pair("database", &database);
            (url.to_string(), database, true)
        }
        Err(_) => {
            let url = scratch_database(&server).await?;
            let database = url
                .split("database=")
                .nth(1)
                .and_then(|rest| rest.split('&').next())
                .context("the scratch database's URL")?
                .to_owned();
            (url, database, false)
        }
    };
    // Summaries of ten million calls take longer than the default query deadline on a small machine.
    let options = ClickHouseOptions {
        query_timeout: Duration::from_secs(60),
        insert_timeout: Duration::from_secs(600),
    };
    let started = Instant::now();
    let store = ClickHouseAnalytics::connect(&url, options).await?;
    if kept {
        println!("connected to {database} in {:.1} s", started.elapsed().as_secs_f64());
    }
    let result = measure(&store, &server, &database, calls, sqlite_calls, prompts, kept).await;
    if kept || std::env::var_os("SWITCHBOARD_BENCH_KEEP_DATABASE").is_some() {
        println!("kept the database {database}");
    } else {
        run_sql(&server, format!("DROP DATABASE {database}")).await?;
    }
    result
}

/// Sends `sql` and returns the answer's text.
async fn query_text(url: &str, sql: String) -> anyhow::Result<String> {
    let answer = reqwest::Client::new().post(url).body(sql).send().await?;
    let status = answer.status();
    let text = answer.text().await?;
    if !status.is_success() {
        bail!("ClickHouse answered {status}: {text}");
    }
    Ok(text)
}

/// A fingerprint of everything a summary says (the same summaries, the same fingerprint).
fn fingerprint(summary: &switchboard_store::Summary) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{summary:?}").hash(&mut hasher);
    format!(
        "{:016x} ({} repeated calls, repeated cost {:?})",
        hasher.finish(),
        summary.opportunities.repeated_prompt_calls,
        summary.opportunities.repeated_prompt_cost_usd
    )
}

async fn measure(
    store: &ClickHouseAnalytics,
    server: &str,
    database: &str,
    calls: u64,
    sqlite_calls: u64,
    prompts: Prompts,
    kept: bool,
) -> anyhow::Result<()> {
    println!(
        "workload_summary over one user's calls (release build; ClickHouse over HTTP on this machine; prompts {prompts:?})"
    );
    println!();

    let (user, ingest, load) = if kept {
        let user = query_text(
            server,
            format!("SELECT user FROM {database}.workload_events GROUP BY user ORDER BY count() DESC LIMIT 1"),
        )
        .await?;
        (UserId::parse(user.trim())?, f64::NAN, Duration::ZERO)
    } else {
        // Ingest through the store: 200 000 calls in batches of 50 000.
        let uploader = UserId::generate();
        let uploaded: Vec<WorkloadEvent> = (0..200_000).map(|i| event_with(i, prompts)).collect();
        let started = Instant::now();
        for chunk in uploaded.chunks(50_000) {
            store.insert_workload_events(&uploader, chunk.to_vec()).await?;
        }
        let ingest = uploaded.len() as f64 / started.elapsed().as_secs_f64();

        // The user's calls, and a fifth as many of ten other users'.
        let user = UserId::generate();
        let started = Instant::now();
        let step = 1_000_000;
        for first in (0..calls).step_by(step as usize) {
            run_sql(
                server,
                insert_select(database, &user, first, step.min(calls - first), prompts),
            )
            .await?;
        }
        for other in 0..10 {
            run_sql(
                server,
                insert_select(database, &UserId::generate(), other * 1_000_000, calls / 50, prompts),
            )
            .await?;
        }
        (user, ingest, started.elapsed())
    };
    // Merged into one part each, unless `SWITCHBOARD_BENCH_OPTIMIZE=0` leaves the parts as the
    // server's background merges left them (several per table: the merges stop well before one).
    if std::env::var_os("SWITCHBOARD_BENCH_OPTIMIZE").is_none_or(|v| v != "0") {
        let tables = query_text(
            server,
            format!("SELECT name FROM system.tables WHERE database = '{database}' AND engine LIKE '%MergeTree'"),
        )
        .await?;
        for table in tables.lines() {
            run_sql(server, format!("OPTIMIZE TABLE {database}.{table} FINAL")).await?;
        }
    }

    let started = Instant::now();
    let counted = store.workload_event_count(&user).await?;
    let count_ms = started.elapsed().as_secs_f64() * 1000.0;
    if counted != calls {
        bail!("{counted} calls stored, not {calls}");
    }
    let (median, min, max) = spread(time_summaries(store, &user, TimeRange::default(), 7, Some(calls)).await?);
    // The month but its first and last half hour: whole hours and days from the roll-ups, the
    // two half hours (and the rest of their days' prompts) from the rows.
    let start = Timestamp::parse(START).unwrap().unix_millis();
    let bounded = TimeRange {
        from: Timestamp::from_unix_millis(start + 3_600_000 / 2),
        to: Timestamp::from_unix_millis(start + MONTH_MS - 3_600_000 / 2),
    };
    let (bounded_median, bounded_min, bounded_max) = spread(time_summaries(store, &user, bounded, 7, None).await?);

    println!("| store | calls | load (s) | ingest (calls/s) | count (ms) | workload_summary median (ms) | min | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| ClickHouse | {calls} | {:.1} (INSERT SELECT) | {ingest:.0} | {count_ms:.1} | {median:.0} | {min:.0} | {max:.0} |",
        load.as_secs_f64()
    );
    println!(
        "| ClickHouse, the month but its first and last half hour | {calls} | | | | {bounded_median:.0} | \
         {bounded_min:.0} | {bounded_max:.0} |"
    );

    println!();
    println!("| range | query | median of 5 alone (ms) |");
    println!("| --- | --- | ---: |");
    for (name, range) in [("all", TimeRange::default()), ("bounded", bounded)] {
        let mut runs: Vec<Vec<(&str, Duration)>> = Vec::new();
        for _ in 0..5 {
            runs.push(store.time_summary_queries(&user, range).await?);
        }
        for (i, (doing, _)) in runs[0].iter().enumerate() {
            let (median, _, _) = spread(runs.iter().map(|run| run[i].1).collect());
            println!("| {name} | {doing} | {median:.0} |");
        }
    }
    println!();
    println!(
        "fingerprints: all {}; bounded {}",
        fingerprint(&store.workload_summary(&user, TimeRange::default()).await?),
        fingerprint(&store.workload_summary(&user, bounded).await?)
    );
    println!();

    if sqlite_calls > 0 {
        let dir = tempfile::tempdir()?;
        let sqlite = SqliteStore::open(&dir.path().join("db.sqlite")).await?;
        let user = UserId::generate();
        let started = Instant::now();
        let mut next = 0;
        while next < sqlite_calls {
            let batch: Vec<WorkloadEvent> = (next..(next + 50_000).min(sqlite_calls)).map(event).collect();
            next += batch.len() as u64;
            sqlite.insert_workload_events(&user, batch).await?;
        }
        let load = started.elapsed().as_secs_f64();
        let started = Instant::now();
        sqlite.workload_event_count(&user).await?;
        let count_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (median, min, max) =
            spread(time_summaries(&sqlite, &user, TimeRange::default(), 5, Some(sqlite_calls)).await?);
        println!(
            "| SQLite (embedded) | {sqlite_calls} | {load:.1} | {:.0} | {count_ms:.1} | {median:.0} | {min:.0} | {max:.0} |",
            sqlite_calls as f64 / load
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench())
}

//! Load on loopback against the real release binary: at 1, 100 and 1 000 concurrent
//! connections (one user each), the p50/p99 time from sending `user_message` to the run's
//! `agent_started` and to its final event, and runs per second; then the server's memory per
//! idle connection with 10 000 connections open.
//!
//! `cargo bench -p switchboard --bench load` (`scripts/bench-load` raises the file limit first).
//!
//! `cargo bench -p switchboard --bench load -- model-latency`: what the server adds to the
//! model's time. The offline model takes 100 ms per call at 1 user, 500 ms at 50 and 1 000
//! concurrent users (`--max-active-runs` raised to let them all run); each run's time from
//! `user_message` to its final event is set against the model time its final event reports
//! (`timings.model_ms`, the same-run baseline): p50 and p95 of the ratio, and of both times.
//! The users start spread evenly over one run's model time, so they stay out of step.
//! `BENCH_USERS=1000` (a comma-separated list) runs only the phases of those user counts.
//!
//! Both modes run on the embedded SQLite stores unless given other tiers:
//! `SWITCHBOARD_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres` (a role that may
//! create databases) keeps users, runs and the event log on PostgreSQL, and
//! `SWITCHBOARD_BENCH_ANALYTICS_URL=http://127.0.0.1:PORT/` the workload data on ClickHouse. Every
//! server the benchmark starts gets new databases there (`--database-url`, `--analytics-url`),
//! so runs never see each other's data; they are left on those servers (`scripts/bench-tiers`
//! throws the servers away).

#![allow(clippy::print_stdout)]

#[path = "support/proc.rs"]
mod proc;
#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_client::{Client, Session, Socket};
use switchboard_protocol::{ClientFrame, Control, RunTimings, ServerFrame, UserMessage};

/// Where the servers keep their data: the embedded SQLite stores, or PostgreSQL and ClickHouse
/// servers named by the environment.
struct Tiers {
    /// A PostgreSQL URL of a role that may create databases.
    database: Option<String>,
    /// A ClickHouse server's HTTP URL.
    analytics: Option<String>,
}

impl Tiers {
    fn from_env() -> Tiers {
        let given = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Tiers {
            database: given("SWITCHBOARD_BENCH_DATABASE_URL"),
            analytics: given("SWITCHBOARD_BENCH_ANALYTICS_URL"),
        }
    }

    /// The tiers, for the figures' headings, without passwords.
    fn describe(&self) -> String {
        let database = self.database.as_deref().map_or_else(
            || "SQLite".to_owned(),
            |url| {
                let server = switchboard_postgres::redacted(url);
                let server = server.rsplit_once('/').map_or(server.as_str(), |(server, _)| server);
                format!("PostgreSQL ({server}, a new database for each server started)")
            },
        );
        let analytics = self.analytics.as_deref().map_or_else(
            || "SQLite".to_owned(),
            |url| {
                // Only the place: a password may be in the userinfo or the query.
                let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, place)| place);
                let place = rest.split(['/', '?']).next().unwrap_or_default();
                format!("ClickHouse (http://{place}/, a new database for each server started)")
            },
        );
        format!("chat and event log: {database}; workload data: {analytics}")
    }

    /// The server flags that put a new server on new databases of these tiers.
    async fn fresh_databases(&self) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        if let Some(admin) = &self.database {
            let url = switchboard_postgres::scratch_database(admin)
                .await
                .context("a new PostgreSQL database")?;
            args.extend(["--database-url".to_owned(), url]);
        }
        if let Some(server) = &self.analytics {
            let url = switchboard_clickhouse::scratch_database(server)
                .await
                .context("a new ClickHouse database")?;
            args.extend(["--analytics-url".to_owned(), url]);
        }
        Ok(args)
    }
}

/// Starts a server on new databases of `tiers`, with `args` added.
async fn start(
    tiers: &Tiers,
    data_dir: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(tokio::process::Child, Client)> {
    let databases = tiers.fresh_databases().await?;
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(databases.iter().map(String::as_str))
        .collect();
    server::start_server(data_dir, &args, &[]).await
}

const PHASES: [(usize, usize); 3] = [(1, 300), (100, 30), (1_000, 5)];
const IDLE_CONNECTIONS: usize = 10_000;
const CONNECTIONS_PER_USER: usize = 10;

/// How a message went.
enum Outcome {
    /// It ran.
    Ran(RunTimes),
    /// Refused with `server_busy`.
    Busy,
}

/// One run as the client saw it, and the timings its final event reports.
struct RunTimes {
    /// Microseconds to `agent_started`.
    first_us: u64,
    /// Microseconds to the final event.
    total_us: u64,
    /// Where the server says the run's time went.
    timings: RunTimings,
}

/// A client refused with `server_busy` waits between half and one and a half of this before it
/// tries again (spread, so that refused clients do not come back together).
const BUSY_BACKOFF: Duration = Duration::from_millis(1000);

/// A pseudo-random wait around `BUSY_BACKOFF`, without a random-number crate.
fn backoff(attempt: u64, connection: usize) -> Duration {
    let mixed = (attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ connection as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let fraction = (mixed >> 11) as f64 / (1u64 << 53) as f64;
    BUSY_BACKOFF.mul_f64(0.5 + fraction)
}

async fn one_run(socket: &mut Socket) -> anyhow::Result<Outcome> {
    let sent = Instant::now();
    let message = ClientFrame::UserMessage(UserMessage {
        text: "How can we cut our LLM costs on gpt-4o?".into(),
        thread_id: None,
        client_message_id: None,
    });
    socket.send(&message).await?;
    let mut first = None;
    loop {
        match socket.next_frame().await?.context("the socket closed")? {
            ServerFrame::Event(event) => {
                if first.is_none() && event.type_name() == "agent_started" {
                    first = Some(sent.elapsed().as_micros() as u64);
                }
                if let switchboard_protocol::EventPayload::AgentCompleted(done) = &event.payload
                    && done.is_final
                {
                    return Ok(Outcome::Ran(RunTimes {
                        first_us: first.context("no agent_started")?,
                        total_us: sent.elapsed().as_micros() as u64,
                        timings: done.timings.clone().unwrap_or_default(),
                    }));
                }
            }
            ServerFrame::Control(c) => {
                if let Control::Error(error) = c.body {
                    if error.code == switchboard_protocol::ErrorCode::ServerBusy {
                        return Ok(Outcome::Busy);
                    }
                    bail!("refused: {}", error.message);
                }
            }
        }
    }
}

/// The baseline, in the same run: what the transport alone gives (ping and pong over the same
/// sockets, no run, no store).
async fn ping_baseline(client: &Client, sessions: &[Session], connections: usize, pings: usize) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(connections);
    for session in sessions.iter().take(connections) {
        sockets.push(client.connect_established(&session.access_token, None).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut socket in sockets {
        tasks.spawn(async move {
            let mut times = Vec::with_capacity(pings);
            for _ in 0..pings {
                let sent = Instant::now();
                socket.send(&ClientFrame::Ping(Default::default())).await?;
                loop {
                    if let Some(ServerFrame::Control(c)) = socket.next_frame().await?
                        && matches!(c.body, Control::Pong(_))
                    {
                        break;
                    }
                }
                times.push(sent.elapsed().as_micros() as u64);
            }
            socket.close().await.ok();
            anyhow::Ok(times)
        });
    }
    let mut times = Vec::new();
    while let Some(result) = tasks.join_next().await {
        times.extend(result??);
    }
    let elapsed = started.elapsed();
    times.sort_unstable();
    println!(
        "baseline (same run): {connections} connections, ping → pong: {:.0} round trips/s, p50 {:.2} ms, p99 {:.2} ms",
        times.len() as f64 / elapsed.as_secs_f64(),
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
    println!();
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()
        .context("VmRSS")
}

async fn users(client: &Client, count: usize) -> anyhow::Result<Vec<Session>> {
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        sessions.push(client.dev_login(Some(&format!("load{i}@bench.example"))).await?);
    }
    Ok(sessions)
}

/// What one phase measured.
struct Phase {
    timings: Vec<RunTimes>,
    busy: u64,
    elapsed: Duration,
}

fn sorted(values: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values
}

/// `connections` sockets, one user each, each sending `runs_each` messages one after another;
/// the users start evenly spread over `spread` (none: all at once).
async fn phase(
    client: &Client,
    sessions: &[Session],
    connections: usize,
    runs_each: usize,
    spread: Duration,
) -> anyhow::Result<Phase> {
    let mut sockets = Vec::with_capacity(connections);
    for session in sessions.iter().take(connections) {
        sockets.push(client.connect_established(&session.access_token, None).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut socket) in sockets.into_iter().enumerate() {
        let offset = spread.mul_f64(index as f64 / connections as f64);
        tasks.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut timings = Vec::with_capacity(runs_each);
            let mut busy = 0u64;
            while timings.len() < runs_each {
                match one_run(&mut socket).await? {
                    Outcome::Ran(run) => timings.push(run),
                    Outcome::Busy => {
                        busy += 1;
                        tokio::time::sleep(backoff(busy, index)).await;
                    }
                }
            }
            socket.close().await.ok();
            anyhow::Ok((timings, busy))
        });
    }
    let mut phase = Phase {
        timings: Vec::new(),
        busy: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(result) = tasks.join_next().await {
        let (timings, refused) = result??;
        phase.busy += refused;
        phase.timings.extend(timings);
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

/// The model-latency mode: (users, model latency per call, runs per user, users in step).
/// Users out of step start spread over one run's model time; users in step all send at once,
/// every time (a herd: 1 000 runs arrive in the same millisecond, and finish together).
const MODEL_PHASES: [(usize, u64, usize, bool); 5] = [
    (1, 100, 30, false),
    (50, 500, 10, false),
    (50, 500, 10, true),
    (1_000, 500, 3, false),
    (1_000, 500, 3, true),
];

async fn model_latency(tiers: &Tiers) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "model-latency benchmark: release server on loopback, offline model with added latency, {cores} cores; \
         each connection is one user sending its next message when the last run ended"
    );
    println!("tiers: {}", tiers.describe());
    println!();
    println!(
        "| users | model per call | runs | run p50 / p95 (ms) | model time p50 / p95 (ms) | run ÷ model p50 / p95 | refused busy |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let chosen: Option<Vec<usize>> = std::env::var("BENCH_USERS")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|n| n.trim().parse()).collect())
        .transpose()
        .context("BENCH_USERS is a comma-separated list of user counts, such as 50,1000")?;
    let mut breakdowns = Vec::new();
    for (users_count, latency_ms, runs_each, in_step) in MODEL_PHASES {
        if chosen.as_ref().is_some_and(|chosen| !chosen.contains(&users_count)) {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let latency = latency_ms.to_string();
        let args = [
            "--rate-limit-per-minute",
            "1000000",
            "--model-latency-ms",
            &latency,
            "--max-active-runs",
            "4096",
        ];
        let (server, client) = start(tiers, dir.path(), &args).await?;
        let sessions = users(&client, users_count).await?;
        // Users do not act in step: each starts at its own moment within one run's model time,
        // so the server sees a steady 1 000 concurrent runs, not 1 000 arriving in the same
        // millisecond every second.
        let spread = if in_step {
            Duration::ZERO
        } else {
            Duration::from_millis(latency_ms * 2)
        };
        let label = if in_step {
            format!("{users_count} in step")
        } else {
            users_count.to_string()
        };
        // One run each first, so that the measured runs find the server warm.
        phase(&client, &sessions, users_count, 1, spread).await?;
        let pid = server.id().context("no pid")?;
        let (cpu_before, own_before) = (proc::cpu_ticks(pid)?, proc::cpu_ticks(std::process::id())?);
        let runs = phase(&client, &sessions, users_count, runs_each, spread).await?;
        let cpu = |before: u64, pid: u32| -> anyhow::Result<f64> {
            Ok((proc::cpu_ticks(pid)? - before) as f64 * 10.0 / runs.timings.len() as f64)
        };
        let cpu_per_run = (cpu(cpu_before, pid)?, cpu(own_before, std::process::id())?);
        let total: Vec<u64> = sorted(runs.timings.iter().map(|t| t.total_us));
        let model: Vec<u64> = sorted(runs.timings.iter().map(|t| t.timings.model_ms * 1000));
        let mut ratios: Vec<f64> = runs
            .timings
            .iter()
            .map(|t| t.total_us as f64 / (t.timings.model_ms as f64 * 1000.0).max(1.0))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = |p: f64| ratios[((ratios.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "| {label} | {latency_ms} ms | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} / {:.3} | {} |",
            total.len(),
            percentile(&total, 0.5),
            percentile(&total, 0.95),
            percentile(&model, 0.5),
            percentile(&model, 0.95),
            ratio(0.5),
            ratio(0.95),
            runs.busy
        );
        let log = event_log_figures(&client).await?;
        breakdowns.push((label, runs.timings, log, cpu_per_run));
        drop(server);
    }
    println!();
    println!("Where the time beyond the model went, p50 / p95 per run (ms): the final event's `timings`, and the rest");
    println!(
        "as the client saw it, outside the run (storing the message, then the final event, delivery, the client)."
    );
    println!();
    println!(
        "| users | queue | tools | store | engine and agents | outside the run | event log: events per batch, ms per batch (mean) | CPU ms per run: server, client |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, runs, log, (server_cpu, client_cpu)) in breakdowns {
        let log = log.map_or_else(
            || "n/a".to_owned(),
            |(per_batch, ms)| format!("{per_batch:.1}, {ms:.2}"),
        );
        let part = |f: &dyn Fn(&RunTimes) -> u64| {
            let values = sorted(runs.iter().map(|r| f(r) * 1000));
            format!("{:.1} / {:.1}", percentile(&values, 0.5), percentile(&values, 0.95))
        };
        let t = |r: &RunTimes| r.timings.clone();
        println!(
            "| {label} | {} | {} | {} | {} | {} | {log} | {server_cpu:.2}, {client_cpu:.2} |",
            part(&|r| t(r).queue_ms),
            part(&|r| t(r).tools_ms),
            part(&|r| t(r).store_ms),
            part(&|r| {
                let t = t(r);
                t.total_ms
                    .saturating_sub(t.model_ms + t.tools_ms + t.queue_ms + t.store_ms)
            }),
            part(&|r| (r.total_us / 1000).saturating_sub(t(r).total_ms)),
        );
    }
    Ok(())
}

/// The event log's batches, from the server's metrics: mean events per batch and mean ms per
/// batch (none from a server that does not export them).
async fn event_log_figures(client: &Client) -> anyhow::Result<Option<(f64, f64)>> {
    let text = client.metrics().await?;
    let value = |name: &str| -> Option<f64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let batches = match value("switchboard_event_batch_size_count") {
        Some(count) => count.max(1.0),
        None => return Ok(None),
    };
    Ok(Some((
        value("switchboard_event_batch_size_sum").unwrap_or(0.0) / batches,
        value("switchboard_event_batch_seconds_sum").unwrap_or(0.0) * 1000.0 / batches,
    )))
}

async fn main_async() -> anyhow::Result<()> {
    let tiers = Tiers::from_env();
    if std::env::args().any(|a| a == "model-latency") {
        return model_latency(&tiers).await;
    }
    let dir = tempfile::tempdir()?;
    let (server, client) = start(&tiers, dir.path(), &["--rate-limit-per-minute", "1000000"]).await?;
    let pid = server.id().context("no pid")?;
    let sessions = Arc::new(users(&client, IDLE_CONNECTIONS / CONNECTIONS_PER_USER).await?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "load benchmark: release server on loopback, offline model (no added latency), {cores} cores; \
         each connection is one user sending its next message when the last run ended \
         (after {}-{} ms when refused with server_busy)",
        BUSY_BACKOFF.as_millis() / 2,
        BUSY_BACKOFF.as_millis() * 3 / 2
    );
    println!("tiers: {}", tiers.describe());
    println!();
    ping_baseline(&client, &sessions, 100, 200).await?;
    println!(
        "| connections | runs | runs/s | to agent_started p50 / p99 (ms) | to final event p50 / p99 (ms) | refused busy |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (connections, runs_each) in PHASES {
        let runs = phase(&client, &sessions, connections, runs_each, Duration::ZERO).await?;
        let first: Vec<u64> = sorted(runs.timings.iter().map(|t| t.first_us));
        let last: Vec<u64> = sorted(runs.timings.iter().map(|t| t.total_us));
        println!(
            "| {connections} | {} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {} |",
            last.len(),
            last.len() as f64 / runs.elapsed.as_secs_f64(),
            percentile(&first, 0.5),
            percentile(&first, 0.99),
            percentile(&last, 0.5),
            percentile(&last, 0.99),
            runs.busy
        );
    }
    // Let the closed sockets of the phases go before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid)?;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(200));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..IDLE_CONNECTIONS {
        let (client, sessions, semaphore) = (client.clone(), Arc::clone(&sessions), Arc::clone(&semaphore));
        opening.spawn(async move {
            let _permit = semaphore.acquire().await?;
            client
                .connect_established(&sessions[i / CONNECTIONS_PER_USER].access_token, None)
                .await
        });
    }
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    while let Some(socket) = opening.join_next().await {
        idle.push(socket??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    println!();
    println!(
        "idle connections: {} open; server RSS {:.1} MiB before, {:.1} MiB after: {:.1} KiB per idle connection",
        idle.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / idle.len() as f64
    );
    drop(idle);
    drop(server);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(main_async())
}

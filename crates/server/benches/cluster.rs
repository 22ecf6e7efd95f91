//! One node against three, on one PostgreSQL and one Redis, release binaries on loopback, in
//! one run, at 10 and at 100 users: each user with one socket on every node (on one node, all
//! three on it), each sending `RUNS_EACH` messages in turn on its sockets, the next once every
//! socket has the last run's final event. The offline model answers at once (`--model-latency-ms 0`).
//!
//! Figures: runs per second; the time from sending `user_message` to the run's first event and
//! to its final event, on the socket it was sent on; and the added delivery latency: for each
//! event, its arrival on each other socket of the user minus its arrival on the socket of the
//! node that ran the run (one clock, this process). On three nodes those sockets are on the
//! other nodes (through Redis); on one node they are beside it, which is the baseline. Every
//! socket's stream is checked: consecutive seqs, each run's events the same on every socket,
//! every run's final event on every socket; any problem is reported.
//!
//! `scripts/bench-cluster` starts the tiers and runs it. By hand:
//! `SWITCHBOARD_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres` (a role that may
//! create databases: every phase gets a new database, so one phase never sees another's data,
//! and its nodes a cluster of their own) and `SWITCHBOARD_BENCH_REDIS_URL=redis://127.0.0.1:PORT/`,
//! then `cargo bench -p switchboard --bench cluster`. `BENCH_USERS=10,100` (a comma-separated list) sets the user counts.

#![allow(clippy::print_stdout)]

#[path = "support/proc.rs"]
mod proc;
#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::try_join_all;
use switchboard_client::{Client, Socket};
use switchboard_protocol::{ClientFrame, Control, Event, EventPayload, RunId, ServerFrame, UserMessage};
use tokio::process::Child;

/// User counts, each user with `SOCKETS_PER_USER` sockets. Each sends its next message at
/// once, so even the smaller keeps much of a small machine busy.
const USERS: [usize; 2] = [10, 100];
/// One on each of three nodes.
const SOCKETS_PER_USER: usize = 3;
/// Measured runs per user, sent in turn on its sockets.
const RUNS_EACH: usize = 12;
/// Runs per user before the measured ones (one per socket), so that the nodes are warm.
const WARM_UP_RUNS: usize = SOCKETS_PER_USER;
/// A run whose final event has not reached every socket by then is reported as lost; the log
/// watcher repairs a lost Redis message within about a second.
const RUN_DEADLINE: Duration = Duration::from_secs(10);
/// Nodes in the cluster, at each user count.
const NODES: [usize; 2] = [1, 3];

/// PostgreSQL and Redis, named by the environment.
struct Tiers {
    /// A PostgreSQL URL of a role that may create databases.
    database: String,
    /// The Redis every node of every phase uses (each phase's cluster has channels of its own).
    redis: String,
}

impl Tiers {
    fn from_env() -> anyhow::Result<Tiers> {
        let given = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{name} is not set; scripts/bench-cluster starts the tiers and sets it"))
        };
        Ok(Tiers {
            database: given("SWITCHBOARD_BENCH_DATABASE_URL")?,
            redis: given("SWITCHBOARD_BENCH_REDIS_URL")?,
        })
    }

    fn describe(&self) -> String {
        let server = switchboard_postgres::redacted(&self.database);
        let server = server.rsplit_once('/').map_or(server.as_str(), |(server, _)| server);
        // Only the place: a password may be in the userinfo.
        let redis = self
            .redis
            .split_once("://")
            .map_or(self.redis.as_str(), |(_, rest)| rest);
        let redis = redis.rsplit_once('@').map_or(redis, |(_, place)| place);
        let redis = redis.split('/').next().unwrap_or_default();
        format!("PostgreSQL ({server}, a new database for each phase), Redis ({redis}); the one node is on Redis too")
    }
}

/// The nodes of one phase, on one new database. Dropping it kills them.
struct Cluster {
    nodes: Vec<Node>,
}

struct Node {
    child: Child,
    client: Client,
    /// Its data folder, removed when the node is dropped.
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(tiers: &Tiers, count: usize) -> anyhow::Result<Cluster> {
        let database = switchboard_postgres::scratch_database(&tiers.database)
            .await
            .context("a new PostgreSQL database")?;
        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut cluster = Cluster { nodes: Vec::new() };
        for k in 1..=count {
            let dir = tempfile::tempdir()?;
            let name = format!("node-{k}");
            let args = [
                "--rate-limit-per-minute",
                "1000000",
                "--model-latency-ms",
                "0",
                "--max-active-runs",
                "4096",
                "--database-url",
                &database,
                "--redis-url",
                &tiers.redis,
                "--node-id",
                &name,
            ];
            let (child, client) = server::start_server(dir.path(), &args, &[("SWITCHBOARD_JWT_SECRET", &secret)])
                .await
                .with_context(|| format!("starting {name}"))?;
            cluster.nodes.push(Node {
                child,
                client,
                _dir: dir,
            });
        }
        Ok(cluster)
    }

    fn client(&self, socket: usize) -> &Client {
        &self.nodes[socket % self.nodes.len()].client
    }

    /// CPU time of every node together, in clock ticks of 10 ms.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        self.nodes
            .iter()
            .map(|node| proc::cpu_ticks(node.child.id().context("a node exited")?))
            .sum()
    }

    /// Events the nodes' connections got from other nodes: (through Redis, from the log).
    async fn other_node_deliveries(&self) -> anyhow::Result<(u64, u64)> {
        let mut total = (0, 0);
        for Node { client, .. } in &self.nodes {
            let text = client.metrics().await?;
            let count = |via: &str| {
                let name = format!("switchboard_from_other_nodes_total{{via=\"{via}\"}} ");
                text.lines()
                    .find_map(|line| line.strip_prefix(&name))
                    .and_then(|value| value.trim().parse::<f64>().ok())
                    .map_or(0, |value| value as u64)
            };
            total.0 += count("redis");
            total.1 += count("log");
        }
        Ok(total)
    }
}

/// One event as one socket got it.
struct Arrival {
    seq: u64,
    run: RunId,
    at: Instant,
}

/// What one socket got of one run, up to its final event.
#[derive(Default)]
struct Seen {
    events: Vec<Arrival>,
    /// The run `message_accepted` named (on the socket the message was sent on).
    accepted: Option<RunId>,
}

/// One run: where it was sent, when, and what each socket got.
struct RunRecord {
    sender: usize,
    sent: Instant,
    seen: Vec<Seen>,
}

fn is_final(event: &Event) -> bool {
    matches!(&event.payload, EventPayload::AgentCompleted(done) if done.is_final)
}

/// Reads `socket` up to the next final event. A user has one run at a time, so everything
/// before it belongs to that run (checked afterwards).
async fn read_run(socket: &mut Socket) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    loop {
        let frame = socket.next_frame().await?.context("the socket closed")?;
        let at = Instant::now();
        match frame {
            ServerFrame::Event(event) => {
                let last = is_final(&event);
                seen.events.push(Arrival {
                    seq: event.seq.get(),
                    run: event.run_id,
                    at,
                });
                if last {
                    return Ok(seen);
                }
            }
            ServerFrame::Control(control) => match control.body {
                Control::MessageAccepted(accepted) => seen.accepted = Some(accepted.run_id),
                Control::Error(error) => bail!("refused ({:?}): {}", error.code, error.message),
                _ => {}
            },
        }
    }
}

/// Sends one message on `sockets[sender]` and reads every socket up to the run's final event.
async fn one_run(sockets: &mut [Socket], sender: usize) -> anyhow::Result<RunRecord> {
    let message = ClientFrame::UserMessage(UserMessage {
        text: "How can we cut our LLM costs on gpt-4o?".into(),
        thread_id: None,
        client_message_id: None,
    });
    let sent = Instant::now();
    sockets[sender].send(&message).await?;
    let reads = try_join_all(sockets.iter_mut().map(read_run));
    let seen = tokio::time::timeout(RUN_DEADLINE, reads)
        .await
        .with_context(|| format!("not every socket had the run's final event within {RUN_DEADLINE:?}"))??;
    Ok(RunRecord { sender, sent, seen })
}

/// What one user's sockets got over the phase.
#[derive(Default)]
struct UserRuns {
    /// The measured runs.
    runs: Vec<RunRecord>,
    /// Every seq each socket got, warm-up included, in order.
    streams: Vec<Vec<u64>>,
    problems: Vec<String>,
}

/// `runs` runs of one user, in turn on its sockets; `first` numbers them. A problem ends them.
async fn runs_of(user: usize, sockets: &mut [Socket], first: usize, runs: usize, out: &mut UserRuns, keep: bool) {
    for index in first..first + runs {
        let sender = index % sockets.len();
        match one_run(sockets, sender).await {
            Ok(record) => {
                for (stream, seen) in out.streams.iter_mut().zip(&record.seen) {
                    stream.extend(seen.events.iter().map(|e| e.seq));
                }
                if keep {
                    out.runs.push(record);
                }
            }
            Err(error) => {
                out.problems
                    .push(format!("user {user}, run {index} (sent on socket {sender}): {error:#}"));
                return;
            }
        }
    }
}

/// What one phase measured.
struct Phase {
    nodes: usize,
    users: Vec<UserRuns>,
    /// This process's CPU over the measured runs, in ms.
    client_cpu_ms: f64,
    elapsed: Duration,
    /// Server CPU over the measured runs, all nodes, in ms.
    cpu_ms: f64,
    /// Events from other nodes during the measured runs: (through Redis, from the log).
    from_other_nodes: (u64, u64),
}

async fn phase(tiers: &Tiers, nodes: usize, users: usize) -> anyhow::Result<Phase> {
    let cluster = Cluster::start(tiers, nodes).await?;
    let mut tasks = tokio::task::JoinSet::new();
    // Everyone warms up, then all start the measured runs together.
    let start = Arc::new(tokio::sync::Barrier::new(users + 1));
    for user in 0..users {
        let session = cluster
            .client(0)
            .dev_login(Some(&format!("cluster{user}@bench.example")))
            .await?;
        let mut sockets = Vec::with_capacity(SOCKETS_PER_USER);
        for socket in 0..SOCKETS_PER_USER {
            sockets.push(
                cluster
                    .client(socket)
                    .connect_established(&session.access_token, None)
                    .await?,
            );
        }
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            let mut out = UserRuns {
                streams: vec![Vec::new(); SOCKETS_PER_USER],
                ..UserRuns::default()
            };
            runs_of(user, &mut sockets, 0, WARM_UP_RUNS, &mut out, false).await;
            start.wait().await;
            if out.problems.is_empty() {
                runs_of(user, &mut sockets, WARM_UP_RUNS, RUNS_EACH, &mut out, true).await;
            }
            for socket in sockets {
                socket.close().await.ok();
            }
            out
        });
    }
    start.wait().await;
    let via_before = cluster.other_node_deliveries().await?;
    let (cpu_before, own_before) = (cluster.cpu_ticks()?, proc::cpu_ticks(std::process::id())?);
    let started = Instant::now();
    let mut results = Vec::with_capacity(users);
    while let Some(result) = tasks.join_next().await {
        results.push(result?);
    }
    let elapsed = started.elapsed();
    let (cpu_after, own_after) = (cluster.cpu_ticks()?, proc::cpu_ticks(std::process::id())?);
    let via_after = cluster.other_node_deliveries().await?;
    Ok(Phase {
        nodes,
        users: results,
        elapsed,
        cpu_ms: (cpu_after - cpu_before) as f64 * 10.0,
        client_cpu_ms: (own_after - own_before) as f64 * 10.0,
        from_other_nodes: (via_after.0 - via_before.0, via_after.1 - via_before.1),
    })
}

fn signed_micros(at: Instant, reference: Instant) -> i64 {
    if at >= reference {
        (at - reference).as_micros() as i64
    } else {
        -((reference - at).as_micros() as i64)
    }
}

fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

fn ms<T: Into<f64>>(micros: Option<T>) -> String {
    micros.map_or_else(|| "n/a".to_owned(), |m| format!("{:.2}", m.into() / 1000.0))
}

/// The figures of one phase, and the problems its streams showed.
struct Figures {
    runs: usize,
    first_us: Vec<u32>,
    final_us: Vec<u32>,
    /// Other socket minus the running node's socket, per event, µs.
    added_us: Vec<i64>,
    problems: Vec<String>,
}

fn figures(phase: &Phase) -> Figures {
    let mut figures = Figures {
        runs: 0,
        first_us: Vec::new(),
        final_us: Vec::new(),
        added_us: Vec::new(),
        problems: Vec::new(),
    };
    for (user, runs) in phase.users.iter().enumerate() {
        figures.problems.extend(runs.problems.iter().cloned());
        for (socket, stream) in runs.streams.iter().enumerate() {
            if let Some(at) = stream.windows(2).position(|w| w[1] != w[0] + 1) {
                figures.problems.push(format!(
                    "user {user}, socket {socket}: seq {} followed by {}",
                    stream[at],
                    stream[at + 1]
                ));
            }
        }
        for run in &runs.runs {
            figures.runs += 1;
            let own = &run.seen[run.sender];
            let Some(accepted) = &own.accepted else {
                figures
                    .problems
                    .push(format!("user {user}: a run without message_accepted"));
                continue;
            };
            if let Some(first) = own.events.first() {
                figures.first_us.push((first.at - run.sent).as_micros() as u32);
            }
            if let Some(last) = own.events.last() {
                figures.final_us.push((last.at - run.sent).as_micros() as u32);
            }
            for (socket, seen) in run.seen.iter().enumerate() {
                if let Some(stray) = seen.events.iter().find(|e| e.run != *accepted) {
                    figures.problems.push(format!(
                        "user {user}, socket {socket}: an event of {} amid the events of {accepted}",
                        stray.run
                    ));
                }
                let seqs = |seen: &Seen| seen.events.iter().map(|e| e.seq).collect::<Vec<_>>();
                if seqs(seen) != seqs(own) {
                    figures.problems.push(format!(
                        "user {user}, socket {socket}: run {accepted} as seqs {:?}, on the socket it was sent on {:?}",
                        seqs(seen),
                        seqs(own)
                    ));
                    continue;
                }
                if socket != run.sender {
                    figures.added_us.extend(
                        seen.events
                            .iter()
                            .zip(&own.events)
                            .map(|(other, own)| signed_micros(other.at, own.at)),
                    );
                }
            }
        }
    }
    figures.first_us.sort_unstable();
    figures.final_us.sort_unstable();
    figures.added_us.sort_unstable();
    figures
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores ({model})")
}

async fn main_async() -> anyhow::Result<()> {
    let tiers = Tiers::from_env()?;
    let user_counts: Vec<usize> = match std::env::var("BENCH_USERS").ok().filter(|v| !v.is_empty()) {
        Some(list) => list
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()
            .context("BENCH_USERS is a comma-separated list of user counts, such as 10,100")?,
        None => USERS.to_vec(),
    };
    println!(
        "cluster benchmark: release nodes on loopback, offline model (no added latency); one machine, {}, \
         shared by the nodes, PostgreSQL, Redis and this client",
        machine()
    );
    println!("tiers: {}", tiers.describe());
    println!(
        "Each user has {SOCKETS_PER_USER} sockets (one on each node; on one node all {SOCKETS_PER_USER} on it), \
         each sending {RUNS_EACH} messages in turn on its sockets, the next once every socket has the last run's final \
         event ({WARM_UP_RUNS} runs each before, not measured)"
    );
    println!();
    let mut phases = Vec::new();
    for &users in &user_counts {
        for nodes in NODES {
            let phase = phase(&tiers, nodes, users).await?;
            let figures = figures(&phase);
            phases.push((phase, figures));
        }
    }
    println!(
        "| users | nodes | runs | runs/s | to first event p50 / p99 (ms) | to final event p50 / p99 (ms) | CPU ms per run: all nodes, client |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (phase, f) in &phases {
        println!(
            "| {} | {} | {} | {:.0} | {} / {} | {} / {} | {:.2}, {:.2} |",
            phase.users.len(),
            phase.nodes,
            f.runs,
            f.runs as f64 / phase.elapsed.as_secs_f64(),
            ms(percentile(&f.first_us, 0.5)),
            ms(percentile(&f.first_us, 0.99)),
            ms(percentile(&f.final_us, 0.5)),
            ms(percentile(&f.final_us, 0.99)),
            phase.cpu_ms / f.runs.max(1) as f64,
            phase.client_cpu_ms / f.runs.max(1) as f64
        );
    }
    println!();
    println!(
        "Added delivery latency: each event's arrival on another socket of its user minus its arrival on the socket \
         of the node that ran the run (ms; on one node, between sockets of that node: the baseline)."
    );
    println!();
    println!(
        "| users | nodes | events compared | p50 | p99 | max | events from other nodes: through Redis, from the log | streams |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (phase, f) in &phases {
        let sockets = phase.users.len() * SOCKETS_PER_USER;
        let streams = if f.problems.is_empty() {
            format!("{sockets} sockets gapless, every run complete on every socket")
        } else {
            format!("{} problems (below)", f.problems.len())
        };
        let label = if phase.nodes == 1 {
            "1 (baseline)".to_owned()
        } else {
            phase.nodes.to_string()
        };
        println!(
            "| {} | {label} | {} | {} | {} | {} | {}, {} | {streams} |",
            phase.users.len(),
            f.added_us.len(),
            ms(percentile(&f.added_us, 0.5).map(|v| v as f64)),
            ms(percentile(&f.added_us, 0.99).map(|v| v as f64)),
            ms(f.added_us.last().map(|&v| v as f64)),
            phase.from_other_nodes.0,
            phase.from_other_nodes.1,
        );
    }
    println!();
    println!(
        "\"From the log\": events that a node's connections read from the store because its once-a-second watcher \
         saw the log further than Redis had brought (a Redis message late or lost); the checks above find none twice."
    );
    let mut any = false;
    for (phase, f) in &phases {
        for problem in f.problems.iter().take(20) {
            if !any {
                println!();
                println!("Problems:");
                any = true;
            }
            println!("- {} users, {} node(s): {problem}", phase.users.len(), phase.nodes);
        }
        if f.problems.len() > 20 {
            println!(
                "- {} users, {} node(s): and {} more",
                phase.users.len(),
                phase.nodes,
                f.problems.len() - 20
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(main_async())
}

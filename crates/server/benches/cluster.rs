//! One node against three, on one PostgreSQL and one Redis, release binaries on loopback, in
//! one run, at 10 and at 100 users: each user with one socket on every node (on one node, all
//! three on it), sending its messages in turn on its sockets, one run at a time. The offline
//! model answers at once (`--model-latency-ms 0`).
//!
//! Two loads at each user count and node count, each phase on nodes of its own:
//! - **Saturated** (closed loop): each user sends `RUNS_EACH` messages, the next the moment every
//!   socket has the last run's final event. This gives runs per second, the most the machine
//!   does; its latencies are mostly waiting for a core (the nodes, PostgreSQL, Redis and this
//!   client share the machine's cores), not the path's.
//! - **Paced** (open loop): the users together send at a fixed offered rate, evenly spaced (user
//!   `u` of `n` sends its `k`-th message at `start + (k * n + u) / rate`, whether or not the
//!   others' runs have ended), for at least `PACED_FOR`. The rate is `BENCH_RATE`: a share of
//!   the saturated runs per second of the three-node phase at the same user count (`50%`, the
//!   default), used for the one node as well, so that both face the same offered load; or a
//!   fixed number of runs per second (`400`), which is what to use when comparing two builds
//!   (a faster build must not get a higher load); or `off`. Evenly spaced arrivals, not
//!   Poisson: the figure is the path's latency at that load, not the queueing of bursts. A user
//!   still has one run at a time: a message due while its last run is going is sent when it
//!   ends, and counted late (the offered and achieved rates and the p99 of how late the sends
//!   were say whether the load was held).
//!
//! Figures of every phase: runs per second (offered and achieved when paced); the time from
//! sending `user_message` to the run's first event and to its final event, on the socket it was
//! sent on; the CPU time per run of all nodes together and of this process, and how busy the
//! machine's cores were (all processes, from `/proc/stat`); and the added delivery latency: for
//! each event, its arrival on each other socket of the user minus its arrival on the socket of
//! the node that ran the run (one clock, this process). On three nodes those sockets are on the
//! other nodes (through Redis); on one node they are beside it, which is the baseline. Every
//! socket's stream is checked: consecutive seqs, each run's events the same on every socket,
//! every run's final event on every socket; any problem is reported.
//!
//! Then **stops** at each node count: `STOP_USERS` users at once, each `STOPS_EACH` times a run
//! (its model call taking a minute) started on the first node and stopped from another, by
//! `stop_agent` on a socket of the second node and by `POST /api/runs/{id}/cancel` on the third
//! (on one node, from that node: the baseline), timed from the request to the run's final event
//! (`cancelled`) on a socket of the node that asked: the bound is 100 ms on loopback.
//!
//! `scripts/bench-cluster` starts the tiers and runs it. By hand:
//! `SWITCHBOARD_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres` (a role that may
//! create databases: every phase gets a new database, so one phase never sees another's data,
//! and its nodes a cluster of their own) and `SWITCHBOARD_BENCH_REDIS_URL=redis://127.0.0.1:PORT/`,
//! then `cargo bench -p switchboard --bench cluster`. `BENCH_USERS=10,100` (a comma-separated
//! list) sets the user counts, `BENCH_NODES=1,3` the node counts, `BENCH_RATE` the paced loads
//! (a list too: `25%,50%,75%` gives a paced phase at each, in order).

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
use switchboard_protocol::{
    ClientFrame, Control, Event, EventPayload, RunId, RunStatus, ServerFrame, StopAgent, UserMessage,
};
use tokio::process::Child;

/// User counts, each user with `SOCKETS_PER_USER` sockets. Saturated, each sends its next
/// message at once, so even the smaller keeps much of a small machine busy.
const USERS: [usize; 2] = [10, 100];
/// One on each of three nodes.
const SOCKETS_PER_USER: usize = 3;
/// Measured runs per user, sent in turn on its sockets (paced: at least as many).
const RUNS_EACH: usize = 12;
/// A paced phase offers its rate for at least this long (more runs per user than `RUNS_EACH`
/// when the rate asks for it), so that its p99 rests on thousands of events.
const PACED_FOR: Duration = Duration::from_secs(4);
/// The default paced load: this share of the three-node phase's saturated runs per second.
const PACED_SHARE: f64 = 0.5;
/// A send this much after its time is counted late: more than a timer's tick.
const LATE: Duration = Duration::from_millis(2);
/// Runs per user before the measured ones (one per socket), so that the nodes are warm.
const WARM_UP_RUNS: usize = SOCKETS_PER_USER;
/// A run whose final event has not reached every socket by then is reported as lost; the log
/// watcher repairs a lost Redis message within about a second.
const RUN_DEADLINE: Duration = Duration::from_secs(10);
/// Nodes in the cluster, at each user count.
const NODES: [usize; 2] = [1, 3];
/// Users of a stop phase, at once.
const STOP_USERS: usize = 20;
/// Runs each user of a stop phase has stopped in each way.
const STOPS_EACH: usize = 5;
/// The offline model's time per call in a stop phase: every run is still going when stopped.
const STOP_MODEL_LATENCY_MS: &str = "60000";

/// How the users send.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Each user's next message the moment its last run has ended everywhere.
    Saturated,
    /// The users together offer `rate` runs per second, evenly spaced.
    Paced { rate: f64 },
}

/// `BENCH_RATE`: the paced load.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    /// A share of the saturated runs per second of the largest cluster at the same user count.
    Share(f64),
    /// Runs per second.
    Fixed(f64),
    /// No paced phases.
    Off,
}

impl Rate {
    fn parse(text: &str) -> anyhow::Result<Rate> {
        let text = text.trim();
        let invalid = || {
            anyhow::anyhow!(
                "BENCH_RATE is a share of the saturated runs/s such as 50%, a rate in runs/s such as 400, or off; not {text:?}"
            )
        };
        if text == "off" {
            return Ok(Rate::Off);
        }
        if let Some(share) = text.strip_suffix('%') {
            let share: f64 = share.trim().parse().map_err(|_| invalid())?;
            return if share > 0.0 && share <= 100.0 {
                Ok(Rate::Share(share / 100.0))
            } else {
                Err(invalid())
            };
        }
        let rate: f64 = text.parse().map_err(|_| invalid())?;
        if rate > 0.0 && rate.is_finite() {
            Ok(Rate::Fixed(rate))
        } else {
            Err(invalid())
        }
    }

    fn describe(self) -> String {
        match self {
            Rate::Share(share) => format!(
                "{:.0} % of the saturated runs/s of the largest cluster at the same user count, for one node too",
                share * 100.0
            ),
            Rate::Fixed(rate) => format!("{rate:.0} runs/s at every user count and node count"),
            Rate::Off => "none".to_owned(),
        }
    }
}

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
    /// `count` nodes whose offline model takes `model_latency_ms` per call.
    async fn start(tiers: &Tiers, count: usize, model_latency_ms: &str) -> anyhow::Result<Cluster> {
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
                model_latency_ms,
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

    /// Signs `email` in (dev login) and opens its `SOCKETS_PER_USER` sockets, socket `k` on
    /// node `k` (modulo the nodes).
    async fn user(&self, email: &str) -> anyhow::Result<(switchboard_client::Session, Vec<Socket>)> {
        let session = self.client(0).dev_login(Some(email)).await?;
        let mut sockets = Vec::with_capacity(SOCKETS_PER_USER);
        for socket in 0..SOCKETS_PER_USER {
            sockets.push(
                self.client(socket)
                    .connect_established(&session.access_token, None)
                    .await?,
            );
        }
        Ok((session, sockets))
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
    /// How the run ended, as its final event says.
    status: Option<RunStatus>,
}

/// One run: where it was sent, when (and when it was due, paced), and what each socket got.
struct RunRecord {
    sender: usize,
    sent: Instant,
    due: Option<Instant>,
    seen: Vec<Seen>,
}

fn is_final(event: &Event) -> bool {
    matches!(&event.payload, EventPayload::AgentCompleted(done) if done.is_final)
}

/// The message every run of the benchmark starts from.
fn message() -> ClientFrame {
    ClientFrame::UserMessage(UserMessage {
        text: "How can we cut our LLM costs on gpt-4o?".into(),
        thread_id: None,
        client_message_id: None,
    })
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
                if let EventPayload::AgentCompleted(done) = &event.payload
                    && last
                {
                    seen.status = Some(done.status);
                }
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
async fn one_run(sockets: &mut [Socket], sender: usize, due: Option<Instant>) -> anyhow::Result<RunRecord> {
    let sent = Instant::now();
    sockets[sender].send(&message()).await?;
    let reads = try_join_all(sockets.iter_mut().map(read_run));
    let seen = tokio::time::timeout(RUN_DEADLINE, reads)
        .await
        .with_context(|| format!("not every socket had the run's final event within {RUN_DEADLINE:?}"))??;
    Ok(RunRecord {
        sender,
        sent,
        due,
        seen,
    })
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

/// When a paced user sends: its `k`-th message at `start + offset + k * period`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    offset: Duration,
    period: Duration,
}

/// `runs` runs of one user, in turn on its sockets; `first` numbers them. Without a schedule
/// each is sent once the last has ended; with one, at its time (or as soon after as the last
/// has ended). A problem ends them.
async fn runs_of(
    user: usize,
    sockets: &mut [Socket],
    (first, runs): (usize, usize),
    schedule: Option<Schedule>,
    out: &mut UserRuns,
    keep: bool,
) {
    for index in first..first + runs {
        let sender = index % sockets.len();
        let due = schedule.map(|s| s.start + s.offset + s.period * (index - first) as u32);
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        match one_run(sockets, sender, due).await {
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
    load: Load,
    users: Vec<UserRuns>,
    /// This process's CPU over the measured runs, in ms.
    client_cpu_ms: f64,
    elapsed: Duration,
    /// Server CPU over the measured runs, all nodes, in ms.
    cpu_ms: f64,
    /// How busy the machine's cores were over the measured runs (every process), 0 to 1.
    busy: f64,
    /// Events from other nodes during the measured runs: (through Redis, from the log).
    from_other_nodes: (u64, u64),
}

/// The machine's CPU time since boot, from `/proc/stat`: (busy, all), in clock ticks.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((all - idle, all))
}

async fn phase(tiers: &Tiers, nodes: usize, users: usize, load: Load) -> anyhow::Result<Phase> {
    let cluster = Cluster::start(tiers, nodes, "0").await?;
    let mut tasks = tokio::task::JoinSet::new();
    // Everyone warms up, then all start the measured runs together (paced: at the start sent).
    let start = Arc::new(tokio::sync::Barrier::new(users + 1));
    let (start_at, paced_start) = tokio::sync::watch::channel(None::<Instant>);
    let runs_each = match load {
        Load::Saturated => RUNS_EACH,
        Load::Paced { rate } => RUNS_EACH.max((PACED_FOR.as_secs_f64() * rate / users as f64).ceil() as usize),
    };
    for user in 0..users {
        let (_, mut sockets) = cluster.user(&format!("cluster{user}@bench.example")).await?;
        let start = Arc::clone(&start);
        let mut paced_start = paced_start.clone();
        tasks.spawn(async move {
            let mut out = UserRuns {
                streams: vec![Vec::new(); SOCKETS_PER_USER],
                ..UserRuns::default()
            };
            runs_of(user, &mut sockets, (0, WARM_UP_RUNS), None, &mut out, false).await;
            start.wait().await;
            let schedule = match load {
                Load::Saturated => None,
                Load::Paced { rate } => {
                    let start = paced_start.wait_for(Option::is_some).await.ok().and_then(|s| *s);
                    start.map(|start| Schedule {
                        start,
                        offset: Duration::from_secs_f64(user as f64 / rate),
                        period: Duration::from_secs_f64(users as f64 / rate),
                    })
                }
            };
            if out.problems.is_empty() {
                runs_of(user, &mut sockets, (WARM_UP_RUNS, runs_each), schedule, &mut out, true).await;
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
    let machine_before = machine_ticks()?;
    let started = Instant::now();
    // Unused by a saturated phase's users, which do not wait for it.
    let _ = start_at.send(Some(started));
    let mut results = Vec::with_capacity(users);
    while let Some(result) = tasks.join_next().await {
        results.push(result?);
    }
    let elapsed = started.elapsed();
    let (cpu_after, own_after) = (cluster.cpu_ticks()?, proc::cpu_ticks(std::process::id())?);
    let machine_after = machine_ticks()?;
    let via_after = cluster.other_node_deliveries().await?;
    let (busy, all) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    Ok(Phase {
        nodes,
        load,
        busy: busy as f64 / all.max(1) as f64,
        users: results,
        elapsed,
        cpu_ms: (cpu_after - cpu_before) as f64 * 10.0,
        client_cpu_ms: (own_after - own_before) as f64 * 10.0,
        from_other_nodes: (via_after.0 - via_before.0, via_after.1 - via_before.1),
    })
}

/// How a run is stopped from another node.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// `stop_agent` on a socket of the second node.
    Frame,
    /// `POST /api/runs/{id}/cancel` on the third node.
    Route,
}

impl Stop {
    const ALL: [Stop; 2] = [Stop::Frame, Stop::Route];

    /// The socket that asks (through its node), and watches for the run's end, on `nodes`
    /// nodes: socket `k` is on node `k` for `k` below `nodes`, so this one is on another node than
    /// the run's (node 0), except on one node (the baseline).
    fn socket(self, nodes: usize) -> usize {
        let wanted = match self {
            Stop::Frame => 1,
            Stop::Route => 2,
        };
        wanted.min(nodes - 1)
    }

    fn label(self) -> &'static str {
        match self {
            Stop::Frame => "`stop_agent` on a socket",
            Stop::Route => "`POST /api/runs/{id}/cancel`",
        }
    }
}

/// What one stop phase measured: per way, from the request to the final event on the asking
/// node's socket, µs (sorted); and what went wrong.
struct StopPhase {
    nodes: usize,
    took_us: Vec<(Stop, Vec<u32>)>,
    problems: Vec<String>,
}

/// Reads `socket` up to `message_accepted` and the first event of that run: the run is going.
async fn started(socket: &mut Socket) -> anyhow::Result<RunId> {
    let mut accepted = None;
    loop {
        match socket.next_frame().await?.context("the socket closed")? {
            ServerFrame::Control(control) => match control.body {
                Control::MessageAccepted(message) => accepted = Some(message.run_id),
                Control::Error(error) => bail!("refused ({:?}): {}", error.code, error.message),
                _ => {}
            },
            ServerFrame::Event(event) => match &accepted {
                Some(run) if event.run_id == *run => return Ok(event.run_id),
                Some(run) => bail!("an event of {} while {run} was starting", event.run_id),
                None => bail!("an event of {} before message_accepted", event.run_id),
            },
        }
    }
}

/// One run started on the first node (`sockets[0]`) and stopped `way`; how long from the
/// request to its final event on the asking node's socket. Every socket must see it end
/// `cancelled`.
async fn stop_one(sockets: &mut [Socket], nodes: usize, route: &Client, token: &str, way: Stop) -> anyhow::Result<u32> {
    sockets[0].send(&message()).await?;
    let run = tokio::time::timeout(RUN_DEADLINE, started(&mut sockets[0]))
        .await
        .with_context(|| format!("the run did not start within {RUN_DEADLINE:?}"))??;
    let asked = Instant::now();
    match way {
        Stop::Frame => {
            sockets[way.socket(nodes)]
                .send(&ClientFrame::StopAgent(StopAgent { run_id: run.clone() }))
                .await?;
        }
        Stop::Route => {
            let (status, body) = route
                .post(&format!("/api/runs/{run}/cancel"), Some(token), &serde_json::json!({}))
                .await?;
            if status != 202 {
                bail!("POST /api/runs/{run}/cancel answered {status}: {body}");
            }
        }
    }
    let seen = tokio::time::timeout(RUN_DEADLINE, try_join_all(sockets.iter_mut().map(read_run)))
        .await
        .with_context(|| format!("not every socket had the stopped run's final event within {RUN_DEADLINE:?}"))??;
    for (socket, seen) in seen.iter().enumerate() {
        if let Some(stray) = seen.events.iter().find(|e| e.run != run) {
            bail!("socket {socket}: an event of {} amid those of {run}", stray.run);
        }
        if seen.status != Some(RunStatus::Cancelled) {
            bail!("socket {socket}: {run} ended {:?}, not cancelled", seen.status);
        }
    }
    let end = seen[way.socket(nodes)].events.last().context("no final event")?;
    Ok((end.at - asked).as_micros() as u32)
}

async fn stop_phase(tiers: &Tiers, nodes: usize) -> anyhow::Result<StopPhase> {
    let cluster = Cluster::start(tiers, nodes, STOP_MODEL_LATENCY_MS).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..STOP_USERS {
        let (session, mut sockets) = cluster.user(&format!("stop{user}@bench.example")).await?;
        let route = cluster.client(Stop::Route.socket(nodes)).clone();
        tasks.spawn(async move {
            let mut took: Vec<(Stop, u32)> = Vec::new();
            let mut problem = None;
            'runs: for _ in 0..STOPS_EACH {
                for way in Stop::ALL {
                    match stop_one(&mut sockets, nodes, &route, &session.access_token, way).await {
                        Ok(us) => took.push((way, us)),
                        Err(error) => {
                            problem = Some(format!("user {user}, stopped by {}: {error:#}", way.label()));
                            break 'runs;
                        }
                    }
                }
            }
            for socket in sockets {
                socket.close().await.ok();
            }
            (took, problem)
        });
    }
    let mut phase = StopPhase {
        nodes,
        took_us: Stop::ALL.iter().map(|&way| (way, Vec::new())).collect(),
        problems: Vec::new(),
    };
    while let Some(result) = tasks.join_next().await {
        let (took, problem) = result?;
        for (way, us) in took {
            if let Some((_, all)) = phase.took_us.iter_mut().find(|(w, _)| *w == way) {
                all.push(us);
            }
        }
        phase.problems.extend(problem);
    }
    for (_, all) in &mut phase.took_us {
        all.sort_unstable();
    }
    Ok(phase)
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
    /// Paced: how late each send was, µs.
    late_us: Vec<u32>,
    problems: Vec<String>,
}

fn figures(phase: &Phase) -> Figures {
    let mut figures = Figures {
        runs: 0,
        first_us: Vec::new(),
        final_us: Vec::new(),
        added_us: Vec::new(),
        late_us: Vec::new(),
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
            if let Some(due) = run.due {
                figures
                    .late_us
                    .push(run.sent.saturating_duration_since(due).as_micros() as u32);
            }
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
    figures.late_us.sort_unstable();
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

/// A comma-separated list of counts in the environment variable `name`, or `default`.
fn counts(name: &str, default: &[usize]) -> anyhow::Result<Vec<usize>> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        Some(list) => {
            let counts: Vec<usize> = list
                .split(',')
                .map(|n| n.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{name} is a comma-separated list of counts, such as 1,3; not {list:?}"))?;
            if counts.contains(&0) {
                bail!("{name} counts from 1; not {list:?}");
            }
            Ok(counts)
        }
        None => Ok(default.to_vec()),
    }
}

fn load_label(load: Load) -> String {
    match load {
        Load::Saturated => "saturated".to_owned(),
        Load::Paced { rate } => format!("paced {rate:.0}/s"),
    }
}

async fn main_async() -> anyhow::Result<()> {
    let tiers = Tiers::from_env()?;
    let user_counts = counts("BENCH_USERS", &USERS)?;
    let node_counts = counts("BENCH_NODES", &NODES)?;
    // A comma-separated list: a paced phase at each rate, in order (`off` alone: none).
    let rates = match std::env::var("BENCH_RATE").ok().filter(|v| !v.is_empty()) {
        Some(text) => text.split(',').map(Rate::parse).collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![Rate::Share(PACED_SHARE)],
    };
    if rates.len() > 1 && rates.contains(&Rate::Off) {
        anyhow::bail!("BENCH_RATE is `off` alone, or a list of rates without `off`");
    }
    println!(
        "cluster benchmark: release nodes on loopback, offline model (no added latency); one machine, {}, \
         shared by the nodes, PostgreSQL, Redis and this client",
        machine()
    );
    println!("tiers: {}", tiers.describe());
    println!(
        "Each user has {SOCKETS_PER_USER} sockets (one on each node; on one node all {SOCKETS_PER_USER} on it) and \
         sends its messages in turn on them, one run at a time ({WARM_UP_RUNS} runs each before, not measured). \
         Saturated: {RUNS_EACH} messages each, the next once every socket has the last run's final event. \
         Paced: the users together offer a fixed rate, evenly spaced, for at least {} s ({}).",
        PACED_FOR.as_secs(),
        rates
            .iter()
            .map(|rate| rate.describe())
            .collect::<Vec<_>>()
            .join("; then ")
    );
    println!();
    let mut phases = Vec::new();
    for &users in &user_counts {
        let mut saturated_rate = None;
        for &nodes in &node_counts {
            let phase = phase(&tiers, nodes, users, Load::Saturated).await?;
            let figures = figures(&phase);
            if nodes == *node_counts.iter().max().unwrap_or(&nodes) {
                saturated_rate = Some(figures.runs as f64 / phase.elapsed.as_secs_f64());
            }
            phases.push((phase, figures));
        }
        for &rate in &rates {
            let rate = match (rate, saturated_rate) {
                (Rate::Off, _) => continue,
                (Rate::Fixed(rate), _) => rate,
                (Rate::Share(share), Some(saturated)) => share * saturated,
                (Rate::Share(_), None) => continue,
            };
            for &nodes in &node_counts {
                let phase = phase(&tiers, nodes, users, Load::Paced { rate }).await?;
                let figures = figures(&phase);
                phases.push((phase, figures));
            }
        }
    }
    let mut stops = Vec::new();
    for &nodes in &node_counts {
        stops.push(stop_phase(&tiers, nodes).await?);
    }
    println!(
        "| users | nodes | load | runs | runs/s | sends late (> {} ms), p99 (ms) | to first event p50 / p99 (ms) | \
         to final event p50 / p99 (ms) | CPU ms per run: all nodes, client | cores busy |",
        LATE.as_millis()
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (phase, f) in &phases {
        let achieved = f.runs as f64 / phase.elapsed.as_secs_f64();
        let (runs_per_s, late) = match phase.load {
            Load::Saturated => (format!("{achieved:.0}"), "-".to_owned()),
            Load::Paced { rate } => (
                format!("{achieved:.0} of {rate:.0} offered"),
                format!(
                    "{}, {}",
                    f.late_us
                        .iter()
                        .filter(|&&late| u128::from(late) > LATE.as_micros())
                        .count(),
                    ms(percentile(&f.late_us, 0.99))
                ),
            ),
        };
        println!(
            "| {} | {} | {} | {} | {runs_per_s} | {late} | {} / {} | {} / {} | {:.2}, {:.2} | {:.0} % |",
            phase.users.len(),
            phase.nodes,
            load_label(phase.load),
            f.runs,
            ms(percentile(&f.first_us, 0.5)),
            ms(percentile(&f.first_us, 0.99)),
            ms(percentile(&f.final_us, 0.5)),
            ms(percentile(&f.final_us, 0.99)),
            phase.cpu_ms / f.runs.max(1) as f64,
            phase.client_cpu_ms / f.runs.max(1) as f64,
            phase.busy * 100.0
        );
    }
    println!();
    println!(
        "Added delivery latency: each event's arrival on another socket of its user minus its arrival on the socket \
         of the node that ran the run (ms; on one node, between sockets of that node: the baseline)."
    );
    println!();
    println!(
        "| users | nodes | load | events compared | p50 | p99 | max | events from other nodes: through Redis, from the log | streams |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |");
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
            "| {} | {label} | {} | {} | {} | {} | {} | {}, {} | {streams} |",
            phase.users.len(),
            load_label(phase.load),
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
         saw the log further than Redis had brought (a Redis message late or lost); the checks above find none twice. \
         \"Sends late\": how long after its time a paced message went out (its user's last run had not ended)."
    );
    println!();
    println!(
        "Stops: {STOP_USERS} users at once, each {STOPS_EACH} runs stopped each way, a run on the first node \
         stopped from another (on one node, from that node: the baseline); from the request to the run's final \
         event (cancelled) on a socket of the node that asked (ms)."
    );
    println!();
    println!("| nodes | stopped by | stops | p50 | p99 | max |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    for phase in &stops {
        let label = if phase.nodes == 1 {
            "1 (baseline)".to_owned()
        } else {
            phase.nodes.to_string()
        };
        for (way, took) in &phase.took_us {
            println!(
                "| {label} | {} | {} | {} | {} | {} |",
                way.label(),
                took.len(),
                ms(percentile(took, 0.5)),
                ms(percentile(took, 0.99)),
                ms(took.last().copied()),
            );
        }
    }
    let mut any = false;
    for phase in &stops {
        for problem in &phase.problems {
            if !any {
                println!();
                println!("Problems:");
                any = true;
            }
            println!("- stops on {} node(s): {problem}", phase.nodes);
        }
    }
    for (phase, f) in &phases {
        let name = format!(
            "{} users, {} node(s), {}",
            phase.users.len(),
            phase.nodes,
            load_label(phase.load)
        );
        for problem in f.problems.iter().take(20) {
            if !any {
                println!();
                println!("Problems:");
                any = true;
            }
            println!("- {name}: {problem}");
        }
        if f.problems.len() > 20 {
            println!("- {name}: and {} more", f.problems.len() - 20);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(main_async())
}

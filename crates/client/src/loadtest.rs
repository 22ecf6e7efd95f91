//! `switchboard loadtest`: the SLA test plan as a tool. N users sign in, open their sockets and
//! send messages, with think time between runs (closed model) or on a fixed arrival schedule
//! (open model, `--rate`), for a duration or a number of runs. Every run is timed (accept, first
//! event, gaps, response) and every frame goes through the contract checker; meanwhile
//! `/health/ready` and `/api/sla` are polled. `run` returns the `Report`; `command` prints its
//! table, and fails when a threshold is violated, so CI can use it.

#![allow(clippy::print_stdout)]

mod html;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;
use switchboard_protocol::{ClientFrame, Control, EventPayload, RunId, RunStatus, ServerFrame, UserMessage};
use tokio::time::Instant;

pub use report::{Figures, Report, RunRecord, Second, Threshold, Window};

use crate::contract::{Problem, StreamCheck};
use crate::{Client, Session, SignIn, Socket, Throttled};

/// How long a user tries to open its socket again after it was lost.
const REOPEN_FOR: Duration = Duration::from_secs(30);
/// Between two tries.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// How often `/health/ready` and `/api/sla` are polled.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The longest a poll, a sign-in or opening a socket may take before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// At most this many users sign in at once.
const SIGN_IN_CONCURRENCY: usize = 8;
/// How long a user keeps trying to sign in while the server throttles its logins (a server counts
/// each password check of an address as a possible failure until it is done: 10 by default).
const THROTTLED_FOR_AT_MOST: Duration = Duration::from_secs(60);

/// Options of `switchboard loadtest`.
#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// The server and how to sign in: without --email, each user signs in through dev-login
    /// (as loadtest-N@loadtest.invalid), or, where dev-login is off, registers an account of its
    /// own; with --email and --password, every user signs in as that one account.
    #[command(flatten)]
    pub sign_in: SignIn,
    /// How many users (each with a socket of its own).
    #[arg(long)]
    pub users: usize,
    /// How long to send messages, in seconds (0 or none: until --runs messages were sent).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Send this many messages in all, then end when each has been answered or refused.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Closed model: each user waits this long after an answer before its next message.
    #[arg(long, default_value_t = 1000)]
    pub think_ms: u64,
    /// Open model: start this many messages per second, on schedule, spread over the users,
    /// whether or not earlier runs have ended (--think-ms is then not used).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML file (inline SVG plots) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// A window to mark on the plots, START_S..END_S:LABEL in seconds from the start of the
    /// load (e.g. `10..25:postgres stalled`); may be repeated.
    #[arg(long = "mark", value_name = "START_S..END_S:LABEL", value_parser = parse_mark)]
    pub marks: Vec<Mark>,
    /// The text of every message.
    #[arg(long, default_value = "How can we cut our LLM costs on gpt-4o?")]
    pub message: String,
    /// After the last message is sent, wait this long for the runs still open; a run open longer
    /// than this counts as one that never got its final event (the server's default run
    /// deadline is 60 s, and the final event is due within 1 s of it).
    #[arg(long, default_value_t = 70)]
    pub drain_secs: u64,
}

/// A marked window of the test, in seconds from its start.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mark {
    /// Start, in seconds.
    pub start_s: f64,
    /// End, in seconds.
    pub end_s: f64,
    /// What happened then.
    pub label: String,
}

impl std::str::FromStr for Mark {
    type Err = String;

    /// Parses `START_S..END_S:LABEL`.
    fn from_str(text: &str) -> Result<Mark, String> {
        parse_mark(text)
    }
}

/// Parses `START_S..END_S:LABEL`.
fn parse_mark(text: &str) -> Result<Mark, String> {
    let refused = || format!("--mark takes START_S..END_S:LABEL, such as `10..25:postgres stalled`, not `{text}`");
    let (range, label) = text.split_once(':').ok_or_else(refused)?;
    let (start, end) = range.split_once("..").ok_or_else(refused)?;
    let seconds = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    let (Some(start_s), Some(end_s)) = (seconds(start), seconds(end)) else {
        return Err(refused());
    };
    if end_s <= start_s {
        return Err(format!("--mark `{text}` ends before it starts"));
    }
    if label.trim().is_empty() {
        return Err(format!("--mark `{text}` has no label"));
    }
    Ok(Mark {
        start_s,
        end_s,
        label: label.trim().to_owned(),
    })
}

/// When messages are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Each user sends its next message this long after its last one was answered.
    Closed {
        /// The think time.
        think: Duration,
    },
    /// Messages start at this many per second whatever the answers do.
    Open {
        /// Messages per second, over all users.
        per_second: f64,
    },
}

/// The validated options: what the test does.
#[derive(Debug, Clone)]
struct Plan {
    users: usize,
    duration: Option<Duration>,
    runs: Option<u64>,
    arrival: Arrival,
    drain: Duration,
}

impl Plan {
    fn of(args: &LoadtestArgs) -> anyhow::Result<Plan> {
        if args.users == 0 {
            bail!("--users must be at least 1");
        }
        if args.runs == Some(0) {
            bail!("--runs must be at least 1");
        }
        let duration = args.duration.filter(|&d| d > 0).map(Duration::from_secs);
        if duration.is_none() && args.runs.is_none() {
            bail!("give --duration SECS (more than 0), --runs N, or both: the test must end");
        }
        let arrival = match args.rate {
            Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                bail!("--rate must be a positive number of messages per second, not {rate}")
            }
            Some(per_second) => Arrival::Open { per_second },
            None => Arrival::Closed {
                think: Duration::from_millis(args.think_ms),
            },
        };
        if args.message.trim().is_empty() {
            bail!("--message must not be empty");
        }
        Ok(Plan {
            users: args.users,
            duration,
            runs: args.runs,
            arrival,
            drain: Duration::from_secs(args.drain_secs.max(1)),
        })
    }
}

/// One run as the user saw it.
#[derive(Debug, Clone)]
struct RunSample {
    /// When its answer came, in seconds from the start of the load.
    ended_s: f64,
    /// Sent → `message_accepted`.
    accept_us: u64,
    /// Accepted → the run's first event.
    first_event_us: u64,
    /// Accepted → the final event (the server's response time).
    response_us: u64,
    /// Between consecutive events of the run.
    gaps_us: Vec<u64>,
    status: RunStatus,
}

/// Something that went wrong for a user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorSample {
    /// When, in seconds from the start of the load.
    pub at_s: f64,
    /// The user (0-based).
    pub user: usize,
    /// `sign_in`, `connect`, `socket`, `no_final`, or the code of a refused message.
    pub kind: String,
    /// What happened, a sentence.
    pub message: String,
}

/// A contract problem, with the user whose stream had it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContractProblem {
    /// The user (0-based).
    pub user: usize,
    /// The kind (`gap`, `duplicate`, `missing_final`, ...).
    pub kind: String,
    /// What the checker saw, a sentence.
    pub message: String,
}

/// One poll of `/health/ready` or `/api/sla`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PollSample {
    /// When, in seconds from the start of the load.
    pub at_s: f64,
    /// How long the answer took (none when there was none within the deadline).
    pub latency_ms: Option<f64>,
    /// The answer's `status` (`ok`, `degraded`, ...; `unreachable` when there was no answer).
    pub status: String,
    /// What was degraded: the readiness checks that were not ok, or the report's `degraded`.
    pub degraded: Vec<String>,
}

/// What the users and the pollers record, in one place.
#[derive(Debug, Default)]
struct Recorder {
    runs: Vec<RunSample>,
    errors: Vec<ErrorSample>,
    problems: Vec<ContractProblem>,
    workflows_us: Vec<u64>,
    ready: Vec<PollSample>,
    sla: Vec<PollSample>,
    /// Whether the server has no `/api/sla` (404).
    sla_absent: bool,
}

/// What every task of the test shares.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    client: Client,
    message: String,
    /// The start of the load (after every user signed in and connected).
    start: Instant,
    recorder: Mutex<Recorder>,
    sent: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Set once no more messages may be sent (the duration passed or every run was sent).
    sending_over: AtomicBool,
}

impl Shared {
    fn since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    fn record(&self, f: impl FnOnce(&mut Recorder)) {
        f(&mut self.recorder.lock().expect("the recorder is never poisoned"));
    }

    fn error(&self, user: usize, kind: &str, message: impl Into<String>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let at_s = self.since_start(Instant::now());
        let (kind, message) = (kind.to_owned(), message.into());
        self.record(|r| {
            r.errors.push(ErrorSample {
                at_s,
                user,
                kind,
                message,
            })
        });
    }

    /// Takes the right to send one more message, if the test still sends.
    fn claim_message(&self) -> bool {
        if self.sending_over.load(Ordering::Relaxed) {
            return false;
        }
        if self.plan.duration.is_some_and(|d| self.start.elapsed() >= d) {
            self.sending_over.store(true, Ordering::Relaxed);
            return false;
        }
        let number = self.sent.fetch_add(1, Ordering::Relaxed);
        if self.plan.runs.is_some_and(|runs| number >= runs) {
            self.sent.fetch_sub(1, Ordering::Relaxed);
            self.sending_over.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A user, signed in, with its open socket.
struct Ready {
    index: usize,
    /// The user's access token, to open its socket again.
    token: String,
    socket: Socket,
    check: StreamCheck,
    /// Sign-in and opening the socket (the first part of the workflow).
    setup: Duration,
}

/// Runs the load test and returns its report; writes the JSON and HTML files it was asked for.
/// Fails only when the test itself cannot run: bad options, a server that cannot be reached,
/// or a file that cannot be written.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<Report> {
    let plan = Plan::of(&args)?;
    if args.sign_in.email.is_some() != args.sign_in.password.is_some() {
        bail!("--email and --password go together");
    }
    let client = Client::new(&args.sign_in.server);
    let live = format!("{}/health/live", client.base());
    tokio::time::timeout(REQUEST_DEADLINE, client.http().get(&live).send())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the server at {} did not answer within {REQUEST_DEADLINE:?}",
                client.base()
            )
        })?
        .with_context(|| format!("cannot reach the server at {}", client.base()))?;
    let accounts = Accounts::choose(&client, &args.sign_in).await?;

    let progress = progress_bar(&plan);
    progress.set_message("signing in");
    let signing_in = Instant::now();
    let mut signed_in: Vec<Result<Ready, (usize, &'static str, String)>> =
        futures_util::stream::iter((0..plan.users).map(|index| sign_in(&client, &accounts, index)))
            .buffer_unordered(SIGN_IN_CONCURRENCY)
            .collect()
            .await;
    signed_in.sort_by_key(|r| match r {
        Ok(ready) => ready.index,
        Err((index, _, _)) => *index,
    });
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        client: client.clone(),
        message: args.message.clone(),
        start: Instant::now(),
        recorder: Mutex::new(Recorder::default()),
        sent: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        sending_over: AtomicBool::new(false),
    });
    // For a script that times something against the load (a fault schedule, say): the load's
    // clock starts now; every `at_s` of the report counts from this line.
    let signed = signed_in.iter().filter(|r| r.is_ok()).count();
    progress.suspend(|| {
        eprintln!(
            "switchboard loadtest: {signed} of {} users signed in in {:.2} s; the load starts now",
            plan.users,
            shared.start.saturating_duration_since(signing_in).as_secs_f64()
        );
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let polls = tokio::spawn(poll(Arc::clone(&shared), stopped.clone()));
    let shown = tokio::spawn(show_progress(Arc::clone(&shared), progress.clone(), stopped));
    let mut users = tokio::task::JoinSet::new();
    for result in signed_in {
        match result {
            Ok(ready) => {
                users.spawn(user(Arc::clone(&shared), ready));
            }
            Err((index, kind, message)) => shared.error(index, kind, message),
        }
    }
    while let Some(joined) = users.join_next().await {
        joined.context("a user's task failed")?;
    }
    let elapsed = shared.start.elapsed();
    stop.send_replace(true);
    polls.await.context("the poller failed")?;
    shown.await.context("the progress bar failed")?;
    progress.finish_and_clear();

    let recorder = std::mem::take(&mut *shared.recorder.lock().expect("the recorder is never poisoned"));
    let report = Report::build(
        &args,
        &plan,
        recorder,
        elapsed,
        shared.start.saturating_duration_since(signing_in),
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::page(&report)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

/// `switchboard loadtest`: runs the test, prints the table, and fails naming the violated
/// thresholds (exit code 1) when any is violated.
pub async fn command(args: LoadtestArgs) -> anyhow::Result<()> {
    let report = run(args).await?;
    println!("{}", report.table());
    let violated = report.violated();
    if !violated.is_empty() {
        bail!("{} threshold(s) violated: {}", violated.len(), violated.join("; "));
    }
    Ok(())
}

/// How the users sign in.
#[derive(Debug)]
enum Accounts {
    /// Through dev-login, each as an email of its own.
    DevLogin,
    /// Dev-login is off: each registers an account of its own (this run's `tag` in the email).
    Register { tag: String, password: String },
    /// Every user signs in as one account.
    Shared { email: String, password: String },
}

impl Accounts {
    async fn choose(client: &Client, sign_in: &SignIn) -> anyhow::Result<Accounts> {
        if let (Some(email), Some(password)) = (&sign_in.email, &sign_in.password) {
            return Ok(Accounts::Shared {
                email: email.clone(),
                password: password.clone(),
            });
        }
        let probe = tokio::time::timeout(
            REQUEST_DEADLINE,
            client.post("/api/auth/dev-login", None, &serde_json::json!({"email": dev_email(0)})),
        )
        .await
        .context("dev-login did not answer")??;
        if probe.0 != 404 {
            return Ok(Accounts::DevLogin);
        }
        let tag = random_hex();
        Ok(Accounts::Register {
            password: format!("loadtest-{}", random_hex()),
            tag,
        })
    }

    /// User `index`'s session; `again` after a login of it was throttled (then its account,
    /// when the test registers one, exists: registering comes first).
    async fn session(&self, client: &Client, index: usize, again: bool) -> anyhow::Result<Session> {
        match self {
            Accounts::DevLogin => client.dev_login(Some(&dev_email(index))).await,
            Accounts::Register { tag, password } => {
                let email = format!("loadtest-{tag}-{index}@loadtest.invalid");
                if again {
                    client.login(&email, password).await
                } else {
                    client.register(&email, password).await
                }
            }
            Accounts::Shared { email, password } => client.login(email, password).await,
        }
    }
}

fn dev_email(index: usize) -> String {
    format!("loadtest-{index}@loadtest.invalid")
}

/// 16 random hex digits (from the standard library's randomly keyed hasher).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

/// Signs user `index` in and opens its socket.
async fn sign_in(client: &Client, accounts: &Accounts, index: usize) -> Result<Ready, (usize, &'static str, String)> {
    let started = Instant::now();
    let throttled_until = started + THROTTLED_FOR_AT_MOST;
    let mut again = false;
    let session = loop {
        match tokio::time::timeout(REQUEST_DEADLINE, accounts.session(client, index, again)).await {
            Ok(Err(error)) if Instant::now() < throttled_until => match error.downcast_ref::<Throttled>() {
                // Throttled: again after the server's wait, or a second at most, since a place
                // held by a login in flight (the others of this test) is free again once its
                // password is checked.
                Some(throttled) => {
                    again = true;
                    tokio::time::sleep(throttled.retry_after.min(Duration::from_secs(1))).await;
                }
                None => break Ok(Err(error)),
            },
            other => break other,
        }
    };
    let session = match session {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => return Err((index, "sign_in", format!("user {index} could not sign in: {error:#}"))),
        Err(_) => {
            return Err((
                index,
                "sign_in",
                format!("user {index} could not sign in within {REQUEST_DEADLINE:?}"),
            ));
        }
    };
    let connect = async {
        let mut socket = client.connect(&session.access_token, None).await?;
        let established = socket.established().await?;
        anyhow::Ok((socket, established))
    };
    let (socket, established) = match tokio::time::timeout(REQUEST_DEADLINE, connect).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            return Err((
                index,
                "connect",
                format!("user {index} could not open its socket: {error:#}"),
            ));
        }
        Err(_) => {
            return Err((
                index,
                "connect",
                format!("user {index} could not open its socket within {REQUEST_DEADLINE:?}"),
            ));
        }
    };
    let mut check = StreamCheck::new(matches!(accounts, Accounts::Shared { .. }));
    check.feed(&ServerFrame::Control(switchboard_protocol::ControlFrame::now(
        Control::ConnectionEstablished(established),
    )));
    Ok(Ready {
        index,
        token: session.access_token.clone(),
        socket,
        check,
        setup: started.elapsed(),
    })
}

/// A message sent and not yet accepted or refused.
#[derive(Debug)]
struct Pending {
    sent: Instant,
}

/// A run under way.
#[derive(Debug)]
struct Active {
    sent: Instant,
    accepted: Instant,
    accept_us: u64,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
    gaps_us: Vec<u64>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One user's part of the test: sends on its schedule, times its runs, checks its stream.
async fn user(shared: Arc<Shared>, ready: Ready) {
    let Ready {
        index,
        token,
        mut socket,
        mut check,
        setup,
    } = ready;
    let plan = &shared.plan;
    let users = plan.users as f64;
    // The first message: spread over one think time (closed) or at the user's place in the
    // schedule (open), so the users do not all send in the same millisecond.
    let mut next_send = Some(match plan.arrival {
        Arrival::Closed { think } => shared.start + think.mul_f64(index as f64 / users),
        Arrival::Open { per_second } => shared.start + Duration::from_secs_f64(index as f64 / per_second),
    });
    let mut sends = 0u64;
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut active: HashMap<RunId, Active> = HashMap::new();
    let mut workflow_open = true;
    let mut drain_until: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut socket_lost = false;
    loop {
        // The user stops sending once the test does; then it waits for its last answers, up to
        // the drain limit.
        if shared.sending_over.load(Ordering::Relaxed) {
            next_send = None;
            if pending.is_empty() && active.is_empty() {
                break;
            }
            let until = *drain_until.get_or_insert_with(|| Instant::now() + plan.drain);
            if Instant::now() >= until {
                break;
            }
        }
        // Woken at the end of the duration at the latest, to see that the test stops sending.
        let send_at = match (next_send, plan.duration) {
            (Some(at), Some(duration)) => at.min(shared.start + duration),
            (Some(at), None) => at,
            (None, _) => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            frame = socket.next_frame() => {
                let lost = match frame {
                    Ok(Some(frame)) => Ok(frame),
                    Ok(None) => Err(format!("the server closed user {index}'s socket")),
                    Err(error) => Err(format!("user {index}'s socket failed: {error:#}")),
                };
                let frame = match lost {
                    Ok(frame) => frame,
                    Err(why) => {
                        shared.error(index, "socket", why);
                        match reopen(&shared, index, &token, &mut check, &mut pending).await {
                            Some(again) => {
                                socket = again;
                                // A message given up is answered as far as the schedule goes.
                                if next_send.is_none() && active.is_empty() {
                                    next_send = Some(Instant::now());
                                }
                                continue;
                            }
                            None => {
                                socket_lost = true;
                                break;
                            }
                        }
                    }
                };
                check.feed(&frame);
                let now = Instant::now();
                let mut answered = false;
                match frame {
                    ServerFrame::Control(control) => match control.body {
                        Control::MessageAccepted(accepted) => {
                            let sent = accepted
                                .client_message_id
                                .as_ref()
                                .and_then(|id| pending.remove(id))
                                .map(|p| p.sent);
                            if let Some(sent) = sent {
                                active.insert(accepted.run_id, Active {
                                    sent,
                                    accepted: now,
                                    accept_us: micros(now - sent),
                                    first_event: None,
                                    last_event: None,
                                    gaps_us: Vec::new(),
                                });
                            }
                        }
                        Control::Error(error) => {
                            let refused = error.reference.as_ref().and_then(|id| pending.remove(id)).is_some();
                            let what = if refused { "a message of" } else { "the server told" };
                            shared.error(index, error.code.as_str(), format!(
                                "{what} user {index}: {} ({})", error.message, error.code.as_str()
                            ));
                            answered = refused;
                        }
                        _ => {}
                    },
                    ServerFrame::Event(event) => {
                        if let Some(run) = active.get_mut(&event.run_id) {
                            if run.first_event.is_none() {
                                run.first_event = Some(now);
                            }
                            if let Some(last) = run.last_event {
                                run.gaps_us.push(micros(now - last));
                            }
                            run.last_event = Some(now);
                            if let EventPayload::AgentCompleted(done) = &event.payload
                                && done.is_final
                                && let Some(run) = active.remove(&event.run_id)
                            {
                                let sample = RunSample {
                                    ended_s: shared.since_start(now),
                                    accept_us: run.accept_us,
                                    first_event_us: micros(run.first_event.unwrap_or(now) - run.accepted),
                                    response_us: micros(now - run.accepted),
                                    gaps_us: run.gaps_us,
                                    status: done.status,
                                };
                                let workflow = workflow_open.then(|| micros(setup + (now - run.sent)));
                                workflow_open = false;
                                shared.record(|r| {
                                    r.runs.push(sample);
                                    r.workflows_us.extend(workflow);
                                });
                                shared.done.fetch_add(1, Ordering::Relaxed);
                                answered = true;
                            }
                        }
                    }
                }
                if answered
                    && let Arrival::Closed { think } = plan.arrival
                    && pending.is_empty()
                    && active.is_empty()
                {
                    next_send = Some(now + think);
                }
            }
            () = tokio::time::sleep_until(send_at), if next_send.is_some() => {
                if !shared.claim_message() {
                    continue;
                }
                sends += 1;
                let id = format!("lt-{index}-{sends}");
                let frame = ClientFrame::UserMessage(UserMessage {
                    text: shared.message.clone(),
                    thread_id: None,
                    client_message_id: Some(id.clone()),
                });
                let now = Instant::now();
                if let Err(error) = socket.send(&frame).await {
                    shared.error(index, "socket", format!("user {index} could not send: {error:#}"));
                    match reopen(&shared, index, &token, &mut check, &mut pending).await {
                        Some(again) => {
                            socket = again;
                            // The message was not sent: the next one goes now.
                            next_send = Some(Instant::now());
                            continue;
                        }
                        None => {
                            socket_lost = true;
                            break;
                        }
                    }
                }
                pending.insert(id, Pending { sent: now });
                next_send = match plan.arrival {
                    // The next one when this one is answered.
                    Arrival::Closed { .. } => None,
                    Arrival::Open { per_second } => Some(
                        shared.start + Duration::from_secs_f64((index as f64 + sends as f64 * users) / per_second),
                    ),
                };
            }
            _ = tick.tick() => {
                // A run open past the drain limit will not end: count it and go on.
                let now = Instant::now();
                let stale: Vec<RunId> = active
                    .iter()
                    .filter(|(_, run)| now - run.sent > plan.drain)
                    .map(|(id, _)| id.clone())
                    .collect();
                for run in stale {
                    // The checker reports it at the end unless its final event comes after all.
                    active.remove(&run);
                }
                let lost: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| now - p.sent > REQUEST_DEADLINE)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in lost {
                    pending.remove(&id);
                    shared.error(index, "no_answer", format!(
                        "user {index}'s message {id} was neither accepted nor refused within {REQUEST_DEADLINE:?}"
                    ));
                }
                // A closed-model user whose message was lost or whose run was given up goes on.
                if let Arrival::Closed { think } = plan.arrival
                    && next_send.is_none()
                    && pending.is_empty()
                    && active.is_empty()
                {
                    next_send = Some(now + think);
                }
            }
        }
    }
    // Runs still open when the user stops (the drain limit passed) never got their final event;
    // a user whose socket failed cannot tell, so only its problems so far count.
    let problems: Vec<Problem> = if socket_lost {
        check.problems().to_vec()
    } else {
        check.finish()
    };
    tokio::time::timeout(REQUEST_DEADLINE, socket.close()).await.ok();
    shared.record(|r| {
        r.problems.extend(problems.into_iter().map(|p| ContractProblem {
            user: index,
            kind: p.kind().to_owned(),
            message: p.to_string(),
        }))
    });
}

/// After user `index`'s socket was lost: its messages not yet answered are given up (an error
/// each; each may still have started a run, which may come unannounced), and a new socket resumes
/// the stream after the last event seen. `None` when none opens within [`REOPEN_FOR`].
async fn reopen(
    shared: &Shared,
    index: usize,
    token: &str,
    check: &mut StreamCheck,
    pending: &mut HashMap<String, Pending>,
) -> Option<Socket> {
    check.unanswered(pending.len());
    for _ in pending.drain() {
        shared.error(
            index,
            "unanswered",
            format!("a message of user {index} went unanswered: its socket was lost"),
        );
    }
    let after = check.last_seq().map(|seq| seq.get());
    let until = Instant::now() + REOPEN_FOR;
    loop {
        let opening = async {
            let mut socket = shared.client.connect(token, after).await?;
            socket.established().await?;
            anyhow::Ok(socket)
        };
        match tokio::time::timeout(REQUEST_DEADLINE, opening).await {
            Ok(Ok(socket)) => return Some(socket),
            Ok(Err(error)) if Instant::now() + REOPEN_EVERY >= until => {
                shared.error(
                    index,
                    "socket",
                    format!("user {index} could not open its socket again: {error:#}"),
                );
                return None;
            }
            Err(_) if Instant::now() + REOPEN_EVERY >= until => {
                shared.error(
                    index,
                    "socket",
                    format!("user {index} could not open its socket again within {REQUEST_DEADLINE:?}"),
                );
                return None;
            }
            _ => tokio::time::sleep(REOPEN_EVERY).await,
        }
    }
}

/// Polls `/health/ready` and `/api/sla` every second until stopped.
async fn poll(shared: Arc<Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(POLL_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let ready = poll_once(&shared.client, "/health/ready", |body| {
            body["checks"]
                .as_object()
                .map(|checks| {
                    checks
                        .iter()
                        .filter(|(_, check)| check["status"].as_str() != Some("ok"))
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default()
        });
        let sla_absent = shared
            .recorder
            .lock()
            .expect("the recorder is never poisoned")
            .sla_absent;
        let sla = async {
            if sla_absent {
                return None;
            }
            Some(
                poll_once(&shared.client, "/api/sla", |body| {
                    body["degraded"]
                        .as_array()
                        .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default()
                })
                .await,
            )
        };
        let (ready, sla) = tokio::join!(ready, sla);
        let at = |sample: (Instant, PollSample)| PollSample {
            at_s: shared.since_start(sample.0),
            ..sample.1
        };
        shared.record(|r| {
            r.ready.push(at(ready));
            match sla {
                Some((_, sample)) if sample.status == "absent" => r.sla_absent = true,
                Some(sample) => r.sla.push(at(sample)),
                None => {}
            }
        });
    }
}

/// One GET of a status endpoint: when it was sent, and the sample (status `absent` on 404).
async fn poll_once(client: &Client, path: &str, degraded: impl Fn(&Value) -> Vec<String>) -> (Instant, PollSample) {
    let sent = Instant::now();
    let answer = tokio::time::timeout(REQUEST_DEADLINE, client.get(path, None)).await;
    let latency_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    let sample = match answer {
        Ok(Ok((404, _))) => PollSample {
            at_s: 0.0,
            latency_ms,
            status: "absent".into(),
            degraded: Vec::new(),
        },
        Ok(Ok((_, body))) => PollSample {
            at_s: 0.0,
            latency_ms,
            status: body["status"].as_str().unwrap_or("unreadable").to_owned(),
            degraded: degraded(&body),
        },
        Ok(Err(_)) | Err(_) => PollSample {
            at_s: 0.0,
            latency_ms: None,
            status: "unreachable".into(),
            degraded: Vec::new(),
        },
    };
    (sent, sample)
}

fn progress_bar(plan: &Plan) -> indicatif::ProgressBar {
    let (length, unit) = match (plan.runs, plan.duration) {
        (Some(runs), _) => (runs, "runs"),
        (None, Some(duration)) => (duration.as_secs(), "s"),
        (None, None) => (0, ""),
    };
    indicatif::ProgressBar::new(length).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} {{bar:30}} {{pos}}/{{len}} {unit} {{msg}}"
        ))
        .expect("a valid template"),
    )
}

/// Keeps the progress bar up to date until stopped.
async fn show_progress(
    shared: Arc<Shared>,
    progress: indicatif::ProgressBar,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let done = shared.done.load(Ordering::Relaxed);
        progress.set_position(match shared.plan.runs {
            Some(_) => done,
            None => shared.start.elapsed().as_secs(),
        });
        let sending = if shared.sending_over.load(Ordering::Relaxed) {
            ", waiting for the last answers"
        } else {
            ""
        };
        progress.set_message(format!(
            "{done} runs answered, {} errors{sending}",
            shared.failed.load(Ordering::Relaxed)
        ));
    }
}

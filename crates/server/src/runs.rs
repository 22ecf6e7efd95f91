//! Accepting user messages and stopping runs: validation, limits, storage, and the engine.
//! Shared by the socket (`user_message`, `stop_agent`) and the HTTP API (`/api/runs/{id}/cancel`).

use std::sync::Arc;
use std::time::Duration;

use switchboard_engine::{Engine, Reservation, StartError};
use switchboard_protocol::{ErrorCode, MessageAccepted, MessageId, RunId, ThreadId, UserId, UserMessage};
use switchboard_store::{NewMessage, RunState, Store, StoreError};
use tokio::time::Instant;

use crate::cluster::ClusterStops;
use crate::error::tier_trouble;
use crate::limits::{Shared, SharedLimits, SlidingWindow};
use crate::metrics::Metrics;

/// Longest `client_message_id`.
const MAX_CLIENT_ID: usize = 128;

/// A refusal told to the client as an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The error code.
    pub(crate) code: ErrorCode,
    /// The sentence.
    pub(crate) message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The engine refused to admit or start the run.
    fn start(error: StartError) -> Self {
        let code = match error {
            StartError::TooManyActiveRuns { .. } => ErrorCode::TooManyActiveRuns,
            StartError::ShuttingDown => ErrorCode::ShuttingDown,
            StartError::Busy { .. } => ErrorCode::ServerBusy,
            StartError::DuplicateRun(_) => ErrorCode::Internal,
        };
        let mut sentence = error.to_string();
        if let Some(first) = sentence.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        Refusal::new(code, format!("{sentence}."))
    }

    fn store(error: StoreError) -> Self {
        if let Some(trouble) = tier_trouble(&error) {
            tracing::warn!(%trouble, "a message could not be stored");
            // A deadline that passed, or a connection cut, may have cut off the answer of a
            // write that was done (which then starts its run by itself, see `check_later`).
            return Refusal::new(
                ErrorCode::StoreUnavailable,
                format!("{trouble}, so the message may not have been accepted; send it again in a moment."),
            );
        }
        match error {
            StoreError::NotFound(_) => Refusal::new(ErrorCode::ThreadNotFound, "No such thread."),
            other => {
                tracing::error!(error = %other, "store failure while accepting a message");
                Refusal::new(
                    ErrorCode::Internal,
                    "The store failed while storing the message, so it may not have been accepted; send it \
                     again in a moment.",
                )
            }
        }
    }
}

/// A message whose storing failed without a sure answer: the store may have stored it (and its
/// run) after all.
struct MaybeStored {
    user: UserId,
    text: String,
    /// Whether storing it would have started a new thread (no thread was named).
    new_thread: bool,
    /// When the message came: its run's response time counts from then.
    accepted_at: Instant,
}

/// Runs whose message may have been stored though the store did not answer in time, until it is
/// known. Whoever takes a run out of here starts it (a resend of the message that finds it
/// stored, or the check that runs after the store answers again), so it starts once.
#[derive(Default)]
struct Uncertain(std::sync::Mutex<std::collections::HashMap<RunId, MaybeStored>>);

impl Uncertain {
    fn insert(&self, run: RunId, pending: MaybeStored) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(run, pending);
    }

    fn take(&self, run: &RunId) -> Option<MaybeStored> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(run)
    }
}

/// How long, at most, a message whose storing timed out is checked for: after that it stays as
/// the store has it (a run left `running` is closed at the next start).
const UNCERTAIN_CHECK_FOR: Duration = Duration::from_secs(600);

/// Starts and stops runs.
pub(crate) struct Runs {
    store: Arc<dyn Store>,
    engine: Engine,
    uncertain: Arc<Uncertain>,
    metrics: Arc<Metrics>,
    limiter: SlidingWindow<UserId>,
    max_text_chars: usize,
    /// On a node of a cluster: how a run on another node is stopped.
    stops: Option<ClusterStops>,
    /// On a node of a cluster: the limits the nodes share.
    shared: Option<Arc<SharedLimits>>,
    rate_per_minute: u32,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").field("engine", &self.engine).finish()
    }
}

impl Runs {
    /// The service.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        engine: Engine,
        metrics: Arc<Metrics>,
        rate_per_minute: u32,
        max_text_chars: usize,
    ) -> Self {
        Self {
            store,
            engine,
            uncertain: Arc::default(),
            metrics,
            limiter: SlidingWindow::new(rate_per_minute, Duration::from_secs(60)),
            max_text_chars,
            stops: None,
            shared: None,
            rate_per_minute,
        }
    }

    /// Counts the active runs per user, all runs, and the messages per user across the nodes
    /// of a cluster too, in `shared`.
    pub(crate) fn with_shared_limits(mut self, shared: Arc<SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Stops runs of other nodes through `stops` too.
    pub(crate) fn with_cluster_stops(mut self, stops: ClusterStops) -> Self {
        self.stops = Some(stops);
        self
    }

    /// The engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stores the message and starts its run. A repeated `client_message_id` is answered with
    /// the ids of the first one and starts nothing.
    pub(crate) async fn submit(&self, user: &UserId, message: UserMessage) -> Result<MessageAccepted, Refusal> {
        let chars = message.text.chars().count();
        if message.text.trim().is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidPayload, "The message text is empty."));
        }
        if chars > self.max_text_chars {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!(
                    "The message text has {chars} characters; the limit is {}.",
                    self.max_text_chars
                ),
            ));
        }
        if message
            .client_message_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_CLIENT_ID)
        {
            return Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!("client_message_id must have 1 to {MAX_CLIENT_ID} characters."),
            ));
        }
        // The engine's one admission: a place among the active runs, held from before the
        // message is stored, so a refused message leaves nothing behind.
        let reservation = match self.admit(user).await {
            Ok(reservation) => reservation,
            Err(error) => return self.repeated(user, &message, Refusal::start(error)).await,
        };
        let tiers = reservation.tiers();
        // The rate limit counts last: a message refused for the limits above costs no budget.
        if let Err(wait) = tiers.clone().scope(self.count_message(user)).await {
            let refusal = Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "Too many messages in the last minute; try again in {} s.",
                    wait.as_secs().max(1)
                ),
            );
            return self.repeated(user, &message, refusal).await;
        }
        let accepted_at = Instant::now();
        let run_id = RunId::generate();
        let new_thread_id = ThreadId::generate();
        let thread_id = message.thread_id.clone().unwrap_or_else(|| new_thread_id.clone());
        // The run starts while its message is stored, held: its first model call does not wait
        // for the store's commit, and none of its events is stored or seen before the message
        // is. A message the store does not take abandons it, unseen.
        let held = match reservation.start_held(thread_id, run_id.clone(), message.text.clone()) {
            Ok((_, held)) => held,
            Err(error) => return self.repeated(user, &message, Refusal::start(error)).await,
        };
        let accepting = self.store.accept_message(NewMessage {
            user_id: user.clone(),
            thread_id: message.thread_id.clone(),
            new_thread_id,
            text: message.text.clone(),
            client_message_id: message.client_message_id.clone(),
            message_id: MessageId::generate(),
            run_id: run_id.clone(),
        });
        let accepted = match tiers.scope(accepting).await {
            Ok(accepted) => accepted,
            Err(error) => {
                held.abandon();
                // A deadline that passed, a connection cut or a failure of unknown kind may each
                // have come after the commit: such a message is looked up once the store answers,
                // so that no run stays `running` with nothing running it. A refusal of the
                // message itself (another user's thread, data refused) stored nothing.
                if !matches!(
                    error,
                    StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Corrupt(_)
                ) {
                    let new_thread = message.thread_id.is_none();
                    self.check_later(user, run_id, message.text.clone(), new_thread, accepted_at);
                }
                return Err(Refusal::store(error));
            }
        };
        let reply = MessageAccepted {
            client_message_id: message.client_message_id,
            message_id: accepted.message.id.clone(),
            thread_id: accepted.thread_id.clone(),
            run_id: accepted.run_id.clone(),
        };
        if !accepted.duplicate {
            self.metrics.accepted(&accepted.run_id, accepted_at);
            held.release();
            return Ok(reply);
        }
        // A message sent again: the run of the first one is the message's run, and this one is
        // not. If the first one's storing timed out but was done after all, its run starts now,
        // in this one's place.
        let Some(unstarted) = self.uncertain.take(&accepted.run_id) else {
            held.abandon();
            return Ok(reply);
        };
        let started = match held.abandon_keeping_place() {
            Some(reservation) => {
                self.metrics.accepted(&accepted.run_id, unstarted.accepted_at);
                reservation.start(accepted.thread_id.clone(), accepted.run_id.clone(), unstarted.text)
            }
            None => self.admit(user).await.and_then(|reservation| {
                self.metrics.accepted(&accepted.run_id, unstarted.accepted_at);
                reservation.start(
                    accepted.thread_id.clone(),
                    accepted.run_id.clone(),
                    unstarted.text.clone(),
                )
            }),
        };
        match started {
            Ok(_) => Ok(reply),
            Err(error) => {
                self.metrics.forget(&accepted.run_id);
                if let Err(store_error) = self
                    .store
                    .discard_run(user, &accepted.run_id, unstarted.new_thread)
                    .await
                {
                    tracing::error!(error = %store_error, run_id = %accepted.run_id, "could not discard a refused run");
                }
                Err(Refusal::start(error))
            }
        }
    }

    /// A place for a run of `user` among the engine's active runs and, on a cluster's node,
    /// among all nodes' runs.
    async fn admit(&self, user: &UserId) -> Result<Reservation, StartError> {
        let mut reservation = self.engine.reserve(user)?;
        // What the tiers take from here on counts for the run (its final `timings.tiers`).
        let tiers = reservation.tiers();
        if let Some(shared) = &self.shared {
            tiers.scope(self.reserve_shared(shared, user, &mut reservation)).await?;
        }
        Ok(reservation)
    }

    /// The places of a run among all nodes' runs, the user's and everyone's, held with the
    /// engine's `reservation` until the run ends (or for as long as a run may last, should this
    /// node die). Without Redis, the node's own limits only.
    async fn reserve_shared(
        &self,
        shared: &SharedLimits,
        user: &UserId,
        reservation: &mut Reservation,
    ) -> Result<(), StartError> {
        let config = self.engine.config();
        // A run ends within its deadline and a second (its final event told by then).
        let most = config.run_timeout + Duration::from_secs(5);
        match shared
            .hold(&format!("runs:{user}"), config.max_active_runs_per_user, most)
            .await
        {
            Shared::Taken(place) => reservation.hold(place),
            Shared::Full(_) => {
                return Err(StartError::TooManyActiveRuns {
                    limit: config.max_active_runs_per_user,
                });
            }
            Shared::Unreachable => return Ok(()),
        }
        match shared.hold("runs", config.max_active_runs, most).await {
            Shared::Taken(place) => reservation.hold(place),
            Shared::Full(_) => {
                return Err(StartError::Busy {
                    limit: config.max_active_runs,
                });
            }
            Shared::Unreachable => {}
        }
        Ok(())
    }

    /// Counts a message of `user` against the rate limit (across the nodes, on a cluster's
    /// node while Redis answers); `Err(wait)` when over it.
    async fn count_message(&self, user: &UserId) -> Result<(), Duration> {
        if let Some(shared) = &self.shared {
            let window = Duration::from_secs(60);
            match shared
                .take(&format!("messages:{user}"), self.rate_per_minute as usize, window)
                .await
            {
                Shared::Taken(place) => {
                    place.keep();
                    return Ok(());
                }
                Shared::Full(wait) => return Err(wait),
                Shared::Unreachable => {}
            }
        }
        self.limiter.acquire(user).map(|_| ())
    }

    /// After the storing of `run`'s message failed without an answer to be sure of (timed out,
    /// cut off, ...): once the store answers, a message that was stored after all gets its run
    /// started (unless a resend started it first), so that no run stays `running` with nothing
    /// running it.
    fn check_later(&self, user: &UserId, run: RunId, text: String, new_thread: bool, accepted_at: Instant) {
        self.uncertain.insert(
            run.clone(),
            MaybeStored {
                user: user.clone(),
                text,
                new_thread,
                accepted_at,
            },
        );
        let (store, engine, uncertain, metrics) = (
            Arc::clone(&self.store),
            self.engine.clone(),
            Arc::clone(&self.uncertain),
            Arc::clone(&self.metrics),
        );
        let user = user.clone();
        tokio::spawn(async move {
            let until = Instant::now() + UNCERTAIN_CHECK_FOR;
            let mut wait = Duration::from_millis(500);
            let record = loop {
                match store.run(&user, &run).await {
                    Ok(record) => break record,
                    Err(_) if Instant::now() + wait < until => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                    Err(error) => {
                        tracing::error!(%error, run_id = %run, "gave up checking whether a message was stored");
                        uncertain.take(&run);
                        return;
                    }
                }
            };
            let Some(pending) = uncertain.take(&run) else {
                return; // a resend started it
            };
            let Some(record) = record.filter(|r| r.state == RunState::Running) else {
                return; // not stored after all (or already closed)
            };
            let started = engine
                .reserve(&pending.user)
                .and_then(|place| place.start(record.thread_id.clone(), run.clone(), pending.text));
            match started {
                Ok(_) => {
                    metrics.accepted(&run, pending.accepted_at);
                    tracing::info!(run_id = %run, "a message stored after its deadline starts its run");
                }
                Err(error) => {
                    tracing::warn!(%error, run_id = %run, "a message stored after its deadline cannot start; discarding it");
                    if let Err(error) = store.discard_run(&pending.user, &run, pending.new_thread).await {
                        tracing::error!(%error, run_id = %run, "could not discard a run that cannot start");
                    }
                }
            }
        });
    }

    /// A message refused by a limit: when its `client_message_id` was accepted before (a client
    /// that sends again after a lost connection), the first answer, since a repeat starts
    /// nothing and so needs no place; else the refusal. Looked up only here, so that a message
    /// that passes the limits costs no extra read.
    async fn repeated(
        &self,
        user: &UserId,
        message: &UserMessage,
        refusal: Refusal,
    ) -> Result<MessageAccepted, Refusal> {
        let Some(client_id) = &message.client_message_id else {
            return Err(refusal);
        };
        match self.store.message_by_client_id(user, client_id).await {
            Ok(Some(earlier)) => match earlier.run_id {
                Some(run_id) => Ok(MessageAccepted {
                    client_message_id: message.client_message_id.clone(),
                    message_id: earlier.id,
                    thread_id: earlier.thread_id,
                    run_id,
                }),
                None => Err(refusal),
            },
            Ok(None) => Err(refusal),
            Err(error) => Err(Refusal::store(error)),
        }
    }

    /// Stops an active run of the user.
    pub(crate) async fn cancel(&self, user: &UserId, run: &RunId) -> Result<(), Refusal> {
        if self.engine.cancel(user, run).is_ok() {
            return Ok(());
        }
        match self.store.run(user, run).await {
            Ok(Some(record)) if record.state != RunState::Running => Err(Refusal::new(
                ErrorCode::RunNotFound,
                format!("The run {run} has already finished ({}).", record.state.as_str()),
            )),
            // Running, on another node: that node is asked to stop it.
            Ok(Some(_)) if let Some(stops) = &self.stops => stops.ask(user, run).await.map_err(|error| {
                let trouble = tier_trouble(&error).unwrap_or_else(|| error.to_string());
                Refusal::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "{trouble}, so the node that runs {run} could not be asked to stop it; try again in a moment."
                    ),
                )
            }),
            Ok(_) => Err(Refusal::new(ErrorCode::RunNotFound, format!("No active run {run}."))),
            Err(error) => Err(Refusal::store(error)),
        }
    }
}

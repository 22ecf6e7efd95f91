//! Accepting user messages and stopping runs: validation, limits, storage, and the engine.
//! Shared by the socket (`user_message`, `stop_agent`) and the HTTP API (`/api/runs/{id}/cancel`).

use std::sync::Arc;
use std::time::Duration;

use switchboard_engine::{Engine, StartError};
use switchboard_protocol::{ErrorCode, MessageAccepted, MessageId, RunId, UserId, UserMessage};
use switchboard_store::{NewMessage, RunState, Store, StoreError};
use tokio::time::Instant;

use crate::error::tier_trouble;
use crate::limits::SlidingWindow;
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
            return Refusal::new(
                ErrorCode::StoreUnavailable,
                format!("{trouble}, so the message was not accepted; send it again in a moment."),
            );
        }
        match error {
            StoreError::NotFound(_) => Refusal::new(ErrorCode::ThreadNotFound, "No such thread."),
            other => {
                tracing::error!(error = %other, "store failure while accepting a message");
                Refusal::new(
                    ErrorCode::Internal,
                    "The message could not be stored; please send it again.",
                )
            }
        }
    }
}

/// Starts and stops runs.
pub(crate) struct Runs {
    store: Arc<dyn Store>,
    engine: Engine,
    metrics: Arc<Metrics>,
    limiter: SlidingWindow<UserId>,
    max_text_chars: usize,
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
            metrics,
            limiter: SlidingWindow::new(rate_per_minute, Duration::from_secs(60)),
            max_text_chars,
        }
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
        let reservation = match self.engine.reserve(user) {
            Ok(reservation) => reservation,
            Err(error) => return self.repeated(user, &message, Refusal::start(error)).await,
        };
        // The rate limit counts last: a message refused for the limits above costs no budget.
        if let Err(wait) = self.limiter.acquire(user) {
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
        let accepted = self
            .store
            .accept_message(NewMessage {
                user_id: user.clone(),
                thread_id: message.thread_id.clone(),
                text: message.text.clone(),
                client_message_id: message.client_message_id.clone(),
                message_id: MessageId::generate(),
                run_id: RunId::generate(),
            })
            .await
            .map_err(Refusal::store)?;
        let reply = MessageAccepted {
            client_message_id: message.client_message_id,
            message_id: accepted.message.id.clone(),
            thread_id: accepted.thread_id.clone(),
            run_id: accepted.run_id.clone(),
        };
        if accepted.duplicate {
            return Ok(reply);
        }
        self.metrics.accepted(&accepted.run_id, accepted_at);
        let started = reservation.start(accepted.thread_id.clone(), accepted.run_id.clone(), message.text);
        if let Err(error) = started {
            self.metrics.forget(&accepted.run_id);
            if let Err(store_error) = self
                .store
                .discard_run(user, &accepted.run_id, accepted.created_thread)
                .await
            {
                tracing::error!(error = %store_error, run_id = %accepted.run_id, "could not discard a refused run");
            }
            return Err(Refusal::start(error));
        }
        Ok(reply)
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
            Ok(_) => Err(Refusal::new(ErrorCode::RunNotFound, format!("No active run {run}."))),
            Err(error) => Err(Refusal::store(error)),
        }
    }
}

//! Switchboard's storage: users, their refresh-token families, threads, messages, runs and each
//! user's durable event log, behind the [`Store`] trait. [`SqliteStore`] is the embedded
//! default; networked backends implement the same trait and pass the same test suite
//! (`tests/store.rs`).

mod group;
mod sqlite;
mod sqlite_analytics;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod workload;

use async_trait::async_trait;
use switchboard_protocol::{
    AgentName, Event, LogEntry, MessageId, ModelCallUsage, Role, RunEnd, RunId, RunStatus, RunTimings, Seq, ThreadId,
    Timestamp, UnnumberedJson, UserId,
};

pub use group::{Grouped, Stopped};
pub use sqlite::SqliteStore;
pub use sqlite_analytics::SqliteAnalytics;
pub use workload::{
    AnalyticsStore, Bucket, CallFigures, CallStatus, Cell, EARLIEST_CALL_MS, FeatureModel, HourUsage, LATEST_CALL_MS,
    MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS, MAX_UPLOAD_KEY_CHARS, OFF_HOURS_END, Opportunities,
    PERCENTILE_RELATIVE_ERROR, SHORT_INPUT_TOKENS, SHORT_OUTPUT_TOKENS, Sketch, Slice, Summary, SummaryBuilder,
    TimeRange, Totals, UPLOAD_KEY_RETENTION, Upload, UploadKey, Usage, WorkloadEvent, nearest_rank, upload_digest,
};

/// A storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A unique value is taken (an email, a seq).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The thing the operation needs does not exist (or belongs to another user).
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend failed; retrying later may help.
    #[error("the store failed: {0}")]
    Backend(String),
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The tier did not answer within its deadline; the operation may or may not have taken
    /// effect (a write is either wholly stored or not at all). Retrying later may help.
    #[error("{tier} did not answer within {} ms", .after.as_millis())]
    TimedOut {
        /// The tier that did not answer.
        tier: Tier,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// The tier cannot be reached (connection refused or cut, no connection free in the pool
    /// within the deadline). Nothing was done, except by a write whose connection was cut after
    /// it was sent, which may have been done. Retrying later may help.
    #[error("{tier} cannot be reached: {reason}")]
    Unavailable {
        /// The tier that cannot be reached.
        tier: Tier,
        /// What failed, without credentials.
        reason: String,
    },
}

impl StoreError {
    /// Whether the tier itself is slow or unreachable (as opposed to the data or the request
    /// being wrong): the operation may succeed later, unchanged.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::TimedOut { .. } | StoreError::Unavailable { .. })
    }
}

/// A storage tier (and the model, as a tier a run's time goes to): defined beside the run's
/// timings, in the protocol crate.
pub use switchboard_protocol::{OperationId, Tier, TierClock, TierObserver, TierTimes};

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user.
    pub id: UserId,
    /// Lower-cased email.
    pub email: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// When the user registered.
    pub created_at: Timestamp,
}

/// A conversation thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The thread.
    pub id: ThreadId,
    /// Its owner.
    pub user_id: UserId,
    /// Its title.
    pub title: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When a message was last added.
    pub updated_at: Timestamp,
}

/// A message of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message.
    pub id: MessageId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub text: String,
    /// The run it started (user) or answered (assistant).
    pub run_id: Option<RunId>,
    /// The client's idempotency key, for user messages.
    pub client_message_id: Option<String>,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// The state of a run as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Not finished yet (or left active by a crash).
    Running,
    /// Finished with this status.
    Finished(RunStatus),
}

impl RunState {
    /// The name used on the HTTP API: `running` or the final status.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished(status) => status.as_str(),
        }
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run.
    pub id: RunId,
    /// Its owner.
    pub user_id: UserId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// The user message that started it.
    pub message_id: MessageId,
    /// Running or finished.
    pub state: RunState,
    /// When it was accepted.
    pub started_at: Timestamp,
    /// When its final event was stored.
    pub finished_at: Option<Timestamp>,
    /// From the final event.
    pub duration_ms: Option<u64>,
    /// From the final event.
    pub timings: Option<RunTimings>,
    /// The run's language-model calls, from the final event.
    pub model_calls: Vec<ModelCallUsage>,
    /// The agents whose part of the answer is missing (empty while running).
    pub missing: Vec<AgentName>,
}

/// The title of a thread started by a message: its first line, cut to 60 characters ("New
/// thread" when it has none). Every backend titles threads so.
pub fn thread_title(text: &str) -> String {
    const MAX: usize = 60;
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() <= MAX {
        if line.is_empty() {
            "New thread".to_owned()
        } else {
            line.to_owned()
        }
    } else {
        let cut: String = line.chars().take(MAX - 1).collect();
        format!("{}…", cut.trim_end())
    }
}

/// A user message to store together with the run it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The sender.
    pub user_id: UserId,
    /// The thread to add to; `None` creates one titled after the text, `new_thread_id`.
    pub thread_id: Option<ThreadId>,
    /// The id of the thread the message starts when it names none (unused when it names one):
    /// chosen by the caller, so that the message's run may start before the store answers.
    pub new_thread_id: ThreadId,
    /// What the user wrote.
    pub text: String,
    /// The client's idempotency key.
    pub client_message_id: Option<String>,
    /// The id for the new message.
    pub message_id: MessageId,
    /// The id for the run it starts.
    pub run_id: RunId,
}

/// What storing a user message gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The stored message (the earlier one, for a repeated `client_message_id`).
    pub message: Message,
    /// Its run.
    pub run_id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// True when the `client_message_id` was seen before: nothing new was stored.
    pub duplicate: bool,
    /// True when storing the message created its thread.
    pub created_thread: bool,
}

/// A stored event: its seq and its JSON exactly as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event's seq.
    pub seq: Seq,
    /// The event as JSON text.
    pub json: String,
}

/// An event as the log stored it: the seq the store gave it, and its JSON as sent on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Whose log it is in.
    pub user_id: UserId,
    /// Its seq and JSON.
    pub record: EventRecord,
}

impl EventRecord {
    /// Parses the event back.
    pub fn event(&self) -> Result<Event, StoreError> {
        serde_json::from_str(&self.json).map_err(|e| StoreError::Corrupt(format!("event {}: {e}", self.seq)))
    }
}

/// An entry of the log as a backend stores it: its JSON written already (everything after
/// `{"seq":N,`), so a backend holds its connection only for the rows.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Whose log.
    pub user_id: UserId,
    /// The event's run.
    pub run_id: String,
    /// The event's JSON without its seq.
    pub json: UnnumberedJson,
    /// The run's end, on its final event.
    pub end: Option<RunEnd>,
    /// The event's time, milliseconds since the epoch.
    pub at: i64,
}

impl EventRow {
    /// The rows of `entries`, in order: the same bytes on every backend.
    pub fn of(entries: &[LogEntry]) -> Result<Vec<EventRow>, StoreError> {
        entries
            .iter()
            .map(|entry| {
                Ok(EventRow {
                    user_id: entry.user_id.clone(),
                    run_id: entry.event.run_id.to_string(),
                    json: entry
                        .event
                        .to_json()
                        .map_err(|e| StoreError::Corrupt(format!("event: {e}")))?,
                    end: entry.end.clone(),
                    at: entry.event.timestamp.unix_millis(),
                })
            })
            .collect()
    }
}

/// Why a string is not a valid refresh-token or family id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind}: use 1 to 80 letters, digits, '_' or '-'")]
pub struct TokenIdError {
    kind: &'static str,
    value: String,
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses an id (one the server generated, or one read back from a token it signed).
            pub fn parse(value: &str) -> Result<Self, TokenIdError> {
                let ok = (1..=80).contains(&value.len())
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if ok {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(TokenIdError {
                        kind: $kind,
                        value: value.chars().take(80).collect(),
                    })
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_id!(
    /// One refresh token (its JWT `jti`).
    RefreshTokenId, "refresh token id"
);
token_id!(
    /// A refresh-token family: the chain of refresh tokens that one sign-in leads to, each bought
    /// with the one before.
    RefreshFamilyId, "refresh token family id"
);

/// What presenting a refresh token to its family did (refresh token rotation, OAuth 2.0
/// Security BCP): a token buys the next one once, and a token used twice revokes its chain;
/// except that the token replaced last, presented again shortly after (a client retrying a
/// refresh whose answer it never got), is told the newest token again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was the family's newest: it is spent now, and `next` is the newest.
    Rotated,
    /// The token is the one the newest replaced, presented again within the retry window of
    /// that rotation: nothing changed, and this is the family's newest token, to hand out again.
    Retried(RefreshTokenId),
    /// The token was spent already (an older token of the family): someone else may hold the
    /// chain, so the family is revoked now, its newest token included.
    Reused,
    /// The family was revoked before; nothing changed.
    Revoked,
    /// No such family of this user (never started here, or its user is gone).
    Unknown,
}

impl Rotation {
    /// Whether a rotation at `rotated_at` is still open to a retry at `now` (Unix milliseconds,
    /// the server's clock): less than `retry_within` has passed.
    pub fn retry_open(rotated_at: i64, now: i64, retry_within: std::time::Duration) -> bool {
        now.saturating_sub(rotated_at) < i64::try_from(retry_within.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Everything the server keeps durably. Every method that names a user only sees that user's
/// data: another user's thread or run is `NotFound` / `None`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a user; `Conflict` when the email is taken.
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError>;
    /// A user by (lower-cased) email.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// A user by id.
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError>;

    /// Creates an empty thread.
    async fn create_thread(&self, user: &UserId, title: &str) -> Result<Thread, StoreError>;
    /// The user's threads, most recently updated first.
    async fn threads(&self, user: &UserId) -> Result<Vec<Thread>, StoreError>;
    /// One thread of the user.
    async fn thread(&self, user: &UserId, id: &ThreadId) -> Result<Option<Thread>, StoreError>;
    /// Deletes a thread and its messages; false when the user has no such thread.
    async fn delete_thread(&self, user: &UserId, id: &ThreadId) -> Result<bool, StoreError>;
    /// The messages of a thread, oldest first; `NotFound` when the user has no such thread.
    async fn messages(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<Message>, StoreError>;

    /// Stores a user message and its run (state running) in one transaction, creating the thread
    /// when none is given. A `client_message_id` seen before returns the earlier message and run.
    /// `NotFound` when the given thread is not the user's.
    async fn accept_message(&self, message: NewMessage) -> Result<Accepted, StoreError>;
    /// The user's message sent with this `client_message_id`, if one was stored.
    async fn message_by_client_id(&self, user: &UserId, client_message_id: &str)
    -> Result<Option<Message>, StoreError>;
    /// Removes a run that could not start, and its message; and its thread too when
    /// `created_thread` (storing the message created it) and no other message is in it (one
    /// may have come since, when the run is discarded late).
    async fn discard_run(&self, user: &UserId, run: &RunId, created_thread: bool) -> Result<(), StoreError>;
    /// One run of the user.
    async fn run(&self, user: &UserId, id: &RunId) -> Result<Option<RunRecord>, StoreError>;
    /// Every run still marked running, of every user (to close them after a crash).
    async fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// Appends the entries to their users' logs in one transaction, all or none: each event gets
    /// the next seq of its user, in the order given, assigned in the transaction itself, so that
    /// writers racing for one user (other tasks, other processes on the same database) get
    /// consecutive seqs and never the same one. An entry with its run's `end` also finishes that
    /// run (status, duration, timings, model calls) and stores its answer as an assistant
    /// message. Returns the events as stored, in the order given.
    async fn append_events(&self, entries: &[LogEntry]) -> Result<Vec<StoredEvent>, StoreError>;
    /// The user's events with seq > `after`, oldest first, at most `limit`.
    async fn events_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Every event of one run of the user, oldest first.
    async fn run_events(&self, user: &UserId, run: &RunId) -> Result<Vec<Event>, StoreError>;
    /// The user's newest seq (`Seq::ZERO` when none).
    async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError>;
    /// The newest seq of each of `users`, in their order (a backend answers them in one query).
    async fn last_seqs(&self, users: &[UserId]) -> Result<Vec<Seq>, StoreError> {
        let mut lasts = Vec::with_capacity(users.len());
        for user in users {
            lasts.push(self.last_seq(user).await?);
        }
        Ok(lasts)
    }

    /// Starts a refresh-token family of `user` (a sign-in) whose newest token is `first`.
    /// `NotFound` when there is no such user, `Conflict` when the family id is taken.
    async fn start_refresh_family(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        first: &RefreshTokenId,
    ) -> Result<(), StoreError>;
    /// Presents `presented` to the user's `family`, atomically: when it is the family's newest
    /// token, `next` becomes the newest (`Rotated`); when it is the token the newest replaced,
    /// less than `retry_within` after that rotation, nothing changes and
    /// the newest is named (`Retried`: the client retries a refresh whose answer was lost, say
    /// because the rotation outlived its deadline); when it is any other older one, the family is
    /// revoked (`Reused`). Concurrent rotations of one token let exactly one rotate; the others
    /// are `Retried` (or `Reused` with no retry window).
    async fn rotate_refresh_token(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        presented: &RefreshTokenId,
        next: &RefreshTokenId,
        retry_within: std::time::Duration,
    ) -> Result<Rotation, StoreError>;

    /// Revokes the user's `family` (a sign-out): none of its tokens buys a pair any more.
    /// `false` when the user has no such family; revoking a revoked one again is `true`.
    async fn revoke_refresh_family(&self, user: &UserId, family: &RefreshFamilyId) -> Result<bool, StoreError>;

    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Where the data is kept.
    fn tier(&self) -> Tier;

    /// Tells `observer` how long each of the store's operations on its tier takes (the
    /// backends time them with a [`TierClock`]; a store that does not, such as a test's
    /// wrapper, ignores it). The first observer stays.
    fn observe(&self, observer: &std::sync::Arc<dyn TierObserver>) {
        let _ = observer;
    }
}

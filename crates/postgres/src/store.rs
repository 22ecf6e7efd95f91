//! [`PgStore`]: the `Store` trait on PostgreSQL, with the semantics of the embedded SQLite
//! backend (`switchboard_store::SqliteStore`) and the same storage suite to pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, ManagerConfig, Pool, RecyclingMethod, Runtime};
use switchboard_protocol::{
    EntryKey, Event, LogEntry, MessageId, Role, RunEnd, RunId, RunStatus, RunTimings, Seq, ThreadId, Timestamp,
    UnnumberedJson, UserId,
};
use switchboard_store::{
    Accepted, EventRecord, Message, NewMessage, RefreshFamilyId, RefreshTokenId, Rotation, RunRecord, RunState, Store,
    StoreError, StoredEvent, Thread, Tier, User, thread_title,
};
use tokio_postgres::Row;

use crate::connection::{self, Failure, Work};
use crate::{PgOptions, address, schema};

/// The longest start-up waits for the schema (another server may be migrating it).
const MIGRATION_DEADLINE: Duration = Duration::from_secs(30);

/// How much longer than the client's deadline the server gives a statement, or a transaction
/// left idle, before it ends it.
const SERVER_GRACE: Duration = Duration::from_secs(1);

/// The session settings that make the server end what a vanished client left: a statement
/// running past the deadline whose cancel did not reach the server, and above all a transaction
/// left open (holding its locks, those of `user_logs` rows too) by a client cut off mid-way
/// behind a stalled network, which the server would otherwise keep until TCP gives up on the
/// socket, hours later. No operation of the store runs that long: its caller has been told
/// `TimedOut` by then. Added to any `options` the URL has.
fn server_deadlines(given: Option<&str>, query_timeout: Duration) -> String {
    let limit = (query_timeout + SERVER_GRACE).as_millis();
    let ours = format!("-c statement_timeout={limit} -c idle_in_transaction_session_timeout={limit}");
    match given {
        Some(given) if !given.trim().is_empty() => format!("{given} {ours}"),
        _ => ours,
    }
}

/// The PostgreSQL store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    place: String,
    options: PgOptions,
    /// Appends so far, to forget old batch keys now and then.
    appends: Arc<AtomicU64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("address", &self.place).finish()
    }
}

impl PgStore {
    /// Connects to the database of `url` (`postgres://user:password@host:port/database`, or
    /// libpq's `key=value` form) and brings its schema up to date. The errors name PostgreSQL,
    /// the address and what failed, never the password.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        options.check()?;
        let mut config = crate::parse(url)?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("switchboard");
        config.options(server_deadlines(config.get_options(), options.query_timeout));
        let place = address::of(&config);
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                // A connection that is closed is not handed out; a lease cut short never comes back.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            // tokio-postgres's own connect timeout covers the TCP connect only; this covers the
            // server's handshake too (a server that accepts and says nothing).
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot make a pool of connections to {place}: {e}")))?;
        let store = Self {
            pool,
            place,
            options,
            appends: Arc::default(),
        };
        let migrated = store.place.clone();
        let limit = MIGRATION_DEADLINE.max(options.query_timeout);
        let found = connection::within(
            &store.pool,
            &store.place,
            options.connect_timeout,
            limit,
            move |client| schema::migrate(client, migrated),
        )
        .await
        .map_err(|error| match error {
            // At start-up, say where: there is no request to blame.
            StoreError::TimedOut { tier, after } => StoreError::Unavailable {
                tier,
                reason: format!(
                    "cannot connect to {}: it did not answer within {} ms",
                    store.place,
                    after.as_millis()
                ),
            },
            other => other,
        })?;
        tracing::debug!(database = %store.place, found, "connected to PostgreSQL");
        Ok(store)
    }

    /// `host:port/database`, for messages.
    pub fn address(&self) -> &str {
        &self.place
    }

    /// The options it was connected with.
    pub fn options(&self) -> PgOptions {
        self.options
    }

    /// Forgets the keys of batches stored longer ago than `BATCH_KEYS_KEPT`, some at a time.
    async fn forget_old_batches(&self) {
        let before = now_millis() - BATCH_KEYS_KEPT.as_millis() as i64;
        let forgotten = self
            .with(move |client| {
                Box::pin(async move {
                    let forget = client
                        .prepare_cached(
                            "DELETE FROM log_batches WHERE key IN
                             (SELECT key FROM log_batches WHERE stored_at < $1 ORDER BY stored_at LIMIT 10000)",
                        )
                        .await?;
                    Ok(client.execute(&forget, &[&before]).await?)
                })
            })
            .await;
        match forgotten {
            Ok(count) => tracing::debug!(count, "forgot the keys of old event-log batches"),
            Err(error) => tracing::warn!(%error, "forgetting old event-log batch keys failed; trying again later"),
        }
    }

    /// Runs `work` on a pooled connection under the query deadline.
    async fn with<T>(
        &self,
        work: impl for<'c> FnOnce(&'c mut ClientWrapper) -> Work<'c, T> + Send,
    ) -> Result<T, StoreError> {
        connection::within(
            &self.pool,
            &self.place,
            self.options.connect_timeout,
            self.options.query_timeout,
            work,
        )
        .await
    }
}

fn now_millis() -> i64 {
    Timestamp::now().unix_millis()
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn timestamp(millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(millis).ok_or_else(|| corrupt("timestamp", millis))
}

fn parse_id<T>(
    what: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, switchboard_protocol::IdError>,
) -> Result<T, StoreError> {
    parse(text).map_err(|e| corrupt(what, e))
}

/// A value of a row, read as a plain value first so that a wrong type is `Corrupt`, not a panic.
fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| corrupt("a stored row", e))
}

/// The text as PostgreSQL can keep it: a `text` value cannot hold the NUL character (SQLite's
/// can), so it becomes U+FFFD, the replacement character, rather than an error that would refuse
/// a user's message or, in a model's answer, fail a whole batch of the event log.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

const USER_COLUMNS: &str = "id, email, password_hash, created_at";
const THREAD_COLUMNS: &str = "id, user_id, title, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, thread_id, role, text, run_id, client_message_id, created_at";
const RUN_COLUMNS: &str =
    "id, user_id, thread_id, message_id, status, started_at, finished_at, duration_ms, timings, model_calls, missing";

fn to_user(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id("user id", get(row, 0)?, UserId::parse)?,
        email: get(row, 1)?,
        password_hash: get(row, 2)?,
        created_at: timestamp(get(row, 3)?)?,
    })
}

fn to_thread(row: &Row) -> Result<Thread, StoreError> {
    Ok(Thread {
        id: parse_id("thread id", get(row, 0)?, ThreadId::parse)?,
        user_id: parse_id("user id", get(row, 1)?, UserId::parse)?,
        title: get(row, 2)?,
        created_at: timestamp(get(row, 3)?)?,
        updated_at: timestamp(get(row, 4)?)?,
    })
}

fn to_message(row: &Row) -> Result<Message, StoreError> {
    let role: &str = get(row, 2)?;
    let run_id: Option<&str> = get(row, 4)?;
    Ok(Message {
        id: parse_id("message id", get(row, 0)?, MessageId::parse)?,
        thread_id: parse_id("thread id", get(row, 1)?, ThreadId::parse)?,
        role: match role {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(corrupt("message role", other)),
        },
        text: get(row, 3)?,
        run_id: run_id.map(|r| parse_id("run id", r, RunId::parse)).transpose()?,
        client_message_id: get(row, 5)?,
        created_at: timestamp(get(row, 6)?)?,
    })
}

fn to_run(row: &Row) -> Result<RunRecord, StoreError> {
    let status: &str = get(row, 4)?;
    let state = match status {
        "running" => RunState::Running,
        other => RunState::Finished(RunStatus::parse(other).ok_or_else(|| corrupt("run status", other))?),
    };
    let finished_at: Option<i64> = get(row, 6)?;
    let duration_ms: Option<i64> = get(row, 7)?;
    let timings: Option<&str> = get(row, 8)?;
    let model_calls: Option<&str> = get(row, 9)?;
    let missing: Option<&str> = get(row, 10)?;
    Ok(RunRecord {
        id: parse_id("run id", get(row, 0)?, RunId::parse)?,
        user_id: parse_id("user id", get(row, 1)?, UserId::parse)?,
        thread_id: parse_id("thread id", get(row, 2)?, ThreadId::parse)?,
        message_id: parse_id("message id", get(row, 3)?, MessageId::parse)?,
        state,
        started_at: timestamp(get(row, 5)?)?,
        finished_at: finished_at.map(timestamp).transpose()?,
        duration_ms: duration_ms.map(|d| d.max(0) as u64),
        timings: timings
            .map(|t| serde_json::from_str::<RunTimings>(t).map_err(|e| corrupt("run timings", e)))
            .transpose()?,
        model_calls: model_calls
            .map(|c| serde_json::from_str(c).map_err(|e| corrupt("run model calls", e)))
            .transpose()?
            .unwrap_or_default(),
        missing: missing
            .map(|m| serde_json::from_str(m).map_err(|e| corrupt("run's missing agents", e)))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn to_event_record(row: &Row) -> Result<EventRecord, StoreError> {
    let seq: i64 = get(row, 0)?;
    Ok(EventRecord {
        seq: Seq::new(u64::try_from(seq).map_err(|e| corrupt("seq", e))?),
        json: get(row, 1)?,
    })
}

/// Every row of a query, converted.
fn all<T>(rows: &[Row], convert: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(convert).collect()
}

/// The user message of `user` sent with `client_id`, if any.
async fn message_by_client_id(client: &ClientWrapper, user: &str, client_id: &str) -> Result<Option<Message>, Failure> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND client_message_id = $2 AND role = 'user'"
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&statement, &[&user, &client_id]).await?;
    Ok(row.as_ref().map(to_message).transpose()?)
}

/// What a repeated `client_message_id` gives: the earlier message and its run.
fn duplicate(earlier: Message) -> Result<Accepted, StoreError> {
    let run_id = earlier
        .run_id
        .clone()
        .ok_or_else(|| StoreError::Corrupt("a user message without its run".into()))?;
    Ok(Accepted {
        thread_id: earlier.thread_id.clone(),
        message: earlier,
        run_id,
        duplicate: true,
        created_thread: false,
    })
}

/// Stores one user message and its run (and its thread, when it starts one), in one
/// transaction. A message racing another with the same `client_message_id` waits for it (the
/// unique index) and then answers with it.
fn accept(client: &mut ClientWrapper, message: NewMessage) -> Work<'_, Accepted> {
    Box::pin(async move {
        let user = message.user_id.to_string();
        if let Some(client_id) = &message.client_message_id
            && let Some(earlier) = message_by_client_id(client, &user, client_id).await?
        {
            return Ok(duplicate(earlier)?);
        }
        let now = now_millis();
        let tx = client.transaction().await?;
        let created_thread = message.thread_id.is_none();
        let thread_id = match &message.thread_id {
            Some(thread) => {
                let touch = tx
                    .prepare_cached("UPDATE threads SET updated_at = $1 WHERE id = $2 AND user_id = $3")
                    .await?;
                if tx.execute(&touch, &[&now, &thread.as_str(), &user]).await? == 0 {
                    return Err(StoreError::NotFound(format!("thread {thread}")).into());
                }
                thread.clone()
            }
            None => {
                let thread = ThreadId::generate();
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO threads (id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                    )
                    .await?;
                tx.execute(
                    &insert,
                    &[&thread.as_str(), &user, &storable(thread_title(&message.text)), &now],
                )
                .await?;
                thread
            }
        };
        let insert = tx
            .prepare_cached(
                "INSERT INTO messages (id, thread_id, user_id, role, text, run_id, client_message_id, created_at)
                 VALUES ($1, $2, $3, 'user', $4, $5, $6, $7)
                 ON CONFLICT (user_id, client_message_id) DO NOTHING",
            )
            .await?;
        let inserted = tx
            .execute(
                &insert,
                &[
                    &message.message_id.as_str(),
                    &thread_id.as_str(),
                    &user,
                    &message.text,
                    &message.run_id.as_str(),
                    &message.client_message_id,
                    &now,
                ],
            )
            .await?;
        if inserted == 0 {
            // Another transaction stored this `client_message_id` first (and has committed:
            // the insert waited for it). Nothing of this one is kept, the thread included.
            tx.rollback().await?;
            let client_id = message.client_message_id.as_deref().unwrap_or_default();
            let earlier = message_by_client_id(client, &user, client_id)
                .await?
                .ok_or_else(|| StoreError::Backend("a repeated message vanished while it was stored".into()))?;
            return Ok(duplicate(earlier)?);
        }
        let run = tx
            .prepare_cached(
                "INSERT INTO runs (id, user_id, thread_id, message_id, status, started_at)
                 VALUES ($1, $2, $3, $4, 'running', $5)",
            )
            .await?;
        tx.execute(
            &run,
            &[
                &message.run_id.as_str(),
                &user,
                &thread_id.as_str(),
                &message.message_id.as_str(),
                &now,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Accepted {
            message: Message {
                id: message.message_id,
                thread_id: thread_id.clone(),
                role: Role::User,
                text: message.text,
                run_id: Some(message.run_id.clone()),
                client_message_id: message.client_message_id,
                created_at: timestamp(now)?,
            },
            run_id: message.run_id,
            thread_id,
            duplicate: false,
            created_thread,
        })
    })
}

/// An event on its way into the table: its JSON written, its seq to come.
struct EventRow {
    user_id: UserId,
    run_id: String,
    json: UnnumberedJson,
    end: Option<RunEnd>,
    at: i64,
}

/// Appends a batch in one statement, one round trip: each user's `user_logs` row is advanced
/// by the number of the user's events in the batch, the rows locked in the order of the user
/// ids (so two batches of several users cannot deadlock); each event takes the next seq of its
/// user in the order given, and its JSON is the text `NewEvent::to_json` wrote with `{"seq":N,`
/// before it, byte for byte what `UnnumberedJson::numbered` makes; the batch's key is kept with
/// its users' new last seqs (`log_batches`: a batch stored before fails the statement on its
/// key, and nothing of it is stored again). The statement answers each user's new last seq;
/// the caller numbers its records from it the same way.
const APPEND: &str = r#"
WITH batch AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS b (user_id, run_id, rest, n)
),
advanced AS (
    INSERT INTO user_logs (user_id, last_seq)
    SELECT user_id, count(*) FROM batch GROUP BY user_id ORDER BY user_id COLLATE "C"
    ON CONFLICT (user_id) DO UPDATE SET last_seq = user_logs.last_seq + EXCLUDED.last_seq
    RETURNING user_id, last_seq
),
numbered AS (
    SELECT batch.user_id, batch.run_id, batch.rest,
           advanced.last_seq - count(*) OVER mine + row_number() OVER (mine ORDER BY batch.n) AS seq
    FROM batch JOIN advanced USING (user_id)
    WINDOW mine AS (PARTITION BY batch.user_id)
),
stored AS (
    INSERT INTO events (user_id, seq, run_id, json)
    SELECT user_id, seq, run_id, '{"seq":' || seq || ',' || rest FROM numbered
),
remembered AS (
    INSERT INTO log_batches (key, lasts, stored_at)
    SELECT $4, array_agg(last_seq ORDER BY user_id COLLATE "C"), $5 FROM advanced
)
SELECT user_id, last_seq FROM advanced
"#;

/// The constraint a batch stored before runs into.
const BATCH_KEY: &str = "log_batches_pkey";

/// How long a batch's key is kept: a batch tried again within it is stored once.
const BATCH_KEYS_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// Every this many appends, a store forgets the batch keys older than `BATCH_KEYS_KEPT`.
const FORGET_EVERY: u64 = 4096;

/// Whether the append failed because its batch was stored before.
fn stored_before(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some(BATCH_KEY)
    })
}

/// The records a batch stored before got: its users' last seqs after it, as it kept them.
async fn earlier(
    client: &ClientWrapper,
    key: &[u8],
    rows: &[EventRow],
    counts: &BTreeMap<&str, i64>,
) -> Result<Vec<StoredEvent>, Failure> {
    let find = client
        .prepare_cached("SELECT lasts FROM log_batches WHERE key = $1")
        .await?;
    let row = client
        .query_opt(&find, &[&key])
        .await?
        .ok_or_else(|| StoreError::Backend("a batch stored before was forgotten while it was tried again".into()))?;
    let lasts: Vec<i64> = get(&row, 0)?;
    if lasts.len() != counts.len() {
        return Err(corrupt("a batch tried again", "it names other users than when it was stored").into());
    }
    let advanced: Vec<(String, i64)> = counts.keys().map(|user| (*user).to_owned()).zip(lasts).collect();
    Ok(number(rows, counts, advanced)?)
}

/// The start of every event's JSON before it is numbered (see `UnnumberedJson`).
const UNNUMBERED_PREFIX: &str = "{\"seq\":0,";

/// Stores the rows: one statement when no run ends among them, else one transaction that also
/// finishes the runs. A batch stored before (its key is kept) is answered as it was then.
fn append_all(client: &mut ClientWrapper, key: Vec<u8>, rows: Vec<EventRow>) -> Work<'_, Vec<StoredEvent>> {
    Box::pin(async move {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        let (mut user_ids, mut run_ids, mut rests) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for row in &rows {
            *counts.entry(row.user_id.as_str()).or_default() += 1;
            let zero = row.json.numbered(Seq::ZERO);
            let rest = zero
                .strip_prefix(UNNUMBERED_PREFIX)
                .ok_or_else(|| corrupt("event", "its JSON does not begin with its seq"))?
                .to_owned();
            user_ids.push(row.user_id.as_str());
            run_ids.push(row.run_id.as_str());
            rests.push(rest);
        }
        let now = now_millis();
        let ends = rows.iter().any(|row| row.end.is_some());
        let append = client.prepare_cached(APPEND).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&user_ids, &run_ids, &rests, &key, &now];
        if !ends {
            return match client.query(&append, &params).await {
                Ok(advanced) => Ok(number(&rows, &counts, users_and_lasts(&advanced)?)?),
                Err(error) if stored_before(&error) => earlier(client, &key, &rows, &counts).await,
                Err(error) => Err(error.into()),
            };
        }
        let tx = client.transaction().await?;
        let advanced = match tx.query(&append, &params).await {
            Ok(advanced) => advanced,
            Err(error) if stored_before(&error) => {
                tx.rollback().await?;
                return earlier(client, &key, &rows, &counts).await;
            }
            Err(error) => return Err(error.into()),
        };
        let stored = number(&rows, &counts, users_and_lasts(&advanced)?)?;
        for row in &rows {
            if let Some(end) = &row.end {
                finish_run(&tx, row.user_id.as_str(), &row.run_id, end, row.at).await?;
            }
        }
        tx.commit().await?;
        Ok(stored)
    })
}

/// The rows `APPEND` answers: each user and its last seq.
fn users_and_lasts(advanced: &[Row]) -> Result<Vec<(String, i64)>, StoreError> {
    advanced.iter().map(|row| Ok((get(row, 0)?, get(row, 1)?))).collect()
}

/// The records of the rows, numbered from each user's new last seq (`advanced`) as `APPEND`
/// numbered them: the user's events in the order given, ending at its last seq.
fn number(
    rows: &[EventRow],
    counts: &BTreeMap<&str, i64>,
    advanced: Vec<(String, i64)>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    for (user, last) in advanced {
        let first = last - counts.get(user.as_str()).copied().unwrap_or_default() + 1;
        next.insert(user, first);
    }
    let mut stored = Vec::with_capacity(rows.len());
    for row in rows {
        let slot = next
            .get_mut(row.user_id.as_str())
            .ok_or_else(|| StoreError::Backend(format!("no seq was given to user {}", row.user_id)))?;
        let seq = Seq::new(u64::try_from(*slot).map_err(|e| corrupt("seq", e))?);
        *slot += 1;
        stored.push(StoredEvent {
            user_id: row.user_id.clone(),
            record: EventRecord {
                seq,
                json: row.json.numbered(seq),
            },
        });
    }
    Ok(stored)
}

/// Stores the run's end, and a completed run's answer as an assistant message.
async fn finish_run(
    tx: &deadpool_postgres::Transaction<'_>,
    user: &str,
    run: &str,
    end: &RunEnd,
    at: i64,
) -> Result<(), Failure> {
    let timings = end
        .timings
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("timings", e))?;
    let model_calls = Some(&end.model_calls)
        .filter(|calls| !calls.is_empty())
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("model calls", e))?;
    let missing = Some(&end.missing)
        .filter(|agents| !agents.is_empty())
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("missing agents", e))?;
    let update = tx
        .prepare_cached(
            "UPDATE runs SET status = $1, finished_at = $2, duration_ms = $3, timings = $4, model_calls = $5,
             missing = $6 WHERE id = $7 AND user_id = $8",
        )
        .await?;
    tx.execute(
        &update,
        &[
            &end.status.as_str(),
            &at,
            &i64::try_from(end.duration_ms).unwrap_or(i64::MAX),
            &timings,
            &model_calls,
            &missing,
            &run,
            &user,
        ],
    )
    .await?;
    if let (RunStatus::Completed, Some(answer)) = (end.status, &end.answer) {
        let insert = tx
            .prepare_cached(
                "INSERT INTO messages (id, thread_id, user_id, role, text, run_id, created_at)
                 SELECT $1, runs.thread_id, runs.user_id, 'assistant', $2, runs.id, $3 FROM runs
                 JOIN threads ON threads.id = runs.thread_id
                 WHERE runs.id = $4 AND runs.user_id = $5",
            )
            .await?;
        let answer = storable(answer.clone());
        tx.execute(&insert, &[&MessageId::generate().as_str(), &answer, &at, &run, &user])
            .await?;
        let touch = tx
            .prepare_cached(
                "UPDATE threads SET updated_at = $1 WHERE id = (SELECT thread_id FROM runs WHERE id = $2 AND user_id = $3)",
            )
            .await?;
        tx.execute(&touch, &[&at, &run, &user]).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let user = User {
            id: UserId::generate(),
            email: storable(email.to_lowercase()),
            password_hash: storable(password_hash.to_owned()),
            created_at: Timestamp::now(),
        };
        let stored = user.clone();
        self.with(move |client| {
            Box::pin(async move {
                let insert = client
                    .prepare_cached("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
                    .await?;
                client
                    .execute(
                        &insert,
                        &[
                            &stored.id.as_str(),
                            &stored.email,
                            &stored.password_hash,
                            &stored.created_at.unix_millis(),
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("the email {} is taken", user.email)),
            other => other,
        })?;
        Ok(user)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = storable(email.to_lowercase());
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&email]).await?;
                Ok(row.as_ref().map(to_user).transpose()?)
            })
        })
        .await
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&id]).await?;
                Ok(row.as_ref().map(to_user).transpose()?)
            })
        })
        .await
    }

    async fn create_thread(&self, user: &UserId, title: &str) -> Result<Thread, StoreError> {
        let now = Timestamp::now();
        let thread = Thread {
            id: ThreadId::generate(),
            user_id: user.clone(),
            title: storable(thread_title(title)),
            created_at: now,
            updated_at: now,
        };
        let stored = thread.clone();
        self.with(move |client| {
            Box::pin(async move {
                let insert = client
                    .prepare_cached(
                        "INSERT INTO threads (id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                    )
                    .await?;
                client
                    .execute(
                        &insert,
                        &[
                            &stored.id.as_str(),
                            &stored.user_id.as_str(),
                            &stored.title,
                            &now.unix_millis(),
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
        .await?;
        Ok(thread)
    }

    async fn threads(&self, user: &UserId) -> Result<Vec<Thread>, StoreError> {
        let user = user.to_string();
        self.with(move |client| {
            Box::pin(async move {
                let sql =
                    format!("SELECT {THREAD_COLUMNS} FROM threads WHERE user_id = $1 ORDER BY updated_at DESC, id");
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[&user]).await?;
                Ok(all(&rows, to_thread)?)
            })
        })
        .await
    }

    async fn thread(&self, user: &UserId, id: &ThreadId) -> Result<Option<Thread>, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {THREAD_COLUMNS} FROM threads WHERE id = $1 AND user_id = $2");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&id, &user]).await?;
                Ok(row.as_ref().map(to_thread).transpose()?)
            })
        })
        .await
    }

    async fn delete_thread(&self, user: &UserId, id: &ThreadId) -> Result<bool, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let delete = tx
                    .prepare_cached("DELETE FROM threads WHERE id = $1 AND user_id = $2")
                    .await?;
                let deleted = tx.execute(&delete, &[&id, &user]).await?;
                if deleted > 0 {
                    let messages = tx.prepare_cached("DELETE FROM messages WHERE thread_id = $1").await?;
                    tx.execute(&messages, &[&id]).await?;
                }
                tx.commit().await?;
                Ok(deleted > 0)
            })
        })
        .await
    }

    async fn messages(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<Message>, StoreError> {
        let (user, thread) = (user.to_string(), thread.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let exists = client
                    .prepare_cached("SELECT 1 FROM threads WHERE id = $1 AND user_id = $2")
                    .await?;
                if client.query_opt(&exists, &[&thread, &user]).await?.is_none() {
                    return Err(StoreError::NotFound(format!("thread {thread}")).into());
                }
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 ORDER BY created_at, position"
                );
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[&thread]).await?;
                Ok(all(&rows, to_message)?)
            })
        })
        .await
    }

    async fn accept_message(&self, mut message: NewMessage) -> Result<Accepted, StoreError> {
        message.text = storable(message.text);
        message.client_message_id = message.client_message_id.map(storable);
        self.with(move |client| accept(client, message)).await
    }

    async fn message_by_client_id(
        &self,
        user: &UserId,
        client_message_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        let (user, client_id) = (user.to_string(), storable(client_message_id.to_owned()));
        self.with(move |client| Box::pin(async move { message_by_client_id(client, &user, &client_id).await }))
            .await
    }

    async fn discard_run(&self, user: &UserId, run: &RunId, created_thread: bool) -> Result<(), StoreError> {
        let (user, run) = (user.to_string(), run.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                if created_thread {
                    let thread = tx
                        .prepare_cached(
                            "DELETE FROM threads WHERE user_id = $2
                             AND id = (SELECT thread_id FROM runs WHERE id = $1 AND user_id = $2)",
                        )
                        .await?;
                    tx.execute(&thread, &[&run, &user]).await?;
                }
                let message = tx
                    .prepare_cached("DELETE FROM messages WHERE run_id = $1 AND user_id = $2 AND role = 'user'")
                    .await?;
                tx.execute(&message, &[&run, &user]).await?;
                let delete = tx
                    .prepare_cached("DELETE FROM runs WHERE id = $1 AND user_id = $2")
                    .await?;
                tx.execute(&delete, &[&run, &user]).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    async fn run(&self, user: &UserId, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let (user, id) = (user.to_string(), id.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND user_id = $2");
                let statement = client.prepare_cached(&sql).await?;
                let row = client.query_opt(&statement, &[&id, &user]).await?;
                Ok(row.as_ref().map(to_run).transpose()?)
            })
        })
        .await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with(move |client| {
            Box::pin(async move {
                let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY started_at, id");
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[]).await?;
                Ok(all(&rows, to_run)?)
            })
        })
        .await
    }

    async fn append_events(&self, entries: &[LogEntry]) -> Result<Vec<StoredEvent>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Written before a connection is taken, so it is held only for the rows.
        let rows = entries
            .iter()
            .map(|entry| {
                Ok(EventRow {
                    user_id: entry.user_id.clone(),
                    run_id: entry.event.run_id.to_string(),
                    json: entry.event.to_json().map_err(|e| corrupt("event", e))?,
                    end: entry.end.clone(),
                    at: entry.event.timestamp.unix_millis(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let key = EntryKey::of_batch(entries).get().to_be_bytes().to_vec();
        let stored = self.with(move |client| append_all(client, key, rows)).await?;
        if self.appends.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            let store = self.clone();
            tokio::spawn(async move { store.forget_old_batches().await });
        }
        Ok(stored)
    }

    async fn events_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let user = user.to_string();
        let after = i64::try_from(after.get()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |client| {
            Box::pin(async move {
                let statement = client
                    .prepare_cached(
                        "SELECT seq, json FROM events WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .await?;
                let rows = client.query(&statement, &[&user, &after, &limit]).await?;
                Ok(all(&rows, to_event_record)?)
            })
        })
        .await
    }

    async fn run_events(&self, user: &UserId, run: &RunId) -> Result<Vec<Event>, StoreError> {
        let (user, run) = (user.to_string(), run.to_string());
        let records = self
            .with(move |client| {
                Box::pin(async move {
                    // Through the user's key: only crash recovery asks, for the few runs a
                    // crash left open, so the log keeps no index by run for it.
                    let statement = client
                        .prepare_cached("SELECT seq, json FROM events WHERE user_id = $1 AND run_id = $2 ORDER BY seq")
                        .await?;
                    let rows = client.query(&statement, &[&user, &run]).await?;
                    Ok(all(&rows, to_event_record)?)
                })
            })
            .await?;
        records.iter().map(EventRecord::event).collect()
    }

    async fn last_seq(&self, user: &UserId) -> Result<Seq, StoreError> {
        let user = user.to_string();
        self.with(move |client| {
            Box::pin(async move {
                let statement = client
                    .prepare_cached("SELECT last_seq FROM user_logs WHERE user_id = $1")
                    .await?;
                let last: i64 = match client.query_opt(&statement, &[&user]).await? {
                    Some(row) => get(&row, 0)?,
                    None => 0,
                };
                Ok(Seq::new(last.max(0) as u64))
            })
        })
        .await
    }

    async fn start_refresh_family(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        first: &RefreshTokenId,
    ) -> Result<(), StoreError> {
        let (user, family, first) = (user.to_string(), family.to_string(), first.to_string());
        let (named, whose) = (family.clone(), user.clone());
        let inserted = self
            .with(move |client| {
                Box::pin(async move {
                    // Inserting from `users` makes a missing user a row count of 0, not an error.
                    let insert = client
                        .prepare_cached(
                            "INSERT INTO refresh_families (id, user_id, current_token, created_at, rotated_at)
                             SELECT $1, id, $3, $4, $4 FROM users WHERE id = $2",
                        )
                        .await?;
                    Ok(client
                        .execute(&insert, &[&family, &user, &first, &now_millis()])
                        .await?
                        > 0)
                })
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("the refresh family {named} exists")),
                other => other,
            })?;
        if !inserted {
            return Err(StoreError::NotFound(format!("user {whose}")));
        }
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        presented: &RefreshTokenId,
        next: &RefreshTokenId,
    ) -> Result<Rotation, StoreError> {
        let (user, family) = (user.to_string(), family.to_string());
        let (presented, next) = (presented.to_string(), next.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                // The row is locked before it is compared, so the compare and the swap are one
                // step for every other transaction, of this process or another.
                let find = tx
                    .prepare_cached(
                        "SELECT current_token, revoked_at FROM refresh_families WHERE id = $1 AND user_id = $2
                         FOR UPDATE",
                    )
                    .await?;
                let found = tx.query_opt(&find, &[&family, &user]).await?;
                let now = now_millis();
                let rotation = match found {
                    None => Rotation::Unknown,
                    Some(row) => {
                        let current: &str = get(&row, 0)?;
                        let revoked_at: Option<i64> = get(&row, 1)?;
                        if revoked_at.is_some() {
                            Rotation::Revoked
                        } else if current == presented {
                            let rotate = tx
                                .prepare_cached(
                                    "UPDATE refresh_families SET current_token = $1, rotated_at = $2 WHERE id = $3",
                                )
                                .await?;
                            tx.execute(&rotate, &[&next, &now, &family]).await?;
                            Rotation::Rotated
                        } else {
                            let revoke = tx
                                .prepare_cached("UPDATE refresh_families SET revoked_at = $1 WHERE id = $2")
                                .await?;
                            tx.execute(&revoke, &[&now, &family]).await?;
                            Rotation::Reused
                        }
                    }
                };
                tx.commit().await?;
                Ok(rotation)
            })
        })
        .await
    }

    async fn revoke_refresh_family(&self, user: &UserId, family: &RefreshFamilyId) -> Result<bool, StoreError> {
        let (user, family) = (user.to_string(), family.to_string());
        self.with(move |client| {
            Box::pin(async move {
                let revoke = client
                    .prepare_cached(
                        "UPDATE refresh_families SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND user_id = $3",
                    )
                    .await?;
                Ok(client.execute(&revoke, &[&now_millis(), &family, &user]).await? > 0)
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|client| {
            Box::pin(async move {
                client.simple_query("SELECT 1").await?;
                Ok(())
            })
        })
        .await
    }

    fn tier(&self) -> Tier {
        Tier::Postgres
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_deadlines_follow_the_query_deadline_and_keep_the_urls_own_options() {
        let cases = [
            (
                None,
                2_000,
                "-c statement_timeout=3000 -c idle_in_transaction_session_timeout=3000",
            ),
            (
                Some("-c search_path=chat"),
                500,
                "-c search_path=chat -c statement_timeout=1500 -c idle_in_transaction_session_timeout=1500",
            ),
            (
                Some("  "),
                500,
                "-c statement_timeout=1500 -c idle_in_transaction_session_timeout=1500",
            ),
        ];
        for (given, query_ms, expected) in cases {
            assert_eq!(
                server_deadlines(given, Duration::from_millis(query_ms)),
                expected,
                "{given:?}"
            );
        }
    }
}

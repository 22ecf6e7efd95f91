//! Switchboard's workload analytics on ClickHouse: [`ClickHouseAnalytics`], an
//! [`AnalyticsStore`] over ClickHouse's HTTP interface, for ClickHouse 18.16 (Debian's) and
//! current releases.
//!
//! Calls are stored one row each (`workload_events`, ordered by user and time), and
//! materialized views of every insert keep roll-ups beside them: the sums of each roll-up cell
//! (clock hour, model, feature, batch flag) with the calls left out, the sketch bins of latency
//! and of prompt size per hour of the day, model, feature and batch flag (the only grain at
//! which the summary merges sketches) and per clock hour, and the calls and cost of each
//! prompt (keyed by two 64-bit hashes of its hash's text), all told and per day. A summary of all of a user's calls reads the roll-ups of all
//! time; one of a bounded range reads its whole hours (cells, bins) and whole days (prompts)
//! from the clock-hour and daily roll-ups and only the part of an hour or day at each end from
//! the rows. [`SummaryBuilder`] then turns them into the same [`Summary`] the embedded
//! backend gives: counts and sums exact (costs summed as integers, so in any order to the same
//! bits), percentiles within [`switchboard_store::PERCENTILE_RELATIVE_ERROR`].
//!
//! `connect` brings a database of an older schema to the current one (version 3) once, building
//! what it lacks from the rows: version 1 lacks the clock-hour bins and the daily prompts,
//! versions 1 and 2 the prompts keyed by numbers (their prompts keyed by text are dropped).
//!
//! An upload is one insert of one block, so the calls are stored whole or not at all; the views
//! write their roll-ups in the same insert, after the calls (ClickHouse has no transaction
//! across tables: a summary that reads them in between sees counts that differ and reads
//! again).
//!
//! Every request runs under a deadline ([`ClickHouseOptions`]); one that does not finish in
//! time is [`StoreError::TimedOut`], a server that cannot be reached or cuts the connection is
//! [`StoreError::Unavailable`], and an answer that is not what was asked for is
//! [`StoreError::Corrupt`]. Errors name ClickHouse, the host and port and the database, never
//! the password.

mod http;
mod rows;
mod sql;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::UserId;
use switchboard_store::{
    AnalyticsStore, Cell, Grouped, Sketch, Slice, StoreError, Summary, SummaryBuilder, Tier, TierObserver, TimeRange,
    Upload, UploadKey, WorkloadEvent, upload_digest,
};

use crate::http::{Address, Body, Server};
use crate::sql::Sketched;

/// Deadlines of the requests to ClickHouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickHouseOptions {
    /// Every query, `connect`'s checks and `ping` (default 2 s).
    pub query_timeout: Duration,
    /// An upload of calls (default 30 s: ten megabytes of rows over a slow link).
    pub insert_timeout: Duration,
}

impl Default for ClickHouseOptions {
    fn default() -> Self {
        ClickHouseOptions {
            query_timeout: Duration::from_secs(2),
            insert_timeout: Duration::from_secs(30),
        }
    }
}

/// How many times a summary is read again when an upload landed between its queries (each
/// query reads the parts of the table there are when it starts).
const SUMMARY_ATTEMPTS: usize = 3;

/// How many times the move to the current schema is made again when calls were uploaded while
/// it read the rows.
const MIGRATION_ATTEMPTS: usize = 3;

/// About how many calls the move to the current schema rolls up in one statement (whole days:
/// a day with more is one statement).
const MIGRATION_CHUNK_CALLS: u64 = 1_000_000;

/// Consecutive runs of `days` (day, calls), in order, of about `calls` calls each (a day with
/// more is a run of its own), as days `first..end`.
fn chunks(days: &[(i64, u64)], calls: u64) -> Vec<(i64, i64)> {
    let mut chunks: Vec<(i64, i64)> = Vec::new();
    let mut open: Option<(i64, i64, u64)> = None;
    for &(day, count) in days {
        open = match open {
            Some((first, _, counted)) if counted + count <= calls => Some((first, day + 1, counted + count)),
            Some((first, end, _)) => {
                chunks.push((first, end));
                Some((day, day + 1, count))
            }
            None => Some((day, day + 1, count)),
        };
    }
    chunks.extend(open.map(|(first, end, _)| (first, end)));
    chunks
}

/// Workload data in a ClickHouse database.
#[derive(Debug, Clone)]
pub struct ClickHouseAnalytics {
    server: Server,
    options: ClickHouseOptions,
    /// Users whose calls are to be counted: the users asked for while a count runs are counted
    /// together, in one query (every run asks, at its start).
    counts: Grouped<UserId, Result<u64, StoreError>>,
    /// The upload keys being stored by this process, one upload of a key at a time.
    keys: KeyLocks,
    /// When the records of expired upload keys were last deleted.
    forgot_at: Arc<Mutex<Option<std::time::Instant>>>,
}

/// How often the records of expired upload keys are deleted.
const FORGET_UPLOADS_EVERY: Duration = Duration::from_secs(3600);

/// A record of an upload's key (a row of `workload_uploads`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UploadRecord {
    /// The hex of the calls' digest.
    digest: String,
    /// The id its calls carry.
    upload: u64,
    /// How many.
    calls: u64,
    /// Whether they were stored.
    done: bool,
}

/// The query id an upload's insert runs under, and the count that settles it: ClickHouse runs
/// one query of an id at a time, so a count refused by it tells an insert still running.
fn upload_query_id(upload: u64) -> String {
    format!("switchboard-upload-{upload:016x}")
}

/// A user and one of its upload keys.
type KeyName = (String, String);

/// One lock per upload key being stored (per user and key), dropped when no upload holds it.
#[derive(Debug, Clone, Default)]
struct KeyLocks {
    held: Arc<Mutex<HashMap<KeyName, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A held [`KeyLocks`] lock; dropping it lets the next upload of the key in.
struct KeyGuard {
    locks: KeyLocks,
    name: KeyName,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    async fn lock(&self, user: &str, key: &str) -> KeyGuard {
        let name = (user.to_owned(), key.to_owned());
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(held.entry(name.clone()).or_default())
        };
        KeyGuard {
            locks: self.clone(),
            name,
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.locks.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only the map holds it: no upload holds or waits for it.
        if held.get(&self.name).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            held.remove(&self.name);
        }
    }
}

/// The most users one query counts the calls of.
const COUNT_GROUP: usize = 256;

impl ClickHouseAnalytics {
    /// Connects to the database that `url` names (`http://host:port/?database=NAME`; a user
    /// and password in the URL's userinfo or in `user`/`password` parameters), checks that the
    /// server answers and creates the tables, or checks the schema they have: a schema newer
    /// than this version knows is refused. The database must exist.
    pub async fn connect(url: &str, options: ClickHouseOptions) -> Result<Self, StoreError> {
        let server = Server::new(Address::parse(url)?)?;
        let store = ClickHouseAnalytics {
            server,
            options,
            counts: Grouped::new(COUNT_GROUP),
            keys: KeyLocks::default(),
            forgot_at: Arc::new(Mutex::new(None)),
        };
        store.server.ping(options.query_timeout, "checking the server").await?;
        store
            .execute(
                sql::CREATE_SCHEMA_VERSION.to_owned(),
                "creating the schema_version table",
            )
            .await?;
        let answer = store
            .query(
                "SELECT max(version), count() FROM schema_version FORMAT TabSeparated".to_owned(),
                "reading the schema version",
            )
            .await?;
        let (version, rows) = store.one_row(&answer, "the schema version", |row| Ok((row.u64(0)?, row.u64(1)?)))?;
        if version > u64::from(sql::SCHEMA_VERSION) {
            return Err(StoreError::Corrupt(format!(
                "{}: the database's workload schema is version {version}, newer than this server's {}; \
                 run a newer server",
                store.server.address.place(),
                sql::SCHEMA_VERSION
            )));
        }
        let tables = [
            (sql::CREATE_EVENTS.to_owned(), "creating the workload_events table"),
            (sql::CREATE_UPLOADS.to_owned(), "creating the workload_uploads table"),
            (sql::create_cells(), "creating the workload_cells table"),
            (sql::CREATE_BINS.to_owned(), "creating the workload_bins table"),
            (sql::create_cells_view(), "creating the workload_cells view"),
        ];
        let [latency_view, prompt_view] = sql::create_bins_views();
        for (statement, doing) in tables.into_iter().chain([
            (latency_view, "creating the latency bins view"),
            (prompt_view, "creating the prompt size bins view"),
        ]) {
            store.execute(statement, doing).await?;
        }
        store.add_upload_column().await?;
        if rows > 0 && version < sql::VERSION_3 {
            store.build_from_rows(version).await?;
        } else {
            store.create_hour_bins().await?;
            store.create_prompt_keys().await?;
        }
        if rows == 0 || version < u64::from(sql::SCHEMA_VERSION) {
            store
                .execute(
                    format!("INSERT INTO schema_version (version) VALUES ({})", sql::SCHEMA_VERSION),
                    "writing the schema version",
                )
                .await?;
        }
        store.forget_uploads().await;
        Ok(store)
    }

    /// Adds the column of each call's upload to a table of schema 3 or older (schema 4), once:
    /// the calls stored before have upload 0, as calls sent without a key.
    async fn add_upload_column(&self) -> Result<(), StoreError> {
        let answer = self
            .query(sql::HAS_UPLOAD_COLUMN.to_owned(), "looking for the upload column")
            .await?;
        if self.one_row(&answer, "the upload column", |row| row.u64(0))? == 0 {
            self.execute(sql::ADD_UPLOAD_COLUMN.to_owned(), "adding the upload column")
                .await?;
        }
        Ok(())
    }

    /// Deletes the records of upload keys no longer honoured, at most once in
    /// [`FORGET_UPLOADS_EVERY`] (at `connect`, then from the uploads sent with a key). They are
    /// left out of every reading from the moment they expire, so this only keeps the table
    /// small; a failure is logged and tried again next time.
    async fn forget_uploads(&self) {
        {
            let mut last = self.forgot_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < FORGET_UPLOADS_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if let Err(error) = self
            .execute(sql::forget_uploads(), "deleting the upload keys no longer honoured")
            .await
        {
            tracing::warn!(%error, "could not delete the upload keys no longer honoured; trying again later");
            *self.forgot_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
    }

    /// The records of `user`'s upload `key` still honoured, oldest first.
    async fn upload_records(&self, user: &str, key: &str) -> Result<Vec<UploadRecord>, StoreError> {
        let answer = self
            .query(sql::upload_records(user, key), "reading an upload's key")
            .await?;
        rows::rows(&answer, 4)
            .and_then(|rows| {
                rows.iter()
                    .map(|row| {
                        Ok(UploadRecord {
                            digest: row.hex_text(0)?,
                            upload: row.u64(1)?,
                            calls: row.u64(2)?,
                            done: row.flag(3)?,
                        })
                    })
                    .collect()
            })
            .map_err(|e| self.corrupt("the records of an upload's key", &e))
    }

    /// Writes a record of `user`'s upload `key`.
    async fn record_upload(&self, user: &str, key: &str, record: &UploadRecord) -> Result<(), StoreError> {
        let doing = if record.done {
            "recording an upload's key as stored"
        } else {
            "recording an upload's key"
        };
        self.execute(
            sql::record_upload(user, key, &record.digest, record.upload, record.calls, record.done),
            doing,
        )
        .await
    }

    /// Stores `events` of `user` in one insert of one block (one part: stored whole or not at
    /// all), with `upload` (its id, and the query id it runs under) on each row when given.
    async fn insert_calls(&self, user: &str, events: &[WorkloadEvent], upload: Option<u64>) -> Result<(), StoreError> {
        // As in the embedded store, whose integers are signed 64-bit: every backend keeps the
        // same range of token counts.
        if let Some(event) = events
            .iter()
            .find(|e| i64::try_from(e.input_tokens).is_err() || i64::try_from(e.output_tokens).is_err())
        {
            return Err(StoreError::Corrupt(format!(
                "a call of {} with {} prompt and {} answer tokens cannot be stored",
                event.model, event.input_tokens, event.output_tokens
            )));
        }
        let mut rows = Vec::with_capacity(events.len() * 104);
        rows::write_events(&mut rows, user, events, upload);
        // One block for the whole batch, so that it is one part: stored whole or not at all.
        let block = events.len().max(1_048_576);
        let mut settings = vec![("max_insert_block_size", block.to_string())];
        let columns = match upload {
            Some(upload) => {
                settings.push(("query_id", upload_query_id(upload)));
                format!("{}, upload", sql::EVENT_COLUMNS)
            }
            None => sql::EVENT_COLUMNS.to_owned(),
        };
        self.server
            .run(
                Body::Insert {
                    query: format!("INSERT INTO workload_events ({columns}) FORMAT RowBinary"),
                    rows,
                },
                &settings,
                self.options.insert_timeout,
                "storing workload calls",
            )
            .await?;
        Ok(())
    }

    /// The calls of `user`'s upload `upload` stored, counted under the upload's query id: a
    /// `StoreError::Conflict` when its insert is still running on the server.
    async fn upload_calls(&self, user: &str, upload: u64) -> Result<u64, StoreError> {
        let answer = self
            .server
            .run(
                Body::Query(sql::upload_calls(user, upload)),
                &[
                    ("query_id", upload_query_id(upload)),
                    ("max_execution_time", self.query_limit().to_string()),
                ],
                self.options.query_timeout,
                "counting the calls of an upload",
            )
            .await?;
        self.one_row(&answer, "the calls of an upload", |row| row.u64(0))
    }

    /// The query deadline in whole seconds (at least 1), for the server to stop a query the
    /// client has given up on.
    fn query_limit(&self) -> u64 {
        self.options.query_timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Creates the hourly bins and their views (schema version 2, when missing), the views after
    /// the table they write to.
    async fn create_hour_bins(&self) -> Result<(), StoreError> {
        self.execute(
            sql::CREATE_HOUR_BINS.to_owned(),
            "creating the workload_hour_bins table",
        )
        .await?;
        for (view, _) in sql::create_hour_bins_views() {
            self.execute(view, "creating an hourly bins view").await?;
        }
        Ok(())
    }

    /// Creates the prompt roll-ups keyed by numbers and their views (schema version 3, when
    /// missing), the views after the tables they write to.
    async fn create_prompt_keys(&self) -> Result<(), StoreError> {
        let statements = [
            (
                sql::CREATE_PROMPT_KEYS.to_owned(),
                "creating the workload_prompt_keys table",
            ),
            (
                sql::CREATE_DAY_PROMPT_KEYS.to_owned(),
                "creating the workload_day_prompt_keys table",
            ),
            (sql::create_prompt_keys_view(), "creating the workload_prompt_keys view"),
            (
                sql::create_day_prompt_keys_view(),
                "creating the workload_day_prompt_keys view",
            ),
        ];
        for (statement, doing) in statements {
            self.execute(statement, doing).await?;
        }
        Ok(())
    }

    /// Brings a database of schema `version` (1 or 2) to the current one: the roll-ups it lacks
    /// (version 1: the hourly bins; both: the prompt keys), made anew (whatever an earlier
    /// attempt left) and built from the rows, in chunks of whole days of about
    /// [`MIGRATION_CHUNK_CALLS`] calls each (a chunk's aggregation fits the server's memory
    /// limit; each statement under the insert deadline); then the prompts keyed by text are
    /// dropped. The views are made before the rows are read, so that no upload is missed; an
    /// upload that lands while the rows are read would be counted twice, so the calls are
    /// counted before and after and the whole is made again when they differ.
    async fn build_from_rows(&self, version: u64) -> Result<(), StoreError> {
        let target = sql::SCHEMA_VERSION;
        let count_all = || async {
            let answer = self
                .run_statement(
                    "SELECT count() FROM workload_events FORMAT TabSeparated".to_owned(),
                    "counting the calls to bring the schema up to date",
                )
                .await?;
            self.one_row(&answer, "the count of all calls", |row| row.u64(0))
        };
        let hour_bins = version == sql::VERSION_1;
        for _ in 0..MIGRATION_ATTEMPTS {
            let before = count_all().await?;
            let mut made_anew: Vec<&str> = sql::PROMPT_KEYS_TABLES.to_vec();
            if hour_bins {
                made_anew.extend(sql::hour_bins_tables());
            }
            for table in made_anew {
                self.execute(
                    format!("DROP TABLE IF EXISTS {table}"),
                    "dropping what an earlier move to the current schema left",
                )
                .await?;
            }
            self.create_hour_bins().await?;
            self.create_prompt_keys().await?;
            let answer = self
                .run_statement(
                    format!(
                        "SELECT intDiv(ts, {day}) AS day, count() FROM workload_events WHERE {in_range} \
                         GROUP BY day ORDER BY day FORMAT TabSeparated",
                        day = sql::DAY_MS,
                        in_range = sql::in_range(),
                    ),
                    "counting the calls per day to bring the schema up to date",
                )
                .await?;
            let days = rows::rows(&answer, 2)
                .and_then(|rows| {
                    rows.iter()
                        .map(|row| Ok((row.i64(0)?, row.u64(1)?)))
                        .collect::<Result<Vec<_>, String>>()
                })
                .map_err(|e| self.corrupt("the calls per day", &e))?;
            for (first, end) in chunks(&days, MIGRATION_CHUNK_CALLS) {
                let range = format!("ts >= {} AND ts < {}", first * sql::DAY_MS, end * sql::DAY_MS);
                let mut statements = vec![
                    (
                        format!("INSERT INTO workload_prompt_keys {}", sql::prompt_keys_of_rows(&range)),
                        "building the prompts from the calls",
                    ),
                    (
                        format!(
                            "INSERT INTO workload_day_prompt_keys {}",
                            sql::day_prompt_keys_of_rows(&range)
                        ),
                        "building the daily prompts from the calls",
                    ),
                ];
                if hour_bins {
                    statements.extend([
                        (
                            format!(
                                "INSERT INTO workload_hour_bins {}",
                                sql::hour_bins_of_rows(&range, Sketched::Latency)
                            ),
                            "building the hourly latency bins from the calls",
                        ),
                        (
                            format!(
                                "INSERT INTO workload_hour_bins {}",
                                sql::hour_bins_of_rows(&range, Sketched::PromptTokens)
                            ),
                            "building the hourly prompt size bins from the calls",
                        ),
                    ]);
                }
                for (statement, doing) in statements {
                    let answer = self.run_statement(statement, doing).await?;
                    if !answer.is_empty() {
                        return Err(self.corrupt(
                            doing,
                            &format!("an answer where none was due: {}", http::quote(&answer)),
                        ));
                    }
                }
            }
            let after = count_all().await?;
            if before == after {
                for table in sql::TEXT_PROMPTS_TABLES {
                    self.execute(
                        format!("DROP TABLE IF EXISTS {table}"),
                        "dropping the prompts keyed by text",
                    )
                    .await?;
                }
                tracing::info!(
                    calls = after,
                    "brought the ClickHouse workload schema from version {version} to version {target}"
                );
                return Ok(());
            }
            tracing::warn!("calls were stored while the schema was brought up to date; building it again");
        }
        Err(StoreError::Backend(format!(
            "{}: calls kept being stored while the workload schema was brought to version {target} \
             ({MIGRATION_ATTEMPTS} times); connect again while no calls are uploaded",
            self.server.address.place(),
        )))
    }

    /// The calls of each of `users`, in one query: answered in their order.
    async fn count_calls(&self, users: &[UserId]) -> Vec<Result<u64, StoreError>> {
        let mut distinct: Vec<&str> = users.iter().map(UserId::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let list = distinct
            .iter()
            .map(|user| sql::string(user))
            .collect::<Vec<_>>()
            .join(", ");
        // Each user by its place in the list (1, 2, ...): no name is read back.
        let counted = self
            .query(
                format!(
                    "SELECT indexOf([{list}], user), count() FROM workload_events WHERE user IN ({list}) \
                     GROUP BY user FORMAT TabSeparated"
                ),
                "counting workload calls",
            )
            .await
            .and_then(|answer| {
                let mut counts = vec![0; distinct.len()];
                let rows = rows::rows(&answer, 2).map_err(|e| self.corrupt("the counts of calls", &e))?;
                for row in rows {
                    let (place, count) = row
                        .u64(0)
                        .and_then(|place| Ok((place, row.u64(1)?)))
                        .map_err(|e| self.corrupt("the counts of calls", &e))?;
                    let slot = usize::try_from(place)
                        .ok()
                        .and_then(|place| place.checked_sub(1))
                        .and_then(|index| counts.get_mut(index))
                        .ok_or_else(|| {
                            self.corrupt(
                                "the counts of calls",
                                &format!("user {place} of {} asked for", distinct.len()),
                            )
                        })?;
                    *slot = count;
                }
                Ok(counts)
            });
        users
            .iter()
            .map(|user| {
                let counts = counted.as_ref().map_err(Clone::clone)?;
                let index = distinct
                    .binary_search(&user.as_str())
                    .expect("every user is in the list");
                Ok(counts[index])
            })
            .collect()
    }

    /// A statement of the move to a new schema, under the insert deadline (it reads and writes
    /// many rows).
    async fn run_statement(&self, statement: String, doing: &str) -> Result<Vec<u8>, StoreError> {
        self.run(statement, self.options.insert_timeout, doing).await
    }

    /// A query's answer.
    async fn query(&self, query: String, doing: &str) -> Result<Vec<u8>, StoreError> {
        self.run(query, self.options.query_timeout, doing).await
    }

    /// A query's answer within `deadline`.
    async fn run(&self, query: String, deadline: Duration, doing: &str) -> Result<Vec<u8>, StoreError> {
        // The server stops a query the client has given up on (in whole seconds, at least 1).
        let limit = deadline.as_secs_f64().ceil().max(1.0) as u64;
        self.server
            .run(
                Body::Query(query),
                &[
                    ("max_execution_time", limit.to_string()),
                    ("wait_end_of_query", "1".to_owned()),
                ],
                deadline,
                doing,
            )
            .await
    }

    /// A statement whose answer is empty.
    async fn execute(&self, statement: String, doing: &str) -> Result<(), StoreError> {
        let answer = self.query(statement, doing).await?;
        if !answer.is_empty() {
            return Err(self.corrupt(
                doing,
                &format!("an answer where none was due: {}", http::quote(&answer)),
            ));
        }
        Ok(())
    }

    fn corrupt(&self, what: &str, error: &str) -> StoreError {
        StoreError::Corrupt(format!("{}: {what}: {error}", self.server.address.place()))
    }

    /// The one row of `answer`, read by `read`.
    fn one_row<T>(
        &self,
        answer: &[u8],
        what: &str,
        read: impl FnOnce(&rows::Row<'_>) -> Result<T, String>,
    ) -> Result<T, StoreError> {
        let columns = answer
            .split(|b| *b == b'\n')
            .next()
            .map_or(0, |line| line.iter().filter(|b| **b == b'\t').count() + 1);
        let rows = rows::rows(answer, columns).map_err(|e| self.corrupt(what, &e))?;
        match rows.as_slice() {
            [row] => read(row).map_err(|e| self.corrupt(what, &e)),
            _ => Err(self.corrupt(
                what,
                &format!("{} rows where one was due: {}", rows.len(), http::quote(answer)),
            )),
        }
    }

    /// How long each query of a summary of `user`'s calls in `range` takes when run alone, one
    /// after the other, named by what it does: for benchmarks.
    #[doc(hidden)]
    pub async fn time_summary_queries(
        &self,
        user: &UserId,
        range: TimeRange,
    ) -> Result<Vec<(&'static str, Duration)>, StoreError> {
        let mut times = Vec::new();
        let (queries, days) = summary_queries(user.as_str(), range);
        for (query, doing) in queries {
            if let Some(query) = query {
                let started = std::time::Instant::now();
                self.query(query, doing).await?;
                times.push((doing, started.elapsed()));
            }
        }
        let started = std::time::Instant::now();
        self.repeated_prompts(user.as_str(), days.as_ref()).await?;
        times.push(("listing the parts and counting repeated prompts", started.elapsed()));
        Ok(times)
    }

    /// The calls with a prompt, the repeated prompts' calls and their cost among `user`'s calls
    /// of all time (`days`: `None`) or of a bounded range split at days, read from the parts
    /// there are now; `None` when the roll-ups read saw different uploads (one landed or a part
    /// was merged away meanwhile).
    async fn repeated_prompts(
        &self,
        user: &str,
        days: Option<&sql::Split>,
    ) -> Result<Option<(u64, u64, f64)>, StoreError> {
        let answer = self
            .query(sql::PARTS.to_owned(), "listing the parts of the prompt roll-ups")
            .await?;
        let mut parts = sql::Parts::default();
        for row in rows::rows(&answer, 3).map_err(|e| self.corrupt("the parts", &e))? {
            let read =
                || -> Result<(String, String, u64), String> { Ok((row.hex_text(0)?, row.hex_text(1)?, row.u64(2)?)) };
            let (table, name, rows) = read().map_err(|e| self.corrupt("the parts", &e))?;
            match table.as_str() {
                "workload_prompt_keys" => parts.prompts.push((name, rows)),
                "workload_day_prompt_keys" => parts.day_prompts.push(name),
                "workload_events" => parts.events.push(name),
                other => return Err(self.corrupt("the parts", &format!("a part of table {other}"))),
            }
        }
        match days {
            None => {
                let answer = self
                    .query(
                        sql::rolled_up_repeated_prompts(user, &parts),
                        "reading repeated prompts",
                    )
                    .await?;
                self.one_row(&answer, "the repeated prompts", |row| {
                    Ok(Some((row.u64(0)?, row.u64(1)?, row.amount(2)?)))
                })
            }
            Some(days) => {
                let answer = self
                    .query(
                        sql::bounded_repeated_prompts(user, days, &parts),
                        "counting repeated prompts",
                    )
                    .await?;
                let (all_time, all_days, in_range, repeated, cost) =
                    self.one_row(&answer, "the repeated prompts", |row| {
                        Ok((row.u64(0)?, row.u64(1)?, row.u64(2)?, row.u64(3)?, row.amount(4)?))
                    })?;
                Ok((all_time == all_days).then_some((in_range, repeated, cost)))
            }
        }
    }

    /// One reading of a summary, or `None` when its queries saw different calls (an upload
    /// landed between them). A range open at both ends reads the roll-ups of all time; any
    /// other reads the clock-hour and daily roll-ups of its whole hours and days and the rows
    /// of the rest.
    async fn read_summary(&self, user: &UserId, range: TimeRange) -> Result<Option<Summary>, StoreError> {
        let ([cells, latency, prompt_tokens], days) = summary_queries(user.as_str(), range);
        let [cells, latency, prompt_tokens] = [cells, latency, prompt_tokens].map(|(query, doing)| async move {
            match query {
                Some(query) => self.query(query, doing).await,
                None => Ok(Vec::new()),
            }
        });
        let (cells, latency, prompt_tokens, prompts) = tokio::try_join!(
            cells,
            latency,
            prompt_tokens,
            self.repeated_prompts(user.as_str(), days.as_ref())
        )?;
        let mut cells = read_cells(&cells).map_err(|e| self.corrupt("the workload cells", &e))?;
        let mut bins = read_bins(&latency).map_err(|e| self.corrupt("the sketch bins", &e))?;
        for (class, more) in read_bins(&prompt_tokens).map_err(|e| self.corrupt("the sketch bins", &e))? {
            bins.entry(class).or_default().extend(more);
        }
        let Some((prompt_calls, repeated_calls, repeated_cost)) = prompts else {
            return Ok(None);
        };
        let Some(sketches) = sketches(&cells, bins).map_err(|e| self.corrupt("the sketch bins", &e))? else {
            return Ok(None);
        };
        if prompt_calls != cells.prompt_calls {
            return Ok(None);
        }
        for (at, (latency, prompt_tokens)) in sketches {
            if let Some(read) = cells.cells.get_mut(&at) {
                (read.cell.latency, read.cell.prompt_tokens) = (latency, prompt_tokens);
            }
        }

        let mut summary = SummaryBuilder::default();
        for ((hour, model, feature, batch), read) in &cells.cells {
            summary.add_cell(*hour, model, feature.as_deref(), *batch, &read.cell);
        }
        summary.add_left_out(cells.left_out);
        summary.add_repeated_prompts(repeated_calls, repeated_cost);
        summary.finish().map(Some)
    }
}

/// The queries of one reading of a summary: the cells, the latency bins, the prompt size bins
/// (`None` when the latency query counts both), each with what it does, and the split at days
/// the repeated prompts are read by (`None`: all time). A range open at both ends reads the
/// roll-ups of all time; any other reads the clock-hour and daily roll-ups of its whole hours
/// and days and the rows of the rest.
type Queries = ([(Option<String>, &'static str); 3], Option<sql::Split>);

fn summary_queries(user: &str, range: TimeRange) -> Queries {
    if range.from.is_none() && range.to.is_none() {
        return (
            [
                (Some(sql::rolled_up_cells(user)), "reading the workload cells"),
                (Some(sql::rolled_up_bins(user)), "reading the sketch bins"),
                (None, "reading the prompt size bins"),
            ],
            None,
        );
    }
    let (from, to) = (range.from.map(|t| t.unix_millis()), range.to.map(|t| t.unix_millis()));
    let (hours, days) = (sql::split(from, to, sql::HOUR_MS), sql::split(from, to, sql::DAY_MS));
    (
        [
            (Some(sql::bounded_cells(user, &hours)), "summing the workload cells"),
            (
                Some(sql::bounded_bins(user, &hours, Sketched::Latency)),
                "counting latencies",
            ),
            (
                Some(sql::bounded_bins(user, &hours, Sketched::PromptTokens)),
                "counting prompt sizes",
            ),
        ],
        Some(days),
    )
}

/// A class's latency and prompt size sketches, and the cell they go on.
type Placed = (CellAt, (Sketch, Sketch));

/// The sketches of each class of cells, on the class's first cell with calls; `None` when the
/// bins do not count the cells' calls (an upload landed between the queries).
fn sketches(cells: &Cells, mut bins: HashMap<(Kind, Class), Bins>) -> Result<Option<Vec<Placed>>, String> {
    #[derive(Default)]
    struct Seen<'a> {
        calls: u64,
        latencies: u64,
        latency: (f64, f64),
        prompt: (f64, f64),
        first: Option<&'a CellAt>,
    }
    let mut classes: BTreeMap<&Class, Seen<'_>> = BTreeMap::new();
    for (at, read) in &cells.cells {
        if read.cell.all.calls == 0 {
            continue;
        }
        let seen = classes.entry(&read.class).or_insert_with(|| Seen {
            latency: (f64::INFINITY, f64::NEG_INFINITY),
            prompt: (f64::INFINITY, f64::NEG_INFINITY),
            ..Seen::default()
        });
        seen.calls += read.cell.all.calls;
        seen.latencies += read.latencies;
        if read.latencies > 0 {
            seen.latency = (seen.latency.0.min(read.latency.0), seen.latency.1.max(read.latency.1));
        }
        seen.prompt = (seen.prompt.0.min(read.prompt.0), seen.prompt.1.max(read.prompt.1));
        seen.first.get_or_insert(at);
    }
    let mut placed = Vec::with_capacity(classes.len());
    for (class, seen) in classes {
        let mut sketch = |kind: Kind, (min, max): (f64, f64)| {
            let bins = bins.remove(&(kind, class.clone())).unwrap_or_default();
            let zero = bins
                .iter()
                .filter(|(bin, _)| *bin == sql::ZERO_BIN)
                .map(|(_, n)| *n)
                .sum();
            Sketch::from_bins(
                zero,
                bins.into_iter().filter(|(bin, _)| *bin != sql::ZERO_BIN),
                min,
                max,
            )
        };
        let latency = if seen.latencies > 0 {
            sketch(Kind::Latency, seen.latency)?
        } else {
            Sketch::default()
        };
        let prompt_tokens = sketch(Kind::PromptTokens, seen.prompt)?;
        if latency.count() != seen.latencies || prompt_tokens.count() != seen.calls {
            return Ok(None);
        }
        if let Some(at) = seen.first {
            placed.push((at.clone(), (latency, prompt_tokens)));
        }
    }
    // Bins of a class without calls.
    if !bins.is_empty() {
        return Ok(None);
    }
    Ok(Some(placed))
}

/// Where a cell belongs: clock hour, model, feature, batch flag.
type CellAt = (i64, String, Option<String>, bool);

/// A class of cells whose sketches the summary only merges together: hour of the day, model,
/// feature, batch flag.
type Class = (i64, String, Option<String>, bool);

/// A cell as read, with the figures that check it against the sketches and bound them.
#[derive(Debug)]
struct ReadCell {
    class: Class,
    cell: Cell,
    latencies: u64,
    /// The smallest and largest latency, and prompt size.
    latency: (f64, f64),
    prompt: (f64, f64),
}

#[derive(Debug, Default)]
struct Cells {
    cells: BTreeMap<CellAt, ReadCell>,
    /// Calls in range with a prompt hash.
    prompt_calls: u64,
    left_out: u64,
}

/// A cost given as whole units and the rest (see [`sql::COST_UNIT_SHIFT`]).
fn cost(row: &rows::Row<'_>, first: usize) -> Result<f64, String> {
    let (units, rest) = (u128::from(row.u64(first)?), u128::from(row.u64(first + 1)?));
    let rest_bits = sql::COST_REST_SHIFT;
    let units = units + (rest >> rest_bits);
    let rest = rest & ((1 << rest_bits) - 1);
    Ok(units as f64 / f64::from(1u32 << sql::COST_UNIT_SHIFT)
        + rest as f64 / 2f64.powi((sql::COST_UNIT_SHIFT + rest_bits) as i32))
}

/// A cells answer ([`sql::bounded_cells`], [`sql::rolled_up_cells`]), checked: counts consistent,
/// times and bounds in order.
fn read_cells(answer: &[u8]) -> Result<Cells, String> {
    let mut cells = Cells::default();
    for row in rows::rows(answer, sql::CELL_COLUMNS)? {
        let hour = row.i64(0)?;
        let model = row.hex_text(1)?;
        let feature = if row.flag(2)? { Some(row.hex_text(3)?) } else { None };
        let batch = row.flag(4)?;
        let slice = |calls: usize, cost_at: usize| -> Result<Slice, String> {
            Ok(Slice {
                calls: row.u64(calls)?,
                input_tokens: row.u64(calls + 1)?,
                output_tokens: row.u64(calls + 2)?,
                cost_usd: cost(&row, cost_at)?,
            })
        };
        let cell = Cell {
            all: slice(5, 8)?,
            errors: row.u64(10)?,
            failed_cost_usd: cost(&row, 11)?,
            short: slice(13, 16)?,
            first_ms: row.i64(18)?,
            last_ms: row.i64(19)?,
            latency: Sketch::default(),
            prompt_tokens: Sketch::default(),
        };
        let latencies = row.u64(20)?;
        let latency = (row.float_bits(21)?, row.float_bits(22)?);
        let prompt_calls = row.u64(23)?;
        let prompt = (row.float_bits(24)?, row.float_bits(25)?);
        let left_out = row.u64(26)?;
        let calls = cell.all.calls;
        let ordered = |(min, max): (f64, f64)| min.is_finite() && max.is_finite() && 0.0 <= min && min <= max;
        if cell.errors > calls
            || cell.short.calls > calls
            || latencies > calls
            || prompt_calls > calls
            || calls.saturating_add(left_out) == 0
            || (calls > 0 && (cell.first_ms > cell.last_ms || !ordered(prompt)))
            || (latencies > 0 && !ordered(latency))
        {
            return Err(format!(
                "a cell whose counts do not add up ({calls} calls, {} failed, {} short, {latencies} latencies, \
                 {prompt_calls} prompts, {left_out} left out, from {} to {}, latency {latency:?}, prompts {prompt:?})",
                cell.errors, cell.short.calls, cell.first_ms, cell.last_ms
            ));
        }
        if calls > 0 && hour != cell.first_ms.div_euclid(3_600_000) {
            return Err(format!(
                "a cell of hour {hour} whose first call is at {}",
                cell.first_ms
            ));
        }
        cells.prompt_calls += prompt_calls;
        cells.left_out += left_out;
        let class = (hour.rem_euclid(24), model.clone(), feature.clone(), batch);
        let at = (hour, model, feature, batch);
        let read = ReadCell {
            class,
            cell,
            latencies,
            latency,
            prompt,
        };
        if cells.cells.insert(at, read).is_some() {
            return Err("a cell given twice".to_owned());
        }
    }
    Ok(cells)
}

/// Which values a bin counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Latency,
    PromptTokens,
}

/// The (bin, count) pairs of a class, the zero bin as [`sql::ZERO_BIN`].
type Bins = Vec<(i32, u64)>;

/// A sketch bins answer ([`sql::bounded_bins`], [`sql::rolled_up_bins`]): a row per class, or
/// several (their bins add up).
fn read_bins(answer: &[u8]) -> Result<HashMap<(Kind, Class), Bins>, String> {
    let mut classes: HashMap<(Kind, Class), Bins> = HashMap::new();
    for row in rows::rows(answer, 8)? {
        let kind = match row.u64(0)? {
            0 => Kind::Latency,
            1 => Kind::PromptTokens,
            other => return Err(format!("a kind of bin {other}")),
        };
        let hour_of_day = row.i64(1)?;
        if !(0..24).contains(&hour_of_day) {
            return Err(format!("an hour of the day {hour_of_day}"));
        }
        let feature = if row.flag(3)? { Some(row.hex_text(4)?) } else { None };
        let class = (hour_of_day, row.hex_text(2)?, feature, row.flag(5)?);
        let (bins, counts) = (row.integers(6)?, row.integers(7)?);
        if bins.len() != counts.len() {
            return Err(format!("{} bins with {} counts", bins.len(), counts.len()));
        }
        let class = classes.entry((kind, class)).or_default();
        for (bin, count) in bins.into_iter().zip(counts) {
            let bin = i32::try_from(bin).map_err(|_| format!("a bin {bin}"))?;
            let count = u64::try_from(count).map_err(|_| format!("a count {count}"))?;
            class.push((bin, count));
        }
    }
    Ok(classes)
}

#[async_trait]
impl AnalyticsStore for ClickHouseAnalytics {
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        self.insert_calls(user.as_str(), &events, None).await?;
        Ok(events.len())
    }

    /// Without a transaction: the key is recorded before the calls are stored (with the id its
    /// calls will carry) and again once they are. A key recorded as stored is answered from its
    /// record. A key recorded only before (an earlier attempt whose insert, or the record after
    /// it, did not answer in time) is settled by counting the calls of its id under its insert's
    /// query id, which ClickHouse refuses while that insert still runs (`InProgress`): all of
    /// them (an insert is one block, stored whole or not at all) are recorded as stored and
    /// replayed; none are stored now, under the same id. Any other count would mean the calls
    /// of one insert were stored in part, which ClickHouse does not do: refused as corrupt,
    /// storing nothing. The roll-ups are fed by the insert itself, so they count the calls
    /// exactly when the calls are stored. Uploads of one key are stored one at a time in this
    /// process; two processes given one key at the same moment, both before either recorded it,
    /// may both store it (ClickHouse refuses the second insert only while the first runs), so
    /// the server's nodes take a place per key in Redis before they call this.
    async fn insert_workload_upload(
        &self,
        user: &UserId,
        key: &UploadKey,
        events: Vec<WorkloadEvent>,
    ) -> Result<Upload, StoreError> {
        let (user, key) = (user.as_str(), key.as_str());
        let digest: String = upload_digest(&events).iter().map(|b| format!("{b:02x}")).collect();
        let calls = events.len() as u64;
        let _held = self.keys.lock(user, key).await;
        self.forget_uploads().await;
        let records = self.upload_records(user, key).await?;
        if records.iter().any(|record| record.digest != digest) {
            return Ok(Upload::KeyReused);
        }
        if let Some(done) = records.iter().find(|record| record.done) {
            return Ok(Upload::Replayed(done.calls));
        }
        let record = match records.into_iter().next() {
            Some(earlier) => {
                match self.upload_calls(user, earlier.upload).await {
                    Err(StoreError::Conflict(_)) => return Ok(Upload::InProgress),
                    Err(error) => return Err(error),
                    Ok(stored) if stored == earlier.calls => {
                        let done = UploadRecord { done: true, ..earlier };
                        self.record_upload(user, key, &done).await?;
                        return Ok(Upload::Replayed(stored));
                    }
                    Ok(0) => {}
                    Ok(stored) => {
                        return Err(StoreError::Corrupt(format!(
                            "{}: {stored} of the {} calls of the upload with key {key:?} are stored, where an \
                             upload is stored whole or not at all; nothing was stored now",
                            self.server.address.place(),
                            earlier.calls
                        )));
                    }
                }
                earlier
            }
            None => {
                let record = UploadRecord {
                    digest,
                    // Not 0, the upload of the calls sent without a key.
                    upload: uuid::Uuid::new_v4().as_u64_pair().0 | 1,
                    calls,
                    done: false,
                };
                self.record_upload(user, key, &record).await?;
                record
            }
        };
        if !events.is_empty() {
            match self.insert_calls(user, &events, Some(record.upload)).await {
                Err(StoreError::Conflict(_)) => return Ok(Upload::InProgress),
                other => other?,
            }
        }
        let done = UploadRecord { done: true, ..record };
        self.record_upload(user, key, &done).await?;
        Ok(Upload::Stored(calls))
    }

    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError> {
        let store = self.clone();
        let waiting = self.counts.submit(user.clone(), move |users| {
            let store = store.clone();
            async move { store.count_calls(&users).await }
        });
        // The wait in the queue counts: a count is answered within the deadline.
        match tokio::time::timeout(self.options.query_timeout, waiting).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Backend(format!(
                "{}: the count of calls stopped before it was answered",
                self.server.address.place()
            ))),
            Err(_) => Err(StoreError::TimedOut {
                tier: Tier::ClickHouse,
                after: self.options.query_timeout,
            }),
        }
    }

    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError> {
        for _ in 0..SUMMARY_ATTEMPTS {
            if let Some(summary) = self.read_summary(user, range).await? {
                return Ok(summary);
            }
            tracing::debug!("calls were stored while a summary was read; reading it again");
        }
        Err(StoreError::Backend(format!(
            "{}: calls kept being stored while the summary was read ({SUMMARY_ATTEMPTS} times)",
            self.server.address.place()
        )))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let answer = self.query("SELECT 1".to_owned(), "ping").await?;
        if answer != b"1\n" {
            return Err(self.corrupt("ping", &format!("`SELECT 1` answered {}", http::quote(&answer))));
        }
        Ok(())
    }

    fn tier(&self) -> Tier {
        Tier::ClickHouse
    }

    fn observe(&self, observer: &std::sync::Arc<dyn TierObserver>) {
        self.server.clock.observe(std::sync::Arc::clone(observer));
    }
}

/// Creates a database of a random name on the server at `server_url` (any database it names is
/// ignored; its credentials are used) and returns the URL of it, for tests that each need an
/// empty database.
pub async fn scratch_database(server_url: &str) -> Result<String, StoreError> {
    let address = Address::parse(server_url)?;
    let name = format!("switchboard_test_{}", uuid::Uuid::new_v4().simple());
    let address = address.with_database("default");
    let server = Server::new(address.clone())?;
    let answer = server
        .run(
            Body::Query(format!("CREATE DATABASE {name}")),
            &[("wait_end_of_query", "1".to_owned())],
            ClickHouseOptions::default().query_timeout,
            "creating a scratch database",
        )
        .await?;
    if !answer.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "{}: creating a scratch database: an answer where none was due: {}",
            address.place(),
            http::quote(&answer)
        )));
    }
    Ok(address.with_database(&name).url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_days_are_rolled_up_in_runs_of_about_the_calls_asked_for() {
        type Days = &'static [(i64, u64)];
        let cases: [(Days, Vec<(i64, i64)>); 4] = [
            (&[], vec![]),
            (&[(5, 3), (6, 4), (9, 3)], vec![(5, 10)]),
            (&[(5, 6), (6, 5), (7, 20), (8, 1)], vec![(5, 6), (6, 7), (7, 8), (8, 9)]),
            (&[(1, 4), (2, 6), (3, 1)], vec![(1, 3), (3, 4)]),
        ];
        for (days, expected) in cases {
            assert_eq!(chunks(days, 10), expected, "{days:?}");
        }
    }
}

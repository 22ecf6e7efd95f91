//! Switchboard's workload analytics on ClickHouse: [`ClickHouseAnalytics`], an
//! [`AnalyticsStore`] over ClickHouse's HTTP interface, for ClickHouse 18.16 (Debian's) and
//! current releases.
//!
//! Calls are stored one row each (`workload_events`, ordered by user and time) and a summary
//! is computed by ClickHouse from the rows of the range at every request: one query sums the
//! roll-up cells (clock hour, model, feature, batch flag) and counts the calls left out, two
//! count the sketch bins of latency and of prompt size per hour of the day, model, feature and
//! batch flag (the only grain at which the summary merges sketches), one counts repeated
//! prompts. [`SummaryBuilder`] then turns them into the same [`Summary`] the embedded backend
//! gives: counts and sums exact (costs summed as decimals, so in any order to the same bits),
//! percentiles within [`switchboard_store::PERCENTILE_RELATIVE_ERROR`].
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
use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::UserId;
use switchboard_store::{
    AnalyticsStore, Cell, Sketch, Slice, StoreError, Summary, SummaryBuilder, Tier, TimeRange, WorkloadEvent,
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

/// Workload data in a ClickHouse database.
#[derive(Debug, Clone)]
pub struct ClickHouseAnalytics {
    server: Server,
    options: ClickHouseOptions,
}

impl ClickHouseAnalytics {
    /// Connects to the database that `url` names (`http://host:port/?database=NAME`; a user
    /// and password in the URL's userinfo or in `user`/`password` parameters), checks that the
    /// server answers and creates the tables, or checks the schema they have: a schema newer
    /// than this version knows is refused. The database must exist.
    pub async fn connect(url: &str, options: ClickHouseOptions) -> Result<Self, StoreError> {
        let server = Server::new(Address::parse(url)?)?;
        let store = ClickHouseAnalytics { server, options };
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
        store
            .execute(sql::CREATE_EVENTS.to_owned(), "creating the workload_events table")
            .await?;
        if rows == 0 {
            store
                .execute(
                    format!("INSERT INTO schema_version (version) VALUES ({})", sql::SCHEMA_VERSION),
                    "writing the schema version",
                )
                .await?;
        }
        Ok(store)
    }

    /// A query's answer.
    async fn query(&self, query: String, doing: &str) -> Result<Vec<u8>, StoreError> {
        let deadline = self.options.query_timeout;
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

    /// One reading of a summary, or `None` when its queries saw different calls (an upload
    /// landed between them).
    async fn read_summary(&self, user: &UserId, range: TimeRange) -> Result<Option<Summary>, StoreError> {
        let rows = sql::range(
            user.as_str(),
            range.from.map(|t| t.unix_millis()),
            range.to.map(|t| t.unix_millis()),
        );
        let (cells, latency, prompt_tokens, prompts) = tokio::try_join!(
            self.query(sql::cells(&rows), "summing the workload cells"),
            self.query(sql::sketch_bins(&rows, Sketched::Latency), "counting latencies"),
            self.query(sql::sketch_bins(&rows, Sketched::PromptTokens), "counting prompt sizes"),
            self.query(sql::repeated_prompts(&rows), "counting repeated prompts"),
        )?;
        let mut cells = read_cells(&cells).map_err(|e| self.corrupt("the workload cells", &e))?;
        let latency = read_sketches(&latency).map_err(|e| self.corrupt("the latency bins", &e))?;
        let prompt_tokens = read_sketches(&prompt_tokens).map_err(|e| self.corrupt("the prompt size bins", &e))?;
        let (prompt_calls, repeated_calls, repeated_cost) = self.one_row(&prompts, "the repeated prompts", |row| {
            Ok((row.u64(0)?, row.u64(1)?, row.amount(2)?))
        })?;

        // Each class's sketches go on its first cell with calls; its counts must be the cells'.
        let mut classes: HashMap<&Class, (u64, u64, Option<&CellAt>)> = HashMap::new();
        for (at, read) in &cells.cells {
            let class = classes.entry(&read.class).or_default();
            class.0 += read.cell.all.calls;
            class.1 += read.latencies;
            if read.cell.all.calls > 0 && class.2.is_none() {
                class.2 = Some(at);
            }
        }
        let mut placed: Vec<(CellAt, Sketch, Sketch)> = Vec::new();
        let all_classes: std::collections::BTreeSet<&Class> = latency.keys().chain(prompt_tokens.keys()).collect();
        for class in all_classes {
            let Some((calls, latencies, Some(at))) = classes.get(class) else {
                return Ok(None);
            };
            let latency = latency.get(class).cloned().unwrap_or_default();
            let prompt_tokens = prompt_tokens.get(class).cloned().unwrap_or_default();
            if latency.count() != *latencies || prompt_tokens.count() != *calls {
                return Ok(None);
            }
            placed.push(((*at).clone(), latency, prompt_tokens));
        }
        let sketched: u64 = classes
            .iter()
            .filter(|(class, _)| prompt_tokens.contains_key(**class))
            .map(|(_, (calls, _, _))| calls)
            .sum();
        if sketched != cells.calls || prompt_calls != cells.prompt_calls {
            return Ok(None);
        }
        for (at, latency, prompt_tokens) in placed {
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

/// Where a cell belongs: clock hour, model, feature, batch flag.
type CellAt = (i64, String, Option<String>, bool);

/// A class of cells whose sketches the summary only merges together: hour of the day, model,
/// feature, batch flag.
type Class = (i64, String, Option<String>, bool);

/// A cell as read, with the figures that check it against the sketches.
#[derive(Debug)]
struct ReadCell {
    class: Class,
    cell: Cell,
    latencies: u64,
}

#[derive(Debug, Default)]
struct Cells {
    cells: BTreeMap<CellAt, ReadCell>,
    /// Calls in range, and those with a prompt hash.
    calls: u64,
    prompt_calls: u64,
    left_out: u64,
}

/// The answer of [`sql::cells`], checked: counts consistent, sums finite, times in order.
fn read_cells(answer: &[u8]) -> Result<Cells, String> {
    let mut cells = Cells::default();
    for row in rows::rows(answer, 20)? {
        let hour = row.i64(0)?;
        let model = row.hex_text(1)?;
        let feature = if row.flag(2)? { Some(row.hex_text(3)?) } else { None };
        let batch = row.flag(4)?;
        let slice = |first: usize| -> Result<Slice, String> {
            Ok(Slice {
                calls: row.u64(first)?,
                input_tokens: row.u64(first + 1)?,
                output_tokens: row.u64(first + 2)?,
                cost_usd: row.amount(first + 3)?,
            })
        };
        let cell = Cell {
            all: slice(5)?,
            errors: row.u64(9)?,
            failed_cost_usd: row.amount(10)?,
            short: slice(11)?,
            first_ms: row.i64(15)?,
            last_ms: row.i64(16)?,
            latency: Sketch::default(),
            prompt_tokens: Sketch::default(),
        };
        let (latencies, prompt_calls, left_out) = (row.u64(17)?, row.u64(18)?, row.u64(19)?);
        let calls = cell.all.calls;
        if cell.errors > calls
            || cell.short.calls > calls
            || latencies > calls
            || prompt_calls > calls
            || (calls > 0 && cell.first_ms > cell.last_ms)
            || calls + left_out == 0
        {
            return Err(format!(
                "a cell whose counts do not add up ({calls} calls, {} failed, {} short, {latencies} latencies, \
                 {prompt_calls} prompts, {left_out} left out, from {} to {})",
                cell.errors, cell.short.calls, cell.first_ms, cell.last_ms
            ));
        }
        if calls > 0 && hour != cell.first_ms.div_euclid(3_600_000) {
            return Err(format!(
                "a cell of hour {hour} whose first call is at {}",
                cell.first_ms
            ));
        }
        cells.calls += calls;
        cells.prompt_calls += prompt_calls;
        cells.left_out += left_out;
        let class = (hour.rem_euclid(24), model.clone(), feature.clone(), batch);
        let at = (hour, model, feature, batch);
        if cells.cells.insert(at, ReadCell { class, cell, latencies }).is_some() {
            return Err("a cell given twice".to_owned());
        }
    }
    Ok(cells)
}

/// The answer of [`sql::sketch_bins`]: a sketch per class.
fn read_sketches(answer: &[u8]) -> Result<HashMap<Class, Sketch>, String> {
    #[derive(Default)]
    struct Bins {
        zero: u64,
        bins: Vec<(i32, u64)>,
        min: f64,
        max: f64,
    }
    let mut classes: HashMap<Class, Bins> = HashMap::new();
    for row in rows::rows(answer, 9)? {
        let hour_of_day = row.i64(0)?;
        if !(0..24).contains(&hour_of_day) {
            return Err(format!("an hour of the day {hour_of_day}"));
        }
        let feature = if row.flag(2)? { Some(row.hex_text(3)?) } else { None };
        let class = (hour_of_day, row.hex_text(1)?, feature, row.flag(4)?);
        let (bin, count, min, max) = (row.i32(5)?, row.u64(6)?, row.float_bits(7)?, row.float_bits(8)?);
        let bins = classes.entry(class).or_insert_with(|| Bins {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Bins::default()
        });
        if bin == sql::ZERO_BIN {
            bins.zero = bins.zero.checked_add(count).ok_or("more values than a count holds")?;
        } else {
            bins.bins.push((bin, count));
        }
        // NaN fails `from_bins`' check of the bounds.
        bins.min = if min.is_nan() { min } else { bins.min.min(min) };
        bins.max = if max.is_nan() { max } else { bins.max.max(max) };
    }
    classes
        .into_iter()
        .map(|(class, bins)| {
            let sketch = Sketch::from_bins(bins.zero, bins.bins, bins.min, bins.max)?;
            Ok((class, sketch))
        })
        .collect()
}

#[async_trait]
impl AnalyticsStore for ClickHouseAnalytics {
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
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
        let mut rows = Vec::with_capacity(events.len() * 96);
        rows::write_events(&mut rows, user.as_str(), &events);
        // One block for the whole batch, so that it is one part: stored whole or not at all.
        let block = events.len().max(1_048_576);
        self.server
            .run(
                Body::Insert {
                    query: format!("INSERT INTO workload_events ({}) FORMAT RowBinary", sql::EVENT_COLUMNS),
                    rows,
                },
                &[("max_insert_block_size", block.to_string())],
                self.options.insert_timeout,
                "storing workload calls",
            )
            .await?;
        Ok(events.len())
    }

    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError> {
        let answer = self
            .query(
                format!(
                    "SELECT count() FROM workload_events WHERE {} FORMAT TabSeparated",
                    sql::range(user.as_str(), None, None)
                ),
                "counting workload calls",
            )
            .await?;
        self.one_row(&answer, "the count of calls", |row| row.u64(0))
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

//! The SQL this crate sends: the schema, the literals it writes values as, and the conditions
//! every query shares. ClickHouse 18.16 has no query parameters, so a value is written as a
//! literal in which every byte but a letter or digit is a `\xHH` escape: no value can end its
//! literal early, whatever it holds.
//!
//! Everything here exists in ClickHouse 18.16 and in current releases: MergeTree with
//! `ORDER BY`, `intDiv`, `log`, `ceil`, `hex`, `unhex`, `reinterpretAsFloat64`,
//! `reinterpretAsString`, `toDecimal128`, `countIf`/`sumIf`/`minIf`/`maxIf`, `HAVING`,
//! `UNION ALL` in a subquery, `sumForEach` (over arrays of one length), `arrayResize`,
//! `arrayPushBack`, `arrayFilter`, `arrayMap`, `arrayEnumerate`, `emptyArrayUInt64`,
//! `emptyArrayInt64`, `sipHash64`, `cityHash64`, `bitShiftRight`, `uniqExact`, and the
//! `TabSeparated` and `RowBinary` formats. A materialized view of 18.16 must select from the
//! table it watches directly (a view over a subquery of it fails at the insert).
//!
//! The same text runs unchanged on ClickHouse 26.9 (chdb-core's engine, the new analyzer on):
//! the tests pass on both. What differs is outside the SQL: 26.9 refuses a wrong password with
//! 403 and code 516 (`AUTHENTICATION_FAILED`) where 18.16 answers 401 and 193, and a query past
//! `max_execution_time` with 408 where 18.16 answers 500; `http.rs` takes 401 and 403 alike,
//! and no error text is parsed.

use std::fmt::Write;

use switchboard_store::{
    EARLIEST_CALL_MS, LATEST_CALL_MS, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS, SHORT_INPUT_TOKENS,
    SHORT_OUTPUT_TOKENS, Sketch,
};

/// The version of the schema below; a database of a newer one is refused. 1: the calls and
/// the roll-ups of all of a user's calls (`workload_cells`, `workload_bins`,
/// `workload_prompts`); 2: the roll-ups a bounded range reads too, the sketch bins per clock
/// hour (`workload_hour_bins`) and the prompts per day (`workload_day_prompts`); 3: the
/// prompts keyed by two 64-bit hashes of their hash's text instead of the text
/// (`workload_prompt_keys`, `workload_day_prompt_keys`, which replace `workload_prompts` and
/// `workload_day_prompts`); 4: the uploads sent with a key (`workload_uploads`) and each
/// call's upload (`workload_events.upload`, 0 for calls sent without a key, and for every call
/// stored before). What a database lacks is built from the rows once when it is connected to.
pub(crate) const SCHEMA_VERSION: u32 = 4;

/// The version before the roll-ups of bounded ranges.
pub(crate) const VERSION_1: u64 = 1;

/// The version whose roll-ups are the current ones (version 4 adds a column and a table, and
/// builds nothing from the rows).
pub(crate) const VERSION_3: u64 = 3;

/// An hour and a day in milliseconds.
pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// The versions a database's schema has been through (one row each).
pub(crate) const CREATE_SCHEMA_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version \
     (version UInt32, written_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version";

/// The calls, one row each, ordered by user and time so that a user's range is read alone.
/// One partition (no `PARTITION BY`): an insert of one block is then one part, stored whole or
/// not at all. Optional values have a flag beside them (`has_*`): `Nullable` columns are slower
/// and were limited in older releases, and `Some("")` is not `None`.
pub(crate) const CREATE_EVENTS: &str = "CREATE TABLE IF NOT EXISTS workload_events (
    user String,
    ts Int64,
    model String,
    has_provider UInt8,
    provider String,
    input_tokens UInt64,
    output_tokens UInt64,
    has_latency UInt8,
    latency_ms Float64,
    error UInt8,
    has_feature UInt8,
    feature String,
    has_prompt UInt8,
    prompt_hash String,
    cost_usd Float64,
    batch UInt8,
    upload UInt64 DEFAULT 0
) ENGINE = MergeTree() ORDER BY (user, ts)";

/// The column a database of schema 3 or older lacks: the upload of each call (its id in
/// `workload_uploads`), 0 for the calls stored without a key.
pub(crate) const ADD_UPLOAD_COLUMN: &str = "ALTER TABLE workload_events ADD COLUMN upload UInt64 DEFAULT 0";

/// Whether `workload_events` has the column `upload` (1 or 0).
pub(crate) const HAS_UPLOAD_COLUMN: &str = "SELECT count() FROM system.columns WHERE database = currentDatabase() \
     AND table = 'workload_events' AND name = 'upload' FORMAT TabSeparated";

/// The columns in the order `RowBinary` rows give them, for an upload without a key (`upload`
/// takes its default, 0).
pub(crate) const EVENT_COLUMNS: &str = "user, ts, model, has_provider, provider, input_tokens, output_tokens, \
     has_latency, latency_ms, error, has_feature, feature, has_prompt, prompt_hash, cost_usd, batch";

/// The uploads sent with a key: a row when the upload is about to be stored (`done` 0, with
/// the id its calls carry in `workload_events.upload`), and one when it was (`done` 1). An
/// upload's calls are one insert, so they are all there or none; a record without its `done`
/// row (the insert's answer was lost, or the record's) is settled by counting the calls of its
/// id. Rows older than [`UPLOAD_KEY_SECONDS`] are left out of every reading and deleted.
pub(crate) const CREATE_UPLOADS: &str = "CREATE TABLE IF NOT EXISTS workload_uploads (user String, key String, \
     digest String, upload UInt64, calls UInt64, done UInt8, stored_at DateTime DEFAULT now()) \
     ENGINE = MergeTree() ORDER BY (user, key)";

/// How long an upload's key is honoured, in seconds (`UPLOAD_KEY_RETENTION`).
pub(crate) const UPLOAD_KEY_SECONDS: u64 = switchboard_store::UPLOAD_KEY_RETENTION.as_secs();

/// The records of `user`'s upload `key` still honoured, oldest first: hex(digest), upload,
/// calls, done.
pub(crate) fn upload_records(user: &str, key: &str) -> String {
    format!(
        "SELECT hex(digest), upload, calls, done FROM workload_uploads WHERE user = {} AND key = {} \
         AND stored_at >= now() - {UPLOAD_KEY_SECONDS} ORDER BY stored_at, done FORMAT TabSeparated",
        string(user),
        string(key)
    )
}

/// A record of `user`'s upload `key` (see [`CREATE_UPLOADS`]).
pub(crate) fn record_upload(user: &str, key: &str, digest: &str, upload: u64, calls: u64, done: bool) -> String {
    format!(
        "INSERT INTO workload_uploads (user, key, digest, upload, calls, done) VALUES ({}, {}, {}, {upload}, {calls}, {})",
        string(user),
        string(key),
        string(digest),
        u8::from(done)
    )
}

/// The calls of `user`'s upload `upload` stored.
pub(crate) fn upload_calls(user: &str, upload: u64) -> String {
    format!(
        "SELECT count() FROM workload_events WHERE user = {} AND upload = {upload} FORMAT TabSeparated",
        string(user)
    )
}

/// Deletes the records of uploads no longer honoured (a mutation: the server deletes them in
/// the background).
pub(crate) fn forget_uploads() -> String {
    format!("ALTER TABLE workload_uploads DELETE WHERE stored_at < now() - {UPLOAD_KEY_SECONDS}")
}

/// `value` as a string literal.
pub(crate) fn string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(byte as char);
        } else {
            let _ = write!(out, "\\x{byte:02X}");
        }
    }
    out.push('\'');
    out
}

/// `value` as a Float64 expression of exactly its bits (older releases do not always parse a
/// decimal literal to the nearest double).
pub(crate) fn float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        return format!("{}", value as i64);
    }
    let hex: String = value.to_le_bytes().iter().map(|b| format!("{b:02X}")).collect();
    format!("reinterpretAsFloat64(unhex('{hex}'))")
}

/// How a bounded range is read: the whole units (hours or days) inside it from a roll-up, the
/// rest (the part of a unit at either end, when a bound falls inside one) from the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split {
    /// Units `from..to` (an open end: all units on that side); `None`: no whole unit.
    pub(crate) whole: Option<(Option<i64>, Option<i64>)>,
    /// Millisecond ranges `from..to` read from the rows.
    pub(crate) edges: Vec<(i64, i64)>,
}

/// `from..to` in milliseconds (an open end: everything on that side) split at `unit`.
pub(crate) fn split(from: Option<i64>, to: Option<i64>, unit: i64) -> Split {
    let first = from.map(|ms| ms.div_euclid(unit) + i64::from(ms.rem_euclid(unit) != 0));
    let end = to.map(|ms| ms.div_euclid(unit));
    if let (Some(first), Some(end)) = (first, end)
        && first >= end
    {
        // No whole unit lies between the bounds.
        let edges = match (from, to) {
            (Some(from), Some(to)) if from < to => vec![(from, to)],
            _ => Vec::new(),
        };
        return Split { whole: None, edges };
    }
    let mut edges = Vec::new();
    if let (Some(ms), Some(first)) = (from, first)
        && ms < first.saturating_mul(unit)
    {
        edges.push((ms, first.saturating_mul(unit)));
    }
    if let (Some(ms), Some(end)) = (to, end)
        && end.saturating_mul(unit) < ms
    {
        edges.push((end.saturating_mul(unit), ms));
    }
    Split {
        whole: Some((first, end)),
        edges,
    }
}

impl Split {
    /// The condition on a roll-up's `column` (a unit) that takes the whole units.
    fn whole_units(&self, column: &str) -> Option<String> {
        let (from, to) = self.whole?;
        let mut condition = "1".to_owned();
        if let Some(from) = from {
            let _ = write!(condition, " AND {column} >= {from}");
        }
        if let Some(to) = to {
            let _ = write!(condition, " AND {column} < {to}");
        }
        Some(condition)
    }

    /// The condition on `workload_events` that takes `user`'s rows of the edges (none when
    /// there are no edges).
    fn edge_rows(&self, user: &str) -> String {
        let edges: Vec<String> = self
            .edges
            .iter()
            .map(|(from, to)| format!("(ts >= {from} AND ts < {to})"))
            .collect();
        let edges = if edges.is_empty() {
            "0".to_owned()
        } else {
            edges.join(" OR ")
        };
        format!("user = {} AND ({edges})", string(user))
    }
}

/// Whether a row's figures are in range: `CallFigures::in_range` in SQL. A comparison with
/// NaN is false in ClickHouse as in Rust, so NaN is out of range here too.
pub(crate) fn in_range() -> String {
    format!(
        "(ts >= {EARLIEST_CALL_MS} AND ts <= {LATEST_CALL_MS} \
         AND input_tokens <= {MAX_CALL_TOKENS} AND output_tokens <= {MAX_CALL_TOKENS} \
         AND (has_latency = 0 OR (latency_ms >= 0 AND latency_ms <= {max_latency})) \
         AND cost_usd >= 0 AND cost_usd <= {max_cost})",
        max_latency = float(MAX_CALL_LATENCY_MS),
        max_cost = float(MAX_CALL_COST_USD),
    )
}

/// A cost in whole units of 2⁻²⁰ dollars and the rest in units of 2⁻⁵² dollars, both exact
/// integers (scaling by a power of two loses nothing): integer sums come out the same in any
/// order, so the same calls give the same cost to the last bit however ClickHouse splits the
/// work (a Float64 `sum` does not). A call's cost loses less than 2⁻⁵² dollars. A sum of
/// UInt64 wraps at 2⁶⁴: the whole units of 1.7 billion calls at the most a call may cost.
pub(crate) const COST_UNIT_SHIFT: u32 = 20;
/// The rest's units: 2⁻⁵² dollars.
pub(crate) const COST_REST_SHIFT: u32 = 32;

fn cost_units(cost: &str) -> (String, String) {
    let scaled = format!("({cost}) * {}", 1u64 << COST_UNIT_SHIFT);
    (
        format!("toUInt64(floor({scaled}))"),
        format!(
            "toUInt64(floor(({scaled} - floor({scaled})) * {}))",
            1u64 << COST_REST_SHIFT
        ),
    )
}

/// The aggregates of a roll-up cell: (column, function, type, expression over a row). `ok` is
/// [`in_range`]. No column is named as a column of `workload_events` (an alias in ClickHouse
/// holds in the whole query, and would stand for that column in the other expressions). Their order is the order of the answer's columns after the cell's key.
fn cell_aggregates() -> Vec<(&'static str, &'static str, &'static str, String)> {
    let short = format!("ok AND input_tokens <= {SHORT_INPUT_TOKENS} AND output_tokens <= {SHORT_OUTPUT_TOKENS}");
    let count = |condition: &str| format!("toUInt64({condition})");
    let sum = |condition: &str, value: &str| format!("toUInt64(if({condition}, {value}, 0))");
    let cost = |condition: &str| cost_units(&format!("if({condition}, cost_usd, 0)"));
    let (cost_hi, cost_lo) = cost("ok");
    let (failed_hi, failed_lo) = cost("ok AND error = 1");
    let (short_hi, short_lo) = cost(&short);
    let latency = "ok AND has_latency = 1";
    let u = "UInt64";
    vec![
        // `ok` is defined here, where it is first used (an alias holds in the whole query): a
        // materialized view of 18.16 reads the inserted block itself, not a subquery of it.
        ("calls", "sum", u, format!("toUInt64({} AS ok)", in_range())),
        ("input_sum", "sum", u, sum("ok", "input_tokens")),
        ("output_sum", "sum", u, sum("ok", "output_tokens")),
        ("cost_hi", "sum", u, cost_hi),
        ("cost_lo", "sum", u, cost_lo),
        ("errors", "sum", u, count("ok AND error = 1")),
        ("failed_hi", "sum", u, failed_hi),
        ("failed_lo", "sum", u, failed_lo),
        ("short_calls", "sum", u, count(&short)),
        ("short_input_tokens", "sum", u, sum(&short, "input_tokens")),
        ("short_output_tokens", "sum", u, sum(&short, "output_tokens")),
        ("short_hi", "sum", u, short_hi),
        ("short_lo", "sum", u, short_lo),
        (
            "first_ms",
            "min",
            "Int64",
            "toInt64(if(ok, ts, toInt64(9223372036854775807)))".to_owned(),
        ),
        (
            "last_ms",
            "max",
            "Int64",
            "toInt64(if(ok, ts, toInt64(-9223372036854775807)))".to_owned(),
        ),
        ("latencies", "sum", u, count(latency)),
        (
            "latency_min",
            "min",
            "Float64",
            format!("toFloat64(if({latency}, latency_ms, inf))"),
        ),
        (
            "latency_max",
            "max",
            "Float64",
            format!("toFloat64(if({latency}, latency_ms, -inf))"),
        ),
        ("prompts", "sum", u, count("ok AND has_prompt = 1")),
        (
            "prompt_min",
            "min",
            "Float64",
            "toFloat64(if(ok, toFloat64(input_tokens), inf))".to_owned(),
        ),
        (
            "prompt_max",
            "max",
            "Float64",
            "toFloat64(if(ok, toFloat64(input_tokens), -inf))".to_owned(),
        ),
        ("left_out", "sum", u, count("NOT ok")),
    ]
}

/// A Float64 figure of an answer as the hex of its bytes (exact, whatever the release's way of
/// writing floats); others as they are.
fn bits(kind: &str, figure: String) -> String {
    match kind {
        "Float64" => format!("hex(reinterpretAsString({figure}))"),
        _ => figure,
    }
}

/// The number of columns of a cells answer: the key (5) and the aggregates.
pub(crate) const CELL_COLUMNS: usize = 5 + 22;

/// The roll-up cells: per user, clock hour, model, feature and batch flag, the states of
/// [`cell_aggregates`], kept by a materialized view of every insert.
pub(crate) fn create_cells() -> String {
    let columns: Vec<String> = cell_aggregates()
        .into_iter()
        .map(|(name, function, kind, _)| format!("{name} AggregateFunction({function}, {kind})"))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS workload_cells (user String, hour Int64, model String, has_feature UInt8, \
         feature String, batch UInt8, {}) \
         ENGINE = AggregatingMergeTree() ORDER BY (user, hour, model, has_feature, feature, batch)",
        columns.join(", ")
    )
}

pub(crate) fn create_cells_view() -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS workload_cells_view TO workload_cells AS {}",
        cells_of_rows("1", true)
    )
}

/// The sketch bins of latency (kind 0) and prompt size (kind 1) per user, hour of the day,
/// model, feature and batch flag (the grain at which a summary merges sketches), summed.
pub(crate) const CREATE_BINS: &str = "CREATE TABLE IF NOT EXISTS workload_bins (user String, kind UInt8, \
     hour_of_day UInt8, model String, has_feature UInt8, feature String, batch UInt8, bin Int32, n UInt64) \
     ENGINE = SummingMergeTree() ORDER BY (user, kind, hour_of_day, model, has_feature, feature, batch, bin)";

pub(crate) fn create_bins_views() -> [String; 2] {
    [Sketched::Latency, Sketched::PromptTokens].map(|values| {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS workload_{}_bins_view TO workload_bins AS {}",
            match values {
                Sketched::Latency => "latency",
                Sketched::PromptTokens => "prompt",
            },
            bins_of_rows("1", values, true)
        )
    })
}

/// A prompt's key: two 64-bit hashes of its hash's text (`prompt_key`, `prompt_check`), so
/// that a roll-up groups pairs of numbers, not strings. Two prompts of a user are taken for one
/// only when both hashes agree (about once in 10²⁵ users of ten million prompts); `prompt_key`
/// alone, uniform over 64 bits, picks a prompt's shard (see [`Parts::candidates`]).
const PROMPT_KEY: &str = "sipHash64(prompt_hash) AS prompt_key, cityHash64(prompt_hash) AS prompt_check";

/// The calls and cost of every prompt per user (calls in range only), summed.
pub(crate) const CREATE_PROMPT_KEYS: &str = "CREATE TABLE IF NOT EXISTS workload_prompt_keys (user String, \
     prompt_key UInt64, prompt_check UInt64, calls UInt64, cost_hi UInt64, cost_lo UInt64) \
     ENGINE = SummingMergeTree() ORDER BY (user, prompt_key, prompt_check)";

/// The name of the view that keeps [`CREATE_PROMPT_KEYS`].
pub(crate) const PROMPT_KEYS_VIEW: &str = "workload_prompt_keys_view";

/// The prompts of the rows where `range` holds, as [`CREATE_PROMPT_KEYS`] keeps them: for its
/// materialized view and for building it from the rows.
pub(crate) fn prompt_keys_of_rows(range: &str) -> String {
    let (hi, lo) = cost_units("cost_usd");
    format!(
        "SELECT user, {PROMPT_KEY}, count() AS calls, sum({hi}) AS cost_hi, sum({lo}) AS cost_lo \
         FROM workload_events WHERE {range} AND {in_range} AND has_prompt = 1 \
         GROUP BY user, prompt_key, prompt_check",
        in_range = in_range(),
    )
}

pub(crate) fn create_prompt_keys_view() -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {PROMPT_KEYS_VIEW} TO workload_prompt_keys AS {}",
        prompt_keys_of_rows("1")
    )
}

/// The cells of the rows where `range` holds; with `roll_up`, as states keyed by the user and
/// the names as they are (for the materialized view), else as figures with the names in hex.
fn cells_of_rows(range: &str, roll_up: bool) -> String {
    let aggregates: Vec<String> = cell_aggregates()
        .into_iter()
        .map(|(name, function, kind, expression)| match roll_up {
            true => format!("{function}State({expression}) AS {name}"),
            false => bits(kind, format!("{function}({expression})")),
        })
        .collect();
    let (key, group) = match roll_up {
        true => (
            "user, intDiv(ts, 3600000) AS hour, model, has_feature, feature, batch",
            "user, ",
        ),
        false => (
            "intDiv(ts, 3600000) AS hour, hex(model), has_feature, hex(feature), batch",
            "",
        ),
    };
    format!(
        "SELECT {key}, {aggregates} FROM workload_events WHERE {range} GROUP BY {group}hour, model, has_feature, feature, batch",
        aggregates = aggregates.join(", "),
    )
}

/// The cells of `user`'s hours where `hours` holds, from the roll-up. Columns: hour,
/// hex(model), has_feature, hex(feature), batch, then [`cell_aggregates`] in order (as
/// [`cells_of_rows`] gives them without `roll_up`).
fn rolled_up_cells_of(user: &str, hours: &str) -> String {
    let aggregates: Vec<String> = cell_aggregates()
        .into_iter()
        .map(|(name, function, kind, _)| bits(kind, format!("{function}Merge({name})")))
        .collect();
    format!(
        "SELECT hour, hex(model), has_feature, hex(feature), batch, {} FROM workload_cells \
         WHERE user = {} AND {hours} GROUP BY hour, model, has_feature, feature, batch",
        aggregates.join(", "),
        string(user)
    )
}

/// A summary's cells of all of `user`'s calls, from the roll-up; the same columns.
pub(crate) fn rolled_up_cells(user: &str) -> String {
    format!("{} FORMAT TabSeparated", rolled_up_cells_of(user, "1"))
}

/// A summary's cells of `user`'s calls in a bounded range split at hours: the whole hours
/// from the roll-up, the edges from the rows; the same columns. A whole hour and an edge are
/// never the same hour, so no cell comes twice.
pub(crate) fn bounded_cells(user: &str, hours: &Split) -> String {
    let rows = cells_of_rows(&hours.edge_rows(user), false);
    union(
        hours.whole_units("hour").map(|whole| rolled_up_cells_of(user, &whole)),
        rows,
    )
}

/// The rows of `rolled_up` (if any) and of `rows`, as one answer.
fn union(rolled_up: Option<String>, rows: String) -> String {
    match rolled_up {
        Some(rolled_up) => format!("SELECT * FROM ({rolled_up} UNION ALL {rows}) FORMAT TabSeparated"),
        None => format!("{rows} FORMAT TabSeparated"),
    }
}

/// Which values a sketch counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sketched {
    Latency,
    PromptTokens,
}

/// The bin a value's zero bin is given as in answers (no value's bin is this low).
pub(crate) const ZERO_BIN: i32 = -1_000_000;

/// The sketch bins of the rows where `range` holds: (the user,) kind, hour of the day, model,
/// has_feature, feature, batch flag, bin, count (`n`); with `roll_up`, the user first (for the
/// materialized view). The bin is [`Sketch::bin_of`] in SQL; at the very edge of a bin
/// ClickHouse's logarithm may round the other way, which the sketch's bound allows (see there).
fn bins_of_rows(range: &str, values: Sketched, roll_up: bool) -> String {
    let (kind, value, only) = sketched(values);
    let user = if roll_up { "user, " } else { "" };
    format!(
        "SELECT {user}toUInt8({kind}) AS kind, toUInt8(intDiv(ts, 3600000) % 24) AS hour_of_day, model, has_feature, \
             feature, batch, {bin} AS bin, count() AS n \
         FROM workload_events WHERE {range} AND {in_range}{only} \
         GROUP BY {user}kind, hour_of_day, model, has_feature, feature, batch, bin",
        bin = bin_of(value),
        in_range = in_range(),
    )
}

/// The sketch bins of latency (kind 0) and prompt size (kind 1) per user, clock hour, model,
/// feature and batch flag, for a bounded range's whole hours. A cell's bins are kept as dense
/// arrays of counts, [`BLOCK`] slots each (slot [`slot`] of a value at place `slot % BLOCK`
/// of block `slot / BLOCK`), summed slot by slot (`sumForEach`): a month of a busy user's
/// cells then merges in a fraction of the time the same bins as rows take.
pub(crate) const CREATE_HOUR_BINS: &str = "CREATE TABLE IF NOT EXISTS workload_hour_bins (user String, \
     hour Int64, kind UInt8, model String, has_feature UInt8, feature String, batch UInt8, block Int32, \
     counts AggregateFunction(sumForEach, Array(UInt64))) \
     ENGINE = AggregatingMergeTree() ORDER BY (user, hour, kind, model, has_feature, feature, batch, block)";

/// Slots per block of [`CREATE_HOUR_BINS`].
pub(crate) const BLOCK: i64 = 64;

/// A bin's slot is the bin plus this; the zero bin's is 0. Values in range have bins from
/// about −1 040 (just above [`Sketch::ZERO_LIMIT`]) to about 920 (a day in milliseconds), so
/// every slot is at least 1 and within a few dozen blocks.
pub(crate) const SLOT_OFFSET: i64 = 2048;

/// The bin of `value` in SQL (as [`Sketch::bin_of`], the zero bin as [`ZERO_BIN`]).
fn bin_of(value: &str) -> String {
    format!(
        "toInt32(if({value} <= {zero}, {ZERO_BIN}, ceil(log({value}) / {ln_gamma})))",
        zero = float(Sketch::ZERO_LIMIT),
        ln_gamma = float(Sketch::ln_gamma()),
    )
}

/// The values a sketch counts: its kind, the value, the condition on a row beside
/// [`in_range`].
fn sketched(values: Sketched) -> (u8, &'static str, &'static str) {
    match values {
        Sketched::Latency => (0, "latency_ms", " AND has_latency = 1"),
        Sketched::PromptTokens => (1, "toFloat64(input_tokens)", ""),
    }
}

/// The hourly bins of the rows where `range` holds, as [`CREATE_HOUR_BINS`] keeps them: for
/// its materialized view and for building it from the rows. Each row adds an array of
/// [`BLOCK`] counts, 1 at its place in the block. Every array has the same length: 18.16's
/// `sumForEach` can leave a count uninitialised when it merges states of different lengths
/// (seen here: 2 of 1.5 million merged states). The slot is named inside the block's expression, so
/// that it is not a column of the answer (an insert takes the columns in order).
pub(crate) fn hour_bins_of_rows(range: &str, values: Sketched) -> String {
    let (kind, value, only) = sketched(values);
    format!(
        "SELECT user, intDiv(ts, 3600000) AS hour, toUInt8({kind}) AS kind, model, has_feature, feature, batch, \
             toInt32(intDiv((toInt64(if({value} <= {zero}, 0, ceil(log({value}) / {ln_gamma}) + {SLOT_OFFSET})) AS slot), \
                 {BLOCK})) AS block, \
             sumForEachState(arrayResize(arrayPushBack(arrayResize(emptyArrayUInt64(), toUInt64(slot - block * {BLOCK})), \
                 toUInt64(1)), {BLOCK})) AS counts \
         FROM workload_events WHERE {range} AND {in_range}{only} \
         GROUP BY user, hour, kind, model, has_feature, feature, batch, block",
        zero = float(Sketch::ZERO_LIMIT),
        ln_gamma = float(Sketch::ln_gamma()),
        in_range = in_range(),
    )
}

/// The views that keep [`CREATE_HOUR_BINS`], and their names.
pub(crate) fn create_hour_bins_views() -> [(String, &'static str); 2] {
    [
        (Sketched::Latency, "workload_latency_hour_bins_view"),
        (Sketched::PromptTokens, "workload_prompt_hour_bins_view"),
    ]
    .map(|(values, name)| {
        (
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {name} TO workload_hour_bins AS {}",
                hour_bins_of_rows("1", values)
            ),
            name,
        )
    })
}

/// The calls and cost of every prompt per user and day (calls in range only), summed, for a
/// bounded range's whole days; prompts keyed as in [`CREATE_PROMPT_KEYS`].
pub(crate) const CREATE_DAY_PROMPT_KEYS: &str = "CREATE TABLE IF NOT EXISTS workload_day_prompt_keys (user String, \
     day Int64, prompt_key UInt64, prompt_check UInt64, calls UInt64, cost_hi UInt64, cost_lo UInt64) \
     ENGINE = SummingMergeTree() ORDER BY (user, day, prompt_key, prompt_check)";

/// The name of the view that keeps [`CREATE_DAY_PROMPT_KEYS`].
pub(crate) const DAY_PROMPT_KEYS_VIEW: &str = "workload_day_prompt_keys_view";

/// The daily prompts of the rows where `range` holds, as [`CREATE_DAY_PROMPT_KEYS`] keeps them.
pub(crate) fn day_prompt_keys_of_rows(range: &str) -> String {
    let (hi, lo) = cost_units("cost_usd");
    format!(
        "SELECT user, intDiv(ts, {DAY_MS}) AS day, {PROMPT_KEY}, count() AS calls, sum({hi}) AS cost_hi, \
             sum({lo}) AS cost_lo \
         FROM workload_events WHERE {range} AND {in_range} AND has_prompt = 1 \
         GROUP BY user, day, prompt_key, prompt_check",
        in_range = in_range(),
    )
}

pub(crate) fn create_day_prompt_keys_view() -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {DAY_PROMPT_KEYS_VIEW} TO workload_day_prompt_keys AS {}",
        day_prompt_keys_of_rows("1")
    )
}

/// The hourly bins' tables (schema version 2), in the order they are dropped: views first.
pub(crate) fn hour_bins_tables() -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = create_hour_bins_views().iter().map(|(_, name)| *name).collect();
    tables.push("workload_hour_bins");
    tables
}

/// The prompt keys' tables (schema version 3), views first.
pub(crate) const PROMPT_KEYS_TABLES: [&str; 4] = [
    PROMPT_KEYS_VIEW,
    DAY_PROMPT_KEYS_VIEW,
    "workload_prompt_keys",
    "workload_day_prompt_keys",
];

/// The prompt roll-ups of versions 1 and 2, keyed by the hash's text, which version 3 drops
/// once it has built its own: views first.
pub(crate) const TEXT_PROMPTS_TABLES: [&str; 4] = [
    "workload_prompts_view",
    "workload_day_prompts_view",
    "workload_prompts",
    "workload_day_prompts",
];

/// Bins (kind, hour_of_day, model, has_feature, feature, batch, bin, n) as one row per class:
/// kind, hour of the day, hex(model), has_feature, hex(feature), batch, the bins and their
/// counts as two arrays in the same order (a bin may come more than once: its counts add up).
/// A row per class, not per bin, keeps the answer small.
fn per_class(bins: &str) -> String {
    format!(
        "SELECT kind, hour_of_day, hex(model), has_feature, hex(feature), batch, groupArray(bin), groupArray(n) \
         FROM ({bins}) GROUP BY kind, hour_of_day, model, has_feature, feature, batch"
    )
}

/// A summary's sketch bins of all of `user`'s calls, from the roll-up; the same columns.
pub(crate) fn rolled_up_bins(user: &str) -> String {
    format!(
        "{} FORMAT TabSeparated",
        per_class(&format!(
            "SELECT kind, hour_of_day, model, has_feature, feature, batch, bin, n FROM workload_bins WHERE user = {}",
            string(user)
        ))
    )
}

/// A summary's sketch bins of `values` of `user`'s calls in a bounded range split at hours:
/// the whole hours from the hourly roll-up, a row per class and block (the slots counted, as
/// bins), the edges from the rows, a row per class; the columns of [`per_class`]. The block
/// reaches the lambda as an array beside the places, not from outside it: 18.16 does not see
/// a column used only inside a lambda and leaves it out of the subquery.
pub(crate) fn bounded_bins(user: &str, hours: &Split, values: Sketched) -> String {
    let (kind, _, _) = sketched(values);
    let rows = per_class(&bins_of_rows(&hours.edge_rows(user), values, false));
    let rolled_up = hours.whole_units("hour").map(|whole| {
        format!(
            "SELECT kind, hour_of_day, hex(model), has_feature, hex(feature), batch, \
                 arrayMap((i, base) -> toInt32(if(base + i = 0, {ZERO_BIN}, base + i - {SLOT_OFFSET})), \
                     (arrayFilter((i, n) -> n > 0, arrayEnumerate(counted), counted) AS places), \
                     arrayResize(emptyArrayInt64(), length(places), toInt64(block * {BLOCK} - 1))), \
                 arrayFilter(n -> n > 0, counted) \
             FROM (SELECT kind, toUInt8(hour % 24) AS hour_of_day, model, has_feature, feature, batch, block, \
                       sumForEachMerge(counts) AS counted \
                   FROM workload_hour_bins WHERE user = {user} AND kind = {kind} AND {whole} \
                   GROUP BY kind, hour_of_day, model, has_feature, feature, batch, block)",
            user = string(user),
        )
    });
    union(rolled_up, rows)
}

/// The active parts of the prompt roll-ups and the calls, as [`Parts`] reads them.
pub(crate) const PARTS: &str = "SELECT hex(table), hex(name), rows FROM system.parts WHERE database = currentDatabase() \
     AND active AND table IN ('workload_prompt_keys', 'workload_day_prompt_keys', 'workload_events') \
     FORMAT TabSeparated";

/// At most about this many rows of `workload_prompt_keys` share a shard (see
/// [`Parts::candidates`]): a shard's keys are told apart in a hash set of its own, which stays
/// in the processor's cache (one hash set of ten million keys takes twice as long, measured).
const SHARD_ROWS: u64 = 512;

/// The parts a reading of repeated prompts reads, named by [`PARTS`] at one moment: every read
/// of one query takes only these, so that its reads see the same calls (a part never changes;
/// one merged away meanwhile is missing from all of them, and the counts that check the
/// answer then differ).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Parts {
    /// `workload_prompt_keys`' parts and their rows.
    pub(crate) prompts: Vec<(String, u64)>,
    pub(crate) day_prompts: Vec<String>,
    pub(crate) events: Vec<String>,
}

impl Parts {
    /// `_part IN (…)` of `names` (a name no part has when there are none).
    fn of<'a>(names: impl Iterator<Item = &'a str>) -> String {
        let mut names: Vec<String> = names.map(string).collect();
        if names.is_empty() {
            names.push(string(""));
        }
        format!("_part IN ({})", names.join(", "))
    }

    /// The rows of `user` in the parts of `workload_prompt_keys`.
    fn prompt_rows(&self, user: &str) -> String {
        format!(
            "user = {} AND {}",
            string(user),
            Parts::of(self.prompts.iter().map(|(name, _)| name.as_str()))
        )
    }

    /// How far `prompt_key` is shifted to give a prompt's shard: into a power of two of
    /// shards that hold from [`SHARD_ROWS`] to twice as many rows of `workload_prompt_keys`
    /// each, all users' rows counted (a user has fewer); 2 to 2²⁴ shards.
    fn shard_shift(&self) -> u32 {
        let rows: u64 = self.prompts.iter().map(|(_, rows)| rows).sum();
        let shards = (rows / SHARD_ROWS).clamp(2, 1 << 24);
        // The largest power of two not above `shards`: its bits are 63 − leading zeros.
        1 + shards.leading_zeros()
    }

    /// The condition on a row with a `prompt_key` that it is in a shard of `user`'s prompts in
    /// which a prompt may have been called more than once: within one part of
    /// `workload_prompt_keys` a prompt has one row (a view writes a prompt's calls of an insert
    /// as one row; a merge sums a prompt's rows into one), so a prompt with rows in two parts
    /// makes its shard hold more rows than keys. Such shards are few (one per prompt repeated
    /// across parts, at most), and counting a shard's keys takes a hash set of a few hundred,
    /// so the prompts called once are read but never grouped, however the parts lie (a rule
    /// that trusted the largest part alone grouped over half the prompts after the server's
    /// merges had stopped, at ten million calls).
    ///
    /// The shards are counted in the parts there are when the query starts, not only in
    /// these: that finds every shard these need (their rows are all there, in these parts or
    /// in parts merged from them, where a prompt's rows are summed into one of more than one
    /// call), and the rows read against the shards are these parts' only (an upload landing
    /// meanwhile is left out of both, or makes shards in excess). Reading the part of every row
    /// costs a tenth of the time (measured).
    fn shared_shards(&self, user: &str) -> String {
        let shift = self.shard_shift();
        format!(
            "bitShiftRight(prompt_key, {shift}) IN (SELECT shard FROM (SELECT bitShiftRight(prompt_key, {shift}) AS shard, \
                 count() AS shard_rows, uniqExact(prompt_key) AS shard_keys FROM workload_prompt_keys \
                 WHERE user = {} GROUP BY shard) WHERE shard_rows > shard_keys)",
            string(user)
        )
    }

    /// The condition on a row of `workload_prompt_keys` that keeps the rows of every prompt of
    /// `user` that may have been called more than once (a superset of them): a row of more than
    /// one call, or a row in a shard of [`Parts::shared_shards`].
    fn candidates(&self, user: &str) -> String {
        format!("(calls > 1 OR {})", self.shared_shards(user))
    }

    /// The calls with a prompt of all of `user`'s calls in `workload_prompt_keys`.
    fn prompt_calls(&self, user: &str) -> String {
        format!(
            "(SELECT sum(calls) FROM workload_prompt_keys WHERE {})",
            self.prompt_rows(user)
        )
    }
}

/// The repeated prompts of per-prompt sums `calls` (c), `hi`, `lo` of the prompts that may
/// repeat (`per_prompt`): those that repeat an earlier prompt (c − 1 for a prompt called c
/// times) and their share of the cost ((c − 1) / c of the prompt's, in decimals of 10⁻¹⁸
/// dollars, whose sums come out the same in any order), after `first` (the columns that
/// check them).
fn repeated(first: &str, per_prompt: &str) -> String {
    format!(
        "SELECT {first}, sum(c - 1), \
             toString(sum((toDecimal128(h, 18) / {unit} + toDecimal128(l, 18) / {rest}) / c * (c - 1))) \
         FROM ({per_prompt}) WHERE c > 1 FORMAT TabSeparated",
        unit = 1u64 << COST_UNIT_SHIFT,
        rest = 1u64 << (COST_UNIT_SHIFT + COST_REST_SHIFT),
    )
}

/// A summary's repeated prompts among `user`'s calls in a bounded range split at days: each
/// prompt's calls and cost in the whole days from the daily roll-up and in the edges from the
/// rows, added up before a prompt's repeats are counted, of the prompts that may repeat in the
/// range: those of the edges, and of the whole days those that may repeat in all time (a
/// prompt called twice in the range is called twice in all time: a row of more than one call
/// in `workload_prompt_keys`, or rows in a shard of [`Parts::shared_shards`]). Columns: the
/// calls with a prompt of all time in `workload_prompt_keys` and in `workload_day_prompt_keys`
/// (the same when the parts read hold the same uploads), the calls with a prompt in range, the
/// repeats, their cost.
pub(crate) fn bounded_repeated_prompts(user: &str, days: &Split, parts: &Parts) -> String {
    let (hi, lo) = cost_units("cost_usd");
    let edges = format!(
        "{rows} AND {events} AND {in_range} AND has_prompt = 1",
        rows = days.edge_rows(user),
        events = Parts::of(parts.events.iter().map(String::as_str)),
        in_range = in_range(),
    );
    let day_parts = Parts::of(parts.day_prompts.iter().map(String::as_str));
    let whole = days
        .whole_units("day")
        .map(|whole| format!("user = {} AND {day_parts} AND {whole}", string(user)));
    let mut rows = vec![format!(
        "SELECT {PROMPT_KEY}, toUInt64(1) AS one_c, {hi} AS one_h, {lo} AS one_l FROM workload_events WHERE {edges}"
    )];
    if let Some(whole) = &whole {
        rows.push(format!(
            "SELECT prompt_key, prompt_check, calls AS one_c, cost_hi AS one_h, cost_lo AS one_l \
             FROM workload_day_prompt_keys WHERE {whole} AND ({shared} \
                 OR prompt_key IN (SELECT prompt_key FROM workload_prompt_keys WHERE {prompt_rows} AND calls > 1) \
                 OR prompt_key IN (SELECT sipHash64(prompt_hash) FROM workload_events WHERE {edges}))",
            shared = parts.shared_shards(user),
            prompt_rows = parts.prompt_rows(user),
        ));
    }
    // The calls in range alone, of the count columns only (18.16 reads every column a subquery
    // of `UNION ALL` names, used or not).
    let mut counts = vec![format!("SELECT count() AS n FROM workload_events WHERE {edges}")];
    if let Some(whole) = &whole {
        counts.push(format!(
            "SELECT sum(calls) AS n FROM workload_day_prompt_keys WHERE {whole}"
        ));
    }
    let first = format!(
        "{}, (SELECT sum(calls) FROM workload_day_prompt_keys WHERE user = {} AND {day_parts}), \
         (SELECT sum(n) FROM ({}))",
        parts.prompt_calls(user),
        string(user),
        counts.join(" UNION ALL ")
    );
    repeated(
        &first,
        &format!(
            "SELECT sum(one_c) AS c, sum(one_h) AS h, sum(one_l) AS l FROM ({}) GROUP BY prompt_key, prompt_check",
            rows.join(" UNION ALL ")
        ),
    )
}

/// A summary's repeated prompts among all of `user`'s calls, from the roll-up, in one reading
/// of its rows: the prompts that may repeat (see [`Parts::candidates`]) grouped by key, every
/// other row into one group, which gives the calls with a prompt and repeats nothing.
/// Columns: the calls with a prompt, the repeats, their cost (as [`repeated`] counts them).
pub(crate) fn rolled_up_repeated_prompts(user: &str, parts: &Parts) -> String {
    format!(
        "SELECT sum(c), sumIf(c - 1, candidate), \
             toString(sumIf((toDecimal128(h, 18) / {unit} + toDecimal128(l, 18) / {rest}) / c * (c - 1), candidate)) \
         FROM (SELECT {candidates} AS candidate, sum(calls) AS c, sum(if(candidate, cost_hi, 0)) AS h, \
                   sum(if(candidate, cost_lo, 0)) AS l \
               FROM workload_prompt_keys WHERE {rows} \
               GROUP BY candidate, if(candidate, prompt_key, 0), if(candidate, prompt_check, 0)) \
         FORMAT TabSeparated",
        unit = 1u64 << COST_UNIT_SHIFT,
        rest = 1u64 << (COST_UNIT_SHIFT + COST_REST_SHIFT),
        candidates = parts.candidates(user),
        rows = parts.prompt_rows(user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_holds_only_letters_digits_and_escapes() {
        for (value, expected) in [
            ("gpt-4o", "'gpt\\x2D4o'"),
            ("a'b", "'a\\x27b'"),
            ("\\", "'\\x5C'"),
            ("é", "'\\xC3\\xA9'"),
            ("", "''"),
        ] {
            assert_eq!(string(value), expected);
        }
    }

    #[test]
    fn a_range_is_split_into_whole_units_and_the_edges_read_from_the_rows() {
        let h = HOUR_MS;
        let cases = [
            ((Some(10 * h), Some(24 * h)), Some((Some(10), Some(24))), vec![]),
            (
                (Some(10 * h + 15), Some(12 * h + 30)),
                Some((Some(11), Some(12))),
                vec![(10 * h + 15, 11 * h), (12 * h, 12 * h + 30)],
            ),
            (
                (Some(10 * h + 15), Some(10 * h + 45)),
                None,
                vec![(10 * h + 15, 10 * h + 45)],
            ),
            (
                (Some(10 * h + 15), Some(11 * h + 45)),
                None,
                vec![(10 * h + 15, 11 * h + 45)],
            ),
            (
                (None, Some(10 * h + 45)),
                Some((None, Some(10))),
                vec![(10 * h, 10 * h + 45)],
            ),
            ((Some(-h - 1), None), Some((Some(-1), None)), vec![(-h - 1, -h)]),
            ((Some(10 * h + 45), Some(10 * h + 15)), None, vec![]),
        ];
        for ((from, to), whole, edges) in cases {
            assert_eq!(split(from, to, h), Split { whole, edges }, "{from:?}..{to:?}");
        }
    }

    #[test]
    fn prompts_are_sharded_about_a_shard_rows_a_shard() {
        let parts = |rows: &[u64]| Parts {
            prompts: rows.iter().map(|n| (format!("p{n}"), *n)).collect(),
            ..Parts::default()
        };
        for (rows, shift) in [
            (&[][..], 63),
            (&[100][..], 63),
            (&[SHARD_ROWS * 4][..], 62),
            (&[SHARD_ROWS * 3, SHARD_ROWS * 5][..], 61),
            (&[8_619_035][..], 50),
            (&[u64::MAX / 2][..], 40),
        ] {
            assert_eq!(parts(rows).shard_shift(), shift, "{rows:?}");
        }
    }

    #[test]
    fn a_float_is_written_exactly() {
        assert_eq!(float(86_400_000.0), "86400000");
        assert_eq!(float(0.01), "reinterpretAsFloat64(unhex('7B14AE47E17A843F'))");
    }
}

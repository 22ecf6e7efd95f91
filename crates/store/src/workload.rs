//! Workload data: the log of a team's own language-model calls, which the analysis agents read.
//! It lives in the analytics store, behind [`AnalyticsStore`] (SQLite in the embedded default).

mod sketch;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use switchboard_protocol::{Timestamp, UserId};

use crate::{StoreError, Tier};
pub use sketch::Sketch;

/// Whether a model call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// It returned an answer.
    Ok,
    /// It failed.
    Error,
}

impl CallStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Error => "error",
        }
    }
}

/// One model call of the user's product, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEvent {
    /// When the call was made.
    pub timestamp: Timestamp,
    /// The model called.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// The provider, when given.
    pub provider: Option<String>,
    /// How long the call took, when given.
    pub latency_ms: Option<f64>,
    /// Whether it succeeded.
    pub status: CallStatus,
    /// Which part of the user's product made the call.
    pub feature: Option<String>,
    /// Equal prompts share it.
    pub prompt_hash: Option<String>,
    /// What the call cost (given, or computed from the price table).
    pub cost_usd: f64,
    /// Whether it went through a batch API.
    pub batch: bool,
}

impl WorkloadEvent {
    /// The call's figures, as a summary takes them.
    pub fn figures(&self) -> CallFigures {
        CallFigures {
            at_ms: self.timestamp.unix_millis(),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            latency_ms: self.latency_ms,
            error: self.status == CallStatus::Error,
            cost_usd: self.cost_usd,
            batch: self.batch,
        }
    }
}

/// A time range: `from` inclusive, `to` exclusive; an open end takes everything on that side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// The first instant included.
    pub from: Option<Timestamp>,
    /// The first instant no longer included.
    pub to: Option<Timestamp>,
}

/// Calls, tokens, cost, errors and latency of a group of calls.
///
/// Latency percentiles are nearest-rank over the calls that report a latency (the p-th
/// percentile of n values is the value at rank ceil(p × n / 100) in ascending order), estimated
/// from a sketch within [`PERCENTILE_RELATIVE_ERROR`] of the exact value.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The group (a model or a feature); `None` for calls without a feature.
    pub key: Option<String>,
    /// Calls.
    pub calls: u64,
    /// Calls with status `error`.
    pub errors: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Median latency.
    pub p50_latency_ms: Option<f64>,
    /// 95th percentile latency.
    pub p95_latency_ms: Option<f64>,
}

/// All of a user's calls in a range, and the period they span.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// The first call.
    pub first: Option<Timestamp>,
    /// The last call.
    pub last: Option<Timestamp>,
    /// Calls, tokens and cost of all of them (no key).
    pub usage: Usage,
}

/// Calls and cost in one hour of the day (UTC), across all days.
#[derive(Debug, Clone, PartialEq)]
pub struct HourUsage {
    /// 0 to 23.
    pub hour: u8,
    /// Calls in that hour.
    pub calls: u64,
    /// Their cost.
    pub cost_usd: f64,
    /// Nearest-rank p95 latency of the calls in that hour that reported one (estimated within
    /// [`PERCENTILE_RELATIVE_ERROR`]).
    pub p95_latency_ms: Option<f64>,
}

/// Calls, failures and cost in one clock hour (UTC), for finding hours and days off the norm.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The hour's start.
    pub start: Timestamp,
    /// Calls in it.
    pub calls: u64,
    /// Failed calls in it.
    pub errors: u64,
    /// Their cost.
    pub cost_usd: f64,
}

/// Everything the analysis reads about a range of a user's calls, in one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// All calls, and the period they span.
    pub totals: Totals,
    /// Per model, most expensive first.
    pub by_model: Vec<Usage>,
    /// Per feature (`None`: calls without one), most expensive first.
    pub by_feature: Vec<Usage>,
    /// Per hour of the day (UTC), for the hours that have calls, in hour order.
    pub hours: Vec<HourUsage>,
    /// Per clock hour (UTC) that has calls, in time order.
    pub hourly: Vec<Bucket>,
    /// What the savings strategies are computed from.
    pub opportunities: Opportunities,
    /// Stored calls of the range left out of every figure above because one of their figures
    /// is out of range (see [`CallFigures::in_range`]).
    pub calls_left_out: u64,
}

/// Calls with their tokens and cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slice {
    /// Calls.
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
}

impl Slice {
    fn add(&mut self, call: &CallFigures) {
        self.calls += 1;
        self.input_tokens = self.input_tokens.saturating_add(call.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(call.output_tokens);
        self.cost_usd += call.cost_usd;
    }
}

/// Calls of one feature on one model that did not use a batch API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureModel {
    /// The feature (`None`: calls without one).
    pub feature: Option<String>,
    /// The model.
    pub model: String,
    /// All its non-batch calls.
    pub all: Slice,
    /// Those made off-hours (00:00 to 06:00 UTC).
    pub off_hours: Slice,
    /// Prompt tokens above the feature's p95 prompt size, summed over the calls above it (both
    /// estimated from a sketch of the prompt sizes: see [`PERCENTILE_RELATIVE_ERROR`]).
    pub input_tokens_above_p95: u64,
}

/// Aggregates the savings strategies need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Opportunities {
    /// Per model: short calls (prompt at most [`SHORT_INPUT_TOKENS`], answer at most
    /// [`SHORT_OUTPUT_TOKENS`]), which a smaller model could serve.
    pub short_calls: Vec<(String, Slice)>,
    /// Cost of calls whose `prompt_hash` had been seen before (every call of a prompt but one).
    pub repeated_prompt_cost_usd: f64,
    /// Calls that repeat an earlier prompt.
    pub repeated_prompt_calls: u64,
    /// Per feature and model (non-batch calls only).
    pub by_feature_model: Vec<FeatureModel>,
    /// Cost of failed calls.
    pub failed_cost_usd: f64,
}

/// The relative error bound of every percentile in a [`Summary`] (latency, and the p95 prompt
/// size): 1 %. Each comes from a mergeable sketch (DDSketch's logarithmic bins) kept in the
/// hourly roll-ups, so the estimate `e` of an exact nearest-rank value `x` has |e − x| ≤ 0.01 x.
pub const PERCENTILE_RELATIVE_ERROR: f64 = sketch::RELATIVE_ACCURACY;

/// A prompt of at most this many tokens counts as short.
pub const SHORT_INPUT_TOKENS: u64 = 1000;
/// An answer of at most this many tokens counts as short.
pub const SHORT_OUTPUT_TOKENS: u64 = 300;
/// Off-hours: from midnight to this hour (UTC).
pub const OFF_HOURS_END: u8 = 6;

/// The most tokens one call's prompt may have, and its answer (each): ten million, well above
/// any model's context window. Uploads above it are refused; stored calls above it are left out
/// of the summary.
pub const MAX_CALL_TOKENS: u64 = 10_000_000;
/// The longest one call may take, in milliseconds: a day. Latency must also be 0 or more.
pub const MAX_CALL_LATENCY_MS: f64 = 86_400_000.0;
/// The most one call may cost, in US dollars: ten thousand. Cost must also be 0 or more.
pub const MAX_CALL_COST_USD: f64 = 10_000.0;
/// The earliest time a call may have been made, in milliseconds since the epoch:
/// 2000-01-01T00:00:00Z.
pub const EARLIEST_CALL_MS: i64 = 946_684_800_000;
/// The latest time a call may have been made, in milliseconds since the epoch:
/// 2100-12-31T23:59:59.999Z (so calls fall in the years 2000 to 2100).
pub const LATEST_CALL_MS: i64 = 4_133_980_799_999;

/// The key a client gives an upload so that sending it again stores it once (the HTTP header
/// `Idempotency-Key`): 1 to [`MAX_UPLOAD_KEY_CHARS`] visible ASCII characters (`!` to `~`),
/// chosen by the client, its own user's alone (another user's same key is another key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadKey(String);

/// The longest [`UploadKey`], in characters.
pub const MAX_UPLOAD_KEY_CHARS: usize = 255;

/// How long a stored upload's key is honoured: a day. An upload sent again with its key within
/// it is answered as the first time and stores nothing; after it the key is forgotten (and its
/// record deleted), and an upload with it is a new one.
pub const UPLOAD_KEY_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl UploadKey {
    /// The key, when `text` is 1 to [`MAX_UPLOAD_KEY_CHARS`] visible ASCII characters; else
    /// what is wrong with it, to follow the key's name in a sentence ("must be 1 to 255 visible
    /// ASCII characters (`!` to `~`); it is empty").
    pub fn parse(text: &str) -> Result<UploadKey, String> {
        let rule = format!("must be 1 to {MAX_UPLOAD_KEY_CHARS} visible ASCII characters (`!` to `~`)");
        if text.is_empty() {
            return Err(format!("{rule}; it is empty"));
        }
        if let Some(other) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("{rule}; it has {}", describe(other)));
        }
        if text.len() > MAX_UPLOAD_KEY_CHARS {
            return Err(format!("{rule}; it has {}", text.len()));
        }
        Ok(UploadKey(text.to_owned()))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A character that has no place in a key, named.
fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_control() => format!("the control character U+{:04X}", u32::from(c)),
        c => format!("`{c}`, which is not ASCII"),
    }
}

/// What became of an upload sent with an [`UploadKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Its calls were stored now: how many.
    Stored(u64),
    /// An upload with this key and these calls was stored before: nothing was stored now; how
    /// many calls it stored then.
    Replayed(u64),
    /// The key was given before with other calls: nothing was stored.
    KeyReused,
    /// An upload with this key is being stored at this moment (an earlier attempt the store
    /// has not finished): nothing was stored now; sent again once that has ended, it is
    /// answered as that one was.
    InProgress,
}

/// The digest of an upload's calls that its key is stored with: SHA-256 of every figure of
/// every call, in order, each string with its length before it, so two lists of calls have the
/// same digest only when they are the same calls in the same order (the same rows sent as JSON
/// or as NDJSON, or with their fields in another order, are the same calls).
pub fn upload_digest(events: &[WorkloadEvent]) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let text = |hash: &mut sha2::Sha256, value: Option<&str>| match value {
        None => hash.update([0]),
        Some(value) => {
            hash.update([1]);
            hash.update((value.len() as u64).to_le_bytes());
            hash.update(value.as_bytes());
        }
    };
    hash.update((events.len() as u64).to_le_bytes());
    for event in events {
        hash.update(event.timestamp.unix_millis().to_le_bytes());
        text(&mut hash, Some(&event.model));
        hash.update(event.input_tokens.to_le_bytes());
        hash.update(event.output_tokens.to_le_bytes());
        text(&mut hash, event.provider.as_deref());
        match event.latency_ms {
            None => hash.update([0]),
            Some(latency) => {
                hash.update([1]);
                hash.update(latency.to_bits().to_le_bytes());
            }
        }
        hash.update([u8::from(event.status == CallStatus::Error)]);
        text(&mut hash, event.feature.as_deref());
        text(&mut hash, event.prompt_hash.as_deref());
        hash.update(event.cost_usd.to_bits().to_le_bytes());
        hash.update([u8::from(event.batch)]);
    }
    hash.finalize().into()
}

/// Where workload data is kept and aggregated. The store answers with aggregates (a few rows),
/// never with the calls themselves. Every method sees one user's data only.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// Stores all the events, or none of them.
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError>;
    /// Stores all the events of an upload sent with `key`, or none of them, once per key of the
    /// user within [`UPLOAD_KEY_RETENTION`]: a key already stored with the same calls (by
    /// [`upload_digest`]) is [`Upload::Replayed`] with the count stored then, with other calls
    /// [`Upload::KeyReused`]; uploads with one key sent at once store once. A
    /// [`StoreError::TimedOut`] may have stored the calls; sending them again with the key is
    /// then safe.
    async fn insert_workload_upload(
        &self,
        user: &UserId,
        key: &UploadKey,
        events: Vec<WorkloadEvent>,
    ) -> Result<Upload, StoreError>;
    /// How many events the user has stored.
    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError>;
    /// Totals, per-model, per-feature and per-hour usage of a range, with the aggregates the
    /// savings strategies need. Counts and sums are exact; percentiles are within
    /// [`PERCENTILE_RELATIVE_ERROR`] of the exact nearest-rank values.
    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError>;
    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Where the data is kept.
    fn tier(&self) -> Tier;
    /// Tells `observer` how long each operation on its tier takes, as [`crate::Store::observe`].
    fn observe(&self, observer: &std::sync::Arc<dyn crate::TierObserver>) {
        let _ = observer;
    }
}

/// One call as the summary needs it.
#[derive(Debug, Clone, Copy)]
pub struct CallFigures {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Latency, when reported.
    pub latency_ms: Option<f64>,
    /// Whether it failed.
    pub error: bool,
    /// Its cost.
    pub cost_usd: f64,
    /// Whether it used a batch API.
    pub batch: bool,
}

impl CallFigures {
    /// Whether every figure is within its range: made from [`EARLIEST_CALL_MS`] to
    /// [`LATEST_CALL_MS`], at most [`MAX_CALL_TOKENS`] prompt and answer tokens each, a latency
    /// (when reported) from 0 to [`MAX_CALL_LATENCY_MS`], a cost from 0 to [`MAX_CALL_COST_USD`].
    /// Not-a-number and infinite figures are out of range.
    pub fn in_range(&self) -> bool {
        (EARLIEST_CALL_MS..=LATEST_CALL_MS).contains(&self.at_ms)
            && self.input_tokens <= MAX_CALL_TOKENS
            && self.output_tokens <= MAX_CALL_TOKENS
            && self
                .latency_ms
                .is_none_or(|latency| (0.0..=MAX_CALL_LATENCY_MS).contains(&latency))
            && (0.0..=MAX_CALL_COST_USD).contains(&self.cost_usd)
    }
}

/// One roll-up cell: the calls of one user in one clock hour to one model from one feature, batch
/// or not, kept at ingest so that a summary reads cells, not rows. A backend that aggregates
/// itself gives its cells to [`SummaryBuilder::add_cell`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    /// Calls, their tokens and cost.
    pub all: Slice,
    /// Failed calls.
    pub errors: u64,
    /// Cost of the failed calls.
    pub failed_cost_usd: f64,
    /// Short calls (see [`SHORT_INPUT_TOKENS`]).
    pub short: Slice,
    /// The first call's time, milliseconds since the epoch (0 while empty).
    pub first_ms: i64,
    /// The last call's time, milliseconds since the epoch (0 while empty).
    pub last_ms: i64,
    /// Latency of the calls that report one.
    pub latency: Sketch,
    /// Prompt tokens of every call.
    pub prompt_tokens: Sketch,
}

impl Cell {
    /// Counts one call, whose figures the caller has checked are in range.
    pub(crate) fn add(&mut self, call: &CallFigures) {
        if self.all.calls == 0 {
            (self.first_ms, self.last_ms) = (call.at_ms, call.at_ms);
        } else {
            self.first_ms = self.first_ms.min(call.at_ms);
            self.last_ms = self.last_ms.max(call.at_ms);
        }
        self.all.add(call);
        if call.error {
            self.errors += 1;
            self.failed_cost_usd += call.cost_usd;
        }
        if call.input_tokens <= SHORT_INPUT_TOKENS && call.output_tokens <= SHORT_OUTPUT_TOKENS {
            self.short.add(call);
        }
        if let Some(latency) = call.latency_ms {
            self.latency.add(latency);
        }
        self.prompt_tokens.add(call.input_tokens as f64);
    }

    /// Adds every call of `other`.
    pub(crate) fn merge(&mut self, other: &Cell) {
        if other.all.calls == 0 {
            return;
        }
        if self.all.calls == 0 {
            (self.first_ms, self.last_ms) = (other.first_ms, other.last_ms);
        } else {
            self.first_ms = self.first_ms.min(other.first_ms);
            self.last_ms = self.last_ms.max(other.last_ms);
        }
        self.all.merge(&other.all);
        self.errors = self.errors.saturating_add(other.errors);
        self.failed_cost_usd += other.failed_cost_usd;
        self.short.merge(&other.short);
        self.latency.merge(&other.latency);
        self.prompt_tokens.merge(&other.prompt_tokens);
    }
}

impl Slice {
    fn merge(&mut self, other: &Slice) {
        self.calls = self.calls.saturating_add(other.calls);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_usd += other.cost_usd;
    }
}

/// The clock hour (hours since the epoch) of a time in milliseconds.
pub(crate) fn clock_hour(at_ms: i64) -> i64 {
    at_ms.div_euclid(HOUR_MS)
}

/// An hour in milliseconds.
pub(crate) const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Default)]
struct Group {
    all: Slice,
    errors: u64,
    latency: Sketch,
}

impl Group {
    fn add(&mut self, cell: &Cell) {
        self.all.merge(&cell.all);
        self.errors = self.errors.saturating_add(cell.errors);
        self.latency.merge(&cell.latency);
    }

    fn usage(self, key: Option<String>) -> Usage {
        Usage {
            key,
            calls: self.all.calls,
            errors: self.errors,
            input_tokens: self.all.input_tokens,
            output_tokens: self.all.output_tokens,
            cost_usd: self.all.cost_usd,
            p50_latency_ms: self.latency.nearest_rank(50),
            p95_latency_ms: self.latency.nearest_rank(95),
        }
    }
}

/// The nearest-rank percentile of sorted values: the value at rank ceil(p × n / 100).
pub fn nearest_rank(sorted: &[f64], percent: usize) -> Option<f64> {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Where a cell belongs: clock hour, model and feature (by name index), batch or not.
type CellAt = (i64, u32, Option<u32>, bool);

/// Builds a [`Summary`] from calls and roll-up cells given in any order; memory for the cells
/// (one per clock hour, model, feature and batch flag) and the prompts seen, not the calls.
///
/// Calls with a figure out of range ([`CallFigures::in_range`]) are counted in
/// [`Summary::calls_left_out`] and nowhere else: rows can reach the store without the upload's
/// checks (written directly, or by an older version), and one absurd row must not turn every
/// total into an overflow.
///
/// Percentiles (latency, and the p95 prompt size that trimming is measured against) come from
/// sketches and are within [`PERCENTILE_RELATIVE_ERROR`] of the exact nearest-rank values
/// ([`nearest_rank`]); the prompt tokens above the p95 are summed from the same sketch.
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    /// Model and feature names, each stored once: cells refer to them by index, so counting a
    /// call allocates nothing.
    names: HashMap<String, u32>,
    name_list: Vec<String>,
    /// In key order, so that sums are added in the same order whatever order cells came in.
    cells: BTreeMap<CellAt, Cell>,
    prompts: HashMap<String, (u64, f64)>,
    /// Repeated prompts counted elsewhere (by the store at ingest).
    repeated: (u64, f64),
    left_out: u64,
}

impl SummaryBuilder {
    fn name(&mut self, name: &str) -> u32 {
        if let Some(id) = self.names.get(name) {
            return *id;
        }
        let id = self.name_list.len() as u32;
        self.names.insert(name.to_owned(), id);
        self.name_list.push(name.to_owned());
        id
    }

    fn cell(&mut self, hour: i64, model: &str, feature: Option<&str>, batch: bool) -> &mut Cell {
        let model = self.name(model);
        let feature = feature.map(|f| self.name(f));
        self.cells.entry((hour, model, feature, batch)).or_default()
    }

    /// Counts one call, or only that it was left out when a figure is out of range.
    pub fn add(&mut self, model: &str, feature: Option<&str>, prompt_hash: Option<&str>, call: CallFigures) {
        if !call.in_range() {
            self.left_out += 1;
            return;
        }
        self.cell(clock_hour(call.at_ms), model, feature, call.batch).add(&call);
        if let Some(hash) = prompt_hash {
            self.add_prompt(hash, &call);
        }
    }

    /// Counts one call's prompt for the repeated-prompt figures only (its other figures come
    /// from a cell); a call out of range is not counted.
    pub(crate) fn add_prompt(&mut self, prompt_hash: &str, call: &CallFigures) {
        if !call.in_range() {
            return;
        }
        let seen = match self.prompts.get_mut(prompt_hash) {
            Some(seen) => seen,
            None => self.prompts.entry(prompt_hash.to_owned()).or_default(),
        };
        seen.0 += 1;
        seen.1 += call.cost_usd;
    }

    /// Counts a roll-up cell of the calls in clock hour `hour` (hours since the epoch) to
    /// `model` from `feature`, batch or not; a cell without calls is not counted.
    ///
    /// The sketches of the cells with the same hour of the day, model, feature and batch flag
    /// are only ever merged together (every group a summary reports is a union of such
    /// classes), so a backend may give the sketch of a whole class on any one of its cells and
    /// empty sketches on the others: the summary is the same.
    pub fn add_cell(&mut self, hour: i64, model: &str, feature: Option<&str>, batch: bool, cell: &Cell) {
        self.cell(hour, model, feature, batch).merge(cell);
    }

    /// Counts repeated prompts the store has counted (calls that repeat an earlier prompt, and
    /// their share of the cost: a prompt called n times adds n − 1 calls and (n − 1) / n of
    /// its calls' cost).
    pub fn add_repeated_prompts(&mut self, calls: u64, cost_usd: f64) {
        self.repeated.0 = self.repeated.0.saturating_add(calls);
        self.repeated.1 += cost_usd;
    }

    /// Counts calls left out by the store (see [`Summary::calls_left_out`]).
    pub fn add_left_out(&mut self, calls: u64) {
        self.left_out = self.left_out.saturating_add(calls);
    }

    /// The summary.
    pub fn finish(self) -> Result<Summary, StoreError> {
        let names = &self.name_list;
        let name = |id: u32| names[id as usize].clone();
        let (mut first, mut last) = (None::<i64>, None::<i64>);
        let mut total = Group::default();
        let mut models: HashMap<u32, Group> = HashMap::new();
        let mut features: HashMap<Option<u32>, Group> = HashMap::new();
        let mut hours: [(u64, f64, Sketch); 24] = Default::default();
        let mut hourly: BTreeMap<i64, (u64, u64, f64)> = BTreeMap::new();
        let mut short: HashMap<u32, Slice> = HashMap::new();
        let mut feature_models: HashMap<(Option<u32>, u32), (Slice, Slice, Sketch)> = HashMap::new();
        let mut feature_prompts: HashMap<Option<u32>, Sketch> = HashMap::new();
        let mut failed_cost_usd = 0.0;
        for (&(hour, model, feature, batch), cell) in &self.cells {
            if cell.all.calls == 0 {
                continue;
            }
            first = Some(first.map_or(cell.first_ms, |f| f.min(cell.first_ms)));
            last = Some(last.map_or(cell.last_ms, |l| l.max(cell.last_ms)));
            total.add(cell);
            models.entry(model).or_default().add(cell);
            features.entry(feature).or_default().add(cell);
            let of_day = hour.rem_euclid(24) as usize;
            let day_hour = &mut hours[of_day];
            day_hour.0 += cell.all.calls;
            day_hour.1 += cell.all.cost_usd;
            day_hour.2.merge(&cell.latency);
            let bucket = hourly.entry(hour).or_default();
            bucket.0 += cell.all.calls;
            bucket.1 += cell.errors;
            bucket.2 += cell.all.cost_usd;
            if cell.short.calls > 0 {
                short.entry(model).or_default().merge(&cell.short);
            }
            failed_cost_usd += cell.failed_cost_usd;
            if !batch {
                let (all, off_hours, prompts) = feature_models.entry((feature, model)).or_default();
                all.merge(&cell.all);
                if of_day < usize::from(OFF_HOURS_END) {
                    off_hours.merge(&cell.all);
                }
                prompts.merge(&cell.prompt_tokens);
                feature_prompts.entry(feature).or_default().merge(&cell.prompt_tokens);
            }
        }

        let (mut repeated_calls, mut repeated_cost) = self.repeated;
        // Summed in one order (by calls, then cost), not the map's, which differs between
        // maps: the same calls then give the same cost to the last bit.
        let mut repeated: Vec<(u64, f64)> = self.prompts.into_values().filter(|(calls, _)| *calls > 1).collect();
        repeated.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for (calls, cost) in repeated {
            repeated_calls += calls - 1;
            repeated_cost += cost * (calls - 1) as f64 / calls as f64;
        }
        // The p95 prompt size is per feature, across its models.
        let p95: HashMap<Option<u32>, f64> = feature_prompts
            .into_iter()
            .filter_map(|(feature, sketch)| Some((feature, sketch.nearest_rank(95)?)))
            .collect();
        let mut by_feature_model: Vec<FeatureModel> = feature_models
            .into_iter()
            .map(|((feature, model), (all, off_hours, prompts))| FeatureModel {
                feature: feature.map(name),
                model: name(model),
                all,
                off_hours,
                input_tokens_above_p95: p95
                    .get(&feature)
                    .map_or(0, |limit| prompts.sum_above(*limit).round() as u64),
            })
            .collect();
        by_feature_model.sort_by(|a, b| {
            b.all
                .cost_usd
                .total_cmp(&a.all.cost_usd)
                .then_with(|| a.model.cmp(&b.model))
                .then_with(|| a.feature.cmp(&b.feature))
        });
        let mut short_calls: Vec<(String, Slice)> = short.into_iter().map(|(m, s)| (name(m), s)).collect();
        short_calls.sort_by(|a, b| b.1.cost_usd.total_cmp(&a.1.cost_usd).then_with(|| a.0.cmp(&b.0)));

        let stamp =
            |ms: i64| Timestamp::from_unix_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")));
        let at = |ms: Option<i64>| ms.map(stamp).transpose();
        let by_cost = |mut rows: Vec<Usage>| {
            rows.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then_with(|| a.key.cmp(&b.key)));
            rows
        };
        Ok(Summary {
            totals: Totals {
                first: at(first)?,
                last: at(last)?,
                usage: total.usage(None),
            },
            by_model: by_cost(models.into_iter().map(|(k, g)| g.usage(Some(name(k)))).collect()),
            by_feature: by_cost(features.into_iter().map(|(k, g)| g.usage(k.map(name))).collect()),
            hours: hours
                .iter()
                .enumerate()
                .filter(|(_, (calls, _, _))| *calls > 0)
                .map(|(hour, (calls, cost, latency))| HourUsage {
                    hour: hour as u8,
                    calls: *calls,
                    cost_usd: *cost,
                    p95_latency_ms: latency.nearest_rank(95),
                })
                .collect(),
            hourly: hourly
                .into_iter()
                .map(|(hour, (calls, errors, cost_usd))| {
                    Ok(Bucket {
                        start: stamp(hour * HOUR_MS)?,
                        calls,
                        errors,
                        cost_usd,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?,
            opportunities: Opportunities {
                short_calls,
                repeated_prompt_cost_usd: repeated_cost,
                repeated_prompt_calls: repeated_calls,
                by_feature_model,
                failed_cost_usd,
            },
            calls_left_out: self.left_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls over two days in several classes (hour of the day, model, feature, batch flag).
    fn calls() -> Vec<(&'static str, Option<&'static str>, CallFigures)> {
        (0..400i64)
            .map(|i| {
                let call = CallFigures {
                    at_ms: 1_790_812_800_000 + (i * 7_919 % 48) * HOUR_MS + i,
                    input_tokens: (i * 37 % 5000) as u64,
                    output_tokens: (i * 13 % 700) as u64,
                    latency_ms: (i % 5 != 0).then_some((i * 53 % 3000) as f64 + 0.5),
                    error: i % 11 == 0,
                    cost_usd: (i % 17) as f64 / 1000.0,
                    batch: i % 9 == 0,
                };
                (
                    ["a", "b"][i as usize % 2],
                    [None, Some("x"), Some("y")][i as usize % 3],
                    call,
                )
            })
            .collect()
    }

    type Class<'a> = (i64, &'a str, Option<&'a str>, bool);

    #[test]
    fn the_sketches_of_a_class_of_cells_may_come_on_any_one_of_them() {
        let mut direct = SummaryBuilder::default();
        let mut cells: BTreeMap<Class<'_>, Cell> = BTreeMap::new();
        for (model, feature, call) in calls() {
            direct.add(model, feature, None, call);
            cells
                .entry((clock_hour(call.at_ms), model, feature, call.batch))
                .or_default()
                .add(&call);
        }
        // Each class's sketches moved onto its last cell.
        let mut class_sketches: HashMap<Class<'_>, (Sketch, Sketch)> = HashMap::new();
        for (&(hour, model, feature, batch), cell) in &mut cells {
            let class = class_sketches.entry((hour % 24, model, feature, batch)).or_default();
            class.0.merge(&std::mem::take(&mut cell.latency));
            class.1.merge(&std::mem::take(&mut cell.prompt_tokens));
        }
        let mut moved = SummaryBuilder::default();
        for (&(hour, model, feature, batch), cell) in cells.iter().rev() {
            let mut cell = cell.clone();
            if let Some((latency, prompt_tokens)) = class_sketches.remove(&(hour % 24, model, feature, batch)) {
                (cell.latency, cell.prompt_tokens) = (latency, prompt_tokens);
            }
            moved.add_cell(hour, model, feature, batch, &cell);
        }
        assert_eq!(moved.finish().unwrap(), direct.finish().unwrap());
    }

    #[test]
    fn an_upload_key_is_one_to_255_visible_ascii_characters() {
        let long = "k".repeat(MAX_UPLOAD_KEY_CHARS);
        let too_long = "k".repeat(MAX_UPLOAD_KEY_CHARS + 1);
        let cases: [(&str, Result<(), &str>); 8] = [
            ("a", Ok(())),
            ("!~0aZ-_.:/{}", Ok(())),
            (&long, Ok(())),
            ("", Err("it is empty")),
            (&too_long, Err("it has 256")),
            ("two words", Err("it has a space")),
            ("tab\there", Err("it has the control character U+0009")),
            ("clé", Err("it has `é`, which is not ASCII")),
        ];
        for (text, expected) in cases {
            match (UploadKey::parse(text), expected) {
                (Ok(key), Ok(())) => assert_eq!(key.as_str(), text),
                (Err(message), Err(end)) => {
                    assert!(
                        message.starts_with("must be 1 to 255 visible ASCII characters"),
                        "{message}"
                    );
                    assert!(message.ends_with(end), "{text:?}: {message}");
                }
                (other, expected) => panic!("{text:?}: {other:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_digest_of_an_upload_tells_any_change_of_its_calls() {
        let calls = crate::testsuite::sample_calls(5, 3);
        let digest = upload_digest(&calls);
        assert_eq!(digest, upload_digest(&calls.clone()));
        let changes: [fn(&mut Vec<WorkloadEvent>); 7] = [
            |c| c.truncate(2),
            |c| c.swap(0, 1),
            |c| c[1].latency_ms = None,
            |c| c[2].batch = !c[2].batch,
            |c| c[0].feature = Some(String::new()),
            |c| c[0].model.push('x'),
            |c| c[0].cost_usd = f64::from_bits(c[0].cost_usd.to_bits() + 1),
        ];
        for change in changes {
            let mut other = calls.clone();
            change(&mut other);
            assert_ne!(upload_digest(&other), digest, "{other:?}");
        }
        assert_ne!(upload_digest(&[]), digest);
    }
}

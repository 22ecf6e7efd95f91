//! Workload data: the log of a team's own language-model calls, which the analysis agents read.
//! It lives in the analytics store, behind [`AnalyticsStore`] (SQLite in the embedded default).

use async_trait::async_trait;
use switchboard_protocol::{Timestamp, UserId};

use crate::StoreError;

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
/// Latency percentiles are nearest-rank over the calls that report a latency: the p-th
/// percentile of n values is the value at rank ceil(p × n / 100) in ascending order.
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
    /// Nearest-rank p95 latency of the calls in that hour that reported one.
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
    /// Prompt tokens above the feature's p95 prompt size, summed over the calls above it.
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

/// Where workload data is kept and aggregated. The store answers with aggregates (a few rows),
/// never with the calls themselves. Every method sees one user's data only.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// Stores all the events, or none of them.
    async fn insert_workload_events(&self, user: &UserId, events: Vec<WorkloadEvent>) -> Result<usize, StoreError>;
    /// How many events the user has stored.
    async fn workload_event_count(&self, user: &UserId) -> Result<u64, StoreError>;
    /// Totals, per-model, per-feature and per-hour usage of a range.
    async fn workload_summary(&self, user: &UserId, range: TimeRange) -> Result<Summary, StoreError>;
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

#[derive(Debug, Default)]
struct Group {
    calls: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    latencies: Vec<f64>,
}

impl Group {
    fn add(&mut self, call: &CallFigures) {
        self.calls += 1;
        self.errors += u64::from(call.error);
        self.input_tokens = self.input_tokens.saturating_add(call.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(call.output_tokens);
        self.cost_usd += call.cost_usd;
        if let Some(latency) = call.latency_ms {
            self.latencies.push(latency);
        }
    }

    fn usage(mut self, key: Option<String>) -> Usage {
        self.latencies.sort_unstable_by(f64::total_cmp);
        Usage {
            key,
            calls: self.calls,
            errors: self.errors,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_usd,
            p50_latency_ms: nearest_rank(&self.latencies, 50),
            p95_latency_ms: nearest_rank(&self.latencies, 95),
        }
    }
}

/// The nearest-rank percentile of sorted values: the value at rank ceil(p × n / 100).
pub fn nearest_rank(sorted: &[f64], percent: usize) -> Option<f64> {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// One feature's calls to one model (by name index): all of them, those off-hours, and each
/// one's prompt tokens.
type FeatureModelCalls = (Slice, Slice, Vec<u64>);

/// Builds a [`Summary`] from calls streamed in any order: one pass, memory for the latencies
/// only. For backends that cannot compute percentiles in their queries.
///
/// Calls with a figure out of range ([`CallFigures::in_range`]) are counted in
/// [`Summary::calls_left_out`] and nowhere else: rows can reach the store without the upload's
/// checks (written directly, or by an older version), and one absurd row must not turn every
/// total into an overflow.
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    first: Option<i64>,
    last: Option<i64>,
    total: Group,
    /// Model and feature names, each stored once: rows refer to them by index, so counting a
    /// row allocates nothing.
    names: std::collections::HashMap<String, u32>,
    name_list: Vec<String>,
    models: std::collections::HashMap<u32, Group>,
    features: std::collections::HashMap<Option<u32>, Group>,
    hours: [(u64, f64); 24],
    hour_latencies: [Vec<f64>; 24],
    hourly: std::collections::HashMap<i64, (u64, u64, f64)>,
    short: std::collections::HashMap<u32, Slice>,
    prompts: std::collections::HashMap<String, (u64, f64)>,
    feature_models: std::collections::HashMap<(Option<u32>, u32), FeatureModelCalls>,
    failed_cost_usd: f64,
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

    /// Counts one call, or only that it was left out when a figure is out of range.
    pub fn add(&mut self, model: &str, feature: Option<&str>, prompt_hash: Option<&str>, call: CallFigures) {
        if !call.in_range() {
            self.left_out += 1;
            return;
        }
        let clock_hour = call.at_ms.div_euclid(3_600_000);
        let hour = clock_hour.rem_euclid(24) as usize;
        let model = self.name(model);
        let feature = feature.map(|f| self.name(f));
        if call.input_tokens <= SHORT_INPUT_TOKENS && call.output_tokens <= SHORT_OUTPUT_TOKENS {
            self.short.entry(model).or_default().add(&call);
        }
        if let Some(hash) = prompt_hash {
            let seen = match self.prompts.get_mut(hash) {
                Some(seen) => seen,
                None => self.prompts.entry(hash.to_owned()).or_default(),
            };
            seen.0 += 1;
            seen.1 += call.cost_usd;
        }
        if call.error {
            self.failed_cost_usd += call.cost_usd;
        }
        if !call.batch {
            let (all, off_hours, inputs) = self.feature_models.entry((feature, model)).or_default();
            all.add(&call);
            if hour < usize::from(OFF_HOURS_END) {
                off_hours.add(&call);
            }
            inputs.push(call.input_tokens);
        }
        self.first = Some(self.first.map_or(call.at_ms, |f| f.min(call.at_ms)));
        self.last = Some(self.last.map_or(call.at_ms, |l| l.max(call.at_ms)));
        self.total.add(&call);
        self.models.entry(model).or_default().add(&call);
        self.features.entry(feature).or_default().add(&call);
        self.hours[hour].0 += 1;
        self.hours[hour].1 += call.cost_usd;
        if let Some(latency) = call.latency_ms {
            self.hour_latencies[hour].push(latency);
        }
        let bucket = self.hourly.entry(clock_hour).or_default();
        bucket.0 += 1;
        bucket.1 += u64::from(call.error);
        bucket.2 += call.cost_usd;
    }

    fn opportunities(
        short: std::collections::HashMap<String, Slice>,
        prompts: std::collections::HashMap<String, (u64, f64)>,
        feature_models: Vec<(FeatureModel, Vec<u64>)>,
        failed_cost_usd: f64,
    ) -> Opportunities {
        let (mut repeated_calls, mut repeated_cost) = (0, 0.0);
        for (calls, cost) in prompts.into_values().filter(|(calls, _)| *calls > 1) {
            repeated_calls += calls - 1;
            repeated_cost += cost * (calls - 1) as f64 / calls as f64;
        }
        // The p95 prompt size is per feature, across its models.
        let mut feature_inputs: std::collections::HashMap<Option<String>, Vec<u64>> = std::collections::HashMap::new();
        for (fm, inputs) in &feature_models {
            feature_inputs.entry(fm.feature.clone()).or_default().extend(inputs);
        }
        let p95: std::collections::HashMap<Option<String>, u64> = feature_inputs
            .into_iter()
            .map(|(feature, mut inputs)| {
                inputs.sort_unstable();
                let rank = (95 * inputs.len()).div_ceil(100).max(1);
                (feature, inputs[rank - 1])
            })
            .collect();
        let mut by_feature_model: Vec<FeatureModel> = feature_models
            .into_iter()
            .map(|(mut fm, inputs)| {
                let limit = p95.get(&fm.feature).copied().unwrap_or(u64::MAX);
                fm.input_tokens_above_p95 = inputs
                    .iter()
                    .fold(0, |sum: u64, i| sum.saturating_add(i.saturating_sub(limit)));
                fm
            })
            .collect();
        by_feature_model.sort_by(|a, b| {
            b.all
                .cost_usd
                .total_cmp(&a.all.cost_usd)
                .then_with(|| a.model.cmp(&b.model))
        });
        let mut short_calls: Vec<(String, Slice)> = short.into_iter().collect();
        short_calls.sort_by(|a, b| b.1.cost_usd.total_cmp(&a.1.cost_usd).then_with(|| a.0.cmp(&b.0)));
        Opportunities {
            short_calls,
            repeated_prompt_cost_usd: repeated_cost,
            repeated_prompt_calls: repeated_calls,
            by_feature_model,
            failed_cost_usd,
        }
    }

    /// The summary.
    pub fn finish(mut self) -> Result<Summary, StoreError> {
        let names = std::mem::take(&mut self.name_list);
        let short = self
            .short
            .drain()
            .map(|(model, slice)| (names[model as usize].clone(), slice))
            .collect();
        let feature_models = self
            .feature_models
            .drain()
            .map(|((feature, model), (all, off_hours, inputs))| {
                let fm = FeatureModel {
                    feature: feature.map(|f| names[f as usize].clone()),
                    model: names[model as usize].clone(),
                    all,
                    off_hours,
                    input_tokens_above_p95: 0,
                };
                (fm, inputs)
            })
            .collect();
        let stamp =
            |ms: i64| Timestamp::from_unix_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")));
        let at = |ms: Option<i64>| ms.map(stamp).transpose();
        let by_cost = |mut rows: Vec<Usage>| {
            rows.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then_with(|| a.key.cmp(&b.key)));
            rows
        };
        Ok(Summary {
            totals: Totals {
                first: at(self.first)?,
                last: at(self.last)?,
                usage: self.total.usage(None),
            },
            by_model: by_cost(
                self.models
                    .into_iter()
                    .map(|(k, g)| g.usage(Some(names[k as usize].clone())))
                    .collect(),
            ),
            by_feature: by_cost(
                self.features
                    .into_iter()
                    .map(|(k, g)| g.usage(k.map(|k| names[k as usize].clone())))
                    .collect(),
            ),
            hours: self
                .hours
                .iter()
                .zip(self.hour_latencies.iter_mut())
                .enumerate()
                .filter(|(_, ((calls, _), _))| *calls > 0)
                .map(|(hour, ((calls, cost), latencies))| {
                    latencies.sort_unstable_by(f64::total_cmp);
                    HourUsage {
                        hour: hour as u8,
                        calls: *calls,
                        cost_usd: *cost,
                        p95_latency_ms: nearest_rank(latencies, 95),
                    }
                })
                .collect(),
            hourly: {
                let mut hourly = self
                    .hourly
                    .into_iter()
                    .map(|(hour, (calls, errors, cost_usd))| {
                        Ok(Bucket {
                            start: stamp(hour * 3_600_000)?,
                            calls,
                            errors,
                            cost_usd,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                hourly.sort_by_key(|b| b.start.unix_millis());
                hourly
            },
            opportunities: Self::opportunities(short, self.prompts, feature_models, self.failed_cost_usd),
            calls_left_out: self.left_out,
        })
    }
}

//! The live SLA report (`GET /api/sla`): the last 15 minutes in slots of 10 s, each with
//! latency histograms (hdrhistogram) of responses, first events, health checks and every tier's
//! operations; windows of 1, 5 and 15 minutes are the sums of their slots. Everything is in
//! memory and a report is a few merges, so it answers at once whatever the tiers do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use switchboard_protocol::sla::{Percentiles, SlaReport, SlaStatus, SlaWindow, Stalled, Thresholds, TierWindow};
use switchboard_protocol::tiers::{OperationId, Tier};
use tokio::time::Instant;

/// The length of one slot.
const SLOT: Duration = Duration::from_secs(10);
/// The slots kept: 15 minutes.
const SLOTS: u64 = 90;
/// "Now", for a tier's median: the current slot and the one before (10 to 20 s).
const RECENT_SLOTS: u64 = 2;
/// How long the latest readiness check's verdict on the tiers counts.
const READINESS_FRESH: Duration = Duration::from_secs(20);
/// The windows of the report, by name, in slots.
const WINDOWS: [(&str, u64); 3] = [("1m", 6), ("5m", 30), ("15m", 90)];
/// The largest duration a histogram holds (1 h, in microseconds); longer ones count as 1 h.
const LONGEST_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, LONGEST_US, 2).expect("the bounds of the SLA's histograms are valid")
}

fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX).clamp(1, LONGEST_US)
}

/// One tier's operations in a slot.
#[derive(Debug, Clone)]
struct TierSlot {
    latency: Histogram<u32>,
    errors: u64,
    /// Operations over the tier's limit (counted exactly, as they end).
    over: u64,
}

impl Default for TierSlot {
    fn default() -> Self {
        Self {
            latency: histogram(),
            errors: 0,
            over: 0,
        }
    }
}

/// Counts of a slot (or a window), each against its limit, exact.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Responses over the p95 limit.
    slow_responses: u64,
    /// Responses over the failure limit.
    failed_responses: u64,
    /// Readiness checks over their limit.
    slow_health: u64,
    /// Messages refused because a tier failed or the server was full.
    refused: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.slow_responses += other.slow_responses;
        self.failed_responses += other.failed_responses;
        self.slow_health += other.slow_health;
        self.refused += other.refused;
    }
}

/// Ten seconds of figures (or, merged, a window's).
#[derive(Debug, Clone)]
struct Slot {
    /// Slots since the report started.
    index: u64,
    response: Histogram<u32>,
    first_event: Histogram<u32>,
    health: Histogram<u32>,
    counts: Counts,
    tiers: BTreeMap<Tier, TierSlot>,
}

impl Slot {
    fn new(index: u64) -> Self {
        Self {
            index,
            response: histogram(),
            first_event: histogram(),
            health: histogram(),
            counts: Counts::default(),
            tiers: BTreeMap::new(),
        }
    }

    fn add(&mut self, other: &Slot) {
        // The histograms share their bounds, so adding one to another cannot fail.
        let _ = self.response.add(&other.response);
        let _ = self.first_event.add(&other.first_event);
        let _ = self.health.add(&other.health);
        self.counts.add(&other.counts);
        for (tier, figures) in &other.tiers {
            let into = self.tiers.entry(*tier).or_default();
            let _ = into.latency.add(&figures.latency);
            into.errors += figures.errors;
            into.over += figures.over;
        }
    }
}

#[derive(Debug)]
struct State {
    slots: VecDeque<Slot>,
    /// The latest readiness check: when, and the tiers it found degraded.
    readiness: Option<(Instant, Vec<Tier>)>,
    /// The operations under way, and when each began.
    under_way: HashMap<OperationId, (Tier, Instant)>,
}

/// The server's SLA figures.
#[derive(Debug)]
pub struct Sla {
    started: Instant,
    thresholds: Thresholds,
    /// The tiers this server uses: each is in every window of the report, with or without
    /// operations.
    tiers: Vec<Tier>,
    state: Mutex<State>,
}

/// Whether the `quantile` of `count` values, `over` of which are over a limit, is over it:
/// exactly, from the counts (the nearest-rank quantile is over when more than the values below
/// its rank are).
fn quantile_over(over: u64, count: u64, quantile: f64) -> bool {
    count > 0 && over > count - (quantile * count as f64).ceil() as u64
}

impl Sla {
    /// Figures from now on, for a server on `tiers`.
    pub fn new(tiers: &[Tier]) -> Self {
        let mut tiers = tiers.to_vec();
        tiers.sort_by_key(|tier| Tier::ALL.iter().position(|t| t == tier));
        tiers.dedup();
        Self {
            started: Instant::now(),
            thresholds: Thresholds::INCIDENT,
            tiers,
            state: Mutex::new(State {
                slots: VecDeque::new(),
                readiness: None,
                under_way: HashMap::new(),
            }),
        }
    }

    fn index(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_millis() / SLOT.as_millis()) as u64
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `record` on the slot of now (made, and the slots past 15 minutes dropped, when
    /// needed) and on the rest of the state, under one lock.
    fn with_state(
        &self,
        record: impl FnOnce(&mut Slot, &mut Option<(Instant, Vec<Tier>)>, &mut HashMap<OperationId, (Tier, Instant)>),
    ) {
        let index = self.index(Instant::now());
        let mut state = self.state();
        let State {
            slots,
            readiness,
            under_way,
        } = &mut *state;
        if slots.back().is_none_or(|slot| slot.index < index) {
            slots.push_back(Slot::new(index));
        }
        while slots.front().is_some_and(|slot| slot.index + SLOTS <= index) {
            slots.pop_front();
        }
        record(
            slots.back_mut().expect("the slot of now was just made"),
            readiness,
            under_way,
        );
    }

    /// Runs `record` on the slot of now.
    fn with_slot(&self, record: impl FnOnce(&mut Slot)) {
        self.with_state(|slot, _, _| record(slot));
    }

    /// An operation of `tier` begins.
    pub fn began(&self, tier: Tier, id: OperationId) {
        self.state().under_way.insert(id, (tier, Instant::now()));
    }

    /// One operation of `tier` ended.
    pub fn operation(&self, tier: Tier, id: Option<OperationId>, took: Duration, failed: bool) {
        let limit = self.thresholds.tier_ms(tier);
        self.with_state(|slot, _, under_way| {
            if let Some(id) = id {
                under_way.remove(&id);
            }
            let figures = slot.tiers.entry(tier).or_default();
            figures.latency.saturating_record(micros(took));
            figures.errors += u64::from(failed);
            figures.over += u64::from(took > Duration::from_millis(limit));
        });
    }

    /// A run's first event, `took` after its message was accepted.
    pub fn first_event(&self, took: Duration) {
        self.with_slot(|slot| slot.first_event.saturating_record(micros(took)));
    }

    /// A run's final event, `took` after its message was accepted.
    pub fn response(&self, took: Duration) {
        let (slow, failed) = (
            took > Duration::from_millis(self.thresholds.response_p95_ms),
            took > Duration::from_millis(self.thresholds.response_failure_ms),
        );
        self.with_slot(|slot| {
            slot.response.saturating_record(micros(took));
            slot.counts.slow_responses += u64::from(slow);
            slot.counts.failed_responses += u64::from(failed);
        });
    }

    /// A message refused because a tier failed or the server was full: its user got no answer.
    pub fn refused(&self) {
        self.with_slot(|slot| slot.counts.refused += 1);
    }

    /// A readiness check that took `took` and found `degraded` tiers degraded.
    pub fn readiness(&self, took: Duration, degraded: Vec<Tier>) {
        let slow = took > Duration::from_millis(self.thresholds.health_ms);
        self.with_state(|slot, readiness, _| {
            slot.health.saturating_record(micros(took));
            slot.counts.slow_health += u64::from(slow);
            *readiness = Some((Instant::now(), degraded));
        });
    }

    /// The report of now.
    pub fn report(&self) -> SlaReport {
        let now = Instant::now();
        let index = self.index(now);
        let state = self.state();
        // The windows nest (the recent slots, 1, 5 and 15 minutes): one pass from the newest
        // slot back, each window taken as the pass leaves it.
        let mut spans: Vec<u64> = WINDOWS.iter().map(|(_, slots)| *slots).collect();
        spans.insert(0, RECENT_SLOTS);
        let mut merged = Vec::with_capacity(spans.len());
        let mut acc = Slot::new(index);
        let mut slots = state.slots.iter().rev().peekable();
        for span in &spans {
            while let Some(slot) = slots.next_if(|slot| slot.index + span > index) {
                acc.add(slot);
            }
            merged.push(acc.clone());
        }
        let (recent, windows) = merged.split_first().expect("the recent window is first");
        let up = now.saturating_duration_since(self.started);
        let into_slot = up.saturating_sub(SLOT * index as u32);
        let windows: BTreeMap<String, SlaWindow> = WINDOWS
            .iter()
            .zip(windows)
            .map(|((name, slots), merged)| {
                // The window's slots: the current one as far as it has gone, and those before.
                let covered = (SLOT * (*slots as u32 - 1) + into_slot).min(up);
                ((*name).to_owned(), self.window(merged, covered.as_secs_f64().max(1.0)))
            })
            .collect();
        let minute = &merged[1];
        let stalled: BTreeMap<String, Stalled> = self
            .listed()
            .filter_map(|tier| {
                let limit = Duration::from_millis(self.thresholds.tier_ms(tier));
                let ages: Vec<Duration> = state
                    .under_way
                    .values()
                    .filter(|(t, _)| *t == tier)
                    .map(|(_, began)| now.saturating_duration_since(*began))
                    .filter(|age| *age > limit)
                    .collect();
                let oldest = ages.iter().max()?;
                Some((
                    tier.as_str().to_owned(),
                    Stalled {
                        ops: ages.len() as u64,
                        oldest_ms: ms(micros(*oldest)),
                    },
                ))
            })
            .collect();
        let readiness = state
            .readiness
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= READINESS_FRESH)
            .map(|(_, tiers)| tiers.as_slice())
            .unwrap_or_default();
        let degraded: Vec<String> = self
            .listed()
            .filter(|tier| {
                let over = |figures: Option<&TierSlot>, quantile: f64| {
                    figures.is_some_and(|f| quantile_over(f.over, f.latency.len(), quantile))
                };
                minute.tiers.get(tier).is_some_and(|figures| figures.errors > 0)
                    || over(minute.tiers.get(tier), 0.99)
                    || over(recent.tiers.get(tier), 0.5)
                    || stalled.contains_key(tier.as_str())
                    || readiness.contains(tier)
            })
            .map(|tier| tier.as_str().to_owned())
            .collect();
        let response = &minute.response;
        let violating = minute.counts.failed_responses > 0
            || minute.counts.refused > 0
            || quantile_over(minute.counts.slow_responses, response.len(), 0.95);
        let status = if violating {
            SlaStatus::Violating
        } else if degraded.is_empty() {
            SlaStatus::Ok
        } else {
            SlaStatus::Degraded
        };
        SlaReport {
            status,
            degraded,
            thresholds: self.thresholds,
            windows,
            stalled,
        }
    }

    /// The tiers of the report: those this server uses, in the order of [`Tier::ALL`].
    fn listed(&self) -> impl Iterator<Item = Tier> + '_ {
        Tier::ALL.into_iter().filter(|tier| self.tiers.contains(tier))
    }

    fn window(&self, merged: &Slot, seconds: f64) -> SlaWindow {
        let t = &self.thresholds;
        let response = &merged.response;
        let counts = &merged.counts;
        let p95_over = quantile_over(counts.slow_responses, response.len(), 0.95);
        let mut violations = BTreeMap::from([
            (t.response_p95_violation(), u64::from(p95_over)),
            (t.slow_response_violation(), counts.slow_responses),
            (t.failed_response_violation(), counts.failed_responses),
            (t.health_violation(), counts.slow_health),
            (t.refused_violation(), counts.refused),
        ]);
        let mut tiers = BTreeMap::new();
        for tier in self.listed() {
            let figures = merged.tiers.get(&tier);
            violations.insert(t.tier_violation(tier), figures.map_or(0, |f| f.over));
            let latency = figures.map(|f| &f.latency).filter(|l| !l.is_empty());
            let quantile = |q: f64| latency.map(|l| ms(l.value_at_quantile(q)));
            tiers.insert(
                tier.as_str().to_owned(),
                TierWindow {
                    ops: latency.map_or(0, Histogram::len),
                    p50_ms: quantile(0.5),
                    p99_ms: quantile(0.99),
                    errors: figures.map_or(0, |f| f.errors),
                },
            );
        }
        let runs = response.len();
        SlaWindow {
            runs,
            runs_per_s: (runs as f64 / seconds * 100.0).round() / 100.0,
            first_event_ms: percentiles(&merged.first_event),
            response_ms: percentiles(response),
            violations,
            tiers,
        }
    }
}

/// Microseconds as milliseconds, to a tenth.
fn ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

fn percentiles(histogram: &Histogram<u32>) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles::default();
    }
    let at = |q: f64| Some(ms(histogram.value_at_quantile(q)));
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn tier<'a>(report: &'a SlaReport, window: &str, name: &str) -> &'a TierWindow {
        &report.windows[window].tiers[name]
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_tier_is_named_at_once_and_counted_and_cleared_a_minute_after_it_recovers() {
        let sla = Sla::new(&[Tier::Postgres, Tier::ClickHouse, Tier::Model]);
        for _ in 0..10 {
            sla.operation(Tier::Postgres, None, MS(3), false);
        }
        let report = sla.report();
        assert_eq!(report.status, SlaStatus::Ok);
        assert!(report.degraded.is_empty());
        assert_eq!(tier(&report, "1m", "postgres").ops, 10);
        assert_eq!(
            tier(&report, "1m", "clickhouse").ops,
            0,
            "a tier in use is listed without operations"
        );
        assert!(
            !report.windows["1m"].tiers.contains_key("redis"),
            "a tier not in use is not"
        );

        // PostgreSQL +300 ms.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..5 {
            sla.operation(Tier::Postgres, None, MS(303), false);
        }
        let report = sla.report();
        assert_eq!(report.degraded, ["postgres"]);
        assert_eq!(report.status, SlaStatus::Degraded);
        assert_eq!(report.windows["1m"].violations["postgres_over_200ms"], 5);
        assert_eq!(tier(&report, "1m", "postgres").ops, 15);

        // Fast again: the minute's p99 still says it, then the report forgets.
        for _ in 0..200 {
            sla.operation(Tier::Postgres, None, MS(2), false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        sla.operation(Tier::Postgres, None, MS(2), false);
        assert_eq!(
            sla.report().degraded,
            ["postgres"],
            "5 of 216 over the limit: the p99 is"
        );
        tokio::time::advance(Duration::from_secs(40)).await;
        sla.operation(Tier::Postgres, None, MS(2), false);
        let report = sla.report();
        assert!(report.degraded.is_empty(), "{report:?}");
        assert_eq!(report.windows["1m"].violations["postgres_over_200ms"], 0);
        assert_eq!(report.windows["5m"].violations["postgres_over_200ms"], 5);
        assert_eq!(tier(&report, "15m", "postgres").ops, 217);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tier_failing_or_found_degraded_by_readiness_is_named() {
        let sla = Sla::new(&[Tier::Sqlite, Tier::Redis, Tier::Model]);
        sla.operation(Tier::Redis, None, MS(500), true);
        sla.operation(Tier::Model, None, MS(30_000), true);
        sla.readiness(MS(800), vec![Tier::Sqlite]);
        let report = sla.report();
        assert_eq!(report.degraded, ["sqlite", "redis", "model"]);
        assert_eq!(tier(&report, "1m", "redis").errors, 1);
        assert_eq!(report.windows["1m"].violations["health_check_over_1000ms"], 0);
        assert!(
            !report.windows["1m"].violations.contains_key("model_over_0ms"),
            "the model has no limit"
        );
        // Readiness's word lasts 20 s; the failures a minute.
        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(sla.report().degraded, ["redis", "model"]);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(sla.report().degraded.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn responses_over_their_limits_make_the_report_violating_and_are_counted() {
        let sla = Sla::new(&[Tier::Sqlite]);
        for _ in 0..94 {
            sla.response(MS(800));
            sla.first_event(MS(5));
        }
        for took in [2500, 2600, 2700, 2800, 3100, 4000] {
            sla.response(MS(took));
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        let report = sla.report();
        assert_eq!(report.status, SlaStatus::Violating, "responses over 3 s");
        let minute = &report.windows["1m"];
        assert_eq!(minute.runs, 100);
        assert_eq!(minute.runs_per_s, 5.0, "100 runs in the 20 s the server is up");
        assert_eq!(minute.violations["messages_refused"], 0);
        assert_eq!(minute.violations["response_over_2000ms"], 6);
        assert_eq!(minute.violations["response_over_3000ms"], 2);
        assert_eq!(minute.violations["response_p95_over_2000ms"], 1);
        let p50 = minute.response_ms.p50.unwrap();
        assert!((795.0..=805.0).contains(&p50), "{p50}");
        assert!(minute.first_event_ms.p99.is_some());
        // A minute on, the 5-minute window still holds them.
        tokio::time::advance(Duration::from_secs(60)).await;
        let report = sla.report();
        assert_eq!(report.status, SlaStatus::Ok);
        assert_eq!(report.windows["1m"].runs, 0);
        assert_eq!(report.windows["1m"].response_ms, Percentiles::default());
        assert_eq!(report.windows["5m"].runs, 100);
        assert_eq!(
            report.windows["5m"].runs_per_s, 1.25,
            "100 runs in the 80 s the server is up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_under_way_past_its_limit_names_its_tier_before_it_ends() {
        let sla = Sla::new(&[Tier::Postgres, Tier::Model]);
        let (stuck, quick) = (OperationId::next(), OperationId::next());
        sla.began(Tier::Postgres, stuck);
        sla.began(Tier::Postgres, quick);
        tokio::time::advance(MS(150)).await;
        sla.operation(Tier::Postgres, Some(quick), MS(150), false);
        assert!(sla.report().degraded.is_empty(), "150 ms under way is within 200 ms");
        tokio::time::advance(MS(3250)).await;
        let report = sla.report();
        assert_eq!(report.degraded, ["postgres"]);
        assert_eq!(
            report.stalled["postgres"],
            Stalled {
                ops: 1,
                oldest_ms: 3400.0
            }
        );
        assert_eq!(
            tier(&report, "1m", "postgres").ops,
            1,
            "only ended operations are counted"
        );
        // It ends (cut off by its deadline): no longer under way, and failed.
        sla.operation(Tier::Postgres, Some(stuck), MS(3400), true);
        let report = sla.report();
        assert!(report.stalled.is_empty());
        assert_eq!(report.windows["1m"].violations["postgres_over_200ms"], 1);
        assert_eq!(report.degraded, ["postgres"], "its failure counts for a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_refused_for_a_tier_makes_the_report_violating() {
        let sla = Sla::new(&[Tier::Postgres]);
        sla.refused();
        let report = sla.report();
        assert_eq!(report.status, SlaStatus::Violating, "its user got no answer");
        assert_eq!(report.windows["1m"].violations["messages_refused"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_are_counted_exactly_and_a_window_s_rate_is_over_the_time_it_covers() {
        let sla = Sla::new(&[Tier::Postgres]);
        // At the limits is not over them.
        for took in [199, 200, 201] {
            sla.operation(Tier::Postgres, None, MS(took), false);
        }
        for took in [1999, 2000, 2001, 2999, 3000, 3001] {
            sla.response(MS(took));
        }
        let minute = &sla.report().windows["1m"];
        assert_eq!(minute.violations["postgres_over_200ms"], 1);
        assert_eq!(minute.violations["response_over_2000ms"], 4);
        assert_eq!(minute.violations["response_over_3000ms"], 1);

        // A steady 10 runs a second for 3 minutes, 5 s into a slot: the last minute covers
        // 55 s of it (five whole slots and this one's 5 s), not 60.
        let steady = Sla::new(&[Tier::Postgres]);
        for _ in 0..1850 {
            steady.response(MS(100));
            tokio::time::advance(MS(100)).await;
        }
        let report = steady.report();
        assert_eq!(report.windows["1m"].runs, 550);
        assert_eq!(report.windows["1m"].runs_per_s, 10.0);
        assert_eq!(
            report.windows["5m"].runs_per_s, 10.0,
            "all of the 185 s the server is up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slots_older_than_15_minutes_are_dropped() {
        let sla = Sla::new(&[Tier::Sqlite]);
        sla.operation(Tier::Sqlite, None, MS(1), false);
        for _ in 0..100 {
            tokio::time::advance(SLOT).await;
            sla.operation(Tier::Sqlite, None, MS(1), false);
        }
        assert_eq!(sla.state.lock().unwrap().slots.len(), SLOTS as usize);
        assert_eq!(tier(&sla.report(), "15m", "sqlite").ops, 90);
    }
}

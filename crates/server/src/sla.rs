//! The live SLA report (`GET /api/sla`): the last 15 minutes in slots of 10 s, each with
//! latency histograms (hdrhistogram) of responses, first events, health checks and every tier's
//! operations; windows of 1, 5 and 15 minutes are the sums of their slots. Everything is in
//! memory and a report is a few merges, so it answers at once whatever the tiers do.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use switchboard_protocol::sla::{Percentiles, SlaReport, SlaStatus, SlaWindow, Thresholds, TierWindow};
use switchboard_protocol::tiers::Tier;
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
#[derive(Debug)]
struct TierSlot {
    latency: Histogram<u32>,
    errors: u64,
}

impl Default for TierSlot {
    fn default() -> Self {
        Self {
            latency: histogram(),
            errors: 0,
        }
    }
}

/// Ten seconds of figures.
#[derive(Debug)]
struct Slot {
    /// Slots since the report started.
    index: u64,
    response: Histogram<u32>,
    first_event: Histogram<u32>,
    health: Histogram<u32>,
    tiers: BTreeMap<Tier, TierSlot>,
}

impl Slot {
    fn new(index: u64) -> Self {
        Self {
            index,
            response: histogram(),
            first_event: histogram(),
            health: histogram(),
            tiers: BTreeMap::new(),
        }
    }
}

/// What a window sums up.
struct Merged {
    response: Histogram<u32>,
    first_event: Histogram<u32>,
    health: Histogram<u32>,
    tiers: BTreeMap<Tier, TierSlot>,
}

#[derive(Debug)]
struct State {
    slots: VecDeque<Slot>,
    /// The latest readiness check: when, and the tiers it found degraded.
    readiness: Option<(Instant, Vec<Tier>)>,
}

/// The server's SLA figures.
#[derive(Debug)]
pub(crate) struct Sla {
    started: Instant,
    thresholds: Thresholds,
    /// The tiers this server uses: each is in every window of the report, with or without
    /// operations.
    tiers: Vec<Tier>,
    state: Mutex<State>,
}

impl Sla {
    /// Figures from now on, for a server on `tiers`.
    pub(crate) fn new(tiers: &[Tier]) -> Self {
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
            }),
        }
    }

    fn index(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_millis() / SLOT.as_millis()) as u64
    }

    /// Runs `record` on the slot of now, made (and the slots past 15 minutes dropped) when needed.
    fn with_slot(&self, record: impl FnOnce(&mut Slot)) {
        let index = self.index(Instant::now());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.slots.back().is_none_or(|slot| slot.index < index) {
            state.slots.push_back(Slot::new(index));
        }
        while state.slots.front().is_some_and(|slot| slot.index + SLOTS <= index) {
            state.slots.pop_front();
        }
        record(state.slots.back_mut().expect("the slot of now was just made"));
    }

    /// One operation of `tier`.
    pub(crate) fn operation(&self, tier: Tier, took: Duration, failed: bool) {
        self.with_slot(|slot| {
            let figures = slot.tiers.entry(tier).or_default();
            figures.latency.saturating_record(micros(took));
            figures.errors += u64::from(failed);
        });
    }

    /// A run's first event, `took` after its message was accepted.
    pub(crate) fn first_event(&self, took: Duration) {
        self.with_slot(|slot| slot.first_event.saturating_record(micros(took)));
    }

    /// A run's final event, `took` after its message was accepted.
    pub(crate) fn response(&self, took: Duration) {
        self.with_slot(|slot| slot.response.saturating_record(micros(took)));
    }

    /// A readiness check that took `took` and found `degraded` tiers degraded.
    pub(crate) fn readiness(&self, took: Duration, degraded: Vec<Tier>) {
        self.with_slot(|slot| slot.health.saturating_record(micros(took)));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.readiness = Some((Instant::now(), degraded));
    }

    /// The report of now.
    pub(crate) fn report(&self) -> SlaReport {
        let now = Instant::now();
        let index = self.index(now);
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let merged = |slots: u64| merge(state.slots.iter().filter(|slot| slot.index + slots > index));
        let up = now.saturating_duration_since(self.started).as_secs_f64().max(1.0);
        let windows: BTreeMap<String, SlaWindow> = WINDOWS
            .into_iter()
            .map(|(name, slots)| {
                let seconds = up.min((slots * SLOT.as_secs()) as f64);
                (name.to_owned(), self.window(&merged(slots), seconds))
            })
            .collect();
        let minute = merged(WINDOWS[0].1);
        let recent = merged(RECENT_SLOTS);
        let readiness = state
            .readiness
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= READINESS_FRESH)
            .map(|(_, tiers)| tiers.as_slice())
            .unwrap_or_default();
        let degraded: Vec<String> = self
            .listed()
            .filter(|tier| {
                let over = |figures: Option<&TierSlot>, quantile: f64| match (figures, self.thresholds.tier_ms(*tier)) {
                    (Some(figures), Some(limit)) if !figures.latency.is_empty() => {
                        figures.latency.value_at_quantile(quantile) > limit * 1000
                    }
                    _ => false,
                };
                let failing = minute.tiers.get(tier).is_some_and(|figures| figures.errors > 0);
                failing
                    || over(minute.tiers.get(tier), 0.99)
                    || over(recent.tiers.get(tier), 0.5)
                    || readiness.contains(tier)
            })
            .map(|tier| tier.as_str().to_owned())
            .collect();
        let response = &minute.response;
        let violating = !response.is_empty()
            && (response.value_at_quantile(0.95) > self.thresholds.response_p95_ms * 1000
                || response.max() > self.thresholds.response_failure_ms * 1000);
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
        }
    }

    /// The tiers of the report: those this server uses, in the order of [`Tier::ALL`].
    fn listed(&self) -> impl Iterator<Item = Tier> + '_ {
        Tier::ALL.into_iter().filter(|tier| self.tiers.contains(tier))
    }

    fn window(&self, merged: &Merged, seconds: f64) -> SlaWindow {
        let t = &self.thresholds;
        let over = |histogram: &Histogram<u32>, limit_ms: u64| {
            if histogram.is_empty() {
                return 0;
            }
            histogram.count_between(limit_ms * 1000 + 1, LONGEST_US)
        };
        let response = &merged.response;
        let mut violations = BTreeMap::from([
            (
                t.response_p95_violation(),
                u64::from(!response.is_empty() && response.value_at_quantile(0.95) > t.response_p95_ms * 1000),
            ),
            (t.slow_response_violation(), over(response, t.response_p95_ms)),
            (t.failed_response_violation(), over(response, t.response_failure_ms)),
            (t.health_violation(), over(&merged.health, t.health_ms)),
        ]);
        let mut tiers = BTreeMap::new();
        for tier in self.listed() {
            let figures = merged.tiers.get(&tier);
            let latency = figures.map(|f| &f.latency);
            if let (Some(name), Some(limit)) = (t.tier_violation(tier), t.tier_ms(tier)) {
                violations.insert(name, latency.map_or(0, |l| over(l, limit)));
            }
            let quantile = |q: f64| latency.filter(|l| !l.is_empty()).map(|l| ms(l.value_at_quantile(q)));
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

fn merge<'a>(slots: impl Iterator<Item = &'a Slot>) -> Merged {
    let mut merged = Merged {
        response: histogram(),
        first_event: histogram(),
        health: histogram(),
        tiers: BTreeMap::new(),
    };
    // The histograms share their bounds, so adding one to another cannot fail.
    for slot in slots {
        let _ = merged.response.add(&slot.response);
        let _ = merged.first_event.add(&slot.first_event);
        let _ = merged.health.add(&slot.health);
        for (tier, figures) in &slot.tiers {
            let into = merged.tiers.entry(*tier).or_default();
            let _ = into.latency.add(&figures.latency);
            into.errors += figures.errors;
        }
    }
    merged
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
            sla.operation(Tier::Postgres, MS(3), false);
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
            sla.operation(Tier::Postgres, MS(303), false);
        }
        let report = sla.report();
        assert_eq!(report.degraded, ["postgres"]);
        assert_eq!(report.status, SlaStatus::Degraded);
        assert_eq!(report.windows["1m"].violations["postgres_over_200ms"], 5);
        assert_eq!(tier(&report, "1m", "postgres").ops, 15);

        // Fast again: the minute's p99 still says it, then the report forgets.
        for _ in 0..200 {
            sla.operation(Tier::Postgres, MS(2), false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        sla.operation(Tier::Postgres, MS(2), false);
        assert_eq!(
            sla.report().degraded,
            ["postgres"],
            "5 of 216 over the limit: the p99 is"
        );
        tokio::time::advance(Duration::from_secs(40)).await;
        sla.operation(Tier::Postgres, MS(2), false);
        let report = sla.report();
        assert!(report.degraded.is_empty(), "{report:?}");
        assert_eq!(report.windows["1m"].violations["postgres_over_200ms"], 0);
        assert_eq!(report.windows["5m"].violations["postgres_over_200ms"], 5);
        assert_eq!(tier(&report, "15m", "postgres").ops, 217);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tier_failing_or_found_degraded_by_readiness_is_named() {
        let sla = Sla::new(&[Tier::Sqlite, Tier::Redis, Tier::Model]);
        sla.operation(Tier::Redis, MS(500), true);
        sla.operation(Tier::Model, MS(30_000), true);
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
    async fn slots_older_than_15_minutes_are_dropped() {
        let sla = Sla::new(&[Tier::Sqlite]);
        sla.operation(Tier::Sqlite, MS(1), false);
        for _ in 0..100 {
            tokio::time::advance(SLOT).await;
            sla.operation(Tier::Sqlite, MS(1), false);
        }
        assert_eq!(sla.state.lock().unwrap().slots.len(), SLOTS as usize);
        assert_eq!(tier(&sla.report(), "15m", "sqlite").ops, 90);
    }
}

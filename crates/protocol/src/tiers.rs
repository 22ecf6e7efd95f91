//! Where a run's time goes, tier by tier: the tiers ([`Tier`]), the time one run spent in each
//! ([`TierTimes`], carried by the run's tasks as a task-local, so that a backend deep below the
//! run adds to it without being handed anything), and the clock every backend's operations pass
//! through ([`TierClock`]), which also tells an observer (the server's SLA report) of each one.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

/// A tier a run's time is spent in: a store, the nodes' Redis, or the language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The embedded SQLite files in the data dir.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
    /// A ClickHouse server.
    ClickHouse,
    /// A Redis server (the nodes' shared fan-out, tickets and limits).
    Redis,
    /// The language model.
    Model,
}

impl Tier {
    /// Every tier, in the order of their reports.
    pub const ALL: [Tier; 5] = [Tier::Postgres, Tier::Sqlite, Tier::Redis, Tier::ClickHouse, Tier::Model];

    /// Its short name: the key of its readiness check, its metrics label and its key in
    /// `timings.tiers` and the SLA report.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Sqlite => "sqlite",
            Tier::Postgres => "postgres",
            Tier::ClickHouse => "clickhouse",
            Tier::Redis => "redis",
            Tier::Model => "model",
        }
    }

    /// The tier of a short name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tier| tier.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Its proper name, for sentences: "SQLite", "PostgreSQL", "ClickHouse", "Redis", "the model".
impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Sqlite => "SQLite",
            Tier::Postgres => "PostgreSQL",
            Tier::ClickHouse => "ClickHouse",
            Tier::Redis => "Redis",
            Tier::Model => "the model",
        })
    }
}

#[derive(Debug, Default)]
struct Spent {
    micros: AtomicU64,
    operations: AtomicU64,
}

/// The time spent in each tier by one run (or one group of operations), shared by the tasks
/// that work for it. Cheap to clone: clones add to the same figures.
#[derive(Debug, Clone, Default)]
pub struct TierTimes(Arc<[Spent; Tier::ALL.len()]>);

tokio::task_local! {
    static CURRENT: TierTimes;
}

impl TierTimes {
    /// Adds one operation of `tier` that took `took`.
    pub fn add(&self, tier: Tier, took: Duration) {
        let spent = &self.0[tier.index()];
        spent
            .micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        spent.operations.fetch_add(1, Ordering::Relaxed);
    }

    /// The time spent in `tier` and the number of its operations.
    pub fn of(&self, tier: Tier) -> (Duration, u64) {
        let spent = &self.0[tier.index()];
        (
            Duration::from_micros(spent.micros.load(Ordering::Relaxed)),
            spent.operations.load(Ordering::Relaxed),
        )
    }

    /// Adds everything `other` spent (a group's operations, to each of its members), each
    /// tier's time at most `wall` (operations of the group that ran at once were waited for
    /// together).
    pub fn add_all(&self, other: &TierTimes, wall: Duration) {
        for tier in Tier::ALL {
            let (took, operations) = other.of(tier);
            let took = took.min(wall);
            let spent = &self.0[tier.index()];
            spent
                .micros
                .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            spent.operations.fetch_add(operations, Ordering::Relaxed);
        }
    }

    /// Milliseconds per tier touched (at least one operation), by short name: a run's
    /// `timings.tiers`.
    pub fn millis(&self) -> BTreeMap<String, u64> {
        Tier::ALL
            .into_iter()
            .filter_map(|tier| {
                let (took, operations) = self.of(tier);
                (operations > 0).then(|| {
                    (
                        tier.as_str().to_owned(),
                        u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    )
                })
            })
            .collect()
    }

    /// Runs `work` with these as the current task's times: the tier operations it awaits are
    /// added to them. A task `work` spawns does not inherit them; scope it too.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The times of the task this is called on, when it works for a run.
    pub fn current() -> Option<TierTimes> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// `work` under the times of the task this is called on (if it has some), for a task to
    /// spawn: what the spawned task does counts for the same run.
    pub fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
        let current = Self::current();
        async move {
            match current {
                Some(times) => times.scope(work).await,
                None => work.await,
            }
        }
    }
}

/// The name of one operation under way, from its start to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationId(u64);

impl OperationId {
    /// A name no other operation of this process has.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Told of each operation of a tier: when it begins (so that one that stalls is seen before it
/// ends), how long it took and whether the tier failed it.
pub trait TierObserver: Send + Sync + fmt::Debug {
    /// An operation of `tier` begins; its end is told with the same `id`.
    fn began(&self, tier: Tier, id: OperationId);
    /// One operation of `tier` ended after `took` (`id`: its name from [`TierObserver::began`];
    /// none for one told only at its end); `failed` when the tier was slow past its deadline or
    /// could not be reached (not when the request itself was wrong, nor when the caller gave up
    /// on it first).
    fn operation(&self, tier: Tier, id: Option<OperationId>, took: Duration, failed: bool);
}

/// The clock of one backend's operations on its tier: each operation is timed, added to the
/// current run's [`TierTimes`], told to the observer (once one is set) and traced as a span
/// `tier`. Cheap to clone: clones share the observer.
#[derive(Clone)]
pub struct TierClock {
    tier: Tier,
    observer: Arc<OnceLock<Arc<dyn TierObserver>>>,
}

impl fmt::Debug for TierClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierClock")
            .field("tier", &self.tier)
            .field("observed", &self.observer.get().is_some())
            .finish()
    }
}

impl TierClock {
    /// The clock of `tier`'s operations, observed by nobody yet.
    pub fn new(tier: Tier) -> Self {
        Self {
            tier,
            observer: Arc::default(),
        }
    }

    /// Its tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Tells `observer` of every operation from now on. The first observer stays: a backend
    /// serves one server.
    pub fn observe(&self, observer: Arc<dyn TierObserver>) {
        let _ = self.observer.set(observer);
    }

    fn ended(&self, id: OperationId, took: Duration, failed: bool) {
        if let Some(times) = TierTimes::current() {
            times.add(self.tier, took);
        }
        if let Some(observer) = self.observer.get() {
            observer.operation(self.tier, Some(id), took, failed);
        }
    }

    /// Runs `work`, one operation named `operation`, and records how long it took; `failed`
    /// tells whether an error is the tier's failure. The observer is told when it begins too;
    /// dropped before it ends (its caller gave up), it is recorded as cut off: timed, not failed.
    pub async fn time<T, E>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, E>>,
        failed: impl FnOnce(&E) -> bool,
    ) -> Result<T, E> {
        /// Records the operation when it is dropped unfinished.
        struct Under<'a> {
            clock: &'a TierClock,
            id: OperationId,
            started: Instant,
            ended: bool,
        }
        impl Drop for Under<'_> {
            fn drop(&mut self) {
                if !self.ended {
                    self.clock.ended(self.id, self.started.elapsed(), false);
                }
            }
        }
        let mut under = Under {
            clock: self,
            id: OperationId::next(),
            started: Instant::now(),
            ended: false,
        };
        if let Some(observer) = self.observer.get() {
            observer.began(self.tier, under.id);
        }
        let span = tracing::debug_span!("tier", tier = self.tier.as_str(), operation);
        let outcome = work.instrument(span).await;
        let (took, failed) = (under.started.elapsed(), outcome.as_ref().err().is_some_and(failed));
        under.ended = true;
        self.ended(under.id, took, failed);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(Tier, Duration, bool)>>, Mutex<Vec<OperationId>>);

    impl TierObserver for Seen {
        fn began(&self, _tier: Tier, id: OperationId) {
            self.1.lock().unwrap().push(id);
        }
        fn operation(&self, tier: Tier, id: Option<OperationId>, took: Duration, failed: bool) {
            let mut under = self.1.lock().unwrap();
            assert_eq!(under.pop(), id, "an operation ends as it began");
            self.0.lock().unwrap().push((tier, took, failed));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_is_added_to_the_current_runs_times_and_told_to_the_observer() {
        let clock = TierClock::new(Tier::Postgres);
        let seen = Arc::new(Seen::default());
        clock.observe(seen.clone());
        let times = TierTimes::default();
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, &str>(())
        };
        times
            .clone()
            .scope(clock.time("append", slow(), |_| true))
            .await
            .unwrap();
        // Outside any run: the observer is told, no run's times change.
        clock.time("ping", slow(), |_| true).await.unwrap();
        let failing = async { Err::<(), _>("timed out") };
        let _ = times.clone().scope(clock.time("append", failing, |_| true)).await;

        // One its caller gives up on: cut off, timed, not failed.
        let given_up = tokio::time::timeout(
            Duration::from_millis(50),
            times.clone().scope(clock.time("append", slow(), |_| true)),
        )
        .await;
        assert!(given_up.is_err());

        assert_eq!(times.of(Tier::Postgres), (Duration::from_millis(350), 3));
        assert_eq!(times.millis(), BTreeMap::from([("postgres".to_owned(), 350)]));
        let seen = seen.0.lock().unwrap();
        assert_eq!(
            *seen,
            [
                (Tier::Postgres, Duration::from_millis(300), false),
                (Tier::Postgres, Duration::from_millis(300), false),
                (Tier::Postgres, Duration::ZERO, true),
                (Tier::Postgres, Duration::from_millis(50), false),
            ]
        );
    }

    #[tokio::test]
    async fn a_group_s_times_are_added_to_each_member_and_untouched_tiers_are_left_out() {
        let (one, two, group) = (TierTimes::default(), TierTimes::default(), TierTimes::default());
        group.add(Tier::Sqlite, Duration::from_millis(7));
        group.add(Tier::Sqlite, Duration::from_millis(3));
        one.add(Tier::Model, Duration::from_millis(1));
        one.add_all(&group, Duration::from_secs(1));
        two.add_all(&group, Duration::from_millis(8));
        assert_eq!(
            one.millis(),
            BTreeMap::from([("sqlite".to_owned(), 10), ("model".to_owned(), 1)])
        );
        assert_eq!(
            two.of(Tier::Sqlite),
            (Duration::from_millis(8), 2),
            "operations at once: at most the group's wall time"
        );
        assert!(TierTimes::current().is_none());
    }

    #[test]
    fn a_tier_has_a_short_name_and_a_proper_one() {
        for tier in Tier::ALL {
            assert_eq!(Tier::parse(tier.as_str()), Some(tier));
        }
        assert_eq!(Tier::parse("mysql"), None);
        assert_eq!(Tier::Postgres.to_string(), "PostgreSQL");
        assert_eq!(Tier::Model.to_string(), "the model");
    }
}

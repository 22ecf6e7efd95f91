//! The load test's report: percentiles (hdrhistogram), the thresholds and their violations,
//! the per-second series and the fault windows; as a table for the terminal and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use switchboard_protocol::sla::Thresholds;

use super::{Arrival, ContractProblem, ErrorSample, LoadtestArgs, Plan, PollSample, Recorder};

/// The SLA's limits: the server's report judges by the same.
const SLA: Thresholds = Thresholds::INCIDENT;
/// Response time (p95) limit of the SLA.
const RESPONSE_P95_MS: f64 = SLA.response_p95_ms as f64;
/// A response slower than this is a failure.
const RESPONSE_FAILURE_MS: f64 = SLA.response_failure_ms as f64;
/// A health check slower than this (or unanswered) violates the SLA.
const HEALTH_MS: f64 = SLA.health_ms as f64;
/// Sign-in, socket, message and answer of a user's first run together.
const WORKFLOW_MS: f64 = SLA.workflow_ms as f64;
/// Runs per second the server must sustain, checked when the load offers at least as many.
const THROUGHPUT_PER_S: f64 = SLA.throughput_per_s as f64;
/// Error samples kept in the report (all are counted).
const ERROR_SAMPLES: usize = 100;
/// Edges (ms) of the response-time histogram's buckets; the last one is open.
const HISTOGRAM_EDGES_MS: [f64; 17] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 10_000.0, 20_000.0,
    60_000.0,
];

/// Percentiles of a set of durations, in milliseconds (none without samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Figures {
    /// The figures of durations in microseconds.
    fn of(values_us: impl IntoIterator<Item = u64>) -> Figures {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000_000, 3).expect("valid histogram bounds");
        for value in values_us {
            histogram.saturating_record(value.max(1));
        }
        if histogram.is_empty() {
            return Figures::default();
        }
        let ms = |us: u64| Some((us as f64 / 1000.0 * 100.0).round() / 100.0);
        Figures {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// One threshold and how the test did against it.
#[derive(Debug, Clone, Serialize)]
pub struct Threshold {
    /// The name, as in `violations`.
    pub name: String,
    /// The limit, in words.
    pub limit: String,
    /// What the test saw, in words.
    pub observed: String,
    /// Whether it applied to this test (throughput only under enough load).
    pub checked: bool,
    /// How many times it was violated (0: passed).
    pub violations: u64,
}

/// One second of the test.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds from the start of the load.
    pub t: u64,
    /// Runs answered in this second.
    pub runs: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Response times of the runs answered in this second.
    pub response_ms: Figures,
    /// The readiness status polled in this second.
    pub ready: Option<String>,
    /// The SLA report's status polled in this second.
    pub sla: Option<String>,
}

/// One answered run, for a script that wants figures of a part of the test (a fault window).
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// When the message was accepted, in seconds from the start of the load.
    pub accepted_s: f64,
    /// When its final event came, in seconds from the start of the load.
    pub ended_s: f64,
    /// Sent → `message_accepted`.
    pub accept_ms: f64,
    /// Accepted → final event.
    pub response_ms: f64,
    /// The final status.
    pub status: String,
}

/// A window of the test when something was wrong, or one given by `--mark`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Start, in seconds from the start of the load.
    pub start_s: f64,
    /// End, in seconds.
    pub end_s: f64,
    /// What it was.
    pub label: String,
    /// `ready` (`/health/ready`), `sla` (`/api/sla`) or `mark`.
    pub source: String,
}

/// Runs per second, and whether the threshold applied.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Runs answered per second, from the start of the load to the last answer.
    pub runs_per_s: f64,
    /// Messages per second the load could offer if every answer took the SLA's 2 s.
    pub offered_per_s: f64,
    /// Whether the threshold (at least 10 per second) applied: only when the load offered it.
    pub checked: bool,
}

/// A bucket of the response-time histogram.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// From (inclusive), ms.
    pub from_ms: f64,
    /// To (exclusive), ms; none for the last bucket.
    pub to_ms: Option<f64>,
    /// Runs whose response time fell in it.
    pub runs: u64,
}

/// The `/api/sla` polls.
#[derive(Debug, Clone, Serialize)]
pub struct SlaPolls {
    /// False when the server has no `/api/sla` (404).
    pub available: bool,
    /// Each poll's status and degraded tiers.
    pub samples: Vec<PollSample>,
}

/// Everything the load test found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server's base URL.
    pub server: String,
    /// Users driven.
    pub users: usize,
    /// `closed` (think time) or `open` (fixed arrival rate).
    pub model: &'static str,
    /// Think time of the closed model.
    pub think_ms: Option<u64>,
    /// Arrival rate of the open model, messages per second.
    pub rate: Option<f64>,
    /// The duration asked for.
    pub duration_s: Option<u64>,
    /// The number of messages asked for.
    pub runs_asked: Option<u64>,
    /// Time to sign every user in and open its socket, before the load.
    pub sign_in_s: f64,
    /// From the start of the load until every user was done.
    pub elapsed_s: f64,
    /// Runs answered (final event received).
    pub runs: u64,
    /// Errors: sign-ins, sockets, refused or unanswered messages.
    pub errors: u64,
    /// Runs by final status.
    pub statuses: BTreeMap<String, u64>,
    /// Runs per second.
    pub throughput: Throughput,
    /// Message accepted → final event.
    pub response_ms: Figures,
    /// Message accepted → the run's first event.
    pub first_event_ms: Figures,
    /// Message sent → `message_accepted`.
    pub accept_ms: Figures,
    /// Between consecutive events of a run.
    pub gap_ms: Figures,
    /// Each user's sign-in, socket, first message and its answer.
    pub workflow_ms: Figures,
    /// `/health/ready` answers.
    pub health_ms: Figures,
    /// Each threshold's name and how often it was violated.
    pub violations: BTreeMap<String, u64>,
    /// The thresholds, their limits and what was seen.
    pub thresholds: Vec<Threshold>,
    /// Every contract problem of every user's stream.
    pub contract_problems: Vec<ContractProblem>,
    /// Errors by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first errors, with when and whose.
    pub error_samples: Vec<ErrorSample>,
    /// The response-time histogram.
    pub response_histogram: Vec<Bucket>,
    /// Per second of the load.
    pub series: Vec<Second>,
    /// When `/health/ready` or `/api/sla` said something was wrong, and the `--mark` windows.
    pub fault_windows: Vec<Window>,
    /// The `/health/ready` polls.
    pub ready: Vec<PollSample>,
    /// The `/api/sla` polls.
    pub sla: SlaPolls,
    /// Every answered run, in the order answered.
    pub run_records: Vec<RunRecord>,
}

impl Report {
    pub(super) fn build(
        args: &LoadtestArgs,
        plan: &Plan,
        recorder: Recorder,
        elapsed: Duration,
        sign_in: Duration,
    ) -> Report {
        let Recorder {
            runs,
            errors,
            problems,
            workflows_us,
            ready,
            sla,
            sla_absent,
        } = recorder;
        let elapsed_s = elapsed.as_secs_f64();
        let last_answer = runs.iter().map(|r| r.ended_s).fold(0.0, f64::max);
        let runs_per_s = if last_answer > 0.0 {
            runs.len() as f64 / last_answer
        } else {
            0.0
        };
        let offered_per_s = match plan.arrival {
            Arrival::Open { per_second } => per_second,
            Arrival::Closed { think } => plan.users as f64 / (think.as_secs_f64() + RESPONSE_P95_MS / 1000.0),
        };
        let throughput = Throughput {
            runs_per_s: round2(runs_per_s),
            offered_per_s: round2(offered_per_s),
            checked: offered_per_s >= THROUGHPUT_PER_S,
        };
        let response_ms = Figures::of(runs.iter().map(|r| r.response_us));
        let health_ms = Figures::of(ready.iter().filter_map(|p| p.latency_ms).map(|ms| (ms * 1000.0) as u64));
        let workflow_ms = Figures::of(workflows_us.iter().copied());

        let mut statuses = BTreeMap::new();
        for run in &runs {
            *statuses.entry(run.status.as_str().to_owned()).or_insert(0) += 1;
        }
        let mut errors_by_kind = BTreeMap::new();
        for error in &errors {
            *errors_by_kind.entry(error.kind.clone()).or_insert(0) += 1;
        }

        let slow_responses = runs
            .iter()
            .filter(|r| r.response_us as f64 / 1000.0 > RESPONSE_FAILURE_MS)
            .count() as u64;
        let slow_health = ready
            .iter()
            .filter(|p| p.latency_ms.is_none_or(|ms| ms > HEALTH_MS))
            .count() as u64;
        let slow_workflows = workflows_us
            .iter()
            .filter(|&&us| us as f64 / 1000.0 > WORKFLOW_MS)
            .count() as u64;
        let shown = |f: Option<f64>| f.map_or_else(|| "no data".to_owned(), |ms| format!("{ms:.1} ms"));
        let thresholds = vec![
            Threshold {
                name: SLA.response_p95_violation(),
                limit: format!("response p95 < {RESPONSE_P95_MS} ms"),
                observed: format!("p95 {}", shown(response_ms.p95)),
                checked: true,
                violations: u64::from(response_ms.p95.is_some_and(|p95| p95 >= RESPONSE_P95_MS)),
            },
            Threshold {
                name: SLA.failed_response_violation(),
                limit: format!("no response > {RESPONSE_FAILURE_MS} ms"),
                observed: format!("{slow_responses} of {}", runs.len()),
                checked: true,
                violations: slow_responses,
            },
            Threshold {
                name: SLA.health_violation(),
                limit: format!("every /health/ready < {HEALTH_MS} ms"),
                observed: format!("max {} over {} polls", shown(health_ms.max), ready.len()),
                checked: true,
                violations: slow_health,
            },
            Threshold {
                name: SLA.workflow_violation(),
                limit: format!("sign-in → message → answer < {} s", WORKFLOW_MS / 1000.0),
                observed: format!("max {}", shown(workflow_ms.max)),
                checked: true,
                violations: slow_workflows,
            },
            Threshold {
                name: SLA.throughput_violation(),
                limit: format!("≥ {THROUGHPUT_PER_S} runs/s (when offered)"),
                observed: format!(
                    "{:.1} runs/s (offered {:.1}/s{})",
                    throughput.runs_per_s,
                    throughput.offered_per_s,
                    if throughput.checked { "" } else { ": not checked" }
                ),
                checked: throughput.checked,
                violations: u64::from(throughput.checked && runs_per_s < THROUGHPUT_PER_S),
            },
            Threshold {
                name: "errors".into(),
                limit: "no errors".into(),
                observed: errors.len().to_string(),
                checked: true,
                violations: errors.len() as u64,
            },
            Threshold {
                name: "contract_problems".into(),
                limit: "no contract problems".into(),
                observed: problems.len().to_string(),
                checked: true,
                violations: problems.len() as u64,
            },
        ];
        let violations = thresholds.iter().map(|t| (t.name.clone(), t.violations)).collect();

        let seconds = elapsed_s.ceil().max(1.0) as u64;
        let second_of = |at_s: f64| at_s.max(0.0).floor() as u64;
        let series = (0..seconds)
            .map(|t| {
                let in_second = |at_s: f64| second_of(at_s) == t;
                Second {
                    t,
                    runs: runs.iter().filter(|r| in_second(r.ended_s)).count() as u64,
                    errors: errors.iter().filter(|e| in_second(e.at_s)).count() as u64,
                    response_ms: Figures::of(runs.iter().filter(|r| in_second(r.ended_s)).map(|r| r.response_us)),
                    ready: ready.iter().find(|p| in_second(p.at_s)).map(|p| p.status.clone()),
                    sla: sla.iter().find(|p| in_second(p.at_s)).map(|p| p.status.clone()),
                }
            })
            .collect();

        let mut fault_windows = windows(&ready, "ready", elapsed_s, |p| p.status != "ok");
        fault_windows.extend(windows(&sla, "sla", elapsed_s, |p| {
            p.status == "degraded" || p.status == "violating"
        }));
        fault_windows.extend(args.marks.iter().map(|m| Window {
            start_s: m.start_s,
            end_s: m.end_s,
            label: m.label.clone(),
            source: "mark".into(),
        }));

        let response_histogram = HISTOGRAM_EDGES_MS
            .iter()
            .enumerate()
            .map(|(i, &from_ms)| {
                let to_ms = HISTOGRAM_EDGES_MS.get(i + 1).copied();
                let runs = runs
                    .iter()
                    .filter(|r| {
                        let ms = r.response_us as f64 / 1000.0;
                        ms >= from_ms && to_ms.is_none_or(|to| ms < to)
                    })
                    .count() as u64;
                Bucket { from_ms, to_ms, runs }
            })
            .collect();

        let run_records = runs
            .iter()
            .map(|r| RunRecord {
                accepted_s: round3((r.ended_s - r.response_us as f64 / 1e6).max(0.0)),
                ended_s: round3(r.ended_s),
                accept_ms: round2(r.accept_us as f64 / 1000.0),
                response_ms: round2(r.response_us as f64 / 1000.0),
                status: r.status.as_str().to_owned(),
            })
            .collect();

        Report {
            server: args.sign_in.server.clone(),
            users: plan.users,
            model: match plan.arrival {
                Arrival::Closed { .. } => "closed",
                Arrival::Open { .. } => "open",
            },
            think_ms: match plan.arrival {
                Arrival::Closed { think } => Some(think.as_millis() as u64),
                Arrival::Open { .. } => None,
            },
            rate: args.rate,
            duration_s: plan.duration.map(|d| d.as_secs()),
            runs_asked: plan.runs,
            sign_in_s: round2(sign_in.as_secs_f64()),
            elapsed_s: round2(elapsed_s),
            runs: runs.len() as u64,
            errors: errors.len() as u64,
            statuses,
            throughput,
            response_ms,
            first_event_ms: Figures::of(runs.iter().map(|r| r.first_event_us)),
            accept_ms: Figures::of(runs.iter().map(|r| r.accept_us)),
            gap_ms: Figures::of(runs.iter().flat_map(|r| r.gaps_us.iter().copied())),
            workflow_ms,
            health_ms,
            violations,
            thresholds,
            contract_problems: problems,
            errors_by_kind,
            error_samples: errors.into_iter().take(ERROR_SAMPLES).collect(),
            response_histogram,
            series,
            fault_windows,
            ready,
            sla: SlaPolls {
                available: !sla_absent,
                samples: sla,
            },
            run_records,
        }
    }

    /// The thresholds violated, each as a phrase (empty when the test passed).
    pub fn violated(&self) -> Vec<String> {
        self.thresholds
            .iter()
            .filter(|t| t.violations > 0)
            .map(|t| format!("{} (saw {})", t.limit, t.observed))
            .collect()
    }

    /// Whether every threshold held.
    pub fn passed(&self) -> bool {
        self.thresholds.iter().all(|t| t.violations == 0)
    }

    /// The exit code of the command: 0 when every threshold held, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.passed())
    }

    /// One line saying what the test did.
    pub fn headline(&self) -> String {
        let model = match (self.think_ms, self.rate) {
            (_, Some(rate)) => format!("open model, {rate} messages/s"),
            (Some(think), None) => format!("closed model, think {think} ms"),
            (None, None) => String::new(),
        };
        format!(
            "switchboard loadtest: {} users against {}, {model}: {} runs answered in {:.1} s ({:.1} runs/s), {} errors, {} contract problems",
            self.users,
            self.server,
            self.runs,
            self.elapsed_s,
            self.throughput.runs_per_s,
            self.errors,
            self.contract_problems.len()
        )
    }

    /// The figures and the thresholds as Markdown tables, for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline());
        let _ = writeln!(out);
        let _ = writeln!(out, "| figure (ms) | count | p50 | p95 | p99 | max |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        for (name, f) in self.figures() {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                f.count,
                cell(f.p50),
                cell(f.p95),
                cell(f.p99),
                cell(f.max)
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| threshold | observed | result |");
        let _ = writeln!(out, "| --- | --- | --- |");
        for t in &self.thresholds {
            let result = match (t.checked, t.violations) {
                (false, _) => "not checked".to_owned(),
                (true, 0) => "ok".to_owned(),
                (true, n) => format!("VIOLATED ({n})"),
            };
            let _ = writeln!(out, "| {} | {} | {result} |", t.limit, t.observed);
        }
        if !self.fault_windows.is_empty() {
            let _ = writeln!(out);
            for w in &self.fault_windows {
                let _ = writeln!(
                    out,
                    "window {:.0}–{:.0} s: {} ({})",
                    w.start_s, w.end_s, w.label, w.source
                );
            }
        }
        for problem in self.contract_problems.iter().take(20) {
            let _ = writeln!(out, "contract problem, user {}: {}", problem.user, problem.message);
        }
        for error in self.error_samples.iter().take(10) {
            let _ = writeln!(out, "error at {:.1} s: {}", error.at_s, error.message);
        }
        out
    }

    /// The named figures, in the order the table and the page show them.
    pub fn figures(&self) -> [(&'static str, &Figures); 6] {
        [
            ("response (accepted → final event)", &self.response_ms),
            ("first event (accepted → first event)", &self.first_event_ms),
            ("accept (sent → message_accepted)", &self.accept_ms),
            ("gap between events", &self.gap_ms),
            ("workflow (sign-in → answer)", &self.workflow_ms),
            ("health check (/health/ready)", &self.health_ms),
        ]
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The windows in which `bad` held for consecutive polls, labelled with the status and what
/// was degraded; a window ends at the next poll that is fine (or at the end of the test).
fn windows(polls: &[PollSample], source: &str, end_s: f64, bad: impl Fn(&PollSample) -> bool) -> Vec<Window> {
    let mut windows: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    for poll in polls {
        let label = bad(poll).then(|| {
            if poll.degraded.is_empty() {
                format!("{source}: {}", poll.status)
            } else {
                format!("{source}: {} ({})", poll.status, poll.degraded.join(", "))
            }
        });
        match (&mut open, label) {
            (Some(window), Some(label)) if window.label == label => window.end_s = poll.at_s,
            (current, label) => {
                if let Some(mut window) = current.take() {
                    window.end_s = poll.at_s;
                    windows.push(window);
                }
                *current = label.map(|label| Window {
                    start_s: poll.at_s,
                    end_s: poll.at_s,
                    label,
                    source: source.to_owned(),
                });
            }
        }
    }
    if let Some(mut window) = open {
        window.end_s = end_s.max(window.start_s);
        windows.push(window);
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(at_s: f64, status: &str, degraded: &[&str]) -> PollSample {
        PollSample {
            at_s,
            latency_ms: Some(1.0),
            status: status.into(),
            degraded: degraded.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn consecutive_bad_polls_make_one_window_until_the_next_good_one() {
        let polls = [
            poll(0.0, "ok", &[]),
            poll(1.0, "degraded", &["postgres"]),
            poll(2.0, "degraded", &["postgres"]),
            poll(3.0, "ok", &[]),
            poll(4.0, "degraded", &["redis"]),
        ];
        let found = windows(&polls, "sla", 6.0, |p| p.status == "degraded");
        let spans: Vec<(f64, f64, &str)> = found.iter().map(|w| (w.start_s, w.end_s, w.label.as_str())).collect();
        assert_eq!(
            spans,
            vec![
                (1.0, 3.0, "sla: degraded (postgres)"),
                (4.0, 6.0, "sla: degraded (redis)")
            ]
        );
    }

    #[test]
    fn percentiles_come_in_milliseconds() {
        let figures = Figures::of((1..=100).map(|ms| ms * 1000));
        assert_eq!(figures.count, 100);
        // Three significant digits: within 0.1 %.
        let near = |v: Option<f64>, ms: f64| v.is_some_and(|v| (v - ms).abs() <= ms / 1000.0);
        assert!(near(figures.p50, 50.0), "{figures:?}");
        assert!(near(figures.max, 100.0), "{figures:?}");
        assert_eq!(Figures::of([]), Figures::default());
    }
}

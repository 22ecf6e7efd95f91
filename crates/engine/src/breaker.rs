//! Circuit breakers around the model and each tool: after K consecutive failures calls fail fast
//! for a cool-down, then one trial call decides whether the circuit closes again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

/// The readable state of one breaker, for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// `model` or `tool:<name>`.
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Failures in a row so far (closed state).
    pub consecutive_failures: u32,
    /// How much longer an open circuit refuses calls.
    pub retry_in: Option<Duration>,
}

/// A call was refused because the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// How long until a trial call is let through.
    pub retry_in: Duration,
    /// The failures in a row that opened it.
    pub threshold: u32,
}

/// One circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(name: impl Into<String>, threshold: u32, cooldown: Duration) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        })
    }

    /// Asks to make a call. The permit must be told how the call went; a permit dropped without
    /// an outcome (the call was cancelled) counts as neither success nor failure.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Refused> {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(Permit::new(self, false)),
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { trial_running: true };
                Ok(Permit::new(self, true))
            }
            State::Open { until } => Err(Refused {
                retry_in: until - now,
                threshold: self.threshold,
            }),
            State::HalfOpen { trial_running: false } => {
                *state = State::HalfOpen { trial_running: true };
                Ok(Permit::new(self, true))
            }
            State::HalfOpen { trial_running: true } => Err(Refused {
                retry_in: Duration::ZERO,
                threshold: self.threshold,
            }),
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let state = *self.state.lock().unwrap();
        let now = Instant::now();
        let (label, failures, retry_in) = match state {
            State::Closed { failures } => ("closed", failures, None),
            State::Open { until } if now >= until => ("half_open", self.threshold, Some(Duration::ZERO)),
            State::Open { until } => ("open", self.threshold, Some(until - now)),
            State::HalfOpen { .. } => ("half_open", self.threshold, Some(Duration::ZERO)),
        };
        BreakerSnapshot {
            name: self.name.clone(),
            state: label,
            consecutive_failures: failures,
            retry_in,
        }
    }

    fn record(&self, trial: bool, success: Option<bool>) {
        let mut state = self.state.lock().unwrap();
        *state = match (*state, success) {
            (_, Some(true)) => State::Closed { failures: 0 },
            (State::Closed { failures }, Some(false)) if failures + 1 < self.threshold => {
                State::Closed { failures: failures + 1 }
            }
            (State::Closed { .. } | State::HalfOpen { .. }, Some(false)) => State::Open {
                until: Instant::now() + self.cooldown,
            },
            // A late failure of a call admitted before the circuit opened changes nothing.
            (open @ State::Open { .. }, Some(false)) => open,
            // Cancelled trial: let the next caller try.
            (State::HalfOpen { .. }, None) if trial => State::HalfOpen { trial_running: false },
            (other, None) => other,
        };
    }
}

/// Leave to make one call through a breaker.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
    done: bool,
}

impl Permit {
    fn new(breaker: &Arc<CircuitBreaker>, trial: bool) -> Self {
        Self {
            breaker: Arc::clone(breaker),
            trial,
            done: false,
        }
    }

    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.trial, Some(true));
    }

    /// The call failed (an error or a timeout).
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.trial, Some(false));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.trial, None);
        }
    }
}

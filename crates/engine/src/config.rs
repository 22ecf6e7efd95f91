//! The engine's settings: deadlines, limits and circuit-breaker thresholds.

use std::time::Duration;

/// Everything the engine can be tuned with. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Deadline of one tool call (default 10 s).
    pub tool_timeout: Duration,
    /// Deadline of one agent, its tool and model calls included (default 25 s).
    pub agent_timeout: Duration,
    /// Deadline of the whole run (default 60 s). The final event comes at most 1 s after it.
    pub run_timeout: Duration,
    /// Deadline of one model call, a whole stream included (default 20 s: below the agent's
    /// deadline, so a fallback model still has time to answer when the model hangs).
    pub model_timeout: Duration,
    /// Active runs one user may have at once (default 3).
    pub max_active_runs_per_user: usize,
    /// Active runs of all users together (default 128). Past it a run is refused at once
    /// rather than queued behind the others: beyond what the machine can serve, every run
    /// would only get slower, and events would wait past their deadlines.
    pub max_active_runs: usize,
    /// Consecutive failures after which a circuit opens (default 5).
    pub breaker_failure_threshold: u32,
    /// How long an open circuit refuses calls before a trial call (default 30 s).
    pub breaker_cooldown: Duration,
    /// How long a run waits for room in the event queue (a store that is behind) before it gives
    /// up a non-final event (default 2 s). The final event waits for its own storing instead,
    /// until the run deadline + 1 s.
    pub sink_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tool_timeout: Duration::from_secs(10),
            agent_timeout: Duration::from_secs(25),
            run_timeout: Duration::from_secs(60),
            model_timeout: Duration::from_secs(20),
            max_active_runs_per_user: 3,
            max_active_runs: 128,
            breaker_failure_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            sink_timeout: Duration::from_secs(2),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine setting `{key}`: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub key: &'static str,
    /// Why it cannot work.
    pub reason: &'static str,
}

impl EngineConfig {
    /// Checks that every setting can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("tool_timeout", self.tool_timeout),
            ("agent_timeout", self.agent_timeout),
            ("run_timeout", self.run_timeout),
            ("model_timeout", self.model_timeout),
            ("breaker_cooldown", self.breaker_cooldown),
            ("sink_timeout", self.sink_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return Err(ConfigError {
                    key,
                    reason: "must be greater than zero",
                });
            }
        }
        if self.max_active_runs_per_user == 0 {
            return Err(ConfigError {
                key: "max_active_runs_per_user",
                reason: "must be at least 1",
            });
        }
        if self.max_active_runs == 0 {
            return Err(ConfigError {
                key: "max_active_runs",
                reason: "must be at least 1",
            });
        }
        if self.breaker_failure_threshold == 0 {
            return Err(ConfigError {
                key: "breaker_failure_threshold",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

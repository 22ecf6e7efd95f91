//! Runs whose server is gone are closed as `interrupted`, so a client that resumes sees every
//! run end: at start-up, those a crash left active; on a node of a cluster, those of nodes that
//! are gone too (`leases`). The closing events go through the event log like any run's.

use switchboard_engine::{Closing, OpenRun};
use switchboard_protocol::{AgentErrorCode, LogEntry, NewEvent, RunStatus, Timestamp, TraceId};
use switchboard_store::{RunRecord, StoreError};

use crate::log::EventLog;

/// Closes every run still marked running. Returns how many were closed.
pub(crate) async fn close_interrupted_runs(log: &EventLog) -> Result<usize, StoreError> {
    let runs = log.store().running_runs().await?;
    close_runs(log, &runs, "the server stopped while the run was active").await?;
    Ok(runs.len())
}

/// Closes `runs` (running, of a server that is gone) as `interrupted`, saying `why`.
pub(crate) async fn close_runs(log: &EventLog, runs: &[RunRecord], why: &str) -> Result<(), StoreError> {
    let store = log.store();
    for run in runs {
        let events = store.run_events(&run.user_id, &run.id).await?;
        let trace_id = events.first().map_or_else(TraceId::generate, |e| e.trace_id.clone());
        let elapsed_ms = (Timestamp::now().unix_millis() - run.started_at.unix_millis()).max(0) as u64;
        let closing = Closing {
            code: AgentErrorCode::Interrupted,
            status: RunStatus::Interrupted,
            why,
            elapsed: std::time::Duration::from_millis(elapsed_ms),
        };
        let entries = OpenRun::from_events(&events)
            .closing_events(closing)
            .into_iter()
            .map(|(agent, payload)| {
                let event = NewEvent {
                    run_id: run.id.clone(),
                    thread_id: run.thread_id.clone(),
                    agent_name: agent,
                    timestamp: Timestamp::now(),
                    trace_id: trace_id.clone(),
                    payload,
                };
                LogEntry::new(run.user_id.clone(), event, None)
            })
            .collect::<Vec<_>>();
        log.append_entries(&entries).await?;
        tracing::warn!(run_id = %run.id, user_id = %run.user_id, why, "closed a run whose server is gone");
    }
    Ok(())
}

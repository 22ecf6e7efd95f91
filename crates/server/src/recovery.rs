//! At start-up: runs that a crash left active are closed as `interrupted`, so a client that
//! resumes sees every run end.

use switchboard_engine::{Closing, OpenRun};
use switchboard_protocol::{AgentErrorCode, Event, RunStatus, Timestamp, TraceId};
use switchboard_store::{Store, StoreError};

/// Closes every run still marked running. Returns how many were closed.
pub(crate) async fn close_interrupted_runs(store: &dyn Store) -> Result<usize, StoreError> {
    let runs = store.running_runs().await?;
    for run in &runs {
        let events = store.run_events(&run.user_id, &run.id).await?;
        let trace_id = events.first().map_or_else(TraceId::generate, |e| e.trace_id.clone());
        let elapsed_ms = (Timestamp::now().unix_millis() - run.started_at.unix_millis()).max(0) as u64;
        let closing = Closing {
            code: AgentErrorCode::Interrupted,
            status: RunStatus::Interrupted,
            why: "the server stopped while the run was active",
            elapsed: std::time::Duration::from_millis(elapsed_ms),
        };
        let mut seq = store.last_seq(&run.user_id).await?;
        for (agent, payload) in OpenRun::from_events(&events).closing_events(closing) {
            seq = seq.next();
            let event = Event {
                seq,
                run_id: run.id.clone(),
                thread_id: run.thread_id.clone(),
                agent_name: agent,
                timestamp: Timestamp::now(),
                trace_id: trace_id.clone(),
                payload,
            };
            store.append_event(&run.user_id, &event).await?;
        }
        tracing::warn!(run_id = %run.id, user_id = %run.user_id, "closed a run interrupted by a restart");
    }
    Ok(runs.len())
}

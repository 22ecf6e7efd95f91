//! What an agent's task tells its run: the only way agent code reaches the event stream.

use std::time::Duration;

use switchboard_protocol::{AgentThinking, PartialResult, ToolCompleted, ToolExecuting};
use tokio::sync::mpsc;

/// The closed set of reports from an agent's task to the run driver.
#[derive(Debug)]
pub(crate) enum Report {
    Thinking(AgentThinking),
    Partial(PartialResult),
    ToolStarted(ToolExecuting),
    ToolFinished(ToolCompleted),
    /// Time spent in a tool call.
    ToolTime(Duration),
}

/// Sends reports to the run driver. Once the driver has closed the agent (it finished, timed out
/// or was stopped) reports are dropped, so nothing an agent leaves behind can reach the stream.
#[derive(Debug, Clone)]
pub(crate) struct Reporter(mpsc::Sender<Report>);

/// How many reports may wait for the driver before an agent's task waits in turn.
pub(crate) const REPORT_BUFFER: usize = 64;

impl Reporter {
    pub(crate) fn channel() -> (Self, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(REPORT_BUFFER);
        (Self(tx), rx)
    }

    pub(crate) async fn send(&self, report: Report) {
        // An error means the agent was closed; the report is dropped on purpose.
        let _ = self.0.send(report).await;
    }
}

/// Writes a duration the way a person reads it: `250 ms`, `10 s`, `2.5 s`.
pub(crate) fn human(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

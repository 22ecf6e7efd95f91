//! The data agent: reads the user's workload aggregates through the `workload_summary` tool and
//! hands the figures to the later agents. Every figure comes from the store, none from a model.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use switchboard_engine::{Agent, AgentContext, AgentError, AgentOutput, Tool, ToolError};
use switchboard_protocol::{Timestamp, UserId};
use switchboard_store::{AnalyticsStore, Opportunities, Slice, Summary, TimeRange, Usage};

/// `{"user_id", "from"?, "to"?}` in, the user's workload summary out.
pub struct WorkloadSummaryTool {
    store: Arc<dyn AnalyticsStore>,
}

impl std::fmt::Debug for WorkloadSummaryTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadSummaryTool")
    }
}

impl WorkloadSummaryTool {
    /// The tool over `store`.
    pub fn new(store: Arc<dyn AnalyticsStore>) -> Self {
        Self { store }
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "calls": usage.calls,
        "errors": usage.errors,
        "error_rate": if usage.calls == 0 { 0.0 } else { usage.errors as f64 / usage.calls as f64 },
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": usage.cost_usd,
        "p50_latency_ms": usage.p50_latency_ms,
        "p95_latency_ms": usage.p95_latency_ms,
    })
}

fn slice_json(slice: &Slice) -> Value {
    json!({ "calls": slice.calls, "input_tokens": slice.input_tokens, "output_tokens": slice.output_tokens, "cost_usd": slice.cost_usd })
}

fn opportunities_json(o: &Opportunities) -> Value {
    json!({
        "short_calls": o.short_calls.iter().map(|(model, s)| json!({"model": model, "calls": slice_json(s)})).collect::<Vec<_>>(),
        "repeated_prompt_calls": o.repeated_prompt_calls,
        "repeated_prompt_cost_usd": o.repeated_prompt_cost_usd,
        "failed_cost_usd": o.failed_cost_usd,
        "by_feature_model": o.by_feature_model.iter().map(|fm| json!({
            "feature": fm.feature, "model": fm.model, "all": slice_json(&fm.all), "off_hours": slice_json(&fm.off_hours),
            "input_tokens_above_p95": fm.input_tokens_above_p95,
        })).collect::<Vec<_>>(),
    })
}

/// The run's user, which the agent (not the model) puts in a workload tool's parameters.
pub(crate) fn user_parameter(parameters: &Value) -> Result<UserId, ToolError> {
    parameters
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|id| UserId::parse(id).ok())
        .ok_or_else(|| ToolError::InvalidParameters("expected {\"user_id\": a user id}".into()))
}

/// The summary as the agents pass it on.
pub fn summary_json(summary: &Summary) -> Value {
    let keyed = |rows: &[Usage], key: &str| -> Vec<Value> {
        rows.iter()
            .map(|u| {
                let mut row = usage_json(u);
                row[key] = json!(u.key.clone().unwrap_or_else(|| "(none)".to_owned()));
                row
            })
            .collect()
    };
    let mut busiest: Vec<_> = summary.hours.iter().collect();
    busiest.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.hour.cmp(&b.hour)));
    let mut out = json!({
        "period": { "from": summary.totals.first, "to": summary.totals.last },
        "totals": usage_json(&summary.totals.usage),
        "by_model": keyed(&summary.by_model, "model"),
        "by_feature": keyed(&summary.by_feature, "feature"),
        "busiest_hours": busiest.iter().take(3).map(|h| json!({"hour": h.hour, "calls": h.calls, "cost_usd": h.cost_usd})).collect::<Vec<_>>(),
        "hours": summary.hours.iter().map(|h| json!({"hour": h.hour, "calls": h.calls, "cost_usd": h.cost_usd, "p95_latency_ms": h.p95_latency_ms})).collect::<Vec<_>>(),
        "opportunities": opportunities_json(&summary.opportunities),
        "anomalies": crate::analysis::anomalies(summary),
    });
    out["latency"] = crate::analysis::latency(&out);
    out
}

#[async_trait]
impl Tool for WorkloadSummaryTool {
    async fn call(&self, parameters: Value) -> Result<Value, ToolError> {
        let user = user_parameter(&parameters)?;
        let bound = |key: &str| -> Result<Option<Timestamp>, ToolError> {
            match parameters.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Timestamp::parse(text)
                    .map(Some)
                    .map_err(|_| ToolError::InvalidParameters(format!("{key} must be an RFC 3339 time"))),
                Some(_) => Err(ToolError::InvalidParameters(format!("{key} must be an RFC 3339 time"))),
            }
        };
        let range = TimeRange {
            from: bound("from")?,
            to: bound("to")?,
        };
        let summary = self
            .store
            .workload_summary(&user, range)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(summary_json(&summary))
    }
}

/// The data agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataAgent;

#[async_trait]
impl Agent for DataAgent {
    fn task(&self, _ctx: &AgentContext) -> String {
        "reading your workload data".to_owned()
    }

    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        ctx.events
            .step("Summarising your calls per model, feature and hour.", 1, 0.3)
            .await;
        let summary = ctx
            .tools
            .call("workload_summary", json!({ "user_id": ctx.run.user_id }))
            .await?;
        let calls = summary["totals"]["calls"].as_u64().unwrap_or(0);
        let cost = summary["totals"]["cost_usd"].as_f64().unwrap_or(0.0);
        ctx.events
            .step(format!("Read {calls} calls costing {} in total.", usd(cost)), 2, 1.0)
            .await;
        Ok(AgentOutput::data(summary))
    }
}

/// Dollars as people read them: cents, or four decimals below a dollar (sums of cents that
/// float a hair below a dollar still read as cents).
pub fn usd(amount: f64) -> String {
    if (amount.abs() * 100.0).round() < 100.0 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

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
        "calls_left_out": summary.calls_left_out,
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
        let left_out = match summary["calls_left_out"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!("; {}", left_out_sentence(n)),
        };
        ctx.events
            .step(
                format!("Read {calls} calls costing {} in total{left_out}.", usd(cost)),
                2,
                1.0,
            )
            .await;
        Ok(AgentOutput::data(summary))
    }
}

/// From this size on a figure is written in scientific notation (`1.00e12`): no sum of figures
/// in range comes near it, and it keeps a figure that is out of range from filling a line.
const SCIENTIFIC_FROM: f64 = 1e12;

/// Written for a figure that is not a number or infinite: neither is ever printed.
const OUT_OF_RANGE: &str = "(out of range)";

/// A figure with `decimals` decimals, never `inf`, `NaN` or hundreds of digits.
pub(crate) fn figure(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        OUT_OF_RANGE.to_owned()
    } else if value.abs() >= SCIENTIFIC_FROM {
        format!("{value:.2e}")
    } else {
        format!("{value:.decimals$}")
    }
}

/// Dollars as people read them: cents, or four decimals below a dollar (sums of cents that
/// float a hair below a dollar still read as cents). Never `inf`, `NaN` or hundreds of digits.
pub fn usd(amount: f64) -> String {
    if !amount.is_finite() {
        OUT_OF_RANGE.to_owned()
    } else if (amount.abs() * 100.0).round() < 100.0 {
        format!("${}", figure(amount, 4))
    } else {
        format!("${}", figure(amount, 2))
    }
}

/// The ranges a call's figures must lie in, as a phrase.
pub(crate) fn ranges() -> String {
    use switchboard_store::{
        EARLIEST_CALL_MS, LATEST_CALL_MS, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS,
    };
    let year = |ms: i64| {
        Timestamp::from_unix_millis(ms)
            .map_or_else(String::new, |t| t.to_string().get(..4).unwrap_or_default().to_owned())
    };
    format!(
        "at most {} prompt and answer tokens each, a latency from 0 to {} ms (a day), a cost from $0 to ${}, made in \
         the years {} to {}",
        grouped(MAX_CALL_TOKENS),
        grouped(MAX_CALL_LATENCY_MS as u64),
        grouped(MAX_CALL_COST_USD as u64),
        year(EARLIEST_CALL_MS),
        year(LATEST_CALL_MS)
    )
}

/// A count with thousands separators: `107,555,052`.
pub(crate) fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Says that `calls` stored calls were left out of the figures, and why.
pub(crate) fn left_out_sentence(calls: u64) -> String {
    if calls == 1 {
        "1 stored call was left out because its figures are out of range".to_owned()
    } else {
        format!("{calls} stored calls were left out because their figures are out of range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_never_read_as_inf_nan_or_hundreds_of_digits() {
        let cases: [(f64, &str); 9] = [
            (0.0254, "$0.0254"),
            (0.999, "$1.00"),
            (28.0, "$28.00"),
            (123_456.789, "$123456.79"),
            (1e12, "$1.00e12"),
            (1e308, "$1.00e308"),
            (f64::INFINITY, "(out of range)"),
            (f64::NEG_INFINITY, "(out of range)"),
            (f64::NAN, "(out of range)"),
        ];
        for (amount, expected) in cases {
            assert_eq!(usd(amount), expected, "{amount}");
        }
        assert_eq!(
            (figure(f64::NAN, 1), figure(-2.5e300, 0), figure(812.46, 1)),
            ("(out of range)".to_owned(), "-2.50e300".to_owned(), "812.5".to_owned())
        );
        assert_eq!(
            (grouped(0), grouped(1000), grouped(10_000_000)),
            ("0".to_owned(), "1,000".to_owned(), "10,000,000".to_owned())
        );
    }
}

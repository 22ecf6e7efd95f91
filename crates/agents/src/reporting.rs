//! The reporting agent: writes the answer in Markdown from what earlier agents found, streamed
//! as `partial_result`. It states only what it was given, and says what is missing.

use async_trait::async_trait;
use serde_json::{Value, json};
use switchboard_engine::{Agent, AgentContext, AgentError, AgentOutput, ModelRequest};

use crate::data::{figure, grouped, left_out_sentence, ranges, usd};
use crate::triage::{Category, Triage};

/// The reporting agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportingAgent;

/// How to send workload data, for answers given without any.
const UPLOAD_HOWTO: &str = "\n## How to send your data\n\n`POST /api/workload-events` with a JSON array of \
calls (or NDJSON with `Content-Type: application/x-ndjson`), up to 10 MB a request. Each call needs \
`timestamp` (RFC 3339), `model`, `input_tokens` and `output_tokens`; `provider`, `latency_ms`, `status` \
(`ok` or `error`), `feature`, `prompt_hash`, `cost_usd` and `batch` help the analysis. For example:\n\n\
```json\n[{\"timestamp\": \"2026-11-01T12:00:00Z\", \"model\": \"gpt-4o\", \"input_tokens\": 1200, \
\"output_tokens\": 300, \"latency_ms\": 850, \"status\": \"ok\", \"feature\": \"search\"}]\n```\n";

const WRITE_PROMPT: &str = "Write the answer to the user in Markdown from the draft below. Keep every figure and \
statement of the draft; add nothing that the draft does not say.";

fn list(entities: &Value, key: &str) -> Vec<String> {
    entities
        .get(key)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The answer's draft, from triage's findings (when triage completed).
pub fn draft(triage: Option<&Triage>, data: Option<&Value>, savings_part: &str, missing: &[String]) -> String {
    let mut out = String::new();
    match triage {
        Some(triage) => {
            out.push_str(&format!(
                "## Your request\n\nI read this as **{}**.",
                triage.category.label()
            ));
            let mentions: Vec<String> = [
                ("models", "models"),
                ("budgets", "budgets"),
                ("latency_targets", "latency targets"),
            ]
            .iter()
            .filter_map(|(key, label)| {
                let items = list(&triage.entities, key);
                (!items.is_empty()).then(|| format!("{label}: {}", items.join(", ")))
            })
            .chain(
                triage
                    .entities
                    .get("time_range")
                    .and_then(Value::as_str)
                    .map(|r| format!("time range: {r}")),
            )
            .collect();
            if mentions.is_empty() {
                out.push_str(" It mentions no models, budgets, latency targets or time range.\n\n");
            } else {
                out.push_str(&format!(" You mentioned {}.\n\n", mentions.join("; ")));
            }
            out.push_str("## What I can say\n\n");
            if let Some(why) = &triage.data_unavailable {
                out.push_str(&format!(
                    "Your usage data cannot be read right now ({why}), so I give no figures rather than guess; \
                     ask again in a moment.\n"
                ));
            } else if let (true, Some(data)) = (triage.has_data, data) {
                out.push_str(&figures(triage.category, data));
                out.push_str(savings_part);
            } else if triage.has_data {
                out.push_str(&format!(
                    "You have uploaded {} model call{}, but they could not be read for this answer, so I give \
                     no figures rather than guess.\n",
                    triage.data_calls,
                    if triage.data_calls == 1 { "" } else { "s" }
                ));
            } else if triage.category == Category::General {
                out.push_str(
                    "I help teams cut the cost and latency of their language-model usage. Ask me about spend, \
                     latency, model choice or usage patterns.\n\nI have no usage data of yours, so I can give no \
                     figures yet.\n",
                );
            } else {
                out.push_str(
                    "I have no usage data of yours, so I cannot give figures or projected savings: I will not \
                     guess them. An answer with numbers needs the log of your model calls (timestamp, model, \
                     input and output tokens, and ideally latency, status and feature for each call).\n",
                );
                out.push_str(UPLOAD_HOWTO);
            }
        }
        None => out.push_str(
            "## Your request\n\nI could not classify your request, so I cannot tell you more than this: no \
             figures are given because nothing was analysed.\n",
        ),
    }
    if !missing.is_empty() {
        out.push_str(&format!(
            "\n_Missing from this answer: the {} step{} did not finish._\n",
            missing.join(", "),
            if missing.len() == 1 { "" } else { "s" }
        ));
    }
    out
}

/// The structured report of `result.report`, from the data agent's summary and, when they ran,
/// the optimization and actions agents' outputs.
pub fn report(summary: &Value, strategies: &Value, actions: &Value) -> Value {
    let rows = |key: &str, name: &str| -> Vec<Value> {
        summary[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                json!({
                    name: row[name], "calls": row["calls"], "cost_usd": row["cost_usd"],
                    "p50_latency_ms": row["p50_latency_ms"], "p95_latency_ms": row["p95_latency_ms"],
                    "error_rate": row["error_rate"],
                })
            })
            .collect()
    };
    let totals = &summary["totals"];
    json!({
        "period": summary["period"],
        "total_cost_usd": totals["cost_usd"],
        "calls": totals["calls"],
        "input_tokens": totals["input_tokens"],
        "output_tokens": totals["output_tokens"],
        "by_model": rows("by_model", "model"),
        "by_feature": rows("by_feature", "feature"),
        "hours": if summary["hours"].is_array() { summary["hours"].clone() } else { json!([]) },
        "strategies": if strategies.is_array() { strategies.clone() } else { json!([]) },
        "actions": if actions.is_array() { actions.clone() } else { json!([]) },
        "anomalies": if summary["anomalies"].is_array() { summary["anomalies"].clone() } else { json!([]) },
        "latency": summary["latency"],
        "calls_left_out": summary["calls_left_out"].as_u64().unwrap_or(0),
    })
}

/// A count with thousands separators: `107,555,052`.
fn count(value: &Value) -> String {
    grouped(value.as_u64().unwrap_or(0))
}

fn ms(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "–".to_owned(), |v| format!("{} ms", figure(v, 0)))
}

/// The savings and the plan, when the optimization and actions agents ran.
fn savings(strategies: &Value, actions: &Value, prices_as_of: &str) -> String {
    let Some(strategies) = strategies.as_array() else {
        return String::new();
    };
    let mut out = String::from("## Where to save\n\n");
    if strategies.is_empty() {
        out.push_str("None of the five strategies (routing, caching, batching, trimming, errors) finds a saving in this data.\n\n");
        return out;
    }
    let total: f64 = strategies
        .iter()
        .filter_map(|s| s["monthly_savings_usd"].as_f64())
        .sum();
    out.push_str("| strategy | per month | assumption |\n| --- | ---: | --- |\n");
    for s in strategies {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            s["title"].as_str().unwrap_or(""),
            usd(s["monthly_savings_usd"].as_f64().unwrap_or(0.0)),
            s["assumption"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "\nIn all about **{} a month**, projected to 30 days from your data's period at the list prices of {prices_as_of}.\n\n",
        usd(total)
    ));
    if let Some(actions) = actions.as_array().filter(|a| !a.is_empty()) {
        out.push_str("## What to do\n\n");
        for action in actions {
            out.push_str(&format!(
                "{}. **{}** {}\n",
                action["step"],
                action["title"].as_str().unwrap_or(""),
                action["detail"].as_str().unwrap_or("")
            ));
        }
        out.push('\n');
    }
    out
}

/// The latency analysis: overall percentiles, where p95 is worst, what to change.
fn latency_part(latency: &Value) -> String {
    if latency.is_null() {
        return "## Latency\n\nNone of your calls reported `latency_ms`, so I cannot say where time goes; send it \
                with each call.\n\n"
            .to_owned();
    }
    let mut out = format!(
        "## Latency\n\nOverall p50 {}, p95 {}.",
        ms(&latency["p50_latency_ms"]),
        ms(&latency["p95_latency_ms"])
    );
    let worst = |key: &str, name: &str, label: &dyn Fn(&Value) -> String| -> Option<String> {
        let rows: Vec<String> = latency[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{} (p95 {})", label(&r[name]), ms(&r["p95_latency_ms"])))
            .collect();
        (!rows.is_empty()).then(|| rows.join(", "))
    };
    let plain = |v: &Value| v.as_str().unwrap_or("(none)").to_owned();
    let hour = |v: &Value| format!("{:02}:00 UTC", v.as_u64().unwrap_or(0));
    for (key, name, title, label) in [
        (
            "slowest_features",
            "feature",
            "features",
            &plain as &dyn Fn(&Value) -> String,
        ),
        ("slowest_models", "model", "models", &plain),
        ("slowest_hours", "hour", "hours", &hour),
    ] {
        if let Some(rows) = worst(key, name, label) {
            out.push_str(&format!(" Slowest {title}: {rows}."));
        }
    }
    out.push_str("\n\n");
    let bulk: Vec<&str> = latency["bulk_features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !bulk.is_empty() {
        let one = bulk.len() == 1;
        out.push_str(&format!(
            "{} run{} off-hours in bulk (at least {:.0} % of the calls before {:02}:00 UTC): no user waits for {}, so \
             {} left out of the advice below.\n\n",
            bulk.join(", "),
            if one { "s" } else { "" },
            crate::analysis::BULK_SHARE * 100.0,
            switchboard_store::OFF_HOURS_END,
            if one { "it" } else { "them" },
            if one { "it is" } else { "they are" },
        ));
    }
    let advice: Vec<&Value> = latency["advice"].as_array().into_iter().flatten().collect();
    if advice.is_empty() {
        out.push_str("Nothing in the data points to one change that would cut latency.\n\n");
    } else {
        out.push_str("What would make it faster:\n\n");
        for a in advice {
            out.push_str(&format!(
                "- **{}.** {}\n",
                a["title"].as_str().unwrap_or(""),
                a["detail"].as_str().unwrap_or("")
            ));
        }
        out.push('\n');
    }
    out
}

/// The figures part of the answer, from the data agent's summary.
fn figures(category: Category, summary: &Value) -> String {
    let totals = &summary["totals"];
    let left_out = summary["calls_left_out"].as_u64().unwrap_or(0);
    if totals["calls"].as_u64().unwrap_or(0) == 0 {
        return if left_out > 0 {
            format!(
                "{} (each call needs {}), and none is left, so I give no figures rather than guess. Upload the \
                 calls again with their true figures.\n\n",
                left_out_sentence(left_out),
                ranges()
            )
        } else {
            "None of your calls falls in the period asked about, so I give no figures.\n\n".to_owned()
        };
    }
    let cost = totals["cost_usd"].as_f64().unwrap_or(0.0);
    let errors = totals["errors"].as_u64().unwrap_or(0);
    let day = |v: &Value| {
        v.as_str()
            .map(|t| t.get(..10).unwrap_or(t).to_owned())
            .unwrap_or_default()
    };
    let mut out = format!(
        "From {} to {}: **{} calls**, {} input and {} output tokens, **{}** in total; {errors} failed ({} %).\n\n",
        day(&summary["period"]["from"]),
        day(&summary["period"]["to"]),
        count(&totals["calls"]),
        count(&totals["input_tokens"]),
        count(&totals["output_tokens"]),
        usd(cost),
        figure(totals["error_rate"].as_f64().unwrap_or(0.0) * 100.0, 1),
    );
    if left_out > 0 {
        out.push_str(&format!(
            "{} (each call needs {}): no figure here counts them.\n\n",
            left_out_sentence(left_out),
            ranges()
        ));
    }
    for (key, name, title) in [("by_model", "model", "Model"), ("by_feature", "feature", "Feature")] {
        out.push_str(&format!("| {title} | calls | cost | share | p50 | p95 | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"));
        for row in summary[key].as_array().into_iter().flatten() {
            let row_cost = row["cost_usd"].as_f64().unwrap_or(0.0);
            out.push_str(&format!(
                "| {} | {} | {} | {} % | {} | {} | {} % |\n",
                row[name].as_str().unwrap_or("?"),
                count(&row["calls"]),
                usd(row_cost),
                figure(if cost > 0.0 { row_cost / cost * 100.0 } else { 0.0 }, 1),
                ms(&row["p50_latency_ms"]),
                ms(&row["p95_latency_ms"]),
                figure(row["error_rate"].as_f64().unwrap_or(0.0) * 100.0, 1),
            ));
        }
        out.push('\n');
    }
    let hours: Vec<String> = summary["busiest_hours"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{:02}:00 ({} calls)",
                h["hour"].as_u64().unwrap_or(0),
                count(&h["calls"])
            )
        })
        .collect();
    if !hours.is_empty() {
        out.push_str(&format!("Busiest hours (UTC): {}.\n\n", hours.join(", ")));
    }
    let anomalies: Vec<&str> = summary["anomalies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["text"].as_str())
        .collect();
    if !anomalies.is_empty() {
        out.push_str("**Off the norm:**\n\n");
        for text in anomalies {
            out.push_str(&format!("- {text}\n"));
        }
        out.push('\n');
    }
    if category == Category::Performance {
        out.push_str(&latency_part(&summary["latency"]));
    }
    out.push_str(&format!(
        "_These figures are computed from your data; latency percentiles are estimates within {} %._\n\n",
        switchboard_store::PERCENTILE_RELATIVE_ERROR * 100.0
    ));
    out
}

#[async_trait]
impl Agent for ReportingAgent {
    fn task(&self, _ctx: &AgentContext) -> String {
        "writing the answer".to_owned()
    }

    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        ctx.events.thinking("Writing the answer.").await;
        let triage = ctx
            .output_of("triage")
            .and_then(|output| serde_json::from_value::<Triage>(output.data.clone()).ok());
        let missing: Vec<String> = ctx.missing().iter().map(ToString::to_string).collect();
        let data = ctx.output_of("data").map(|output| output.data.clone());
        let optimization = ctx
            .output_of("optimization")
            .map(|output| output.data.clone())
            .unwrap_or(Value::Null);
        let strategies = optimization["strategies"].clone();
        let actions = ctx
            .output_of("actions")
            .map(|output| output.data["actions"].clone())
            .unwrap_or(Value::Null);
        let savings_part = savings(
            &strategies,
            &actions,
            optimization["prices_as_of"].as_str().unwrap_or("the price table"),
        );
        let draft = draft(triage.as_ref(), data.as_ref(), &savings_part, &missing);
        let instructions = format!("{WRITE_PROMPT}\n\nThe user asked: {}", ctx.request());
        let answer = ctx.stream_answer(ModelRequest::new(instructions, draft)).await?;
        // The report's figures come from the agents' computed outputs, never from the model.
        let report = data.as_ref().map(|summary| report(summary, &strategies, &actions));
        Ok(AgentOutput {
            data: serde_json::json!({ "category": triage.map(|t| t.category.as_str()), "report": report }),
            plan: None,
            answer: Some(answer),
        })
    }
}

//! The reporting agent: writes the answer in Markdown from what earlier agents found, streamed
//! as `partial_result`. It states only what it was given, and says what is missing.

use async_trait::async_trait;
use serde_json::Value;
use switchboard_engine::{Agent, AgentContext, AgentError, AgentOutput, ModelRequest};

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
pub fn draft(triage: Option<&Triage>, missing: &[String]) -> String {
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
            if triage.has_data {
                out.push_str(&format!(
                    "You have uploaded {} model call{}. This server does not yet have the agents that compute \
                     figures from them (spend per model and feature, latency percentiles, savings), so I give \
                     none rather than guess.\n",
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
        let draft = draft(triage.as_ref(), &missing);
        let answer = ctx.stream_answer(ModelRequest::new(WRITE_PROMPT, draft)).await?;
        Ok(AgentOutput {
            data: serde_json::json!({ "category": triage.map(|t| t.category.as_str()) }),
            plan: None,
            answer: Some(answer),
        })
    }
}

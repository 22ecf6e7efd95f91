//! The triage agent: classifies the request, extracts what it mentions (with the
//! `extract_entities` tool) and chooses the plan.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

use switchboard_engine::{Agent, AgentContext, AgentError, AgentOutput, ModelRequest, Tool, ToolError};
use switchboard_protocol::AgentName;
use switchboard_store::AnalyticsStore;

/// What a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Spend and savings.
    Cost,
    /// Latency and throughput.
    Performance,
    /// Answer quality and errors.
    Quality,
    /// Which model to use.
    ModelSelection,
    /// What the workload looks like.
    WorkloadAnalysis,
    /// Anything else.
    General,
}

impl Category {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Cost => "cost",
            Category::Performance => "performance",
            Category::Quality => "quality",
            Category::ModelSelection => "model_selection",
            Category::WorkloadAnalysis => "workload_analysis",
            Category::General => "general",
        }
    }

    /// A plain-words name for answers.
    pub fn label(self) -> &'static str {
        match self {
            Category::Cost => "a cost question",
            Category::Performance => "a latency and performance question",
            Category::Quality => "a quality question",
            Category::ModelSelection => "a model selection question",
            Category::WorkloadAnalysis => "a workload analysis question",
            Category::General => "a general question",
        }
    }

    /// Classifies by keywords; the first category with the most hits wins.
    pub fn of(text: &str) -> Category {
        let text = text.to_lowercase();
        let rules: [(Category, &[&str]); 5] = [
            (
                Category::Cost,
                &[
                    "cost",
                    "spend",
                    "bill",
                    "cheap",
                    "expensive",
                    "budget",
                    "price",
                    "save",
                    "saving",
                    "$",
                ],
            ),
            (
                Category::Performance,
                &[
                    "latency",
                    "slow",
                    "fast",
                    "p95",
                    "p99",
                    "throughput",
                    "speed",
                    "timeout",
                ],
            ),
            (
                Category::Quality,
                &[
                    "quality",
                    "accuracy",
                    "hallucinat",
                    "error rate",
                    "wrong",
                    "failing",
                    "errors",
                ],
            ),
            (
                Category::ModelSelection,
                &["which model", "switch to", "compare", "versus", " vs ", "model choice"],
            ),
            (
                Category::WorkloadAnalysis,
                &["usage", "workload", "traffic", "how many calls", "tokens", "pattern"],
            ),
        ];
        let mut best = (Category::General, 0);
        for (category, words) in rules {
            let hits = words.iter().filter(|w| text.contains(*w)).count();
            if hits > best.1 {
                best = (category, hits);
            }
        }
        best.0
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<Category> {
        serde_json::from_value(Value::String(text.to_owned())).ok()
    }
}

/// Finds models, budgets, latency targets and time ranges mentioned in a text.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractEntities;

const MODEL_PREFIXES: [&str; 9] = [
    "gpt-",
    "o1",
    "o3",
    "claude",
    "gemini",
    "llama",
    "mistral",
    "mixtral",
    "command-r",
];

fn trim_word(word: &str) -> &str {
    word.trim_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '.' && c != '-' && c != '_')
        .trim_end_matches('.')
}

/// The entities of a text, as the tool returns them.
pub fn extract(text: &str) -> Value {
    let mut models: Vec<String> = Vec::new();
    let mut budgets: Vec<String> = Vec::new();
    let mut latency_targets: Vec<String> = Vec::new();
    let words: Vec<&str> = text
        .split_whitespace()
        .map(trim_word)
        .filter(|w| !w.is_empty())
        .collect();
    for (index, word) in words.iter().enumerate() {
        let lower = word.to_lowercase();
        if MODEL_PREFIXES.iter().any(|p| lower.starts_with(p)) && !models.contains(&lower) {
            models.push(lower.clone());
        }
        if let Some(amount) = lower.strip_prefix('$')
            && amount.replace([',', '.', 'k'], "").chars().all(|c| c.is_ascii_digit())
            && !amount.is_empty()
        {
            budgets.push(word.to_string());
        }
        let number_then_unit = |unit: &str| {
            lower
                .strip_suffix(unit)
                .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
                || (lower.parse::<f64>().is_ok() && words.get(index + 1).is_some_and(|n| n.eq_ignore_ascii_case(unit)))
        };
        if number_then_unit("ms") || number_then_unit("s") && lower != "s" {
            let target = if lower.parse::<f64>().is_ok() {
                format!("{lower} {}", words[index + 1])
            } else {
                lower
            };
            latency_targets.push(target);
        }
    }
    let lower = text.to_lowercase();
    let ranges = [
        "today",
        "yesterday",
        "last week",
        "this week",
        "last month",
        "this month",
        "last 30 days",
        "last 7 days",
    ];
    let time_range = ranges.iter().find(|r| lower.contains(*r)).map(|r| (*r).to_owned());
    json!({ "models": models, "budgets": budgets, "latency_targets": latency_targets, "time_range": time_range })
}

#[async_trait]
impl Tool for ExtractEntities {
    async fn call(&self, parameters: Value) -> Result<Value, ToolError> {
        let text = parameters
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidParameters("expected {\"text\": string}".into()))?;
        Ok(extract(text))
    }
}

/// What triage found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Triage {
    /// What the request is about.
    pub category: Category,
    /// What it mentions.
    pub entities: Value,
    /// Whether the user has workload data the agents could analyse.
    pub has_data: bool,
    /// How many model calls the user has uploaded.
    #[serde(default)]
    pub data_calls: u64,
    /// Why the user's workload data could not be read (the analytics store is slow or down),
    /// when it could not: then nothing is known of it, and no figure is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_unavailable: Option<String>,
}

/// Tells whether the user has uploaded workload data: `{"user_id"}` in, `{"calls"}` out.
/// The agent passes the run's own user; the tool reads only the analytics store.
pub struct WorkloadOverview {
    store: Arc<dyn AnalyticsStore>,
}

impl std::fmt::Debug for WorkloadOverview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadOverview")
    }
}

impl WorkloadOverview {
    /// The tool over `store`.
    pub fn new(store: Arc<dyn AnalyticsStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Tool for WorkloadOverview {
    async fn call(&self, parameters: Value) -> Result<Value, ToolError> {
        let user = crate::data::user_parameter(&parameters)?;
        let calls = self
            .store
            .workload_event_count(&user)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(json!({ "calls": calls }))
    }
}

/// The triage agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct TriageAgent;

/// The category of a model's classification: a JSON object with a known `category`, alone or
/// in a Markdown code block, as models sometimes wrap it.
fn classification(text: &str) -> Option<Category> {
    let text = text.trim();
    let inner = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(text);
    let value: Value = serde_json::from_str(inner.trim()).ok()?;
    value.get("category").and_then(Value::as_str).and_then(Category::parse)
}

const CLASSIFY_PROMPT: &str = "Classify the user's request about their language-model usage. Answer with a JSON object \
{\"category\": one of cost, performance, quality, model_selection, workload_analysis, general}.";

#[async_trait]
impl Agent for TriageAgent {
    fn task(&self, _ctx: &AgentContext) -> String {
        "classifying the request and choosing the plan".to_owned()
    }

    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        ctx.events.step("Reading the request.", 1, 0.2).await;
        let entities = ctx
            .tools
            .call("extract_entities", json!({ "text": ctx.request() }))
            .await?;
        ctx.events.step("Classifying it.", 2, 0.6).await;
        let mut request = ModelRequest::new(CLASSIFY_PROMPT, ctx.request());
        request.json = true;
        // The user's data is looked up while the model classifies: neither waits for the other.
        let (response, overview) = tokio::join!(
            ctx.model.complete(request),
            ctx.tools
                .call("workload_overview", json!({ "user_id": ctx.run.user_id })),
        );
        let response = response?;
        let category = match classification(&response.text) {
            Some(category) => category,
            None => {
                ctx.events
                    .thinking(format!(
                        "The language model ({}) answered with no category I know, so I classified the request by its keywords.",
                        ctx.model.name()
                    ))
                    .await;
                Category::of(ctx.request())
            }
        };
        // A store that cannot answer does not end the run: the answer says that the figures
        // cannot be had right now, and why.
        let (data_calls, data_unavailable) = match overview {
            Ok(overview) => (overview.get("calls").and_then(Value::as_u64).unwrap_or(0), None),
            Err(error) => (0, Some(error.to_string())),
        };
        let data = match (data_calls, &data_unavailable) {
            (_, Some(_)) => "your workload data cannot be read right now".to_owned(),
            (0, None) => "you have no workload data uploaded yet".to_owned(),
            (1, None) => "you have 1 model call uploaded".to_owned(),
            (n, None) => format!("you have {n} model calls uploaded"),
        };
        ctx.events
            .step(format!("This is {}; {data}.", category.label()), 3, 1.0)
            .await;
        let triage = Triage {
            category,
            entities,
            has_data: data_calls > 0,
            data_calls,
            data_unavailable,
        };
        let plan = if triage.has_data {
            ["data", "optimization", "actions"]
                .iter()
                .map(|name| AgentName::parse(name).map_err(|e| AgentError::Failed(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok(AgentOutput {
            data: serde_json::to_value(&triage).map_err(|e| AgentError::Failed(e.to_string()))?,
            plan: Some(plan),
            answer: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_classification_is_read_only_when_it_names_a_known_category() {
        let cases = [
            ("{\"category\": \"cost\"}", Some(Category::Cost)),
            (
                " {\"category\":\"performance\", \"why\": \"p95\"}\n",
                Some(Category::Performance),
            ),
            ("```json\n{\"category\": \"quality\"}\n```", Some(Category::Quality)),
            ("```\n{\"category\": \"general\"}\n```", Some(Category::General)),
            ("{\"category\": \"astrology\"}", None),
            ("{\"kind\": \"cost\"}", None),
            ("It is about cost.", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(classification(text), expected, "{text}");
        }
    }

    #[test]
    fn requests_are_classified_by_what_they_ask() {
        let cases = [
            ("How can we cut our LLM costs?", Category::Cost),
            ("why is our chatbot so slow? p95 is 4 s", Category::Performance),
            ("the answers are wrong and hallucinate", Category::Quality),
            ("should we switch to claude, compare it", Category::ModelSelection),
            ("what does our usage pattern look like", Category::WorkloadAnalysis),
            ("hello there", Category::General),
        ];
        for (text, expected) in cases {
            assert_eq!(Category::of(text), expected, "{text}");
        }
    }

    #[test]
    fn entities_are_extracted_from_the_text() {
        let cases = [
            (
                "Can gpt-4o and Claude-3-haiku stay under $500 with p95 below 800ms last month?",
                json!({"models": ["gpt-4o", "claude-3-haiku"], "budgets": ["$500"], "latency_targets": ["800ms"], "time_range": "last month"}),
            ),
            (
                "keep it under 2 s",
                json!({"models": [], "budgets": [], "latency_targets": ["2 s"], "time_range": null}),
            ),
            (
                "nothing here",
                json!({"models": [], "budgets": [], "latency_targets": [], "time_range": null}),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(extract(text), expected, "{text}");
        }
    }
}

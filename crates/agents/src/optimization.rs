//! The optimization agent: savings strategies with projected monthly amounts, computed from the
//! data agent's aggregates and the price table, each with the assumption it rests on; and the
//! actions agent, which turns them into an ordered plan.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};
use switchboard_engine::{Agent, AgentContext, AgentError, AgentOutput};
use switchboard_store::{OFF_HOURS_END, SHORT_INPUT_TOKENS, SHORT_OUTPUT_TOKENS};

use crate::analysis::{BULK_SHARE, is_bulk};
use crate::data::usd;
use crate::prices::{ModelPrice, PriceTable};
use crate::triage::Category;

/// Projections are per month of this many days.
const MONTH_DAYS: f64 = 30.0;

/// One savings strategy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Strategy {
    /// `model_routing`, `caching`, `batching`, `prompt_trimming` or `error_reduction`.
    pub kind: &'static str,
    /// What to do, in a few words.
    pub title: String,
    /// Projected saving per 30 days, from the data's period.
    pub monthly_savings_usd: f64,
    /// What the projection assumes.
    pub assumption: String,
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn u(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Days the data spans (at least one), for scaling to a month.
fn period_days(summary: &Value) -> f64 {
    let at = |key: &str| {
        summary["period"][key]
            .as_str()
            .and_then(|t| switchboard_protocol::Timestamp::parse(t).ok())
            .map(|t| t.unix_millis())
    };
    match (at("from"), at("to")) {
        (Some(from), Some(to)) => ((to - from) as f64 / 86_400_000.0).max(1.0),
        _ => 1.0,
    }
}

fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

/// The cheapest of `candidates` from `current`'s provider that lists below it.
fn cheapest_instead<'a>(
    current: &ModelPrice,
    candidates: impl Iterator<Item = &'a ModelPrice>,
) -> Option<&'a ModelPrice> {
    let list = |m: &ModelPrice| m.input_per_mtok + m.output_per_mtok;
    candidates
        .filter(|m| m.provider == current.provider && list(m) < list(current))
        .min_by(|a, b| list(a).total_cmp(&list(b)))
}

/// The strategies, most valuable first; strategies that would save nothing are left out.
pub fn strategies(summary: &Value, prices: &PriceTable) -> Vec<Strategy> {
    let o = &summary["opportunities"];
    let scale = MONTH_DAYS / period_days(summary);
    let mut out = Vec::new();

    // Model routing: short calls to a cheaper model of the same provider: the cheapest the team
    // already runs, else the cheapest in the price table.
    let mut routing = 0.0;
    let mut moves = Vec::new();
    let used: Vec<&str> = summary["by_model"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["model"].as_str())
        .collect();
    for row in o["short_calls"].as_array().into_iter().flatten() {
        let model = row["model"].as_str().unwrap_or("");
        let Some(current) = prices.find(model) else { continue };
        let in_use = cheapest_instead(current, used.iter().filter_map(|name| prices.find(name)));
        let Some(cheaper) = in_use.or_else(|| cheapest_instead(current, prices.models.iter())) else {
            continue;
        };
        let calls = &row["calls"];
        let saved = f(&calls["cost_usd"]) - cheaper.cost(u(&calls["input_tokens"]), u(&calls["output_tokens"]), false);
        if saved > 0.0 {
            routing += saved;
            moves.push(format!(
                "{} → {} ({} short calls)",
                model,
                cheaper.name,
                u(&calls["calls"])
            ));
        }
    }
    out.push(Strategy {
        kind: "model_routing",
        title: format!("Route short calls to a cheaper model: {}", moves.join(", ")),
        monthly_savings_usd: cents(routing * scale),
        assumption: format!(
            "Calls with at most {SHORT_INPUT_TOKENS} prompt and {SHORT_OUTPUT_TOKENS} answer tokens are served as well by \
             a cheaper model of the same provider (the cheapest you already run, else the cheapest in the price table), at \
             its list price; check quality on a sample first."
        ),
    });

    // Caching: repeats of an earlier prompt.
    out.push(Strategy {
        kind: "caching",
        title: format!(
            "Cache answers to repeated prompts ({} repeated calls)",
            u(&o["repeated_prompt_calls"])
        ),
        monthly_savings_usd: cents(f(&o["repeated_prompt_cost_usd"]) * scale),
        assumption: "Every call whose prompt_hash was seen before is answered from a cache; the first call of each \
                     prompt is still paid, and the cache itself is not priced."
            .to_owned(),
    });

    // Batching and prompt trimming, per feature and model.
    let (mut batching, mut batch_features) = (0.0, Vec::new());
    let (mut trimming, mut trim_features) = (0.0, Vec::new());
    for row in o["by_feature_model"].as_array().into_iter().flatten() {
        let model = row["model"].as_str().unwrap_or("");
        let feature = row["feature"].as_str().unwrap_or("(none)");
        let Some(price) = prices.find(model) else { continue };
        let (all, off) = (u(&row["all"]["calls"]), u(&row["off_hours"]["calls"]));
        if is_bulk(all, off) && price.batch_discount > 0.0 {
            batching += f(&row["off_hours"]["cost_usd"]) * price.batch_discount;
            batch_features.push(format!("{feature} on {model}"));
        }
        let excess = u(&row["input_tokens_above_p95"]);
        if excess > 0 {
            trimming += excess as f64 * price.input_per_mtok / 1e6;
            trim_features.push(feature.to_owned());
        }
    }
    // A feature runs on several models, and its rows need not be next to each other: each name
    // once, where it first appears.
    let mut named = std::collections::HashSet::new();
    trim_features.retain(|feature| named.insert(feature.clone()));
    out.push(Strategy {
        kind: "batching",
        title: format!("Move off-hours bulk work to the batch API: {}", batch_features.join(", ")),
        monthly_savings_usd: cents(batching * scale),
        assumption: format!(
            "Features with at least {:.0} % of their calls between 00:00 and {OFF_HOURS_END:02}:00 UTC can wait for the \
             provider's batch API, which takes its batch discount off the list price.",
            BULK_SHARE * 100.0
        ),
    });
    out.push(Strategy {
        kind: "prompt_trimming",
        title: format!("Trim oversized prompts in {}", trim_features.join(", ")),
        monthly_savings_usd: cents(trimming * scale),
        assumption: "Prompts larger than their feature's p95 prompt size are trimmed to it (retrieval and history cut \
                     to what the answer needs), at the model's input price."
            .to_owned(),
    });
    out.push(Strategy {
        kind: "error_reduction",
        title: "Fix the causes of failed calls".to_owned(),
        monthly_savings_usd: cents(f(&o["failed_cost_usd"]) * scale),
        assumption: "Failed calls are paid for and then retried; removing their cause saves their whole cost."
            .to_owned(),
    });
    // A saving that is not a finite amount could only come from figures out of range.
    out.retain(|s| s.monthly_savings_usd.is_finite() && s.monthly_savings_usd > 0.0);
    out.sort_by(|a, b| b.monthly_savings_usd.total_cmp(&a.monthly_savings_usd));
    out
}

/// The optimization agent.
#[derive(Debug, Clone)]
pub struct OptimizationAgent {
    prices: Arc<PriceTable>,
}

impl OptimizationAgent {
    /// The agent, pricing with `prices`.
    pub fn new(prices: Arc<PriceTable>) -> Self {
        Self { prices }
    }
}

#[async_trait]
impl Agent for OptimizationAgent {
    fn task(&self, _ctx: &AgentContext) -> String {
        "finding savings in your workload".to_owned()
    }

    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        let Some(data) = ctx.output_of("data") else {
            return Err(AgentError::Failed(
                "no workload figures reached the optimization step".into(),
            ));
        };
        ctx.events
            .step("Pricing routing, caching, batching, trimming and errors.", 1, 0.5)
            .await;
        let found = strategies(&data.data, &self.prices);
        let total: f64 = found.iter().map(|s| s.monthly_savings_usd).sum();
        ctx.events
            .step(
                format!("{} strategies, {} a month in all.", found.len(), usd(total)),
                2,
                1.0,
            )
            .await;
        Ok(AgentOutput::data(
            json!({ "strategies": found, "prices_as_of": self.prices.as_of }),
        ))
    }
}

/// One step of the action plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    /// 1, 2, 3...
    pub step: usize,
    /// What to do.
    pub title: String,
    /// How.
    pub detail: String,
}

/// The plan: the latency changes first when `latency_advice` (from the data agent's latency
/// analysis) is given, then the strategies in their order (most valuable first), but for those of
/// a kind a latency change already covers (their savings stay in the strategies' table).
pub fn actions(strategies: &Value, latency_advice: &Value) -> Vec<Action> {
    let covered: Vec<&str> = latency_advice
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    let latency = latency_advice.as_array().into_iter().flatten().map(|a| Action {
        step: 0,
        title: a["title"].as_str().unwrap_or("").to_owned(),
        detail: a["detail"].as_str().unwrap_or("").to_owned(),
    });
    let savings = strategies
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| !s["kind"].as_str().is_some_and(|kind| covered.contains(&kind)))
        .map(|s| {
            let saving = usd(f(&s["monthly_savings_usd"]));
            let detail = match s["kind"].as_str().unwrap_or("") {
                "model_routing" => "Send a sample of the short calls to the cheaper model, compare answers, then route by prompt size.",
                "caching" => "Key a cache on the prompt hash with a TTL that fits how often the answers change; measure the hit rate.",
                "batching" => "Submit the off-hours job through the provider's batch API and collect results when the batch ends.",
                "prompt_trimming" => "Cap retrieved context and history for the listed features at their usual size; watch answer quality.",
                "error_reduction" => "Group failed calls by feature and error, fix the top cause, and add backoff to retries.",
                _ => "Apply the strategy.",
            };
            Action {
                step: 0,
                title: format!("{} (about {saving} a month)", s["title"].as_str().unwrap_or("")),
                detail: detail.to_owned(),
            }
        });
    latency
        .chain(savings)
        .enumerate()
        .map(|(index, action)| Action {
            step: index + 1,
            ..action
        })
        .collect()
}

/// The actions agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActionsAgent;

#[async_trait]
impl Agent for ActionsAgent {
    fn task(&self, _ctx: &AgentContext) -> String {
        "ordering the steps to take".to_owned()
    }

    async fn run(&self, ctx: AgentContext) -> Result<AgentOutput, AgentError> {
        let Some(found) = ctx.output_of("optimization") else {
            return Err(AgentError::Failed("no strategies reached the actions step".into()));
        };
        let performance = ctx
            .output_of("triage")
            .and_then(|t| t.data["category"].as_str())
            .and_then(Category::parse)
            == Some(Category::Performance);
        let advice = match ctx.output_of("data") {
            Some(data) if performance => data.data["latency"]["advice"].clone(),
            _ => Value::Null,
        };
        let plan = actions(&found.data["strategies"], &advice);
        let order = if advice.as_array().is_some_and(|a| !a.is_empty()) {
            "the latency changes first, then the savings, most valuable first"
        } else {
            "most valuable first"
        };
        ctx.events.thinking(format!("{} steps, {order}.", plan.len())).await;
        Ok(AgentOutput::data(json!({ "actions": plan })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fifteen days of aggregates (so every saving doubles to a month); each figure by hand below.
    fn summary() -> Value {
        json!({
            "period": {"from": "2026-11-01T00:00:00.000Z", "to": "2026-11-16T00:00:00.000Z"},
            "opportunities": {
                // 50k×$2.50 + 10k×$10 per million = $0.225 on gpt-4o; 50k×$0.05 + 10k×$0.40 = $0.0065 on gpt-5-nano.
                "short_calls": [{"model": "gpt-4o", "calls": {"calls": 100, "input_tokens": 50_000, "output_tokens": 10_000, "cost_usd": 0.225}}],
                "repeated_prompt_calls": 40,
                "repeated_prompt_cost_usd": 1.5,
                "failed_cost_usd": 0.25,
                "by_feature_model": [
                    // All off-hours: half of $6.00 through the batch API; 200k excess prompt tokens × $2.50 per million.
                    {"feature": "nightly", "model": "gpt-4o", "all": {"calls": 30, "cost_usd": 6.0}, "off_hours": {"calls": 30, "cost_usd": 6.0}, "input_tokens_above_p95": 200_000},
                    // One call in ten off-hours: not a bulk job.
                    {"feature": "chat", "model": "claude-sonnet-4", "all": {"calls": 10, "cost_usd": 1.0}, "off_hours": {"calls": 1, "cost_usd": 0.1}, "input_tokens_above_p95": 0},
                ],
            },
        })
    }

    #[test]
    fn routing_prefers_a_cheaper_model_the_team_already_runs() {
        let mut summary = summary();
        summary["by_model"] = json!([{"model": "gpt-4o"}, {"model": "gpt-4o-mini"}, {"model": "claude-sonnet-4"}]);
        let found = strategies(&summary, &PriceTable::embedded());
        let routing = found.iter().find(|s| s.kind == "model_routing").unwrap();
        // 50k×$0.15 + 10k×$0.60 = $0.0135 on gpt-4o-mini: ($0.225 − $0.0135) × 2 = $0.423.
        assert_eq!(
            (routing.title.as_str(), routing.monthly_savings_usd),
            (
                "Route short calls to a cheaper model: gpt-4o → gpt-4o-mini (100 short calls)",
                0.42
            )
        );
    }

    #[test]
    fn every_strategy_is_priced_from_the_aggregates_and_projected_to_a_month() {
        let found = strategies(&summary(), &PriceTable::embedded());
        let got: Vec<(&str, f64)> = found.iter().map(|s| (s.kind, s.monthly_savings_usd)).collect();
        assert_eq!(
            got,
            [
                ("batching", 6.00),
                ("caching", 3.00),
                ("prompt_trimming", 1.00),
                ("error_reduction", 0.50),
                ("model_routing", 0.44),
            ]
        );
        assert_eq!(
            found[0].title,
            "Move off-hours bulk work to the batch API: nightly on gpt-4o"
        );
        assert_eq!(
            found[4].title,
            "Route short calls to a cheaper model: gpt-4o → gpt-5-nano (100 short calls)"
        );
        assert!(
            found.iter().all(|s| s.assumption.len() > 40),
            "each strategy states its assumption"
        );
        let plan = actions(&serde_json::to_value(&found).unwrap(), &Value::Null);
        assert_eq!(plan.iter().map(|a| a.step).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(
            plan[1].title,
            "Cache answers to repeated prompts (40 repeated calls) (about $3.00 a month)"
        );
    }

    #[test]
    fn a_feature_on_several_models_is_named_once_in_the_trimming_title() {
        let mut summary = summary();
        let row = |feature: &str, model: &str| {
            json!({"feature": feature, "model": model, "all": {"calls": 10, "cost_usd": 1.0},
                   "off_hours": {"calls": 0, "cost_usd": 0.0}, "input_tokens_above_p95": 1000})
        };
        summary["opportunities"]["by_feature_model"] = json!([
            row("search", "gpt-4o"),
            row("chat", "gpt-4o"),
            row("search", "gpt-4o-mini"),
            row("chat", "gpt-4o-mini"),
        ]);
        let found = strategies(&summary, &PriceTable::embedded());
        let trimming = found.iter().find(|s| s.kind == "prompt_trimming").unwrap();
        assert_eq!(trimming.title, "Trim oversized prompts in search, chat");
    }

    #[test]
    fn no_data_worth_saving_gives_no_strategy() {
        let empty = json!({"period": {}, "opportunities": {"short_calls": [], "by_feature_model": []}});
        assert!(strategies(&empty, &PriceTable::embedded()).is_empty());
    }
}

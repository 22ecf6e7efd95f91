//! The agents that ship with Switchboard, their tools, and the offline model.
//!
//! The plan: `triage` (classifies the request, extracts what it mentions, checks for workload data
//! and chooses the stages), then `data` when the user has uploaded workload data (the figures, from
//! the store), then `reporting` (writes the answer and the structured report).

mod analysis;
mod data;
pub mod demo;
mod offline;
mod optimization;
mod prices;
mod reporting;
mod triage;
pub mod workload;

pub use analysis::{
    Anomaly, BULK_SHARE, BURST_FACTOR, DAY_DEVIATIONS, MAX_ANOMALIES, MIN_DAYS, MIN_HOUR_CALLS, SPIKE_FACTOR,
    WEEKLY_DAYS, anomalies, bulk_features, latency,
};
pub use data::{DataAgent, WorkloadSummaryTool, summary_json, usd};
pub use offline::OfflineModel;
pub use optimization::{Action, ActionsAgent, OptimizationAgent, Strategy, actions, strategies};
pub use prices::{ModelPrice, PriceTable, PriceTableError};
pub use reporting::{ReportingAgent, draft, report};
pub use triage::{Category, ExtractEntities, Triage, TriageAgent, WorkloadOverview, extract};

use std::sync::Arc;

use switchboard_engine::{EngineBuilder, Plan};
use switchboard_store::AnalyticsStore;

/// Registers the shipped agents, their tools and the plan on an engine builder; the tools read
/// workload data from `analytics`, and savings are priced with `prices`.
pub fn register(builder: EngineBuilder, analytics: Arc<dyn AnalyticsStore>, prices: Arc<PriceTable>) -> EngineBuilder {
    let plan = Plan::new("triage", &["data", "optimization", "actions"], Some("reporting")).expect("valid agent names");
    builder
        .tool("extract_entities", Arc::new(ExtractEntities))
        .tool(
            "workload_overview",
            Arc::new(WorkloadOverview::new(Arc::clone(&analytics))),
        )
        .tool("workload_summary", Arc::new(WorkloadSummaryTool::new(analytics)))
        .agent(
            "triage",
            Arc::new(TriageAgent),
            &["extract_entities", "workload_overview"],
        )
        .agent("data", Arc::new(DataAgent), &["workload_summary"])
        .agent("optimization", Arc::new(OptimizationAgent::new(prices)), &[])
        .agent("actions", Arc::new(ActionsAgent), &[])
        .agent("reporting", Arc::new(ReportingAgent), &[])
        .plan(plan)
}

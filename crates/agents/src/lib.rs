//! The agents that ship with Switchboard, their tools, and the offline model.
//!
//! The plan: `triage` (classifies the request, extracts what it mentions, chooses the stages),
//! then `reporting` (writes the answer). Agents that analyse workload data join the plan as
//! stages when the user has data.

pub mod demo;
mod offline;
mod prices;
mod reporting;
mod triage;
pub mod workload;

pub use offline::OfflineModel;
pub use prices::{ModelPrice, PriceTable, PriceTableError};
pub use reporting::{ReportingAgent, draft};
pub use triage::{Category, ExtractEntities, Triage, TriageAgent, WorkloadOverview, extract};

use std::sync::Arc;

use switchboard_engine::{EngineBuilder, Plan};
use switchboard_store::AnalyticsStore;

/// Registers the shipped agents, their tools and the plan on an engine builder; the tools read
/// workload data from `analytics`.
pub fn register(builder: EngineBuilder, analytics: Arc<dyn AnalyticsStore>) -> EngineBuilder {
    let plan = Plan::new("triage", &[], Some("reporting")).expect("valid agent names");
    builder
        .tool("extract_entities", Arc::new(ExtractEntities))
        .tool("workload_overview", Arc::new(WorkloadOverview::new(analytics)))
        .agent(
            "triage",
            Arc::new(TriageAgent),
            &["extract_entities", "workload_overview"],
        )
        .agent("reporting", Arc::new(ReportingAgent), &[])
        .plan(plan)
}

//! The Switchboard server: WebSocket chat with AI agents (PROTOCOL.md), its HTTP API, health
//! and metrics, on the engine and the store. The clients that talk to it are in
//! `switchboard-client`.
//!
//! `Application::build(config)` binds; `run_until_stopped()` serves until SIGTERM, Ctrl-C or the
//! stop handle.

mod api;
pub mod app;
mod auth;
mod cluster;
pub mod config;
pub mod conformance;
mod delivery;
pub mod demo_data;
mod error;
mod fanout;
#[doc(hidden)]
pub mod fuzzing;
mod leases;
mod limits;
mod listener;
mod log;
mod metrics;
pub mod openapi;
mod recovery;
mod runs;
mod sla;
pub mod telemetry;
mod web;
mod ws;

pub use app::{AppState, Application};
pub use config::{Config, ServeArgs};

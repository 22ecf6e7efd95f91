//! End-to-end tests: the real server on port 0 over real sockets, one module per area.

mod auth;
mod cluster;
mod connections;
mod degraded;
mod figures;
mod hostile;
mod http;
mod isolation;
mod lifecycle;
mod llm;
mod loadtest;
mod login;
mod openapi;
mod raw;
mod resume;
mod runs;
mod sla;
mod socket;
mod support;
mod traces;
mod web;
mod workload;

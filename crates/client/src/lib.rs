//! A client of a Switchboard server, on the wire types of `switchboard-protocol`: `Client` (HTTP:
//! sign-in, requests), `Socket` (the WebSocket speaking `ClientFrame` and `ServerFrame`), and the
//! commands built on them, which the `switchboard` binary dispatches to: `chat`, `ingest`,
//! `loadtest` and `doctor`. It knows nothing of the server's code, only its protocol.

pub mod chat;
mod client;
/// The contract checker of a socket's stream (in the protocol crate, shared with the engine's
/// test kit).
pub use switchboard_protocol::contract;
pub mod doctor;
pub mod ingest;
pub mod loadtest;

pub use client::{Client, Session, SignIn, Socket, Throttled};

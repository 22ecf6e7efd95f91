//! OpenAPI schemas of the types whose serde form is written by hand (ids, timestamps), behind the
//! `openapi` feature: the server's OpenAPI document (`GET /api/openapi.json`) refers to them.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::{AgentName, ConnectionId, MessageId, RunId, ThreadId, Timestamp, TraceId, UserId};

/// Longest id, in bytes (as `ids::MAX_ID_LEN`).
const MAX_ID_LEN: usize = 80;

/// A string schema with a pattern, a description and an example.
fn text(pattern: String, max_length: usize, description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(pattern))
        .max_length(Some(max_length))
        .description(Some(description))
        .examples([serde_json::Value::from(example)])
        .into()
}

macro_rules! id_schema {
    ($name:ident, $description:literal) => {
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let prefix = $name::PREFIX;
                text(
                    format!("^{prefix}[A-Za-z0-9_-]{{1,{}}}$", MAX_ID_LEN - prefix.len()),
                    MAX_ID_LEN,
                    $description,
                    &format!("{prefix}3f2b1c0d9e8a4b7c8d6e5f4a3b2c1d0e"),
                )
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

id_schema!(UserId, "A user: `usr_` and letters, digits, `_` or `-`.");
id_schema!(ThreadId, "A thread: `thr_` and letters, digits, `_` or `-`.");
id_schema!(RunId, "A run: `run_` and letters, digits, `_` or `-`.");
id_schema!(MessageId, "A stored message: `msg_` and letters, digits, `_` or `-`.");
id_schema!(
    ConnectionId,
    "A WebSocket connection: `conn_` and letters, digits, `_` or `-`."
);

impl PartialSchema for AgentName {
    fn schema() -> RefOr<Schema> {
        text(
            "^[a-z0-9_-]{1,64}$".to_owned(),
            64,
            "An agent's name: 1 to 64 lowercase letters, digits, `_` or `-`.",
            "supervisor",
        )
    }
}

impl ToSchema for AgentName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AgentName")
    }
}

impl PartialSchema for TraceId {
    fn schema() -> RefOr<Schema> {
        text(
            "^[0-9a-f]{32}$".to_owned(),
            32,
            "A run's trace id: 32 lowercase hex digits.",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        )
    }
}

impl ToSchema for TraceId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TraceId")
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 in UTC with milliseconds."))
            .examples([serde_json::Value::from("2026-11-22T22:29:32.123Z")])
            .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

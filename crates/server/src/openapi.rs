//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/openapi.json`.
//!
//! It is generated from the route table (`app::api_routes`): every route is registered there with
//! `utoipa_axum::routes!`, which adds the handler to the axum router and its `#[utoipa::path]`
//! operation (with the schemas of its bodies, the types of `switchboard_protocol::http`) to the
//! document in one step, so a route cannot be served without being documented. This module adds
//! what no operation carries: the title, the security schemes, and the schemas that descriptions
//! name.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use switchboard_protocol::{ErrorBody, Event};
use utoipa::ToSchema;
use utoipa::openapi::content::Content;
use utoipa::openapi::path::Parameter;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, RefOr, Required};

use crate::api::tag;

/// The document, as served.
pub fn document() -> OpenApi {
    let mut document = crate::app::api_routes().into_openapi();
    optional_means_absent(&mut document);
    document
}

/// An optional body or parameter is written `Option<T>` in `#[utoipa::path]`, which makes it
/// optional and also makes its schema "`T` or `null`"; but a client leaves it out or sends a `T`,
/// never `null`. This takes the `null` out again.
fn optional_means_absent(document: &mut OpenApi) {
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            if let Some(RefOr::T(body)) = &mut operation.request_body
                && body.required != Some(Required::True)
            {
                for content in body.content.values_mut() {
                    if let RefOr::T(Content {
                        schema: Some(schema), ..
                    }) = content
                    {
                        without_null(schema);
                    }
                }
            }
            for parameter in operation.parameters.iter_mut().flatten() {
                if let RefOr::T(Parameter {
                    required: Required::False,
                    schema: Some(schema),
                    ..
                }) = parameter
                {
                    without_null(schema);
                }
            }
        }
    }
}

/// `schema` without its `null` alternative: `oneOf: [T, null]` becomes `T`, and
/// `type: [T, "null"]` becomes `type: T`.
fn without_null(schema: &mut RefOr<Schema>) {
    let is_null = |schema: &RefOr<Schema>| matches!(schema, RefOr::T(Schema::Object(object)) if object.schema_type == SchemaType::Type(Type::Null));
    match schema {
        RefOr::T(Schema::OneOf(one_of)) if one_of.items.len() == 2 && one_of.items.iter().any(is_null) => {
            let kept = one_of
                .items
                .iter()
                .position(|item| !is_null(item))
                .expect("one of two is not null");
            *schema = one_of.items.swap_remove(kept);
        }
        RefOr::T(Schema::Object(object)) => {
            if let SchemaType::Array(types) = &object.schema_type {
                let types: Vec<Type> = types.iter().filter(|t| **t != Type::Null).cloned().collect();
                object.schema_type = match types.as_slice() {
                    [one] => SchemaType::Type(one.clone()),
                    _ => SchemaType::Array(types),
                };
            }
        }
        _ => {}
    }
}

/// What the route table starts from: the document without its paths.
pub(crate) fn base() -> OpenApi {
    let info = InfoBuilder::new()
        .title("Switchboard")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The HTTP API of Switchboard (`switchboard.v1`, PROTOCOL.md section 7 and its additions), and \
             the WebSocket handshake of `GET /ws`. Errors are `{\"error\":{\"code\",\"message\"}}` \
             (`ErrorBody`). Any request may also be answered 503 `server_busy` (with `Retry-After`) when \
             the server holds as many connections as it may, and an unknown path 404 `not_found`.",
        ))
        .license(Some(LicenseBuilder::new().name("MIT").identifier(Some("MIT")).build()))
        .build();
    let mut components = Components::new();
    components.security_schemes.insert(
        "bearer".to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "`Authorization: Bearer <access token>`, the access token of a sign-in.",
                ))
                .build(),
        )
        .into(),
    );
    components.security_schemes.insert(
        "ticket".to_owned(),
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "ticket",
            "A single-use ticket from `POST /api/ws-ticket` (`GET /ws` only).",
        )))
        .into(),
    );
    components.security_schemes.insert(
        "subprotocol".to_owned(),
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Sec-WebSocket-Protocol",
            "The access token as an offered subprotocol `jwt.<access token>` (`GET /ws` only; what \
             browsers can send).",
        )))
        .into(),
    );
    // Named by the descriptions of the event stream and of its last `error` event.
    add_schema::<Event>(&mut components);
    add_schema::<ErrorBody>(&mut components);
    OpenApiBuilder::new().info(info).components(Some(components)).build()
}

/// Adds `T`'s schema and every schema it refers to.
fn add_schema<T: ToSchema>(components: &mut Components) {
    let mut schemas = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut schemas);
    components.schemas.extend(schemas);
}

/// The document as JSON, made once.
static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string(&document()).expect("the OpenAPI document is JSON"));

/// This document: the OpenAPI 3.1 description of every route.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = tag::SERVER,
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object))
)]
pub(crate) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

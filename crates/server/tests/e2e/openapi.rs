//! The OpenAPI document (`GET /api/openapi.json`) describes exactly the routes the router serves,
//! each with the statuses it answers; its references resolve; and real answers match their
//! documented schemas. Also the two routes the browser app needs: `GET /api/info` and
//! `POST /api/dev/demo-data`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use switchboard_protocol::http::{
    Accepted, Credentials, DemoDataRequest, EventsPage, Messages, Registered, Run, RunState, ServerInfo, SignedIn,
    Thread, Threads, WsTicket,
};
use switchboard_protocol::{ErrorBody, ErrorCode, PROTOCOL_NAME, Timestamp};
use switchboard_store::{AnalyticsStore, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS};

use crate::support::{TestApp, run_events, send, spawn_app, spawn_app_with};

/// The methods an operation can have in a path item.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Paths of the web app's static files (`GET /` and `/ui/{*path}`): served by the router, but not
/// API, so not in the document.
fn is_static_page(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

/// `GET /api/openapi.json`.
async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .http()
        .get(format!("{}/api/openapi.json", app.client.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// The documented operations: path → methods (upper case).
fn documented_routes(document: &Value) -> BTreeMap<String, BTreeSet<String>> {
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The routes of `router`: path → methods (upper case; `*` for a service that takes any
/// method). axum has no API that lists routes, so they are read from its `Debug` text, where
/// the path router lists each route as `RouteId(3): MethodRouter(MethodRouter { get: Route,
/// head: None, … })` and each path as `RouteId(3): "/api/threads"`; the fallback router (the
/// part after `fallback_router`) is left out.
fn served_routes(router: &axum::Router) -> BTreeMap<String, BTreeSet<String>> {
    let text = format!("{router:?}");
    let routes = text.split("fallback_router").next().unwrap();
    let mut paths = BTreeMap::new();
    let mut methods = BTreeMap::new();
    for piece in routes.split("RouteId(").skip(1) {
        let (id, rest) = piece.split_once(')').unwrap();
        if let Some(rest) = rest.strip_prefix(": \"") {
            paths.insert(id.to_owned(), rest.split('"').next().unwrap().to_owned());
        } else if let Some(rest) = rest.strip_prefix(": MethodRouter(MethodRouter { ") {
            let fields = rest.split(", fallback:").next().unwrap();
            let served: BTreeSet<String> = fields
                .split(", ")
                .filter_map(|field| field.split_once(": "))
                .filter(|(method, endpoint)| *endpoint != "None" && *method != "connect")
                .map(|(method, _)| method.to_uppercase())
                .collect();
            methods.insert(id.to_owned(), served);
        } else if rest.starts_with(": Route(") {
            methods.insert(id.to_owned(), BTreeSet::from(["*".to_owned()]));
        }
    }
    let served: BTreeMap<_, _> = paths
        .into_iter()
        .map(|(id, path)| (path, methods.remove(&id).unwrap_or_default()))
        .collect();
    assert!(
        served.get("/ws") == Some(&BTreeSet::from(["GET".to_owned()])) && served.len() > 15,
        "could not read the routes from axum's Debug text (has its format changed?): {served:?}\n{text}"
    );
    served
}

/// `path` with each `{parameter}` replaced by `x`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') { "x" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// `method path` without credentials or body: the status and the body as text.
async fn probe(app: &TestApp, method: &str, path: &str) -> (u16, String) {
    let url = format!("{}{}", app.client.base(), concrete(path));
    let response = app
        .client
        .http()
        .request(method.parse().unwrap(), url)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves_with_the_statuses_they_answer() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let documented = documented_routes(&document);
    let served: BTreeMap<_, _> = served_routes(&app.router)
        .into_iter()
        .filter(|(path, _)| !is_static_page(path))
        .collect();
    assert_eq!(served, documented, "served (left) and documented (right) routes differ");
    for (path, methods) in &documented {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let (status, body) = probe(&app, method, path).await;
            if methods.contains(method) {
                // Answered by the route itself, with a status its operation lists.
                assert!(
                    status != 405 && !(status == 404 && body.contains("No such route.")),
                    "{method} {path} is documented but not served: {status} {body}"
                );
                let operation = &document["paths"][path][method.to_lowercase()];
                assert!(
                    operation["responses"].get(status.to_string()).is_some(),
                    "{method} {path} answered {status}, which its operation does not list: {body}"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented: {body}");
            }
        }
    }
}

/// The routes the web app's scripts name: `(file, method, path)`, the method when the path
/// follows it as in `request('GET', '/api/threads')`, and `{}` for each `${…}` path segment. A
/// path counts when it starts a string or template literal (or follows a `${…}`, as in
/// `${host}/ws`), so prose that mentions a route (`// the socket of GET /ws`) does not.
fn web_app_routes() -> Vec<(String, Option<String>, String)> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/app");
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "js") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for start in 0..chars.len() {
            let opens = start > 0 && matches!(chars[start - 1], '\'' | '"' | '`' | '}');
            let rest: String = chars[start..chars.len().min(start + 5)].iter().collect();
            let api = rest == "/api/";
            let socket = rest.starts_with("/ws") && !rest[3..].starts_with(|c: char| c.is_ascii_alphanumeric());
            if !opens || !(api || socket) {
                continue;
            }
            let mut route = String::new();
            let mut at = start;
            while at < chars.len() {
                match chars[at] {
                    '$' if chars.get(at + 1) == Some(&'{') && route.ends_with('/') => {
                        route.push_str("{}");
                        while chars[at] != '}' {
                            at += 1;
                        }
                    }
                    c if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') => route.push(c),
                    _ => break,
                }
                at += 1;
            }
            let before: String = chars[start.saturating_sub(12)..start - 1].iter().collect();
            let method = before
                .trim_end()
                .strip_suffix(',')
                .and_then(|b| b.trim_end().strip_suffix('\''))
                .and_then(|b| b.rsplit('\'').next())
                .filter(|m| ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(m))
                .map(str::to_owned);
            routes.push((name.clone(), method, route));
        }
    }
    routes
}

/// Whether `route` (with `{}` for parameters) names the documented `path` (with `{name}`).
fn names(route: &str, path: &str) -> bool {
    let (route, path): (Vec<_>, Vec<_>) = (route.split('/').collect(), path.split('/').collect());
    route.len() == path.len()
        && route
            .iter()
            .zip(&path)
            .all(|(r, p)| r == p || (p.starts_with('{') && (*r == "{}" || !r.is_empty())))
}

#[tokio::test]
async fn the_web_app_calls_only_documented_routes() {
    let app = spawn_app().await;
    let documented = documented_routes(&document(&app).await);
    let routes = web_app_routes();
    let named: BTreeSet<&str> = routes.iter().map(|(_, _, route)| route.as_str()).collect();
    for expected in ["/ws", "/api/info", "/api/dev/demo-data", "/api/threads/{}/messages"] {
        assert!(
            named.contains(expected),
            "the web app's routes were not all found: {named:?}"
        );
    }
    for (file, method, route) in &routes {
        let methods = documented
            .iter()
            .find(|(path, _)| names(route, path))
            .map(|(_, methods)| methods)
            .unwrap_or_else(|| panic!("web/app/{file} calls {route}, which is not documented"));
        if let Some(method) = method {
            assert!(
                methods.contains(method),
                "web/app/{file} calls {method} {route}, which is not documented"
            );
        }
    }
}

/// Every `$ref` in `value`, with where it is.
fn references(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if key == "$ref" {
                    found.push((at.to_owned(), item.as_str().unwrap_or("(not text)").to_owned()));
                } else {
                    references(item, &format!("{at}/{key}"), found);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                references(item, &format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_every_reference_and_security_scheme_resolves() {
    let app = spawn_app().await;
    let document = document(&app).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "Switchboard");
    let mut found = Vec::new();
    references(&document, "", &mut found);
    assert!(found.len() > 50, "only {} references", found.len());
    for (at, reference) in &found {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {reference} is not local"));
        assert!(
            document.pointer(pointer).is_some(),
            "{at}: {reference} does not resolve"
        );
    }
    // The bounds the schemas state are the ones the server applies.
    let schemas = &document["components"]["schemas"];
    let row = &schemas["WorkloadRow"]["properties"];
    assert_eq!(row["input_tokens"]["maximum"], json!(MAX_CALL_TOKENS));
    assert_eq!(row["output_tokens"]["maximum"], json!(MAX_CALL_TOKENS));
    assert_eq!(row["latency_ms"]["maximum"].as_f64(), Some(MAX_CALL_LATENCY_MS));
    assert_eq!(row["cost_usd"]["maximum"].as_f64(), Some(MAX_CALL_COST_USD));
    let demo = &schemas["DemoDataRequest"]["properties"];
    assert_eq!(demo["days"]["maximum"], json!(DemoDataRequest::MAX_DAYS));
    assert_eq!(
        demo["calls_per_day"]["maximum"],
        json!(DemoDataRequest::MAX_CALLS_PER_DAY)
    );
    let schemes = document["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let mut operation_ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let name = format!("{method} {path}");
            assert!(
                operation_ids.insert(operation["operationId"].to_string()),
                "{name}: operationId twice"
            );
            let requirements = operation["security"].as_array().cloned().unwrap_or_default();
            for requirement in &requirements {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(scheme), "{name}: no security scheme {scheme}");
                }
            }
            let responses = operation["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{name}: no success"
            );
            if requirements.iter().any(|r| r.get("bearer").is_some()) {
                assert!(has("401"), "{name} needs a token but does not document 401");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "408", "415"] {
                    assert!(has(status), "{name} reads a body but does not document {status}");
                }
            }
            for (status, response) in responses {
                if status.as_str() < "400" {
                    continue;
                }
                let content = response["content"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{name} {status}: no body"));
                let schema = content
                    .get("application/json")
                    .map(|json| json["schema"]["$ref"].as_str().unwrap_or_default());
                assert!(
                    matches!(
                        schema,
                        Some(
                            "#/components/schemas/ErrorBody"
                                | "#/components/schemas/RowsErrorBody"
                                | "#/components/schemas/Readiness"
                        )
                    ) || content.contains_key("text/plain"),
                    "{name} {status}: the body is not an error body: {response}"
                );
            }
        }
    }
}

/// What a schema accounts for in an object: some of its properties, or all of them.
enum Evaluated {
    All,
    Keys(BTreeSet<String>),
}

impl Evaluated {
    fn union(self, other: Evaluated) -> Evaluated {
        match (self, other) {
            (Evaluated::Keys(mut a), Evaluated::Keys(b)) => {
                a.extend(b);
                Evaluated::Keys(a)
            }
            _ => Evaluated::All,
        }
    }
}

/// Checks `value` against `schema`, JSON Schema as utoipa writes it (`$ref`, `allOf`, `oneOf`,
/// `type`, `enum`, `format: date-time`, `properties`, `required`, `additionalProperties`,
/// `items`, `minimum`, `maximum`; patterns are not checked), and more strictly than JSON Schema
/// in one way: every property of every object must be documented.
fn conforms(document: &Value, value: &Value, schema: &Value) -> Result<(), String> {
    let evaluated = check(document, value, schema, "$")?;
    all_documented(value, evaluated, "$")
}

fn all_documented(value: &Value, evaluated: Evaluated, at: &str) -> Result<(), String> {
    if let (Value::Object(map), Evaluated::Keys(keys)) = (value, evaluated) {
        for key in map.keys() {
            if !keys.contains(key) {
                return Err(format!("{at}.{key} is not documented"));
            }
        }
    }
    Ok(())
}

fn check(document: &Value, value: &Value, schema: &Value, at: &str) -> Result<Evaluated, String> {
    let mut schema = schema;
    while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        schema = document
            .pointer(reference.trim_start_matches('#'))
            .ok_or_else(|| format!("{at}: {reference} does not resolve"))?;
    }
    let mut evaluated = Evaluated::Keys(BTreeSet::new());
    let mut constrains_properties = false;
    for part in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        evaluated = evaluated.union(check(document, value, part, at)?);
        constrains_properties = true;
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let results: Vec<_> = options.iter().map(|o| check(document, value, o, at)).collect();
        let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).cloned().collect();
        let mut matched: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
        if matched.len() != 1 {
            return Err(format!(
                "{at} matches {} of {} alternatives: {errors:?}",
                matched.len(),
                options.len()
            ));
        }
        evaluated = evaluated.union(matched.pop().unwrap());
        constrains_properties = true;
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::Array(types) => types.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        let is = |kind: &str| match kind {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        };
        if !types.iter().any(|kind| is(kind)) {
            return Err(format!("{at} is {value}, not of type {types:?}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!("{at} is {value}, not one of {options:?}"));
    }
    if let (Some(number), Some(minimum)) = (value.as_f64(), schema.get("minimum").and_then(Value::as_f64))
        && number < minimum
    {
        return Err(format!("{at} is {number}, under {minimum}"));
    }
    if let (Some(number), Some(maximum)) = (value.as_f64(), schema.get("maximum").and_then(Value::as_f64))
        && number > maximum
    {
        return Err(format!("{at} is {number}, over {maximum}"));
    }
    if schema.get("format") == Some(&json!("date-time"))
        && let Some(text) = value.as_str()
        && Timestamp::parse(text).is_err()
    {
        return Err(format!("{at} is {text}, not a date-time"));
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(properties) = properties {
                for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                    let required = required.as_str().unwrap();
                    if !map.contains_key(required) {
                        return Err(format!("{at}.{required} is required but missing"));
                    }
                }
                for (key, item) in map {
                    if let Some(property) = properties.get(key) {
                        let inner = format!("{at}.{key}");
                        let item_evaluated = check(document, item, property, &inner)?;
                        all_documented(item, item_evaluated, &inner)?;
                    }
                }
                evaluated = evaluated.union(Evaluated::Keys(properties.keys().cloned().collect()));
                constrains_properties = true;
            }
            match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => constrains_properties = true,
                Some(extra) => {
                    for (key, item) in map {
                        if properties.is_none_or(|p| !p.contains_key(key)) {
                            let inner = format!("{at}.{key}");
                            let item_evaluated = check(document, item, extra, &inner)?;
                            all_documented(item, item_evaluated, &inner)?;
                        }
                    }
                    evaluated = Evaluated::All;
                    constrains_properties = true;
                }
                None => {}
            }
            if !constrains_properties {
                // A free-form object (`{}`, `{"type": "object"}`): anything goes.
                evaluated = Evaluated::All;
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    let inner = format!("{at}[{index}]");
                    let item_evaluated = check(document, item, item_schema, &inner)?;
                    all_documented(item, item_evaluated, &inner)?;
                }
            }
        }
        _ => {}
    }
    Ok(evaluated)
}

/// The documented JSON schema of `method path`'s answer with `status`.
fn answer_schema<'d>(document: &'d Value, method: &str, path: &str, status: u16) -> &'d Value {
    let schema =
        &document["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} documents no JSON answer with {status}"
    );
    schema
}

/// Checks a real answer against its documented schema.
fn assert_documented(document: &Value, method: &str, path: &str, (status, body): (u16, &Value)) {
    let schema = answer_schema(document, method, path, status);
    if let Err(error) = conforms(document, body, schema) {
        panic!("{method} {path} {status}: {error}\nbody: {body}\nschema: {schema}");
    }
}

/// The names of the top-level properties of a documented answer (its `$ref` followed).
fn property_names(document: &Value, method: &str, path: &str, status: u16) -> BTreeSet<String> {
    let reference = answer_schema(document, method, path, status)["$ref"].as_str().unwrap();
    let schema = document.pointer(reference.trim_start_matches('#')).unwrap();
    schema["properties"].as_object().unwrap().keys().cloned().collect()
}

fn keys(body: &Value) -> BTreeSet<String> {
    body.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn real_answers_deserialize_into_their_types_and_match_their_documented_schemas() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let client = &app.client;
    let credentials = Credentials {
        email: "schema@test.example".to_owned(),
        password: "a long enough password".to_owned(),
    };
    let (status, registered) = client.post("/api/auth/register", None, &credentials).await.unwrap();
    assert_documented(&document, "post", "/api/auth/register", (status, &registered));
    let registered: Registered = serde_json::from_value(registered).unwrap();
    let (status, login) = client.post("/api/auth/login", None, &credentials).await.unwrap();
    assert_eq!(status, 200);
    assert_documented(&document, "post", "/api/auth/login", (status, &login));
    assert_eq!(keys(&login), property_names(&document, "post", "/api/auth/login", 200));
    let signed_in: SignedIn = serde_json::from_value(login).unwrap();
    assert_eq!(signed_in.user, registered.user);
    let token = signed_in.access_token.as_str();
    let wrong = Credentials {
        password: "not the password".to_owned(),
        ..credentials.clone()
    };
    let (status, refused) = client.post("/api/auth/login", None, &wrong).await.unwrap();
    assert_eq!(status, 401);
    assert_documented(&document, "post", "/api/auth/login", (status, &refused));
    assert_eq!(
        keys(&refused),
        property_names(&document, "post", "/api/auth/login", 401)
    );
    let refused: ErrorBody = serde_json::from_value(refused).unwrap();
    assert_eq!(refused.error.code, ErrorCode::Unauthorized);
    let (status, dev) = client.post("/api/auth/dev-login", None, &json!({})).await.unwrap();
    assert_documented(&document, "post", "/api/auth/dev-login", (status, &dev));
    let (status, ticket) = client.post("/api/ws-ticket", Some(token), &json!({})).await.unwrap();
    assert_documented(&document, "post", "/api/ws-ticket", (status, &ticket));
    serde_json::from_value::<WsTicket>(ticket).unwrap();

    let (status, thread) = client
        .post("/api/threads", Some(token), &json!({"title": "Schemas"}))
        .await
        .unwrap();
    assert_documented(&document, "post", "/api/threads", (status, &thread));
    let thread: Thread = serde_json::from_value(thread).unwrap();
    let (status, threads) = client.get("/api/threads", Some(token)).await.unwrap();
    assert_documented(&document, "get", "/api/threads", (status, &threads));
    let thread_keys = keys(&threads["threads"][0]);
    assert_eq!(thread_keys, property_names(&document, "get", "/api/threads/{id}", 200));
    let threads: Threads = serde_json::from_value(threads).unwrap();
    assert_eq!(threads.threads, std::slice::from_ref(&thread));
    let (status, one) = client
        .get(&format!("/api/threads/{}", thread.id), Some(token))
        .await
        .unwrap();
    assert_documented(&document, "get", "/api/threads/{id}", (status, &one));
    let (status, missing) = client.get("/api/threads/thr_unknown", Some(token)).await.unwrap();
    assert_eq!(status, 404);
    assert_documented(&document, "get", "/api/threads/{id}", (status, &missing));

    // A run, read back in every form.
    let session = app.user("schema-runs").await;
    let token = session.access_token.as_str();
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "hello").await;
    run_events(&mut socket, &accepted.run_id).await;
    let (status, run) = client
        .get(&format!("/api/runs/{}", accepted.run_id), Some(token))
        .await
        .unwrap();
    assert_documented(&document, "get", "/api/runs/{id}", (status, &run));
    assert_eq!(keys(&run), property_names(&document, "get", "/api/runs/{id}", 200));
    let run: Run = serde_json::from_value(run).unwrap();
    assert_eq!((run.id, run.status), (accepted.run_id.clone(), RunState::Completed));
    let (status, conflict) = client
        .post(
            &format!("/api/runs/{}/cancel", accepted.run_id),
            Some(token),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_documented(&document, "post", "/api/runs/{id}/cancel", (status, &conflict));
    let messages_path = format!("/api/threads/{}/messages", accepted.thread_id);
    let (status, messages) = client.get(&messages_path, Some(token)).await.unwrap();
    assert_documented(&document, "get", "/api/threads/{id}/messages", (status, &messages));
    assert_eq!(serde_json::from_value::<Messages>(messages).unwrap().messages.len(), 2);
    let (status, events) = client.get("/api/events", Some(token)).await.unwrap();
    assert_documented(&document, "get", "/api/events", (status, &events));
    let events: EventsPage = serde_json::from_value(events).unwrap();
    assert!(events.events.last().unwrap().is_final());
    let (status, bad_limit) = client.get("/api/events?limit=0", Some(token)).await.unwrap();
    assert_eq!(status, 422);
    assert_documented(&document, "get", "/api/events", (status, &bad_limit));

    // Workload data.
    let row = json!({"timestamp": "2026-11-01T12:00:00Z", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 2});
    let (status, stored) = app
        .upload(token, "application/json", serde_json::to_vec(&json!([row])).unwrap())
        .await;
    assert_documented(&document, "post", "/api/workload-events", (status, &stored));
    let (status, rows) = app
        .upload(
            token,
            "application/json",
            serde_json::to_vec(&json!([{"model": 1}])).unwrap(),
        )
        .await;
    assert_eq!(status, 422);
    assert_documented(&document, "post", "/api/workload-events", (status, &rows));
    let (status, demo) = client
        .post(
            "/api/dev/demo-data",
            Some(token),
            &json!({"days": 1, "calls_per_day": 10}),
        )
        .await
        .unwrap();
    assert_documented(&document, "post", "/api/dev/demo-data", (status, &demo));

    // The server.
    for path in ["/api/info", "/health/live", "/health/ready"] {
        let (status, body) = client.get(path, None).await.unwrap();
        assert_documented(&document, "get", path, (status, &body));
    }
    let (_, info) = client.get("/api/info", None).await.unwrap();
    assert_eq!(keys(&info), property_names(&document, "get", "/api/info", 200));
    let (status, itself) = client.get("/api/openapi.json", None).await.unwrap();
    assert_documented(&document, "get", "/api/openapi.json", (status, &itself));
}

#[tokio::test]
async fn info_tells_the_protocol_the_version_the_mode_and_the_limits() {
    for dev in [true, false] {
        let app = spawn_app_with(|config| {
            config.dev = dev;
            config.max_text_chars = 1234;
            config.max_frame_bytes = 4321;
        })
        .await;
        let (status, info) = app.client.get("/api/info", None).await.unwrap();
        assert_eq!(status, 200);
        let info: ServerInfo = serde_json::from_value(info).unwrap();
        assert_eq!(
            info,
            ServerInfo {
                protocol: PROTOCOL_NAME.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                dev,
                max_text_chars: 1234,
                max_upload_bytes: 10 * 1024 * 1024,
                max_frame_bytes: 4321,
            }
        );
    }
}

#[tokio::test]
async fn demo_data_adds_the_demo_calls_to_the_users_data_and_an_analysis_sees_them() {
    let app = spawn_app().await;
    let session = app.user("demo").await;
    let token = session.access_token.as_str();
    let body = json!({"days": 3, "calls_per_day": 40, "seed": 7});
    let (status, first) = app.client.post("/api/dev/demo-data", Some(token), &body).await.unwrap();
    assert_eq!(status, 200, "{first}");
    let first: Accepted = serde_json::from_value(first).unwrap();
    assert!(first.accepted > 3 * 20, "{first:?}");
    assert_eq!(
        app.store.workload_event_count(&session.user_id).await.unwrap(),
        first.accepted
    );
    // The same seed gives the same calls, and a second call adds them again.
    let (_, second) = app.client.post("/api/dev/demo-data", Some(token), &body).await.unwrap();
    assert_eq!(serde_json::from_value::<Accepted>(second).unwrap(), first);
    let stored = app.store.workload_event_count(&session.user_id).await.unwrap();
    assert_eq!(stored, 2 * first.accepted);
    let other = app.user("someone-else").await;
    assert_eq!(app.store.workload_event_count(&other.user_id).await.unwrap(), 0);

    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "How can we cut our LLM costs?").await;
    let events = run_events(&mut socket, &accepted.run_id).await;
    let result = match &events.last().unwrap().payload {
        switchboard_protocol::EventPayload::AgentCompleted(done) => done.result.clone().unwrap(),
        other => panic!("not a final event: {other:?}"),
    };
    assert_eq!(result["report"]["calls"], stored, "{result}");
}

#[tokio::test]
async fn demo_data_without_a_body_is_the_demo_month_of_the_command_line() {
    let app = spawn_app().await;
    let session = app.user("month").await;
    let response = app
        .client
        .http()
        .post(format!("{}/api/dev/demo-data", app.client.base()))
        .bearer_auth(&session.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let accepted: Accepted = response.json().await.unwrap();
    let days = u64::from(DemoDataRequest::DEFAULT_DAYS);
    let per_day = u64::from(DemoDataRequest::DEFAULT_CALLS_PER_DAY);
    // Weekends are quieter and the nightly job adds calls of its own.
    assert!(
        (days * per_day / 2..=days * per_day * 2).contains(&accepted.accepted),
        "{accepted:?}"
    );
    assert_eq!(
        app.store.workload_event_count(&session.user_id).await.unwrap(),
        accepted.accepted
    );
}

#[tokio::test]
async fn bad_demo_data_requests_are_refused_with_a_clear_error_and_store_nothing() {
    let app = spawn_app().await;
    let session = app.user("bad-demo").await;
    let refusal = async |token: Option<&str>, content_type: &str, body: &'static str| {
        let mut request = app
            .client
            .http()
            .post(format!("{}/api/dev/demo-data", app.client.base()))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let error: ErrorBody = response.json().await.unwrap();
        (status, error.error.message)
    };
    let json = "application/json";
    let cases = [
        (json, r#"{"days": 0}"#, 422, "days must be from 1 to 366, not 0."),
        (json, r#"{"days": 367}"#, 422, "days must be from 1 to 366, not 367."),
        (
            json,
            r#"{"calls_per_day": 0}"#,
            422,
            "calls_per_day must be from 1 to 20000, not 0.",
        ),
        (
            json,
            r#"{"calls_per_day": 20001}"#,
            422,
            "calls_per_day must be from 1 to 20000, not 20001.",
        ),
        (
            json,
            r#"{"days": 366, "calls_per_day": 20000}"#,
            422,
            "at most 400000, not 366 × 20000.",
        ),
        (json, r#"{"days": "30"}"#, 422, "days: invalid type"),
        (json, r#"{"seed": -1}"#, 422, "seed: invalid value"),
        (json, r#"{"dayz": 3}"#, 422, "unknown field `dayz`"),
        (json, r#"{"days": "#, 400, ""),
        ("text/plain", "30", 415, ""),
    ];
    for (content_type, body, status, message) in cases {
        let answer = refusal(Some(&session.access_token), content_type, body).await;
        assert!(answer.0 == status && answer.1.contains(message), "{body}: {answer:?}");
    }
    let answer = refusal(None, json, r#"{"days": 1}"#).await;
    assert!(answer.0 == 401 && answer.1.starts_with("Sign in first"), "{answer:?}");
    assert_eq!(app.store.workload_event_count(&session.user_id).await.unwrap(), 0);
}

#[tokio::test]
async fn demo_data_is_not_there_outside_dev_mode() {
    let app = spawn_app_with(|config| config.dev = false).await;
    let session = app
        .client
        .register("not-dev@test.example", "a long enough password")
        .await
        .unwrap();
    for token in [Some(session.access_token.as_str()), None] {
        let (status, body) = app
            .client
            .post("/api/dev/demo-data", token, &json!({"days": 1}))
            .await
            .unwrap();
        assert_eq!(status, 404, "{body}");
        let error: ErrorBody = serde_json::from_value(body).unwrap();
        assert_eq!(
            (error.error.code, error.error.message.as_str()),
            (ErrorCode::NotFound, "No such route.")
        );
    }
    assert_eq!(app.store.workload_event_count(&session.user_id).await.unwrap(), 0);
}

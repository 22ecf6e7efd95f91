//! The HTTP API of PROTOCOL.md section 7 (JSON), apart from `/ws`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_protocol::{ErrorCode, RunId, Seq, ThreadId};
use switchboard_store::{Rotation, RunRecord, StoreError, Thread};

use crate::app::AppState;
use crate::auth::{AuthUser, TokenPair, new_refresh_family, unusable_password_hash};
use crate::delivery::Delivery;
use crate::error::ApiError;
use crate::limits::{Admission, admit};
use crate::ws::history_message;

type ApiResult<T> = Result<T, ApiError>;

/// The email every dev-login without a body signs in as.
const DEV_EMAIL: &str = "dev@switchboard.local";

/// Body of register and login.
#[derive(Debug, Deserialize)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

fn user_json(user: &switchboard_store::User) -> Value {
    json!({ "id": user.id, "email": user.email })
}

fn valid_email(email: &str) -> bool {
    let email = email.trim();
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && email.len() <= 254
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// `POST /api/auth/register`.
pub(crate) async fn register(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    if !valid_email(&body.email) {
        return Err(ApiError::invalid("The email address is not valid."));
    }
    let length = body.password.chars().count();
    if !(8..=1024).contains(&length) {
        return Err(ApiError::invalid("The password must have 8 to 1024 characters."));
    }
    let hash = state.passwords.hash(body.password).await?;
    let user = state
        .store
        .create_user(body.email.trim(), &hash)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "This email is already registered.",
            ),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user_json(&user) }))).into_response())
}

/// A sign-in's answer: a new pair whose refresh token starts a new refresh-token family.
async fn pair_response(state: &AppState, user: &switchboard_store::User) -> ApiResult<Json<Value>> {
    let family = new_refresh_family().map_err(ApiError::internal)?;
    let (pair, refresh) = state.tokens.issue(&user.id, &family).map_err(ApiError::internal)?;
    state
        .store
        .start_refresh_family(&user.id, &family, &refresh)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::unauthorized("The user no longer exists."),
            other => other.into(),
        })?;
    pair_body(pair, user)
}

/// The pair and the user, as sign-in and refresh answer.
fn pair_body(pair: TokenPair, user: &switchboard_store::User) -> ApiResult<Json<Value>> {
    let mut body = serde_json::to_value(pair).map_err(ApiError::internal)?;
    body["user"] = user_json(user);
    Ok(Json(body))
}

/// `POST /api/auth/login`.
///
/// Throttled: after `login_max_failures` failures for one email, or from one client address,
/// within the window, attempts for that email or from that address are answered 429 until the
/// window has passed (the right password included). An unknown email is checked against a decoy
/// hash, so that it takes as long as a wrong password and tells nothing of who is registered.
pub(crate) async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    let email = body.email.trim();
    let refused = || ApiError::unauthorized("The email or the password is wrong.");
    if !valid_email(email) {
        // Nobody can be registered under it: nothing to guess, and nothing to keep a count for.
        return Err(refused());
    }
    let address = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    let attempt = state.login_throttle.begin(email, address).map_err(|wait| {
        state.metrics.error(ErrorCode::RateLimited);
        let message = format!(
            "Too many failed logins for this account or from this address; try again in {} s.",
            ApiError::whole_seconds(wait)
        );
        ApiError::rate_limited(message, wait)
    })?;
    let user = state.store.user_by_email(email).await?;
    let hash = user.as_ref().map(|user| user.password_hash.clone());
    let matches = state.passwords.verify(body.password, hash).await?;
    match user {
        Some(user) if matches => {
            attempt.succeeded();
            pair_response(&state, &user).await
        }
        _ => Err(refused()),
    }
}

/// Body of refresh.
#[derive(Debug, Deserialize)]
pub(crate) struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/auth/refresh`: each refresh token buys one new pair of its family. A token used
/// a second time revokes its family, so whoever holds the newest token of that chain (the user
/// or a thief) has to sign in again.
pub(crate) async fn refresh(
    State(state): State<AppState>,
    body: Result<Json<RefreshBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    let refused = |why: &str| ApiError::unauthorized(format!("The refresh token was refused: {why}."));
    let presented = state
        .tokens
        .verify_refresh(&body.refresh_token)
        .map_err(|e| refused(&e.to_string()))?;
    let user = state
        .store
        .user_by_id(&presented.user)
        .await?
        .ok_or_else(|| refused("the user no longer exists"))?;
    let (pair, next) = state
        .tokens
        .issue(&user.id, &presented.family)
        .map_err(ApiError::internal)?;
    let rotation = state
        .store
        .rotate_refresh_token(&user.id, &presented.family, &presented.id, &next)
        .await?;
    match rotation {
        Rotation::Rotated => pair_body(pair, &user),
        Rotation::Reused => {
            tracing::warn!(user_id = %user.id, "a refresh token was used twice: its sign-in is revoked");
            Err(refused(
                "it was used before, so every token of its sign-in is revoked now; sign in again",
            ))
        }
        Rotation::Revoked => Err(refused(
            "its sign-in was revoked after one of its tokens was used twice; sign in again",
        )),
        Rotation::Unknown => Err(refused("its sign-in is not known here; sign in again")),
    }
}

/// Optional body of dev-login.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DevLoginBody {
    email: Option<String>,
}

/// `POST /api/auth/dev-login`: only in dev mode. Signs in as the dev user, or as the given email
/// (created on first use, with no usable password).
pub(crate) async fn dev_login(
    State(state): State<AppState>,
    body: Result<Option<Json<DevLoginBody>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let body = body?;
    if !state.config.dev {
        return Err(ApiError::not_found("route"));
    }
    let email = body.and_then(|Json(b)| b.email).unwrap_or_else(|| DEV_EMAIL.to_owned());
    if !valid_email(&email) {
        return Err(ApiError::invalid("The email address is not valid."));
    }
    let user = match state.store.user_by_email(&email).await? {
        Some(user) => user,
        None => match state.store.create_user(&email, &unusable_password_hash()).await {
            Ok(user) => user,
            // Two dev-logins raced to create the same user: take the winner's.
            Err(StoreError::Conflict(_)) => state
                .store
                .user_by_email(&email)
                .await?
                .ok_or_else(|| ApiError::internal("dev user vanished"))?,
            Err(other) => return Err(other.into()),
        },
    };
    pair_response(&state, &user).await
}

/// `POST /api/ws-ticket`.
pub(crate) async fn ws_ticket(State(state): State<AppState>, user: AuthUser) -> Json<Value> {
    let ttl = state.config.ticket_ttl;
    let ticket = state.tickets.issue(&user.id, ttl, user.claims.exp);
    Json(json!({ "ticket": ticket, "expires_in": ttl.as_secs() }))
}

fn thread_json(thread: &Thread) -> Value {
    json!({ "id": thread.id, "title": thread.title, "created_at": thread.created_at, "updated_at": thread.updated_at })
}

fn thread_id(raw: &str) -> ApiResult<ThreadId> {
    ThreadId::parse(raw).map_err(|_| ApiError::not_found("thread"))
}

/// `GET /api/threads`.
pub(crate) async fn list_threads(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let threads = state.store.threads(&user.id).await?;
    Ok(Json(
        json!({ "threads": threads.iter().map(thread_json).collect::<Vec<_>>() }),
    ))
}

/// Body of thread creation.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NewThread {
    title: Option<String>,
}

/// `POST /api/threads`.
pub(crate) async fn create_thread(
    State(state): State<AppState>,
    user: AuthUser,
    body: Result<Option<Json<NewThread>>, JsonRejection>,
) -> ApiResult<Response> {
    let body = body?;
    let title = body.and_then(|Json(b)| b.title).unwrap_or_default();
    if title.chars().count() > 200 {
        return Err(ApiError::invalid("The title must have at most 200 characters."));
    }
    let thread = state.store.create_thread(&user.id, &title).await?;
    Ok((StatusCode::CREATED, Json(thread_json(&thread))).into_response())
}

/// `GET /api/threads/{id}`.
pub(crate) async fn get_thread(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let thread = state
        .store
        .thread(&user.id, &thread_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("thread"))?;
    Ok(Json(thread_json(&thread)))
}

/// `DELETE /api/threads/{id}`.
pub(crate) async fn delete_thread(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if state.store.delete_thread(&user.id, &thread_id(&id)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("thread"))
    }
}

/// `GET /api/threads/{id}/messages`.
pub(crate) async fn thread_messages(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let messages = state
        .store
        .messages(&user.id, &thread_id(&id)?)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found("thread"),
            other => other.into(),
        })?;
    let messages: Vec<_> = messages.into_iter().map(history_message).collect();
    Ok(Json(json!({ "messages": messages })))
}

fn run_json(run: &RunRecord) -> Value {
    json!({
        "id": run.id, "thread_id": run.thread_id, "status": run.state.as_str(),
        "started_at": run.started_at, "finished_at": run.finished_at,
        "duration_ms": run.duration_ms, "timings": run.timings, "model_calls": run.model_calls,
    })
}

async fn find_run(state: &AppState, user: &AuthUser, id: &str) -> ApiResult<RunRecord> {
    let id = RunId::parse(id).map_err(|_| ApiError::not_found("run"))?;
    state
        .store
        .run(&user.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))
}

/// `GET /api/runs/{id}`.
pub(crate) async fn get_run(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(run_json(&find_run(&state, &user, &id).await?)))
}

/// `POST /api/runs/{id}/cancel`: 202 when the run was active and is being stopped.
pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = find_run(&state, &user, &id).await?;
    match state.runs.cancel(&user.id, &run.id).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(run_json(&run))).into_response()),
        Err(refusal) if refusal.code == ErrorCode::RunNotFound => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            refusal.message,
        )),
        Err(refusal) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            refusal.code,
            refusal.message,
        )),
    }
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    after_seq: Option<u64>,
    limit: Option<usize>,
}

/// Largest page of `GET /api/events`.
const MAX_EVENTS_PAGE: usize = 1000;

/// `GET /api/events`: a JSON page, or with `Accept: text/event-stream` an SSE stream that stays
/// open for new events (`Last-Event-ID` resumes it).
pub(crate) async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = Seq::new(last_event_id.or(query.after_seq).unwrap_or(0));
    if wants_stream {
        // The same admission as a socket: one limit counts both, and the stream ends when the
        // token it was opened with expires.
        let admission = admit(&state, &user.id, user.claims.exp)?;
        let (delivery, _) = Delivery::start(Arc::clone(&state.log), user.id.clone(), Some(after)).await?;
        return Ok(Sse::new(sse_stream(&state, delivery, admission))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_EVENTS_PAGE}."
        )));
    }
    let records = state.store.events_after(&user.id, after, limit).await?;
    let mut body = String::from("{\"events\":[");
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(&record.json);
    }
    body.push_str("]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The user's events as an SSE stream, until the token expires (told in a last `error` event),
/// the server closes, or the store fails.
fn sse_stream(
    state: &AppState,
    delivery: Delivery,
    admission: Admission,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> + use<> {
    let open = (delivery, admission, Arc::clone(&state.metrics), state.closing.clone());
    futures_util::stream::unfold(Some(open), |open| async move {
        let (mut delivery, admission, metrics, closing) = open?;
        let next = tokio::select! {
            biased;
            () = closing.cancelled() => return None,
            () = tokio::time::sleep_until(admission.expires) => None,
            next = delivery.next() => Some(next),
        };
        match next {
            Some(Ok(record)) => {
                metrics.events_sent.inc();
                let event = SseEvent::default()
                    .id(record.seq.to_string())
                    .data(record.json.as_str());
                Some((Ok(event), Some((delivery, admission, metrics, closing))))
            }
            Some(Err(error)) => {
                tracing::error!(%error, "SSE stream ended: cannot read events");
                None
            }
            None => {
                metrics.error(ErrorCode::Unauthorized);
                let body = json!({ "error": { "code": ErrorCode::Unauthorized, "message":
                    "The access token expired; sign in again and resume with Last-Event-ID." } });
                Some((Ok(SseEvent::default().event("error").data(body.to_string())), None))
            }
        }
    })
}

/// The largest workload upload.
pub(crate) const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;
/// Bad rows named in one answer, at most.
const MAX_ROW_ERRORS: usize = 1000;

/// `POST /api/workload-events`: a JSON array of rows, or NDJSON with
/// `Content-Type: application/x-ndjson`; every row is checked, and either all are stored or none.
pub(crate) async fn upload_workload(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|rejection| {
        if let Some(timed_out) = ApiError::body_timed_out(&rejection) {
            timed_out
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!(
                    "The upload is over {} MB; send it in parts.",
                    MAX_UPLOAD_BYTES / (1024 * 1024)
                ),
            )
        } else {
            ApiError::new(rejection.status(), ErrorCode::InvalidRequest, rejection.body_text())
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let ndjson = match content_type.as_str() {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" => true,
        other => {
            let shown = if other.is_empty() {
                "none".to_owned()
            } else {
                format!("`{other}`")
            };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidRequest,
                format!(
                    "Send the rows as application/json (an array) or application/x-ndjson; the content type was {shown}."
                ),
            ));
        }
    };
    let prices = Arc::clone(&state.prices);
    let parsed = tokio::task::spawn_blocking(move || {
        if ndjson {
            switchboard_agents::workload::parse_ndjson(&body, &prices)
        } else {
            switchboard_agents::workload::parse_json_array(&body, &prices)
        }
    })
    .await
    .map_err(ApiError::internal)?;
    let events = match parsed {
        Ok(events) => events,
        Err(switchboard_agents::workload::UploadError::Malformed(message)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                message,
            ));
        }
        Err(switchboard_agents::workload::UploadError::Rows(rows)) => {
            let total = rows.len();
            let shown: Vec<_> = rows.into_iter().take(MAX_ROW_ERRORS).collect();
            let more = if total > shown.len() {
                format!(" (the first {} are listed)", shown.len())
            } else {
                String::new()
            };
            let message = format!("{total} row(s) are invalid{more}; nothing was stored.");
            let body = json!({ "error": { "code": ErrorCode::InvalidRows, "message": message, "rows": shown } });
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
    };
    let accepted = state.analytics.insert_workload_events(&user.id, events).await?;
    Ok(Json(json!({ "accepted": accepted })).into_response())
}

/// `GET /health/live`: no I/O.
pub(crate) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// `GET /health/ready`: each dependency checked within a bound, so the answer comes within 1 s
/// even when one hangs.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let started = tokio::time::Instant::now();
    let store = match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => json!({ "status": "ok", "latency_ms": started.elapsed().as_millis() as u64 }),
        Ok(Err(error)) => {
            json!({ "status": "unavailable", "latency_ms": started.elapsed().as_millis() as u64, "error": error.to_string() })
        }
        Err(_) => json!({ "status": "unavailable", "latency_ms": CHECK_TIMEOUT.as_millis() as u64,
                          "error": format!("no answer within {} ms", CHECK_TIMEOUT.as_millis()) }),
    };
    let model = state.runs.engine().breakers().into_iter().find(|b| b.name == "model");
    let model = match model {
        Some(b) if b.state == "open" => json!({ "status": "degraded", "latency_ms": 0,
            "error": format!("the model failed {} times in a row; calls are paused", b.consecutive_failures) }),
        _ => json!({ "status": "ok", "latency_ms": 0 }),
    };
    let shutting_down = state.closing.is_cancelled() || state.stopping.is_cancelled();
    let status = if store["status"] != "ok" || shutting_down {
        "unavailable"
    } else if model["status"] != "ok" {
        "degraded"
    } else {
        "ok"
    };
    let code = if status == "unavailable" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Json(json!({ "status": status, "checks": { "store": store, "model": model } })),
    )
        .into_response()
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

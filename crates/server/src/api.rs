//! The HTTP API of PROTOCOL.md section 7 (JSON), apart from `/ws`: each handler with its
//! OpenAPI operation (`#[utoipa::path]`), whose bodies are the types of
//! `switchboard_protocol::http`. The route table is `app::api_routes`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use switchboard_agents::demo::{DemoSpec, demo_rows_by_day};
use switchboard_protocol::http::{
    self, Accepted, Check, Credentials, DemoDataRequest, DevLoginRequest, EventsQuery, HealthStatus, Liveness,
    Messages, NewThread, Readiness, RefreshRequest, Registered, RowsError, RowsErrorBody, ServerInfo, SignedIn,
    Threads, TokenType, WsTicket,
};
use switchboard_protocol::sla::SlaReport;
use switchboard_protocol::{ErrorBody, ErrorCode, ErrorPayload, PROTOCOL_NAME, RunId, Seq, ThreadId, Timestamp};
use switchboard_store::{Rotation, RunRecord, RunState, StoreError, Thread, Tier, Upload, UploadKey};

use crate::app::AppState;
use crate::auth::{AuthUser, TokenPair, new_refresh_family, unusable_password_hash};
use crate::delivery::Delivered;
use crate::delivery::Delivery;
use crate::error::ApiError;
use crate::limits::{Admission, Shared, admit};
use crate::ws::history_message;

type ApiResult<T> = Result<T, ApiError>;

/// The email every dev-login without a body signs in as.
const DEV_EMAIL: &str = "dev@switchboard.local";

/// Tags of the OpenAPI document, one per area.
pub(crate) mod tag {
    pub(crate) const SOCKET: &str = "socket";
    pub(crate) const AUTH: &str = "auth";
    pub(crate) const THREADS: &str = "threads";
    pub(crate) const RUNS: &str = "runs";
    pub(crate) const EVENTS: &str = "events";
    pub(crate) const WORKLOAD: &str = "workload";
    pub(crate) const DEV: &str = "dev";
    pub(crate) const SERVER: &str = "server";
}

fn user_body(user: &switchboard_store::User) -> http::User {
    http::User {
        id: user.id.clone(),
        email: user.email.clone(),
    }
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

/// Registers a user.
///
/// The email must look like an address (at most 254 characters); the password has 8 to 1024
/// characters. Registering does not sign in: log in next.
#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = tag::AUTH,
    request_body = Credentials,
    responses(
        (status = 201, description = "The user is registered.", body = Registered),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 409, description = "The email is already registered (`conflict`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`.", body = ErrorBody),
        (status = 422, description = "The email or the password is not valid (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
        (status = 503, description = "Too many passwords are being hashed at once (`server_busy`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
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
    let body = Registered { user: user_body(&user) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A sign-in's answer: a new pair whose refresh token starts a new refresh-token family.
async fn pair_response(state: &AppState, user: &switchboard_store::User) -> ApiResult<Json<SignedIn>> {
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
fn pair_body(pair: TokenPair, user: &switchboard_store::User) -> ApiResult<Json<SignedIn>> {
    Ok(Json(SignedIn {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        token_type: TokenType::Bearer,
        expires_in: pair.expires_in,
        user: user_body(user),
    }))
}

/// Signs in with email and password: a new pair of tokens.
///
/// Throttled: after `login_max_failures` failures for one email, or from one client address,
/// within the window, attempts for that email or from that address are answered 429 until the
/// window has passed (the right password included). An unknown email is checked against a decoy
/// hash, so that it takes as long as a wrong password and tells nothing of who is registered.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = tag::AUTH,
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in: a new sign-in (refresh-token family) starts.", body = SignedIn),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "The email or the password is wrong (`unauthorized`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`.", body = ErrorBody),
        (status = 422, description = "The body lacks a field (`invalid_request`).", body = ErrorBody),
        (status = 429, description = "Too many failed logins for the email or from the address (`rate_limited`).",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
        (status = 503, description = "Too many passwords are being checked at once (`server_busy`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<Json<SignedIn>> {
    let Json(body) = body?;
    let email = body.email.trim();
    let refused = || ApiError::unauthorized("The email or the password is wrong.");
    if !valid_email(email) {
        // Nobody can be registered under it: nothing to guess, and nothing to keep a count for.
        return Err(refused());
    }
    let address = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    let attempt = state.login_throttle.begin(email, address).await.map_err(|wait| {
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

/// Swaps a refresh token for a new pair.
///
/// Each refresh token buys one new pair of its family. A token used a second time revokes its
/// family, so whoever holds the newest token of that chain (the user or a thief) has to sign in
/// again; except the token spent last, presented again within `refresh_retry_secs` (30 s) of
/// that refresh: a client retrying a refresh whose answer it lost gets a pair with the family's
/// newest refresh token again.
#[utoipa::path(
    post,
    path = "/api/auth/refresh",
    tag = tag::AUTH,
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "The next pair of the same sign-in.", body = SignedIn),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "The refresh token was refused: expired, used before, revoked or not valid \
            (`unauthorized`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`.", body = ErrorBody),
        (status = 422, description = "The body lacks `refresh_token` (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> ApiResult<Json<SignedIn>> {
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
        .rotate_refresh_token(
            &user.id,
            &presented.family,
            &presented.id,
            &next,
            state.config.refresh_retry,
        )
        .await?;
    match rotation {
        Rotation::Rotated => pair_body(pair, &user),
        Rotation::Retried(newest) => {
            tracing::info!(user_id = %user.id, "a refresh was retried: its sign-in's newest token is handed out again");
            let pair = state
                .tokens
                .pair(&user.id, &presented.family, &newest)
                .map_err(ApiError::internal)?;
            pair_body(pair, &user)
        }
        Rotation::Reused => {
            tracing::warn!(user_id = %user.id, "a refresh token was used twice: its sign-in is revoked");
            Err(refused(
                "it was used before, so every token of its sign-in is revoked now; sign in again",
            ))
        }
        Rotation::Revoked => Err(refused(
            "its sign-in has ended (signed out, or revoked after one of its tokens was used twice); sign in again",
        )),
        Rotation::Unknown => Err(refused("its sign-in is not known here; sign in again")),
    }
}

/// Ends a sign-in.
///
/// Revokes the refresh token's family: none of its refresh tokens buys a pair any more, in any
/// tab or on any device that holds one. Access tokens already issued stay valid until they
/// expire (minutes); sockets opened with them close then.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = tag::AUTH,
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "The sign-in is ended (also when it had ended before)."),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "The refresh token is not valid or expired (`unauthorized`); it buys nothing \
            anyway.", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`.", body = ErrorBody),
        (status = 422, description = "The body lacks `refresh_token` (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn logout(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Json(body) = body?;
    let presented = state
        .tokens
        .verify_refresh(&body.refresh_token)
        .map_err(|e| ApiError::unauthorized(format!("The refresh token was refused: {e}.")))?;
    // A family of another user, or none, is not told apart from a revoked one.
    state
        .store
        .revoke_refresh_family(&presented.user, &presented.family)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Signs in without a password (dev mode only).
///
/// Signs in as the dev user, or as the given email (created on first use, with no usable
/// password). Off (404) unless the server runs in dev mode.
#[utoipa::path(
    post,
    path = "/api/auth/dev-login",
    tag = tag::DEV,
    request_body(content = Option<DevLoginRequest>, description = "Optional; send none for the dev user."),
    responses(
        (status = 200, description = "Signed in.", body = SignedIn),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "The user was removed while signing in (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "The server does not run in dev mode (`not_found`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 415, description = "A body is sent, but not as `application/json`.", body = ErrorBody),
        (status = 422, description = "The email is not valid (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn dev_login(
    State(state): State<AppState>,
    body: Result<Option<Json<DevLoginRequest>>, JsonRejection>,
) -> ApiResult<Json<SignedIn>> {
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

/// Buys a single-use ticket for `GET /ws?ticket=`.
///
/// For clients that can set neither a header nor a subprotocol on the socket. The socket it
/// opens ends when the access token it was bought with expires.
#[utoipa::path(
    post,
    path = "/api/ws-ticket",
    tag = tag::AUTH,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A ticket, valid once.", body = WsTicket),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
    )
)]
pub(crate) async fn ws_ticket(State(state): State<AppState>, user: AuthUser) -> Json<WsTicket> {
    let ttl = state.config.ticket_ttl;
    let ticket = state.tickets.issue_anywhere(&user.id, ttl, user.claims.exp).await;
    Json(WsTicket {
        ticket,
        expires_in: ttl.as_secs(),
    })
}

fn thread_body(thread: Thread) -> http::Thread {
    http::Thread {
        id: thread.id,
        title: thread.title,
        created_at: thread.created_at,
        updated_at: thread.updated_at,
    }
}

/// The thread of a path's `{id}`. An id that is not one (or not even UTF-8) names no thread.
fn thread_id(id: Result<Path<String>, PathRejection>) -> ApiResult<ThreadId> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found("thread"));
    };
    ThreadId::parse(&id).map_err(|_| ApiError::not_found("thread"))
}

/// The signed-in user's threads.
#[utoipa::path(
    get,
    path = "/api/threads",
    tag = tag::THREADS,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The threads.", body = Threads),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn list_threads(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Threads>> {
    let threads = state.store.threads(&user.id).await?;
    Ok(Json(Threads {
        threads: threads.into_iter().map(thread_body).collect(),
    }))
}

/// Creates a thread.
///
/// A thread is also created by a `user_message` without `thread_id`.
#[utoipa::path(
    post,
    path = "/api/threads",
    tag = tag::THREADS,
    security(("bearer" = [])),
    request_body(content = Option<NewThread>, description = "Optional; send none for an untitled thread."),
    responses(
        (status = 201, description = "The new thread.", body = http::Thread),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 415, description = "A body is sent, but not as `application/json`.", body = ErrorBody),
        (status = 422, description = "The title has more than 200 characters (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
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
    Ok((StatusCode::CREATED, Json(thread_body(thread))).into_response())
}

/// One thread of the signed-in user.
#[utoipa::path(
    get,
    path = "/api/threads/{id}",
    tag = tag::THREADS,
    security(("bearer" = [])),
    params(("id" = ThreadId, Path, description = "The thread.")),
    responses(
        (status = 200, description = "The thread.", body = http::Thread),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "No such thread of this user (`not_found`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn get_thread(
    State(state): State<AppState>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<http::Thread>> {
    let thread = state
        .store
        .thread(&user.id, &thread_id(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("thread"))?;
    Ok(Json(thread_body(thread)))
}

/// Deletes a thread with its messages and runs.
#[utoipa::path(
    delete,
    path = "/api/threads/{id}",
    tag = tag::THREADS,
    security(("bearer" = [])),
    params(("id" = ThreadId, Path, description = "The thread.")),
    responses(
        (status = 204, description = "The thread is deleted."),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "No such thread of this user (`not_found`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn delete_thread(
    State(state): State<AppState>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    if state.store.delete_thread(&user.id, &thread_id(id)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("thread"))
    }
}

/// A thread's messages, as in `thread_history`.
#[utoipa::path(
    get,
    path = "/api/threads/{id}/messages",
    tag = tag::THREADS,
    security(("bearer" = [])),
    params(("id" = ThreadId, Path, description = "The thread.")),
    responses(
        (status = 200, description = "The messages, oldest first.", body = Messages),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "No such thread of this user (`not_found`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn thread_messages(
    State(state): State<AppState>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Messages>> {
    let messages = state
        .store
        .messages(&user.id, &thread_id(id)?)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found("thread"),
            other => other.into(),
        })?;
    Ok(Json(Messages {
        messages: messages.into_iter().map(history_message).collect(),
    }))
}

fn run_body(run: RunRecord) -> http::Run {
    http::Run {
        id: run.id,
        thread_id: run.thread_id,
        status: match run.state {
            RunState::Running => http::RunState::Running,
            RunState::Finished(status) => status.into(),
        },
        started_at: run.started_at,
        finished_at: run.finished_at,
        duration_ms: run.duration_ms,
        timings: run.timings,
        model_calls: run.model_calls,
        missing: run.missing,
    }
}

/// The run of a path's `{id}`. An id that is not one (or not even UTF-8) names no run.
async fn find_run(state: &AppState, user: &AuthUser, id: Result<Path<String>, PathRejection>) -> ApiResult<RunRecord> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found("run"));
    };
    let id = RunId::parse(&id).map_err(|_| ApiError::not_found("run"))?;
    state
        .store
        .run(&user.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))
}

/// One run of the signed-in user: its state, timings and model calls.
#[utoipa::path(
    get,
    path = "/api/runs/{id}",
    tag = tag::RUNS,
    security(("bearer" = [])),
    params(("id" = RunId, Path, description = "The run.")),
    responses(
        (status = 200, description = "The run.", body = http::Run),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "No such run of this user (`not_found`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<http::Run>> {
    Ok(Json(run_body(find_run(&state, &user, id).await?)))
}

/// Stops an active run, as `stop_agent` does.
///
/// The run ends with `agent_error` `cancelled` and a final `agent_completed` with status
/// `cancelled`, on the socket and in the event log.
#[utoipa::path(
    post,
    path = "/api/runs/{id}/cancel",
    tag = tag::RUNS,
    security(("bearer" = [])),
    params(("id" = RunId, Path, description = "The run.")),
    responses(
        (status = 202, description = "The run was active and is being stopped; the run as it was.", body = http::Run),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "No such run of this user (`not_found`).", body = ErrorBody),
        (status = 409, description = "The run is not active any more (`conflict`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server.", body = ErrorBody),
        (status = 503, description = "The run runs on another node, and Redis, through which it is asked to stop, does not answer (`store_unavailable`).", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let run = find_run(&state, &user, id).await?;
    match state.runs.cancel(&user.id, &run.id).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(run_body(run))).into_response()),
        Err(refusal) if refusal.code == ErrorCode::RunNotFound => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            refusal.message,
        )),
        Err(refusal) if refusal.code == ErrorCode::StoreUnavailable => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            refusal.code,
            refusal.message,
        )),
        Err(refusal) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            refusal.code,
            refusal.message,
        )),
    }
}

/// Largest page of `GET /api/events`.
const MAX_EVENTS_PAGE: usize = 1000;

/// The signed-in user's durable events: a JSON page, or a stream.
///
/// With `Accept: text/event-stream` the answer is a server-sent-event stream that stays open for
/// new events: each event's `id` is its seq and its `data` an `Event` as on the socket
/// (`#/components/schemas/Event`); `Last-Event-ID` resumes it. The stream counts against the
/// user's connection limit (with the sockets) and ends when the access token expires, with a last
/// event `event: error` whose data is an `ErrorBody` (`unauthorized`).
#[utoipa::path(
    get,
    path = "/api/events",
    tag = tag::EVENTS,
    security(("bearer" = [])),
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume a stream after this seq (instead of `after_seq`)."),
    ),
    responses(
        (status = 200, description = "The events after `after_seq`, in seq order; or the stream of them.",
            content(
                (http::EventsPage = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 422, description = "The query is not valid: `limit` outside 1 to 1000, or not a number \
            (`invalid_request`).", body = ErrorBody),
        (status = 429, description = "A stream, and the user has as many open connections as allowed \
            (`too_many_connections`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
    )
)]
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
        let admission = admit(&state, &user.id, user.claims.exp).await?;
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
            Some(Ok(Delivered::Event(record))) => {
                metrics.events_sent.inc();
                let event = SseEvent::default()
                    .id(record.seq.to_string())
                    .data(record.json.as_str());
                Some((Ok(event), Some((delivery, admission, metrics, closing))))
            }
            // A notice is an event of its own name, with no id: it has no seq to resume from.
            Some(Ok(Delivered::Notice(frame))) => {
                let name = frame.body.type_name();
                let event = match serde_json::to_string(&*frame) {
                    Ok(json) => SseEvent::default().event(name).data(json),
                    Err(_) => SseEvent::default().comment("a notice could not be written"),
                };
                Some((Ok(event), Some((delivery, admission, metrics, closing))))
            }
            Some(Err(error)) => {
                tracing::error!(%error, "SSE stream ended: cannot read events");
                None
            }
            None => {
                metrics.error(ErrorCode::Unauthorized);
                let body = ErrorBody {
                    error: ErrorPayload {
                        code: ErrorCode::Unauthorized,
                        message: "The access token expired; sign in again and resume with Last-Event-ID.".to_owned(),
                        reference: None,
                    },
                };
                let event = SseEvent::default()
                    .event("error")
                    .json_data(body)
                    .expect("an error body is JSON");
                Some((Ok(event), None))
            }
        }
    })
}

/// The largest workload upload.
pub(crate) const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;
/// Bad rows named in one answer, at most.
const MAX_ROW_ERRORS: usize = 1000;

/// Uploads workload rows (the team's own model calls): all or nothing.
///
/// A JSON array of rows, or NDJSON (one row per line) with `Content-Type: application/x-ndjson`,
/// at most 10 MB. Every row is checked, and either all are stored or none.
///
/// With an `Idempotency-Key` header (1 to 255 visible ASCII characters, the user's own), the
/// upload is stored once: sent again with the key and the same rows within 24 hours, it stores
/// nothing and is answered as the first time, with `Idempotency-Replayed: true`; with other
/// rows it is refused (409). A client that got no answer, or a 503 that says the rows may have
/// been stored, sends the upload again with its key.
#[utoipa::path(
    post,
    path = "/api/workload-events",
    tag = tag::WORKLOAD,
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Stores the upload once: 1 to 255 visible \
            ASCII characters (`!` to `~`), chosen by the client, one per upload; kept 24 hours from its upload."),
    ),
    request_body(
        description = "The rows: a JSON array, or one row per line.",
        content(
            (Vec<http::WorkloadRow> = "application/json"),
            (http::WorkloadRow = "application/x-ndjson"),
            (http::WorkloadRow = "application/ndjson"),
        )
    ),
    responses(
        (status = 200, description = "Every row is stored; or, with an `Idempotency-Key` stored before with the \
            same rows, nothing was stored now and the answer is the first one's.", body = Accepted,
            headers(("Idempotency-Replayed" = String, description = "`true` when the upload was stored before \
                under its `Idempotency-Key` and nothing was stored now."))),
        (status = 400, description = "The body is not what its content type says: not JSON, not an array, not \
            UTF-8; or the `Idempotency-Key` header is not 1 to 255 visible ASCII characters (`invalid_request`).",
            body = ErrorBody),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 413, description = "The body is over 10 MB (`payload_too_large`).", body = ErrorBody),
        (status = 409, description = "The `Idempotency-Key` was used before with other rows, or an upload with it \
            is still being stored; nothing was stored (`conflict`).", body = ErrorBody),
        (status = 415, description = "The content type is neither JSON nor NDJSON (`invalid_request`).", body = ErrorBody),
        (status = 422, description = "Some rows are invalid, each named by its line; nothing was stored \
            (`invalid_rows`).", body = RowsErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
        (status = 503, description = "The analytics store is slow or cannot be reached; nothing was stored, or, \
            when it did not answer in time, the rows may have been stored: send them again with the same \
            `Idempotency-Key` to store them once (`store_unavailable`).", body = ErrorBody),
    )
)]
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
    let key = upload_key(&headers)?;
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
            let body = RowsErrorBody {
                error: RowsError {
                    code: ErrorCode::InvalidRows,
                    message,
                    rows: shown,
                },
            };
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
    };
    let Some(key) = key else {
        let accepted = state
            .analytics
            .insert_workload_events(&user.id, events)
            .await
            .map_err(|e| analytics_error(e, false))?;
        return Ok(Json(Accepted {
            accepted: accepted as u64,
        })
        .into_response());
    };
    // On a cluster, one upload of a key at a time across the nodes (the store's own lock holds
    // for this node's uploads only): two nodes given one new key at the same moment would
    // otherwise both find it unrecorded and both store its calls. Another upload of the key
    // meanwhile, on any node, is answered 409 at once. The place is renewed while the upload
    // lasts and given back before the answer (one not given back runs out in
    // `UPLOAD_KEY_PLACE_TTL`; a dead node's goes as its other places do); while Redis cannot be
    // reached, this node's lock is all there is (said in the log).
    let one_at_a_time = match &state.shared_limits {
        Some(shared) => {
            let name = format!("upload:{}:{}", user.id, key.as_str());
            match shared.hold(&name, 1, UPLOAD_KEY_PLACE_TTL).await {
                Shared::Taken(place) => Some(place.renewed(UPLOAD_KEY_PLACE_TTL, UPLOAD_KEY_PLACE_RENEWAL)),
                Shared::Full(_) => return Err(upload_in_progress()),
                Shared::Unreachable => None,
            }
        }
        None => None,
    };
    let upload = state.analytics.insert_workload_upload(&user.id, &key, events).await;
    if let Some(held) = one_at_a_time {
        held.give_back().await;
    }
    let upload = upload.map_err(|e| analytics_error(e, true))?;
    match upload {
        Upload::Stored(accepted) => Ok(Json(Accepted { accepted }).into_response()),
        Upload::Replayed(accepted) => Ok((
            [(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"))],
            Json(Accepted { accepted }),
        )
            .into_response()),
        Upload::KeyReused => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "This Idempotency-Key was sent before with other rows, so nothing was stored; send new rows with a \
             new key.",
        )),
        Upload::InProgress => Err(upload_in_progress()),
    }
}

/// 409: an upload with this key is being stored (by this node or another).
fn upload_in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::Conflict,
        "An upload with this Idempotency-Key is still being stored, so nothing more was stored; send it again \
         in a moment to get its answer.",
    )
}

/// How long an upload key's place across the cluster runs unless renewed.
const UPLOAD_KEY_PLACE_TTL: Duration = Duration::from_secs(15);

/// How often a node renews the place of the upload key it is storing.
const UPLOAD_KEY_PLACE_RENEWAL: Duration = Duration::from_secs(5);

/// The header that makes an upload idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header on the answer to an upload stored before under its key.
const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";

/// The upload's `Idempotency-Key`, if it has one; 400 when it is not a key.
fn upload_key(headers: &HeaderMap) -> Result<Option<UploadKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refused = |problem: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("The Idempotency-Key header {problem}; nothing was stored."),
        )
    };
    if values.next().is_some() {
        return Err(refused("must be given once; it was given more than once"));
    }
    // Bytes outside visible ASCII are refused by the key's own rule.
    let text = String::from_utf8_lossy(value.as_bytes());
    UploadKey::parse(&text).map(Some).map_err(|problem| refused(&problem))
}

/// Adds the synthetic demo month to the signed-in user's workload data (dev mode only).
///
/// The same calls as `switchboard demo-data`: `days` days ending today (UTC midnight), about
/// `calls_per_day` interactive calls a day and a nightly batch job, deterministic for a `seed`.
/// They are checked and priced as an upload is, and added to what the user has (a second call
/// adds them again). Off (404) unless the server runs in dev mode.
#[utoipa::path(
    post,
    path = "/api/dev/demo-data",
    tag = tag::DEV,
    security(("bearer" = [])),
    request_body(content = Option<DemoDataRequest>, description = "Optional; send none for 30 days of 2000 calls, seed 1."),
    responses(
        (status = 200, description = "The calls are stored.", body = Accepted),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "No valid access token (`unauthorized`).", body = ErrorBody),
        (status = 404, description = "The server does not run in dev mode (`not_found`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`).", body = ErrorBody),
        (status = 415, description = "A body is sent, but not as `application/json`.", body = ErrorBody),
        (status = 422, description = "A field is out of range (or `days` × `calls_per_day` is over 400 000), of \
            the wrong type, or unknown (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Something failed inside the server (`internal`).", body = ErrorBody),
        (status = 503, description = "Another demo month is being made (`server_busy`); try again when it is \
            done. Or the analytics store is slow or cannot be reached; nothing was stored (`store_unavailable`).",
            body = ErrorBody),
    )
)]
pub(crate) async fn demo_data(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    body: Result<Option<Json<DemoDataRequest>>, JsonRejection>,
) -> ApiResult<Json<Accepted>> {
    // Outside dev mode the route answers as if it did not exist, whoever asks and with whatever body.
    if !state.config.dev {
        return Err(ApiError::not_found("route"));
    }
    let user = user?;
    let body = body?.map(|Json(body)| body).unwrap_or_default();
    let days = body.days.unwrap_or(DemoDataRequest::DEFAULT_DAYS);
    if !(1..=DemoDataRequest::MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid(format!(
            "days must be from 1 to {}, not {days}.",
            DemoDataRequest::MAX_DAYS
        )));
    }
    let calls_per_day = body.calls_per_day.unwrap_or(DemoDataRequest::DEFAULT_CALLS_PER_DAY);
    if !(1..=DemoDataRequest::MAX_CALLS_PER_DAY).contains(&calls_per_day) {
        return Err(ApiError::invalid(format!(
            "calls_per_day must be from 1 to {}, not {calls_per_day}.",
            DemoDataRequest::MAX_CALLS_PER_DAY
        )));
    }
    if u64::from(days) * u64::from(calls_per_day) > DemoDataRequest::MAX_CALLS {
        return Err(ApiError::invalid(format!(
            "days × calls_per_day must be at most {}, not {days} × {calls_per_day}.",
            DemoDataRequest::MAX_CALLS
        )));
    }
    // One demo month at a time over the whole server: each holds its calls in memory.
    let _making = DEMO_DATA.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServerBusy,
            "Another demo month is being made; try again when it is done.",
        )
    })?;
    let today = Timestamp::now().unix_millis().div_euclid(DAY_MS) * DAY_MS;
    let spec = DemoSpec {
        seed: body.seed.unwrap_or(DemoDataRequest::DEFAULT_SEED),
        days,
        calls_per_day,
        end_unix_ms: today,
    };
    let prices = Arc::clone(&state.prices);
    // Generating and checking a month of calls takes a while: off the async workers. Each day's
    // rows are checked as an upload's are, and only the checked calls are kept.
    let events = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        let mut refused = None;
        demo_rows_by_day(spec, |day| {
            for row in &day {
                match switchboard_agents::workload::parse_row(row, &prices) {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        refused.get_or_insert(error);
                    }
                }
            }
        });
        refused.map_or(Ok(events), Err)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|error| ApiError::internal(format!("a demo row was refused: {error}")))?;
    let accepted = state
        .analytics
        .insert_workload_events(&user.id, events)
        .await
        .map_err(|e| analytics_error(e, false))?;
    Ok(Json(Accepted {
        accepted: accepted as u64,
    }))
}

/// An upload the analytics store did not take: when the tier is slow or down, 503 naming it as
/// the analytics store ("The analytics store: ClickHouse cannot be reached (…), so nothing was
/// stored; …"). `keyed`: the upload has an `Idempotency-Key`, so sending it again is safe.
fn analytics_error(error: StoreError, keyed: bool) -> ApiError {
    // An insert past its deadline may still be completed by ClickHouse: say so, not "nothing".
    let outcome = match (&error, keyed) {
        (StoreError::TimedOut { .. }, true) => {
            "the rows may or may not have been stored (send them again with the same Idempotency-Key: they are \
             stored once)"
        }
        (StoreError::TimedOut { .. }, false) => {
            "the rows may or may not have been stored (count them before sending again, or send uploads with an \
             Idempotency-Key)"
        }
        _ => "nothing was stored",
    };
    match crate::error::tier_trouble(&error) {
        Some(trouble) => ApiError::tier_unavailable(&format!("The analytics store: {trouble}"), outcome),
        None => error.into(),
    }
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// The one demo month being made at a time.
static DEMO_DATA: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// What a client needs to know before it signs in.
///
/// Whether the server runs in dev mode (so a page can offer dev-login and demo data) and the
/// limits of messages and uploads.
#[utoipa::path(
    get,
    path = "/api/info",
    tag = tag::SERVER,
    responses((status = 200, description = "The server's protocol, version, mode and limits.", body = ServerInfo))
)]
pub(crate) async fn info(State(state): State<AppState>) -> Json<ServerInfo> {
    Json(ServerInfo {
        protocol: PROTOCOL_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        dev: state.config.dev,
        max_text_chars: state.config.max_text_chars as u64,
        max_upload_bytes: MAX_UPLOAD_BYTES as u64,
        max_frame_bytes: state.config.max_frame_bytes as u64,
    })
}

/// Whether the process is alive (no I/O).
#[utoipa::path(
    get,
    path = "/health/live",
    tag = tag::SERVER,
    responses((status = 200, description = "Always `ok`.", body = Liveness))
)]
pub(crate) async fn live() -> Json<Liveness> {
    Json(Liveness {
        status: HealthStatus::Ok,
    })
}

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// Pings `tier` within [`CHECK_TIMEOUT`]: `ok`; `degraded` when it answers slower than its SLA
/// limit (`Thresholds::tier_ms`) or not at all in time (or its own deadline passed); when it fails otherwise
/// (e.g. it cannot be reached), `failed` (the store:
/// `unavailable`; the analytics store, which chat does without: `degraded`). Also whether it
/// answered at all.
async fn check_tier(
    tier: Tier,
    ping: impl std::future::Future<Output = Result<(), StoreError>>,
    failed: HealthStatus,
) -> (Check, bool) {
    let slow = Duration::from_millis(switchboard_protocol::sla::Thresholds::INCIDENT.tier_ms(tier));
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, ping).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let (status, error) = match &outcome {
        Ok(Ok(())) if started.elapsed() <= slow => (HealthStatus::Ok, None),
        Ok(Ok(())) => (
            HealthStatus::Degraded,
            Some(format!(
                "answered in {latency_ms} ms (slower than {} ms)",
                slow.as_millis()
            )),
        ),
        // Its own deadline passed: as slow as a tier that does not answer.
        Ok(Err(error @ StoreError::TimedOut { .. })) => (HealthStatus::Degraded, Some(error.to_string())),
        Ok(Err(error)) => (failed, Some(error.to_string())),
        Err(_) => (
            HealthStatus::Degraded,
            Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        ),
    };
    let check = Check {
        status,
        latency_ms,
        error,
    };
    (check, matches!(outcome, Ok(Ok(()))))
}

/// Whether the server can serve: the store, the analytics store and the model.
///
/// Each dependency is checked at once and within a bound, so the answer comes within 1 s even
/// when one hangs. `store` says whether messages can be stored (the store answers); each tier
/// has a check of its own name (`sqlite`, `postgres`, `clickhouse`, and `redis` on a node of a
/// cluster) that says how it answers.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = tag::SERVER,
    responses(
        (status = 200, description = "`ok`, or `degraded`: a tier is slow, the analytics store does not answer, \
            or the model's circuit is open (answers come from the fallback).", body = Readiness),
        (status = 503, description = "`unavailable`: the store does not answer, or the server is shutting down.",
            body = Readiness),
    )
)]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let started = tokio::time::Instant::now();
    let (store_tier, analytics_tier) = (state.store.tier(), state.analytics.tier());
    let redis_ping = async {
        match &state.redis {
            Some(redis) => Some(check_tier(Tier::Redis, redis.ping(), HealthStatus::Degraded).await.0),
            None => None,
        }
    };
    let ((store_tier_check, stores), (analytics, _), redis) = tokio::join!(
        check_tier(store_tier, state.store.ping(), HealthStatus::Unavailable),
        check_tier(analytics_tier, state.analytics.ping(), HealthStatus::Degraded),
        redis_ping,
    );
    // Whether messages can be stored at all: a store that hangs or fails cannot take them.
    let store = Check {
        status: if stores {
            HealthStatus::Ok
        } else {
            HealthStatus::Unavailable
        },
        ..store_tier_check.clone()
    };
    let model = state.runs.engine().breakers().into_iter().find(|b| b.name == "model");
    let model = match model {
        Some(b) if b.state == "open" => Check {
            status: HealthStatus::Degraded,
            latency_ms: 0,
            error: Some(format!(
                "the model failed {} times in a row; calls are paused",
                b.consecutive_failures
            )),
        },
        _ => Check {
            status: HealthStatus::Ok,
            latency_ms: 0,
            error: None,
        },
    };
    let shutting_down = state.closing.is_cancelled() || state.stopping.is_cancelled();
    let status = if !stores || shutting_down {
        HealthStatus::Unavailable
    } else if [Some(&store_tier_check), Some(&analytics), Some(&model), redis.as_ref()]
        .iter()
        .flatten()
        .any(|c| c.status != HealthStatus::Ok)
    {
        HealthStatus::Degraded
    } else {
        HealthStatus::Ok
    };
    let code = if status == HealthStatus::Unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut checks = std::collections::BTreeMap::new();
    // The embedded default keeps both in SQLite: one check, the store's.
    if analytics_tier != store_tier {
        checks.insert(analytics_tier.as_str().to_owned(), analytics);
    }
    checks.insert(store_tier.as_str().to_owned(), store_tier_check);
    checks.insert("store".to_owned(), store);
    checks.insert("model".to_owned(), model);
    // A node of a cluster serves its own users without Redis: degraded, not unavailable.
    if let Some(redis) = redis {
        checks.insert(Tier::Redis.as_str().to_owned(), redis);
    }
    let degraded = checks
        .iter()
        .filter(|(_, check)| check.status != HealthStatus::Ok)
        .filter_map(|(name, _)| Tier::parse(name))
        .collect();
    state.metrics.readiness(started.elapsed(), degraded);
    (code, Json(Readiness { status, checks })).into_response()
}

/// Whether chat meets its SLA right now, and which tier is to blame if not: the last 1, 5 and
/// 15 minutes of responses, first events, health checks and every tier's operations, judged by
/// the incident's thresholds. From memory, so it answers at once whatever the tiers do; like
/// `/metrics`, it needs no sign-in.
#[utoipa::path(
    get,
    path = "/api/sla",
    tag = tag::SERVER,
    responses((status = 200, description = "The live SLA report.", body = SlaReport))
)]
pub(crate) async fn sla(State(state): State<AppState>) -> Json<SlaReport> {
    Json(state.metrics.sla.report())
}

/// The server's metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = tag::SERVER,
    responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format.", body = String,
        content_type = "application/openmetrics-text"))
)]
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

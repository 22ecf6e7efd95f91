//! The one error type of the HTTP edge: a status, a code and a sentence. Internal causes are
//! logged, never shown.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard_protocol::{ErrorBody, ErrorCode, ErrorPayload};
use switchboard_store::StoreError;

use crate::auth::PasswordError;
use crate::listener::BodyTimedOut;

/// An error answered as `{"error":{"code","message"}}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with its status, code and sentence.
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 `rate_limited`, with `Retry-After`.
    pub(crate) fn rate_limited(message: impl Into<String>, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, message)
        }
    }

    /// `wait` in whole seconds, rounded up (what `Retry-After` says).
    pub(crate) fn whole_seconds(wait: Duration) -> u64 {
        wait.as_millis().div_ceil(1000) as u64
    }

    /// 401.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 404; also for another user's resources.
    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("No such {what}."))
    }

    /// 422.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest, message)
    }

    /// 500, logging the cause.
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "Something failed inside the server.",
        )
    }
}

/// What a tier that is slow or cannot be reached did, as the start of a sentence: "PostgreSQL
/// did not answer within 2.0 s", "ClickHouse cannot be reached (connection refused)"; `None`
/// for any other error.
pub(crate) fn tier_trouble(error: &StoreError) -> Option<String> {
    match error {
        StoreError::TimedOut { tier, after } => {
            Some(format!("{tier} did not answer within {:.1} s", after.as_secs_f64()))
        }
        StoreError::Unavailable { tier, reason } => Some(format!("{tier} cannot be reached ({reason})")),
        _ => None,
    }
}

impl ApiError {
    /// 503 `store_unavailable`: a tier is slow or cannot be reached, so `what` (e.g. "nothing
    /// was stored").
    pub(crate) fn tier_unavailable(trouble: &str, what: &str) -> Self {
        tracing::warn!(%trouble, "a storage tier is unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            format!("{trouble}, so {what}; try again in a moment."),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if let Some(trouble) = tier_trouble(&error) {
            return ApiError::tier_unavailable(&trouble, "the request could not be answered");
        }
        match error {
            StoreError::NotFound(_) => ApiError::not_found("resource"),
            StoreError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message),
            other => ApiError::internal(other),
        }
    }
}

impl ApiError {
    /// 408, when a request's body (or one of the causes of `error`) missed its deadline.
    pub(crate) fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        BodyTimedOut::find(error).map(|deadline| {
            Self::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                format!(
                    "The request body did not arrive within {} s; nothing of it was used.",
                    deadline.as_secs_f64()
                ),
            )
        })
    }
}

impl From<PasswordError> for ApiError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::Busy => Self {
                retry_after: Some(Duration::from_secs(1)),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ServerBusy,
                    "Too many sign-ins are being checked at once; try again shortly.",
                )
            },
            PasswordError::Failed(cause) => ApiError::internal(cause),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if let Some(timed_out) = ApiError::body_timed_out(&rejection) {
            return timed_out;
        }
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonSyntaxError(_) | JsonRejection::BytesRejection(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, ErrorCode::InvalidRequest, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorPayload {
                code: self.code,
                message: self.message,
                reference: None,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(Self::whole_seconds(wait)));
        }
        response
    }
}

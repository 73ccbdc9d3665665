//! The one error type of the HTTP edge, answered as RFC 9457
//! `application/problem+json` that names the offending field.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use todo_contract::domain::FieldError;
use todo_platform::http::Problem;
use todo_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {detail}")]
    BadRequest {
        detail: String,
        field: Option<String>,
    },
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("no such task")]
    NotFound,
    #[error("version mismatch: the task is at version {current}")]
    PreconditionFailed { current: i64 },
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("this user has been erased: nothing more is written for them")]
    UserErased,
    #[error("too many writes; retry in {retry_after:?}")]
    TooManyRequests { retry_after: std::time::Duration },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UserErased => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => ("/problems/malformed-request", "Malformed request"),
            ApiError::Validation(_) => ("/problems/validation", "Invalid request"),
            ApiError::PayloadTooLarge { .. } => {
                ("/problems/payload-too-large", "Payload too large")
            }
            ApiError::UnsupportedMediaType(_) => {
                ("/problems/unsupported-media-type", "Unsupported media type")
            }
            ApiError::NotFound => ("/problems/not-found", "Not found"),
            ApiError::PreconditionFailed { .. } => {
                ("/problems/version-mismatch", "The task has changed")
            }
            ApiError::IdempotencyKeyReused => {
                ("/problems/idempotency-key-reused", "Idempotency-Key reused")
            }
            ApiError::Conflict(_) => ("/problems/conflict", "Conflict"),
            ApiError::UserErased => ("/problems/user-erased", "User erased"),
            ApiError::TooManyRequests { .. } => {
                ("/problems/too-many-requests", "Too many requests")
            }
            ApiError::Unavailable(_) => ("/problems/unavailable", "Service unavailable"),
            ApiError::Internal(_) => ("/problems/internal", "Internal error"),
        }
    }
}

impl ApiError {
    /// The RFC 9457 document of this error: the words every edge answers
    /// with (problem+json over REST, a tool error over MCP).
    pub fn problem(&self) -> Problem {
        let (kind, title) = self.kind();
        let (detail, errors) = match self {
            ApiError::Validation(errors) => (
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
                errors.clone(),
            ),
            ApiError::BadRequest {
                detail,
                field: Some(field),
            } => (
                detail.clone(),
                vec![FieldError::new(field.clone(), detail.clone())],
            ),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                (
                    "the request could not be completed; it was not applied".into(),
                    vec![],
                )
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "dependency unavailable");
                ("the database is unavailable; retry later".into(), vec![])
            }
            other => (other.to_string(), vec![]),
        };
        Problem::new(self.status(), kind, title)
            .detail(detail)
            .errors(errors)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.problem().into_response();
        if let ApiError::PayloadTooLarge { .. } = self {
            // The rest of the body was not read: the connection cannot carry
            // another request, and a client that reused it would see it die.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let retry_after = match &self {
            ApiError::Unavailable(_) => Some(1),
            // Whole seconds, rounded up: a client that waits this long
            // has its next write accepted.
            ApiError::TooManyRequests { retry_after } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        use todo_platform::db;
        if db::is_user_erased(&e) {
            ApiError::UserErased
        } else if db::is_unique_violation(&e) {
            ApiError::Conflict("a resource with this identity already exists".into())
        } else if db::is_unavailable(&e)
            || db::is_statement_timeout(&e)
            || db::is_transient_conflict(&e)
        {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(db) => db.into(),
            StoreError::Outbox(todo_store::writes::OutboxError::Db(db)) => db.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

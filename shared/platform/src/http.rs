//! What every HTTP edge of the platform shares: RFC 9457 problem+json
//! responses and the bearer-token extractor.

use crate::auth::{bearer_token, JwtKeys};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use todo_contract::domain::{FieldError, UserId};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// What kind of problem, such as /problems/validation.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The kind in words.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// This occurrence in words.
    pub detail: String,
    /// Each bad field and what is wrong with it (validation problems).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: String::new(),
            errors: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        response
    }
}

/// The authenticated user: `sub` of a valid HS256 bearer token. Any state
/// that holds the service's [`JwtKeys`] can authenticate.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserId);

/// A missing, malformed, forged or expired token: 401 with problem+json.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized: {0}")]
pub struct Unauthorized(pub String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            "/problems/unauthorized",
            "Unauthorized",
        )
        .detail(self.to_string())
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        response
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<JwtKeys>: FromRef<S>,
{
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Unauthorized> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = bearer_token(header).map_err(|e| Unauthorized(e.to_string()))?;
        let keys = Arc::<JwtKeys>::from_ref(state);
        keys.verify(token)
            .map(|v| AuthUser(v.user))
            .map_err(|e| Unauthorized(e.to_string()))
    }
}

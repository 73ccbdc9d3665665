//! Extractors that turn request parts into domain values, refusing bad ones
//! with an [`ApiError`] that names what is wrong.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// The request's correlation id (from `X-Correlation-Id`, or generated).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

pub const CORRELATION_HEADER: &str = "x-correlation-id";

impl CorrelationId {
    /// The caller's id if it is usable (1–128 visible ASCII characters),
    /// otherwise a fresh UUID.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let given = headers
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
        CorrelationId(
            given
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId::from_headers(&parts.headers)))
    }
}

/// `If-Match: <version>` (also `"3"` and `W/"3"`); `*` or absent: any version.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(raw) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = raw.to_str().unwrap_or_default().trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        let bare = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        bare.parse::<i64>()
            .map(|v| IfMatch(Some(v)))
            .map_err(|_| ApiError::BadRequest {
                detail: format!("If-Match must be a task version such as \"3\", got {text:?}"),
                field: Some("If-Match".into()),
            })
    }
}

/// `Idempotency-Key` (1–255 visible ASCII characters).
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(raw) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        match raw.to_str() {
            Ok(k) if crate::idempotency::is_valid_key(k) => Ok(IdempotencyKey(Some(k.to_owned()))),
            _ => Err(ApiError::BadRequest {
                detail: format!("Idempotency-Key {}", crate::idempotency::KEY_RULE),
                field: Some("Idempotency-Key".into()),
            }),
        }
    }
}

/// A JSON body parsed straight into domain types. Syntax errors answer 400;
/// values the types refuse answer 422 naming the field's path.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected Content-Type: application/json, got {:?}",
                essence
            )));
        }
        let too_large = ApiError::PayloadTooLarge {
            limit: crate::app::MAX_BODY_BYTES,
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > crate::app::MAX_BODY_BYTES) {
            return Err(too_large);
        }
        let raw = Bytes::from_request(req, state).await.map_err(|e| {
            // A chunked body over the limit (axum answers some of those 400).
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
                || e.body_text().contains("length limit exceeded")
            {
                too_large
            } else {
                ApiError::BadRequest {
                    detail: e.body_text(),
                    field: None,
                }
            }
        })?;
        let value = parse_json(&raw)?;
        Ok(JsonBody { value, raw })
    }
}

/// Parses `bytes` as `T`, naming the field of the first problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(field_error)
}

/// Like [`parse_json`], from JSON already parsed (an MCP tool's arguments):
/// the same refusals in the same words.
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(field_error)
}

fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let message = strip_position(&inner.to_string());
    match inner.classify() {
        serde_json::error::Category::Data => {
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::field(field, message)
        }
        _ => ApiError::BadRequest {
            detail: format!("the body is not valid JSON: {inner}"),
            field: None,
        },
    }
}

/// serde_json appends " at line 1 column 42" to data errors: the field path
/// says more to a client, so drop it.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        title: todo_contract::domain::Title,
        priority: Option<todo_contract::domain::Priority>,
    }

    #[test]
    fn data_errors_name_the_field() {
        let err = parse_json::<Body>(br#"{"title":"x","priority":"critical"}"#).unwrap_err();
        match err {
            ApiError::Validation(errors) => {
                assert_eq!(errors[0].field, "priority");
                assert!(
                    errors[0].message.contains("unknown variant `critical`"),
                    "{errors:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let err = parse_json::<Body>(br#"{"priority":"low"}"#).unwrap_err();
        assert!(
            matches!(err, ApiError::Validation(ref e) if e[0].message.contains("missing field `title`")),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_errors_are_bad_requests() {
        let err = parse_json::<Body>(br#"{"title": "#).unwrap_err();
        assert!(matches!(err, ApiError::BadRequest { .. }), "{err:?}");
    }
}

//! Serves the AsyncAPI document and the event schemas it references
//! (`todo_contract::asyncapi`), at the relative paths its `$ref`s lead to.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use todo_contract::asyncapi::{DOCUMENT, EVENT_SCHEMAS};

/// `/asyncapi.json` and the event schemas beside it.
pub fn router() -> Router {
    Router::new()
        .route("/asyncapi.json", get(document))
        .route("/schemas/events/{file}", get(schema))
}

async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

async fn schema(Path(file): Path<String>) -> Response {
    match EVENT_SCHEMAS.iter().find(|(name, _)| *name == file) {
        Some((_, text)) => {
            ([(header::CONTENT_TYPE, "application/schema+json")], *text).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

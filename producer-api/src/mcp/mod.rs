//! The Model Context Protocol at `/mcp` (Streamable HTTP, rmcp), so that AI
//! assistants manage a user's tasks through the same operations as REST.
//!
//! Stateless: no `Mcp-Session-Id`, every POST stands alone (answered as one
//! JSON response), so any replica behind a round-robin balancer can serve
//! any request, and `GET`/`DELETE /mcp` answer 405 as the spec allows a
//! server without a stream of its own to send.

mod server;
mod tools;

pub use server::TodoMcp;
pub use tools::SchemaError;

use crate::app::MAX_BODY_BYTES;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;
use todo_shared::auth::JwtKeys;
use todo_shared::http::AuthUser;

pub const PATH: &str = "/mcp";

/// The `/mcp` route, its bearer token checked before rmcp reads the request.
pub fn router(state: &AppState) -> Result<Router<AppState>, SchemaError> {
    let tools = Arc::new(tools::all()?);
    let server = TodoMcp::new(state.clone(), tools);
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        // The Host check guards servers that trust whoever reaches them
        // (DNS rebinding against localhost). Every call here carries a
        // bearer token, which a rebound page does not have, and the public
        // host name is the deployment's to choose.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Ok(Router::new()
        .route_service(PATH, service)
        .route_layer(middleware::from_fn_with_state(
            state.jwt.clone(),
            authenticate,
        )))
}

/// The same token check as REST's: 401 with `WWW-Authenticate: Bearer`
/// before any tool runs; the user travels in the request's extensions,
/// which rmcp hands to the tool.
async fn authenticate(State(keys): State<Arc<JwtKeys>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    match AuthUser::from_request_parts(&mut parts, &keys).await {
        Ok(user) => {
            parts.extensions.insert(user);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(refused) => refused.into_response(),
    }
}

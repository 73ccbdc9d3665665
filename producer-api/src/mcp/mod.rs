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
use todo_platform::auth::JwtKeys;
use todo_platform::http::AuthUser;

pub const PATH: &str = "/mcp";

/// `POST /mcp` in the OpenAPI document: the transport, not the tools (an
/// MCP client lists those with `tools/list`, each with its input schema).
pub fn operation() -> aide::openapi::Operation {
    let mut operation = aide::openapi::Operation::default();
    let op = aide::transform::TransformOperation::new(&mut operation)
        .id("mcp")
        .summary("Model Context Protocol (Streamable HTTP, stateless)")
        .description(
            "A JSON-RPC 2.0 message of MCP (initialize, tools/list, tools/call of add_task, \
             list_tasks, get_task, update_task, complete_task, reopen_task, delete_task), \
             answered as one JSON response. GET and DELETE answer 405: the server keeps no \
             session and no stream.",
        )
        .tag("mcp")
        .input::<(AuthUser, axum::Json<serde_json::Value>)>()
        .response_with::<200, axum::Json<serde_json::Value>, _>(|r| {
            r.description("The JSON-RPC response")
        })
        .response_with::<202, (), _>(|r| r.description("A notification or response, accepted"));
    let _ = todo_platform::openapi::problem::<401>(op, "No valid bearer token");
    operation
}

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

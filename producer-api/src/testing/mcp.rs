//! An MCP client of a test's `todo-api`: rmcp's own client over Streamable
//! HTTP, as an assistant would connect, with the user's bearer token.

use super::{Api, Stack};
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ProtocolVersion};
use rmcp::service::{RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use std::collections::HashMap;

pub struct McpClient {
    service: RunningService<RoleClient, ClientConfig>,
}

/// A tool's result as a user of an assistant would look at it.
#[derive(Debug, Clone)]
pub struct ToolReply {
    pub is_error: bool,
    pub structured: Option<Value>,
    /// The text blocks, in order (the summary first).
    pub text: Vec<String>,
}

impl ToolReply {
    /// The structured content, asserting the call succeeded.
    pub fn ok(&self) -> &Value {
        assert!(!self.is_error, "tool error: {:?}", self.text);
        self.structured.as_ref().expect("structured content")
    }

    /// The error message, asserting the call was refused.
    pub fn refusal(&self) -> &str {
        assert!(self.is_error, "expected a tool error, got {:?}", self.text);
        self.text.first().map(String::as_str).unwrap_or_default()
    }
}

impl Stack {
    /// An MCP client of `api` for the token's user (no token: `""`).
    pub async fn mcp(&self, api: &Api, token: &str) -> McpClient {
        self.mcp_with(api, token, ProtocolVersion::V_2025_11_25, None)
            .await
            .expect("MCP client connects")
    }

    /// An MCP client asking for protocol revision `version`, whose every
    /// request carries `X-Correlation-Id: correlation` when given.
    pub async fn mcp_with(
        &self,
        api: &Api,
        token: &str,
        version: ProtocolVersion,
        correlation: Option<&str>,
    ) -> Result<McpClient, String> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", api.base));
        if !token.is_empty() {
            config = config.auth_header(token);
        }
        if let Some(c) = correlation {
            let mut headers = HashMap::new();
            headers.insert(
                HeaderName::from_static("x-correlation-id"),
                HeaderValue::from_str(c).map_err(|e| e.to_string())?,
            );
            config = config.custom_headers(headers);
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        let service = ClientConfig::default()
            .with_protocol_version(version)
            .serve(transport)
            .await
            .map_err(|e| e.to_string())?;
        Ok(McpClient { service })
    }
}

impl McpClient {
    /// The revision the server agreed to.
    pub fn protocol_version(&self) -> Option<String> {
        self.service
            .peer_info()
            .map(|info| info.protocol_version.to_string())
    }

    pub fn peer(&self) -> &RunningService<RoleClient, ClientConfig> {
        &self.service
    }

    /// Calls a tool; a transport or JSON-RPC error is `Err`.
    pub async fn try_call(&self, tool: &str, args: Value) -> Result<CallToolResult, ServiceError> {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        self.service.call_tool(params).await
    }

    /// Calls a tool, asserting it answered with a tool result.
    pub async fn call(&self, tool: &str, args: Value) -> ToolReply {
        let result = self
            .try_call(tool, args)
            .await
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        ToolReply {
            is_error: result.is_error == Some(true),
            structured: result.structured_content.clone(),
            text: result
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect(),
        }
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

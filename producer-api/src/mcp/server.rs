//! The tools' calls: each splits its arguments into the types REST parses,
//! calls the same [`operations`] function as its REST route, and answers
//! the task (or page) as REST does, with a one-line summary. A refusal is a
//! tool result with `isError` and the problem+json words; only an unknown
//! tool (or a request that never passed authentication) is a JSON-RPC error.

use super::tools::{Arguments, Expected, Retry, Target};
use crate::error::ApiError;
use crate::extract::{parse_value, CorrelationId};
use crate::idempotency;
use crate::input::{self, TaskBody, TaskPatch};
use crate::operations::{self, Answer, Caller, Idempotency, StateChange, Update};
use crate::state::AppState;
use axum::http::request::Parts;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use todo_contract::domain::{FieldError, Task};
use todo_platform::http::AuthUser;

const INSTRUCTIONS: &str = "Manage the signed-in user's todo list. Tasks have a title, \
an optional description, a priority (low, medium, high, urgent), tags, a due time (RFC 3339), \
an optional recurrence (an RFC 5545 RRULE in an IANA time zone) and reminders. Use list_tasks \
to find a task's id before changing it. Pass expected_version to refuse a change if the task \
moved on, and an idempotency_key to make a retried add or completion safe.";

/// One `todo-api`'s MCP server; a fresh one serves each request (stateless
/// mode), cheaply: everything in it is shared.
#[derive(Clone)]
pub struct TodoMcp {
    state: AppState,
    tools: Arc<Vec<Tool>>,
}

impl TodoMcp {
    pub fn new(state: AppState, tools: Arc<Vec<Tool>>) -> Self {
        Self { state, tools }
    }
}

/// A tool's answer before it is rendered: what REST would have sent as the
/// body, and a line saying what happened.
struct Reply {
    summary: String,
    structured: Value,
}

impl Reply {
    fn new(summary: String, body: &impl Serialize) -> Result<Reply, ApiError> {
        let structured =
            serde_json::to_value(body).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Reply {
            summary,
            structured,
        })
    }

    fn task(verb: &str, task: &Task) -> Result<Reply, ApiError> {
        Reply::new(format!("{verb} {}", describe(task)), task)
    }

    fn answer(verb: &str, answer: Answer) -> Result<Reply, ApiError> {
        match answer {
            Answer::Done { task, .. } => Reply::task(verb, &task),
            Answer::Replayed { body, .. } => {
                let task: Task = serde_json::from_value(body.clone())
                    .map_err(|e| ApiError::Internal(format!("stored answer: {e}")))?;
                Ok(Reply {
                    summary: format!(
                        "{verb} {} (the first result of this idempotency_key)",
                        describe(&task)
                    ),
                    structured: body,
                })
            }
        }
    }
}

/// `task 0190… "Buy milk" (open, high, due 2026-12-01T09:00:00Z, version 2)`.
fn describe(task: &Task) -> String {
    let mut facts = vec![
        if task.completed { "done" } else { "open" }.to_owned(),
        task.priority.as_str().to_owned(),
    ];
    if let Some(due) = task.due_at {
        facts.push(format!(
            "due {}",
            due.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ));
    }
    if let Some(r) = &task.recurrence {
        facts.push(format!("repeats {}", r.rule.as_str()));
    }
    facts.push(format!("version {}", task.version));
    format!("task {} {:?} ({})", task.id, task.title, facts.join(", "))
}

/// Takes the arguments `T` knows out of `args` and parses them as `T`.
fn take<T: DeserializeOwned + Arguments>(args: &mut Map<String, Value>) -> Result<T, ApiError> {
    let taken: Map<String, Value> = T::NAMES
        .iter()
        .filter_map(|n| args.remove(*n).map(|v| ((*n).to_owned(), v)))
        .collect();
    parse_value(Value::Object(taken))
}

/// What identifies a keyed call: the tool, and its arguments but the key.
fn keyed(
    retry: Retry,
    tool: &str,
    rest: &Map<String, Value>,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(key) = retry.idempotency_key else {
        return Ok(None);
    };
    if !idempotency::is_valid_key(&key) {
        return Err(ApiError::field(
            "idempotency_key",
            idempotency::KEY_RULE.to_owned(),
        ));
    }
    let args = serde_json::to_vec(rest).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Some(Idempotency {
        key,
        fingerprint: idempotency::fingerprint("MCP", tool, &args),
    }))
}

/// `list_tasks`' arguments as REST's query parameters (text), so that one
/// parser names what is wrong with them.
fn as_query(args: Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    let mut params = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in args {
        match value {
            Value::Null => {}
            Value::String(s) => params.push((name, s)),
            Value::Number(n) => params.push((name, n.to_string())),
            Value::Bool(b) => params.push((name, b.to_string())),
            Value::Array(_) | Value::Object(_) => {
                errors.push(FieldError::new(name, "expected a single value"))
            }
        }
    }
    if errors.is_empty() {
        Ok(params)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A refusal in the words of REST's problem+json, naming the argument where
/// REST names a path or header.
fn refusal(error: &ApiError) -> CallToolResult {
    let problem = error.problem();
    let detail = match error {
        ApiError::NotFound => format!("task_id: {}", problem.detail),
        ApiError::PreconditionFailed { .. } => format!("expected_version: {}", problem.detail),
        // REST's "body" (the whole document) is the tool's arguments.
        ApiError::Validation(_) => problem
            .errors
            .iter()
            .map(|e| {
                let field = if e.field == "body" {
                    "arguments"
                } else {
                    &e.field
                };
                format!("{field}: {}", e.message)
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => problem.detail,
    };
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {detail}",
        problem.title
    ))])
}

fn rendered(reply: Reply) -> CallToolResult {
    let json = reply.structured.to_string();
    let mut result = CallToolResult::structured(reply.structured);
    // The summary for whoever reads, the JSON for clients that pass only
    // text to the model (the spec's advice for structured results).
    result.content = vec![ContentBlock::text(reply.summary), ContentBlock::text(json)];
    result
}

impl TodoMcp {
    async fn run(
        &self,
        tool: &str,
        caller: Caller<'_>,
        mut args: Map<String, Value>,
    ) -> Result<Reply, ApiError> {
        let state = &self.state;
        match tool {
            "add_task" => {
                let retry: Retry = take(&mut args)?;
                let key = keyed(retry, tool, &args)?;
                let body: TaskBody = parse_value(Value::Object(args))?;
                Reply::answer("Added", operations::create(state, caller, body, key).await?)
            }
            "list_tasks" => {
                let params = as_query(args)?;
                let q = input::parse_list_query(params.iter().map(|(k, v)| (k, v)))?;
                let page = operations::list(state, caller.user, &q).await?;
                let summary = match page.next_offset {
                    Some(next) => format!(
                        "{} tasks from offset {}; more from offset {next}",
                        page.items.len(),
                        page.offset
                    ),
                    None => format!(
                        "{} tasks from offset {}; no more",
                        page.items.len(),
                        page.offset
                    ),
                };
                Reply::new(summary, &page)
            }
            "get_task" => {
                let target: Target = parse_value(Value::Object(args))?;
                Reply::task(
                    "Found",
                    &operations::get(state, caller.user, &target.task_id).await?,
                )
            }
            "update_task" => {
                let target: Target = take(&mut args)?;
                let expected: Expected = take(&mut args)?;
                let patch: TaskPatch = parse_value(Value::Object(args))?;
                let task = operations::update(
                    state,
                    caller,
                    &target.task_id,
                    expected.expected_version,
                    Update::Patch(patch),
                )
                .await?;
                Reply::task("Updated", &task)
            }
            "complete_task" | "reopen_task" => {
                let target: Target = take(&mut args)?;
                let expected: Expected = take(&mut args)?;
                let retry: Retry = take(&mut args)?;
                if let Some(name) = args.keys().next() {
                    return Err(ApiError::field(
                        name.clone(),
                        format!("unknown field `{name}`"),
                    ));
                }
                let mut identity = Map::new();
                identity.insert("task_id".into(), Value::String(target.task_id.clone()));
                let key = keyed(retry, tool, &identity)?;
                let (change, verb) = if tool == "complete_task" {
                    (StateChange::Complete, "Completed")
                } else {
                    (StateChange::Reopen, "Reopened")
                };
                let answer = operations::change_state(
                    state,
                    caller,
                    &target.task_id,
                    expected.expected_version,
                    key,
                    change,
                )
                .await?;
                Reply::answer(verb, answer)
            }
            "delete_task" => {
                let target: Target = take(&mut args)?;
                let expected: Expected = parse_value(Value::Object(args))?;
                let task =
                    operations::delete(state, caller, &target.task_id, expected.expected_version)
                        .await?;
                Reply::task("Deleted", &task)
            }
            _ => Err(ApiError::Internal(format!(
                "tool {tool} is listed but not run"
            ))),
        }
    }
}

impl ServerHandler for TodoMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("todo-api", env!("CARGO_PKG_VERSION")).with_title("Todo tasks"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.get_tool(&request.name).is_none() {
            return Err(ErrorData::invalid_params(
                format!("Unknown tool: {}", request.name),
                None,
            ));
        }
        // The HTTP request this call came in: authenticated before rmcp saw
        // it (see `super::authenticate`), with its correlation id.
        let parts = context.extensions.get::<Parts>();
        let Some(AuthUser(user)) = parts.and_then(|p| p.extensions.get::<AuthUser>()) else {
            return Err(ErrorData::internal_error(
                "the request was not authenticated",
                None,
            ));
        };
        let correlation = parts
            .and_then(|p| p.extensions.get::<CorrelationId>().cloned())
            .unwrap_or_else(|| CorrelationId::from_headers(&Default::default()));
        let origin = parts
            .map(|p| self.state.origin.origin(p))
            .unwrap_or_default();
        let caller = Caller {
            user,
            correlation_id: &correlation.0,
            origin: &origin,
        };
        let args = request.arguments.unwrap_or_default();
        let result = match self.run(&request.name, caller, args).await {
            Ok(reply) => rendered(reply),
            Err(e) => refusal(&e),
        };
        Ok(result.into())
    }
}

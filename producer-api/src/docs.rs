//! How todo-api's extractors and answers appear in its OpenAPI document:
//! each extractor documents the header or body it reads and the refusals it
//! can answer before a handler runs; routes add their own answers with the
//! helpers here (see `routes.rs`).

use crate::error::ApiError;
use crate::extract::{CorrelationId, IdempotencyKey, IfMatch, JsonBody, CORRELATION_HEADER};
use crate::origin::ClientOrigin;
use aide::generate::GenContext;
use aide::openapi::{
    HeaderStyle, OpenApi, Operation, Parameter, ParameterData, ParameterSchemaOrContent,
    ReferenceOr, RequestBody, Response, StatusCode,
};
use aide::operation::{add_parameters, set_body};
use aide::transform::TransformOperation;
use aide::{OperationInput, OperationOutput};
use axum::Json;
use indexmap::IndexMap;
use schemars::JsonSchema;
use todo_contract::domain::Task;
use todo_platform::http::Problem;
use todo_platform::openapi::{
    add_header, content, operations_mut, problem, problem_response, schema_object, Docs,
};

pub const DOCS: Docs = Docs {
    title: "todo-api",
    description: "A user's tasks over REST. Every change is stored with its event in one \
                  transaction and published to Kafka (task-events, keyed by user id) after \
                  it commits. Errors are RFC 9457 problem+json naming each bad field.",
};

/// Routes answer their problems themselves (each route lists which).
impl OperationOutput for ApiError {
    type Inner = Problem;
}

/// Documents an optional request header of `operation`.
fn add_header_parameter(
    ctx: &mut GenContext,
    operation: &mut Operation,
    name: &str,
    description: &str,
    schema: schemars::Schema,
) {
    let parameter = Parameter::Header {
        parameter_data: ParameterData {
            name: name.into(),
            description: Some(description.into()),
            required: false,
            format: ParameterSchemaOrContent::Schema(schema_object(schema)),
            extensions: IndexMap::new(),
            deprecated: None,
            example: None,
            examples: IndexMap::new(),
            explode: None,
        },
        style: HeaderStyle::Simple,
    };
    add_parameters(ctx, operation, [parameter]);
}

/// The 400 of every extractor that can answer it, in one description: a
/// route answers one 400 whichever of them refused.
fn bad_request(ctx: &mut GenContext) -> (Option<StatusCode>, Response) {
    let description = "A body that is not JSON, or a malformed If-Match or Idempotency-Key";
    (
        Some(StatusCode::Code(400)),
        problem_response(ctx, description),
    )
}

impl OperationInput for CorrelationId {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        add_header_parameter(
            ctx,
            operation,
            "X-Correlation-Id",
            "Carried into the events of this request and echoed in the answer; 1-128 visible \
             ASCII characters (otherwise, or when absent, a new UUID)",
            schemars::json_schema!({ "type": "string", "maxLength": 128 }),
        );
    }
}

impl OperationInput for ClientOrigin {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        add_header_parameter(
            ctx,
            operation,
            "User-Agent",
            "Recorded with the events of this request (extension attribute `useragent`, \
             shown in the audit history), cut at 256 characters",
            schemars::json_schema!({ "type": "string" }),
        );
        add_header_parameter(
            ctx,
            operation,
            "X-Forwarded-For",
            "Only with AUDIT_CLIENT_IP=true, and only the hops added by a proxy in \
             AUDIT_TRUSTED_PROXIES: the client address recorded with the events \
             (extension attribute `clientip`)",
            schemars::json_schema!({ "type": "string" }),
        );
    }
}

impl OperationInput for IfMatch {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        add_header_parameter(
            ctx,
            operation,
            "If-Match",
            "Apply only if the task is at this version (its ETag, such as \"3\"); * or \
             absent: any version",
            schemars::json_schema!({
                "type": "string",
                "pattern": "^\\s*(\\*|(W/)?\"?[0-9]{1,18}\"?)\\s*$"
            }),
        );
    }

    fn inferred_early_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<StatusCode>, Response)> {
        vec![bad_request(ctx)]
    }
}

impl OperationInput for IdempotencyKey {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        add_header_parameter(
            ctx,
            operation,
            "Idempotency-Key",
            "A retry with the same key (and the same request) returns the first answer, with \
             Idempotent-Replayed: true, instead of applying it again; kept 24 h",
            schemars::json_schema!({
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": "^[\\x21-\\x7e]+$"
            }),
        );
    }

    fn inferred_early_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<StatusCode>, Response)> {
        vec![bad_request(ctx)]
    }
}

impl<T: JsonSchema> OperationInput for JsonBody<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        let schema = ctx.schema.subschema_for::<T>();
        set_body(
            ctx,
            operation,
            RequestBody {
                description: None,
                content: content("application/json", schema),
                required: true,
                extensions: IndexMap::new(),
            },
        );
    }

    fn inferred_early_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<StatusCode>, Response)> {
        vec![
            bad_request(ctx),
            (
                Some(StatusCode::Code(413)),
                problem_response(ctx, "The body is larger than 64 KiB"),
            ),
            (
                Some(StatusCode::Code(415)),
                problem_response(ctx, "The body is not application/json"),
            ),
            (
                Some(StatusCode::Code(422)),
                problem_response(
                    ctx,
                    "A field the domain refuses; `errors` names each (reminders[0].before, ...)",
                ),
            ),
        ]
    }
}

/// `op` answers `STATUS` with the task, its version as the `ETag` (and, for
/// 201, its `Location`).
pub fn task<const STATUS: u16>(op: TransformOperation<'_>) -> TransformOperation<'_> {
    op.response_with::<STATUS, Json<Task>, _>(|r| {
        let mut r = r.description(if STATUS == 201 {
            "The task created"
        } else {
            "The task"
        });
        add_header(r.inner(), "ETag", "The task's version, such as \"3\"");
        if STATUS == 201 {
            add_header(r.inner(), "Location", "/tasks/{id} of the new task");
        }
        add_header(
            r.inner(),
            "Idempotent-Replayed",
            "true when this is the stored answer to an earlier request with the same \
             Idempotency-Key",
        );
        r
    })
}

/// The answers of every route that writes: 429 past the user's allowance.
pub fn write(op: TransformOperation<'_>) -> TransformOperation<'_> {
    let op = problem::<403>(
        op,
        "The caller was erased (DELETE /me): nothing more is written for them",
    );
    op.response_with::<429, todo_platform::openapi::ProblemJson, _>(|r| {
        let mut r = r.description("Past this user's writes per second (API_WRITES_PER_SECOND)");
        add_header(
            r.inner(),
            "Retry-After",
            "Seconds until a write is accepted",
        );
        r
    })
}

/// The answers of a route on one task: 404 (no such task, or another
/// user's) and, with If-Match, 412.
pub fn one_task(op: TransformOperation<'_>) -> TransformOperation<'_> {
    let op = problem::<404>(op, "No such task of this user");
    problem::<412>(
        op,
        "If-Match names another version than the task's (the problem's detail says which)",
    )
}

/// What every answer of todo-api carries.
pub fn finish(api: &mut OpenApi) {
    for operation in operations_mut(api) {
        let responses = operation
            .responses
            .iter_mut()
            .flat_map(|r| r.responses.values_mut());
        for response in responses {
            if let ReferenceOr::Item(response) = response {
                add_header(
                    response,
                    CORRELATION_HEADER,
                    "The request's correlation id (the caller's X-Correlation-Id, or a new one)",
                );
            }
        }
    }
}

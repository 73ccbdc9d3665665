//! The OpenAPI 3.1 document of each HTTP service, generated from its routes
//! (aide, over the same schemars schemas the handlers parse with, which the
//! MCP tools also publish): every extractor documents what it reads and how
//! it refuses, every route adds its own answers, and the finished document
//! is served at `/openapi.json` with a Redoc page at `/docs` whose script is
//! compiled into the binary (nothing is fetched from a network).
//!
//! Routes of these services are added with `api_route` only; a route added
//! any other way would be served undocumented (a test scans for it).

use crate::http::{AuthUser, Problem, PROBLEM_CONTENT_TYPE};
use aide::axum::routing::get_with;
use aide::axum::ApiRouter;
use aide::generate::GenContext;
use aide::openapi::{
    Components, Header, HeaderStyle, Info, MediaType, OpenApi, Operation, ParameterSchemaOrContent,
    ReferenceOr, Response, SchemaObject, SecurityScheme, StatusCode,
};
use aide::transform::TransformOperation;
use aide::{OperationInput, OperationOutput};
use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use indexmap::IndexMap;

pub const BEARER: &str = "bearer";
pub const DOCUMENT_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

/// What a service's document says about itself.
#[derive(Debug, Clone, Copy)]
pub struct Docs {
    pub title: &'static str,
    pub description: &'static str,
}

/// A problem+json answer, for `op.response_with::<STATUS, ProblemJson, _>`.
pub struct ProblemJson;

impl OperationOutput for ProblemJson {
    type Inner = Problem;

    fn operation_response(ctx: &mut GenContext, _: &mut Operation) -> Option<Response> {
        Some(problem_response(
            ctx,
            "An RFC 9457 problem; `errors` names each bad field",
        ))
    }
}

pub fn problem_response(ctx: &mut GenContext, description: &str) -> Response {
    let schema = ctx.schema.subschema_for::<Problem>();
    Response {
        description: description.into(),
        content: content(PROBLEM_CONTENT_TYPE, schema),
        ..Default::default()
    }
}

/// `schema` as the document holds it (no example, no link to more docs).
pub fn schema_object(json_schema: schemars::Schema) -> SchemaObject {
    SchemaObject {
        json_schema,
        example: None,
        external_docs: None,
    }
}

/// A body of `content_type` whose shape is `schema`.
pub fn content(content_type: &str, schema: schemars::Schema) -> IndexMap<String, MediaType> {
    IndexMap::from_iter([(
        content_type.to_owned(),
        MediaType {
            schema: Some(schema_object(schema)),
            ..Default::default()
        },
    )])
}

/// Documents a response header (a string) of `response`.
pub fn add_header(response: &mut Response, name: &str, description: &str) {
    response.headers.insert(
        name.to_owned(),
        ReferenceOr::Item(Header {
            description: Some(description.into()),
            style: HeaderStyle::Simple,
            required: false,
            deprecated: None,
            format: ParameterSchemaOrContent::Schema(schema_object(schemars::json_schema!({
                "type": "string"
            }))),
            example: None,
            examples: IndexMap::new(),
            extensions: IndexMap::new(),
        }),
    );
}

/// `op` answers `status` with a problem described by `description`.
pub fn problem<'t, const STATUS: u16>(
    op: TransformOperation<'t>,
    description: &str,
) -> TransformOperation<'t> {
    op.response_with::<STATUS, ProblemJson, _>(|r| r.description(description))
}

impl OperationInput for AuthUser {
    fn operation_input(_: &mut GenContext, operation: &mut Operation) {
        let requirement = IndexMap::from_iter([(BEARER.to_owned(), Vec::new())]);
        if !operation.security.contains(&requirement) {
            operation.security.push(requirement);
        }
    }

    fn inferred_early_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<StatusCode>, Response)> {
        let mut response = problem_response(
            ctx,
            "No bearer token, or one that is malformed, forged, expired or not valid yet",
        );
        add_header(
            &mut response,
            "WWW-Authenticate",
            "Bearer, with error=\"invalid_token\" when a token was given",
        );
        vec![(Some(StatusCode::Code(401)), response)]
    }
}

/// Every operation of `api` gets what any request can be answered: 503
/// (the database is away, or the request ran past the server's limit),
/// with `Retry-After`, unless the route documents its own 503.
fn any_request_may_get_503(ctx: &mut GenContext, api: &mut OpenApi) {
    for operation in operations_mut(api) {
        let responses = operation.responses.get_or_insert_with(Default::default);
        responses
            .responses
            .entry(StatusCode::Code(503))
            .or_insert_with(|| {
                let mut response = problem_response(
                    ctx,
                    "The database is unavailable, or the request took longer than the \
                     server allows (HTTP_REQUEST_TIMEOUT_MS); retry later",
                );
                add_header(&mut response, "Retry-After", "Seconds to wait");
                ReferenceOr::Item(response)
            });
    }
}

/// Every operation of the document, whatever its path and method.
pub fn operations_mut(api: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    api.paths
        .iter_mut()
        .flat_map(|paths| paths.paths.values_mut())
        .filter_map(|item| match item {
            ReferenceOr::Item(item) => Some(item),
            _ => None,
        })
        .flat_map(|item| {
            [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
        })
        .flatten()
}

/// The finished router of `routes`, with the document of all of them at
/// `/openapi.json` and the Redoc page at `/docs` (both documented too).
/// `finish` may add what only this service knows to every operation.
pub fn serve(
    routes: ApiRouter,
    docs: Docs,
    finish: impl FnOnce(&mut OpenApi),
) -> Result<Router, serde_json::Error> {
    let mut api = OpenApi {
        info: Info {
            title: docs.title.into(),
            description: Some(docs.description.into()),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Info::default()
        },
        components: Some(Components {
            security_schemes: IndexMap::from_iter([(
                BEARER.to_owned(),
                ReferenceOr::Item(SecurityScheme::Http {
                    scheme: "bearer".into(),
                    bearer_format: Some("JWT".into()),
                    description: Some(
                        "An HS256 JWT whose `sub` is the user (`todo-api token --user NAME` \
                         mints one for development)"
                            .into(),
                    ),
                    extensions: IndexMap::new(),
                }),
            )]),
            ..Components::default()
        }),
        ..OpenApi::default()
    };
    let redoc = aide::redoc::Redoc::new(DOCUMENT_PATH).with_title(docs.title);
    let router = routes
        .api_route(
            DOCUMENT_PATH,
            get_with(document, |op| {
                op.summary("This document")
                    .description("The OpenAPI 3.1 document of this service.")
                    .tag("documentation")
                    .response_with::<200, axum::Json<serde_json::Value>, _>(|r| {
                        r.description("The OpenAPI document")
                    })
            }),
        )
        .api_route(
            DOCS_PATH,
            get_with(redoc.axum_handler(), |op| {
                op.summary("This document as a page")
                    .description("A Redoc page of the document; its script is served with it.")
                    .tag("documentation")
            }),
        )
        .finish_api_with(&mut api, |t| {
            let mut t = t;
            aide::generate::in_context(|ctx| any_request_may_get_503(ctx, t.inner_mut()));
            finish(t.inner_mut());
            t
        });
    let bytes = Bytes::from(serde_json::to_vec(&api)?);
    Ok(router.layer(Extension(Document(bytes))))
}

#[derive(Clone)]
struct Document(Bytes);

async fn document(Extension(Document(bytes)): Extension<Document>) -> axum::response::Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

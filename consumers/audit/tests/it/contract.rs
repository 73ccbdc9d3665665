//! The OpenAPI documents of todo-api and todo-audit against what they
//! serve: every documented operation is served, no other method is served
//! on a documented path, and no route is added in a way that escapes the
//! document. The ignored test runs the external checkers (the OpenAPI
//! validator and schemathesis, from scripts/contract.sh) against live
//! services.

use crate::common;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;
use todo_api::testing::Stack;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// What every service serves beside its own routes, and to anyone.
const OPERATIONS_PATHS: [&str; 5] = ["/health", "/ready", "/metrics", "/openapi.json", "/docs"];

async fn document(stack: &Stack, base: &str) -> Value {
    let r = stack
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("the document is JSON")
}

/// `path` with every `{param}` filled in.
fn concrete(path: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        out.push_str(&id);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether the router has a route for this request: axum answers an
/// unknown path with an empty 404 and a known path's unknown method with
/// 405; every handler's own 404 is a problem document.
async fn routed(stack: &Stack, base: &str, method: &str, path: &str, token: &str) -> bool {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let r = stack
        .http
        .request(method, format!("{base}{}", concrete(path)))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("request");
    let status = r.status();
    let body = r.bytes().await.unwrap_or_default();
    !(status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND && body.is_empty()))
}

/// `own_paths`, and the operations paths, are documented; what is
/// documented is served, and nothing else on those paths.
async fn served_exactly_as_documented(stack: &Stack, base: &str, own_paths: &[&str]) {
    let doc = document(stack, base).await;
    assert_eq!(doc["openapi"], "3.1.0", "{base}");
    let paths = doc["paths"].as_object().expect("paths");
    for path in own_paths.iter().chain(&OPERATIONS_PATHS) {
        assert!(
            paths.contains_key(*path),
            "{base}: {path} is not documented"
        );
    }
    let token = stack.token("contract");
    for (path, item) in paths {
        for method in METHODS {
            let documented = item.get(method).is_some();
            let served = routed(stack, base, method, path, &token).await;
            assert_eq!(
                served,
                documented,
                "{base}: {} {path} is {} but {}",
                method.to_uppercase(),
                if served { "served" } else { "not served" },
                if documented {
                    "documented"
                } else {
                    "not documented"
                },
            );
            if documented {
                let op = &item[method];
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}: responses"
                );
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                let open =
                    OPERATIONS_PATHS.contains(&path.as_str()) || path == "/push/vapid-public-key";
                assert_eq!(secured, !open, "{method} {path}: bearer security");
                if secured {
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{method} {path}: 401 documented"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_no_other_method_is() {
    let (stack, api, audit) = common::start().await;
    served_exactly_as_documented(
        &stack,
        &api.base,
        &[
            "/tasks",
            "/tasks/{id}",
            "/tasks/{id}/complete",
            "/tasks/{id}/reopen",
            "/me/notifications",
            "/push/vapid-public-key",
            "/mcp",
        ],
    )
    .await;
    served_exactly_as_documented(&stack, &audit.base, &["/tasks/{id}/history", "/events"]).await;
    // The limits REST enforces are in the document a client generates from.
    let doc = document(&stack, &api.base).await;
    let list = &doc["paths"]["/tasks"]["get"]["parameters"];
    let limit = list
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
        .expect("limit is a parameter of GET /tasks");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 200);
    let text = doc.to_string();
    for header in ["Idempotency-Key", "If-Match", "X-Correlation-Id"] {
        assert!(text.contains(header), "{header} is documented");
    }
    let title = &doc["components"]["schemas"]["Title"];
    assert_eq!(title["maxLength"], 500, "the title's limit: {title}");
    audit.stop().await;
    api.stop().await;
}

/// Routes escape the document only if added with axum's own routing
/// methods (aide's `api_route` documents what it adds): none of those in
/// the crates that publish a document, but MCP's service, which
/// `api_route_docs` documents beside it.
#[test]
fn no_route_is_added_where_the_document_cannot_see_it() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut offenders = Vec::new();
    for dir in [
        "producer-api/src",
        "consumers/audit/src",
        "shared/platform/src/ops.rs",
        "shared/consumer/src/service.rs",
    ] {
        let path = std::path::Path::new(root).join(dir);
        let files: Vec<std::path::PathBuf> = if path.is_file() {
            vec![path]
        } else {
            walk(&path)
        };
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            for (n, line) in text.lines().enumerate() {
                let undocumented = [".route(", ".route_service(", ".nest(", ".nest_service("]
                    .iter()
                    .any(|m| line.contains(m));
                let mcp = file.ends_with("mcp/mod.rs") && line.contains(".route_service(PATH");
                if undocumented && !mcp && !file.to_string_lossy().contains("testing") {
                    offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes outside the document:\n{}",
        offenders.join("\n")
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// scripts/contract.sh: the OpenAPI validator and schemathesis (Python,
/// named by `CONTRACT_PYTHON`) against a live todo-api and todo-audit with
/// a valid token; a fixed seed and a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a virtualenv with schemathesis: run scripts/contract.sh"]
async fn schemathesis_finds_nothing() {
    let stack = Stack::new().await;
    // A fuzzer writes far faster than a person: with the usual allowance
    // most of its writes would only ever see 429.
    let many = std::num::NonZeroU32::new(100_000).expect("non-zero");
    let options = todo_api::app::ApiOptions {
        writes: todo_api::limits::WriteQuota {
            per_second: many,
            burst: many,
        },
        ..stack.api_options()
    };
    let mut options = options;
    // So that the key's route answers its 200 too.
    options.channels.vapid_public_key = Some(
        "BNbxGYNMhEIi9zrneh7mqV4oUanjLUK3m-mYZBc62frMKrEoMk88r3Lk596T0ck9xlT-aok0I1Uy3YQ9lHnH0eA"
            .into(),
    );
    let api = stack.spawn_api_with(stack.settings(), options).await;
    let audit = common::Audit::spawn(&stack).await;
    // Tasks for the fuzzer to work on: without them every route on one
    // task would only ever answer 404.
    let token = stack.token("fuzz");
    let mut ids = Vec::new();
    for i in 0..20 {
        let task = stack
            .create(
                &api,
                &token,
                serde_json::json!({
                    "title": format!("fuzzed {i}"),
                    "due_at": "2030-01-01T09:00:00Z",
                    "tags": ["fuzz"],
                    "reminders": [{"before": "PT1H"}],
                    "recurrence": if i % 2 == 0 {
                        serde_json::json!({"rule": "FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin", "mode": "on_completion"})
                    } else {
                        serde_json::Value::Null
                    },
                }),
            )
            .await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    todo_api::testing::run_python_script(
        "CONTRACT_PYTHON",
        "contract.py",
        &[
            ("API_URL", api.base.clone()),
            ("AUDIT_URL", audit.base.clone()),
            ("TOKEN", token.clone()),
            ("TASK_IDS", ids.join(",")),
        ],
        Duration::from_secs(420),
    )
    .await;
    audit.stop().await;
    api.stop().await;
}

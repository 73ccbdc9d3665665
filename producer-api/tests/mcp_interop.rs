//! The official Python SDK against this server: starts a todo-api on a
//! fresh database and broker, then runs scripts/mcp_interop.py with the
//! Python named by `MCP_INTEROP_PYTHON` (a virtualenv with `mcp` 2.x).
//! Ignored by default (it needs that virtualenv); scripts/mcp-interop.sh
//! makes one and runs it.

use std::time::Duration;
use todo_api::testing::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a virtualenv with the Python MCP SDK: run scripts/mcp-interop.sh"]
async fn the_python_sdk_runs_the_scenario() {
    let python = std::env::var("MCP_INTEROP_PYTHON")
        .expect("MCP_INTEROP_PYTHON: the Python of a virtualenv with mcp 2.x");
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/mcp_interop.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .env("MCP_URL", format!("{}/mcp", api.base))
        .env("API_URL", &api.base)
        .env("ALICE_TOKEN", stack.token("alice"))
        .env("BOB_TOKEN", stack.token("bob"))
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("the Python scenario ends within 5 minutes")
        .expect("python runs");
    assert!(
        status.success(),
        "the Python SDK's scenario failed: {status}"
    );
    api.stop().await;
}

//! The official Python SDK against this server: starts a todo-api on a
//! fresh database and broker, then runs scripts/mcp_interop.py with the
//! Python named by `MCP_INTEROP_PYTHON` (a virtualenv with `mcp` 2.x).
//! Ignored by default (it needs that virtualenv); scripts/mcp-interop.sh
//! makes one and runs it.

use crate::common::started;
use std::time::Duration;
use todo_api::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a virtualenv with the Python MCP SDK: run scripts/mcp-interop.sh"]
async fn the_python_sdk_runs_the_scenario() {
    let (stack, api) = started().await;
    testing::run_python_script(
        "MCP_INTEROP_PYTHON",
        "mcp_interop.py",
        &[
            ("MCP_URL", format!("{}/mcp", api.base)),
            ("API_URL", api.base.clone()),
            ("ALICE_TOKEN", stack.token("alice")),
            ("BOB_TOKEN", stack.token("bob")),
        ],
        Duration::from_secs(300),
    )
    .await;
    api.stop().await;
}

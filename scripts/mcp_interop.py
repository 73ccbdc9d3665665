"""The MCP scenario of producer-api/tests/it/mcp.rs, driven by the official
Python SDK (`mcp` 2.x) over Streamable HTTP with a bearer token, against a
live todo-api, so that a protocol mismatch with the assistants people use
fails CI.

Run by producer-api/tests/it/mcp_interop.rs (which starts todo-api on a fresh
database and broker); by hand:

    MCP_URL=http://127.0.0.1:8080/mcp API_URL=http://127.0.0.1:8080 \
    ALICE_TOKEN=... BOB_TOKEN=... python scripts/mcp_interop.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

MCP_URL = os.environ["MCP_URL"]
API_URL = os.environ["API_URL"]
ALICE = os.environ["ALICE_TOKEN"]
BOB = os.environ["BOB_TOKEN"]
TOOLS = ["add_task", "list_tasks", "get_task", "update_task", "complete_task", "reopen_task", "delete_task"]


def client(token: str, mode: str, correlation: str | None = None) -> Client:
    headers = {"Authorization": f"Bearer {token}"}
    if correlation:
        headers["X-Correlation-Id"] = correlation
    http = create_mcp_http_client(headers=headers)
    return Client(streamable_http_client(MCP_URL, http_client=http), mode=mode)  # type: ignore[arg-type]


def rest(method: str, path: str, token: str, **kwargs: Any) -> httpx2.Response:
    return httpx2.request(method, API_URL + path, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def text_of(result: Any) -> str:
    return result.content[0].text if result.content else ""


async def every_tool(mode: str) -> None:
    async with client(ALICE, mode, f"py-{mode}") as c:
        listed = await c.list_tools()
        names = [t.name for t in listed.tools]
        check(names == TOOLS, f"tool names: {names}")
        for t in listed.tools:
            reads = t.name in ("list_tasks", "get_task")
            check(t.annotations is not None and t.annotations.read_only_hint == reads, f"{t.name} read-only hint")
            if not reads:
                check(t.annotations.destructive_hint == (t.name == "delete_task"), f"{t.name} destructive hint")
            check(t.output_schema is not None, f"{t.name} output schema")
        add = next(t for t in listed.tools if t.name == "add_task")
        check(add.input_schema.get("required") == ["title"], f"add_task schema: {add.input_schema}")

        added = await c.call_tool(
            "add_task",
            {
                "title": f"Water the plants ({mode})",
                "priority": "high",
                "tags": ["home"],
                "due_at": "2026-12-01T09:00:00Z",
                "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=TU", "timezone": "Europe/Berlin", "mode": "on_completion"},
                "reminders": [{"before": "PT1H"}],
            },
        )
        check(not added.is_error, f"add_task: {added.content}")
        task = added.structured_content
        check(text_of(added).startswith("Added task"), f"summary: {text_of(added)}")
        got = rest("GET", f"/tasks/{task['id']}", ALICE)
        check(got.status_code == 200 and got.json() == task, "add_task answers the task as REST does")

        fetched = await c.call_tool("get_task", {"task_id": task["id"]})
        check(fetched.structured_content == task, "get_task")
        page = await c.call_tool("list_tasks", {"q": mode, "limit": 5})
        check([t["id"] for t in page.structured_content["items"]] == [task["id"]], f"list_tasks: {page.structured_content}")
        updated = await c.call_tool("update_task", {"task_id": task["id"], "expected_version": 1, "priority": "low"})
        check(updated.structured_content["priority"] == "low", "update_task")
        check(updated.structured_content["title"] == task["title"], "update_task is partial")
        done = await c.call_tool("complete_task", {"task_id": task["id"], "idempotency_key": f"done-{mode}"})
        check(done.structured_content["completed"] is True, "complete_task")
        again = await c.call_tool("complete_task", {"task_id": task["id"], "idempotency_key": f"done-{mode}"})
        check(again.structured_content == done.structured_content, "a retried completion returns the first result")
        reopened = await c.call_tool("reopen_task", {"task_id": task["id"]})
        check(reopened.structured_content["completed"] is False, "reopen_task")
        stale = await c.call_tool("delete_task", {"task_id": task["id"], "expected_version": 1})
        check(stale.is_error and "expected_version: version mismatch" in text_of(stale), f"stale: {stale.content}")
        deleted = await c.call_tool("delete_task", {"task_id": task["id"]})
        check(not deleted.is_error, "delete_task")
        check(rest("GET", f"/tasks/{task['id']}", ALICE).status_code == 404, "deleted")


async def refusals(mode: str) -> None:
    theirs = rest("POST", "/tasks", BOB, json={"title": "bob's"}).json()
    async with client(ALICE, mode) as c:
        for args, words in [
            ({"priority": "low"}, "missing field `title`"),
            ({"title": "t", "priority": "critical"}, "priority: unknown variant `critical`"),
            (
                {"title": "t", "due_at": "2026-12-01T09:00:00Z",
                 "recurrence": {"rule": "FREQ=FORTNIGHTLY", "timezone": "UTC", "mode": "schedule"}},
                "recurrence.rule:",
            ),
        ]:
            r = await c.call_tool("add_task", args)
            check(r.is_error is True and words in text_of(r), f"{args}: {r.content}")
        for tool in ["get_task", "update_task", "complete_task", "delete_task"]:
            r = await c.call_tool(tool, {"task_id": theirs["id"]})
            check(r.is_error is True and "task_id: no such task" in text_of(r), f"{tool} on bob's task: {r.content}")
        try:
            await c.call_tool("drop_database", {})
            raise AssertionError("an unknown tool must be a JSON-RPC error")
        except MCPError as e:
            check(e.error.code == -32602, f"unknown tool: {e.error}")
    check(rest("GET", f"/tasks/{theirs['id']}", BOB).json() == theirs, "bob's task is unchanged")
    rest("DELETE", f"/tasks/{theirs['id']}", BOB)


async def no_token() -> None:
    r = httpx2.post(
        MCP_URL,
        headers={"Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    check(r.status_code == 401, f"status {r.status_code}")
    check(r.headers.get("www-authenticate", "").startswith("Bearer"), "WWW-Authenticate: Bearer")
    try:
        async with client("forged", "legacy") as c:
            await c.list_tools()
        raise AssertionError("a forged token must not connect")
    except AssertionError:
        raise
    except BaseException:  # the SDK reports the 401 its own way (an exception group)
        pass


async def negotiated(mode: str, expected: Callable[[str], bool]) -> None:
    async with client(ALICE, mode) as c:
        check(expected(c.protocol_version), f"mode {mode}: protocol {c.protocol_version}")
        print(f"  mode {mode}: protocol {c.protocol_version}")


async def main() -> int:
    scenarios: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("401 without a valid token", no_token),
        ("legacy handshake negotiates 2025-11-25", lambda: negotiated("legacy", lambda v: v == "2025-11-25")),
        ("auto mode agrees on a revision", lambda: negotiated("auto", lambda v: v >= "2025-06-18")),
    ]
    for mode in ["legacy", "auto"]:
        scenarios.append((f"every tool ({mode})", lambda mode=mode: every_tool(mode)))
        scenarios.append((f"refusals ({mode})", lambda mode=mode: refusals(mode)))
    passed = failed = 0
    for name, scenario in scenarios:
        try:
            await asyncio.wait_for(scenario(), timeout=60)
            passed += 1
            print(f"ok   {name}")
        except BaseException as e:  # noqa: BLE001 - report every scenario
            failed += 1
            print(f"FAIL {name}: {e!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The contract checks of scripts/contract.sh, against a live todo-api and
todo-audit (API_URL, AUDIT_URL, TOKEN): each OpenAPI document validated by
openapi-spec-validator, then schemathesis over each with the token, a fixed
seed and a time budget. Exits non-zero on any failure."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

from openapi_spec_validator import validate

SERVICES = [
    # (name, base URL, schemathesis time budget in seconds)
    ("todo-api", os.environ["API_URL"], 100),
    ("todo-audit", os.environ["AUDIT_URL"], 40),
]
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)
SEED = os.environ.get("CONTRACT_SEED", "20261202")
schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")

# The ids of tasks the test created, offered for every `{id}` (most of the
# time; otherwise schemathesis's own strings), so the routes on one task
# reach their logic instead of answering 404.
work = tempfile.mkdtemp()
config = os.path.join(work, "schemathesis.toml")
ids = [i for i in os.environ.get("TASK_IDS", "").split(",") if i]
with open(config, "w") as f:
    if ids:
        f.write("[dictionaries.task_ids]\n")
        f.write("values = [" + ", ".join(json.dumps(i) for i in ids) + "]\n")
        f.write("[parameters]\n")
        f.write('"path.id" = { dictionary = "task_ids", probability = 0.8 }\n')

failed = False
for name, base, _ in SERVICES:
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=30) as r:
        document = json.load(r)
    validate(document)
    print(f"{name}: a valid OpenAPI {document['openapi']} document, {len(document['paths'])} paths", flush=True)

for name, base, budget in SERVICES:
    command = [
        schemathesis,
        "--config-file",
        config,
        "run",
        f"{base}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {os.environ['TOKEN']}",
        "--seed",
        SEED,
        "--max-time",
        str(budget),
        "--max-examples",
        "50",
        "--workers",
        "2",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--no-color",
        # MCP is JSON-RPC over HTTP: the official Python SDK's interop test
        # holds it to its protocol, not a fuzzer to a REST schema.
        "--exclude-path",
        "/mcp",
        # DELETE /me erases the fuzzer's own user: every write after it would
        # answer 403. It takes no input; system-tests/ checks it.
        "--exclude-operation-id",
        "eraseMe",
    ]
    print(f"{name}: schemathesis, at most {budget} s", flush=True)
    # Its cache of examples goes in the working directory: not the repo's.
    done = subprocess.run(command, timeout=budget + 120, cwd=work)
    if done.returncode != 0:
        print(f"{name}: schemathesis found failures (exit {done.returncode})", flush=True)
        failed = True

sys.exit(1 if failed else 0)

#!/usr/bin/env bash
# Offline checks of the monitoring files: the alert rules and their unit
# tests (deploy/prometheus/alerts.yml, alerts.test.yml), the compose
# Prometheus's config, the Grafana dashboard and its provisioning. Needs no
# Docker engine and no running Prometheus; installs promtool (Debian's
# prometheus) and PyYAML if missing. Takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf 'check-observability: %s\n' "$*"; }
fail() { printf 'check-observability: FAILED: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
  step "installing prometheus (apt, for promtool)"
  { apt-get update -qq && apt-get install -y -qq prometheus; } >/dev/null
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  step "installing pyyaml (pip)"
  python3 -m pip install -q --root-user-action=ignore pyyaml >/dev/null
fi
# Every step is bounded: none should take more than a few seconds.
bounded() { timeout 60 "$@"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- Prometheus ----------------------------------------------------------
step "deploy/prometheus/alerts.yml: promtool check rules"
bounded promtool check rules deploy/prometheus/alerts.yml >"$tmp/out" 2>&1 \
  || { cat "$tmp/out"; fail "alerts.yml"; }
step "deploy/prometheus/alerts.test.yml: promtool test rules"
bounded promtool test rules deploy/prometheus/alerts.test.yml >"$tmp/out" 2>&1 \
  || { cat "$tmp/out"; fail "alert unit tests"; }
step "deploy/prometheus/prometheus.yml: promtool check config"
bounded promtool check config deploy/prometheus/prometheus.yml >"$tmp/out" 2>&1 \
  || { cat "$tmp/out"; fail "prometheus.yml"; }

# --- Grafana, and what ties them together ----------------------------------
step "grafana: dashboard panels and queries, provisioning, scrape jobs vs docker-compose.yml"
bounded python3 - "$tmp/panels.rules.yml" <<'EOF' || fail "grafana / scrape config"
import json, re, sys
import yaml

problems = []
def problem(msg):
    problems.append(msg)

def load_yaml(file):
    try:
        with open(file) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        problem(f"{file}: {e}")
        return {}

DASHBOARD = "deploy/grafana/dashboards/todo-platform.json"
try:
    dashboard = json.load(open(DASHBOARD))
except (OSError, ValueError) as e:
    sys.exit(f"  FAIL {DASHBOARD}: {e}")
panels = dashboard.get("panels") or []
if not panels:
    problem(f"{DASHBOARD}: no panels")
if dashboard.get("templating", {}).get("list"):
    problem(f"{DASHBOARD}: template variables {[v.get('name') for v in dashboard['templating']['list']]}: "
            "the queries must run as they are (only $__rate_interval)")
exprs = []
for p in panels:
    title = p.get("title") or f"panel {p.get('id')}"
    targets = [t for t in p.get("targets", []) if str(t.get("expr", "")).strip()]
    if not targets:
        problem(f"{DASHBOARD}: {title}: no target with an expr")
    for t in p.get("targets", []):
        if t.get("datasource", p.get("datasource", {})).get("uid") != "prometheus":
            problem(f"{DASHBOARD}: {title}: target {t.get('refId')} does not use the data source uid prometheus")
    for t in targets:
        expr = t["expr"]
        others = set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval"}
        if others:
            problem(f"{DASHBOARD}: {title}: uses {sorted(others)}; only $__rate_interval is defined")
        for window in re.findall(r"\[([^\]]*)\]", expr):
            if window != "$__rate_interval":
                problem(f"{DASHBOARD}: {title}: window [{window}]; use [$__rate_interval]")
        exprs.append((title, t.get("refId"), expr))

# Each query as a recording rule, for promtool to parse.
rules = [{"record": f"panel_{i}", "expr": e.replace("$__rate_interval", "1m")}
         for i, (_, _, e) in enumerate(exprs)]
with open(sys.argv[1], "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)

# Provisioning: the data source the dashboard names, the folder compose mounts.
ds = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml") or {}
sources = {d.get("uid"): d for d in ds.get("datasources", [])}
if sources.get("prometheus", {}).get("type") != "prometheus" \
        or sources.get("prometheus", {}).get("url") != "http://prometheus:9090":
    problem("provisioning/datasources/prometheus.yml: needs uid prometheus, type prometheus, url http://prometheus:9090")
dp = load_yaml("deploy/grafana/provisioning/dashboards/todo.yml") or {}
paths = [p.get("options", {}).get("path") for p in dp.get("providers", []) if p.get("type", "file") == "file"]
if "/var/lib/grafana/dashboards" not in paths:
    problem("provisioning/dashboards/todo.yml: no file provider reading /var/lib/grafana/dashboards")

# docker-compose.yml: every service of our image is a scrape job on its
# PORT, and Grafana/Prometheus mount these folders.
compose = load_yaml("docker-compose.yml") or {}
services = compose.get("services", {})
prom = load_yaml("deploy/prometheus/prometheus.yml") or {}
if "alerts.yml" not in (prom.get("rule_files") or []):
    problem("deploy/prometheus/prometheus.yml: does not load alerts.yml")
jobs = {j["job_name"]: [t for sc in j.get("static_configs", []) for t in sc.get("targets", [])]
        for j in prom.get("scrape_configs", [])}
for name, svc in services.items():
    command = svc.get("command") or []
    if not str(svc.get("image", "")).startswith("todo-platform") or command[1:] == ["migrate"]:
        continue
    port = (svc.get("environment") or {}).get("PORT")
    if jobs.get(name) != [f"{name}:{port}"]:
        problem(f"deploy/prometheus/prometheus.yml: job {name} should scrape {name}:{port}, has {jobs.get(name)}")
mounts = {name: [str(v) for v in svc.get("volumes", [])] for name, svc in services.items()}
for name, needed in (("prometheus", "./deploy/prometheus:/etc/prometheus"),
                     ("grafana", "./deploy/grafana/provisioning:/etc/grafana/provisioning"),
                     ("grafana", "./deploy/grafana/dashboards:/var/lib/grafana/dashboards")):
    if not any(v.startswith(needed) for v in mounts.get(name, [])):
        problem(f"docker-compose.yml: {name} should mount {needed}")
    if "observability" not in (services.get(name) or {}).get("profiles", []):
        problem(f"docker-compose.yml: {name} should be in the observability profile")

for p in problems:
    print(f"  FAIL {p}")
sys.exit(1 if problems else 0)
EOF
step "grafana: every panel's query parses (promtool, \$__rate_interval = 1m)"
bounded promtool check rules "$tmp/panels.rules.yml" >"$tmp/out" 2>&1 \
  || { cat "$tmp/out"; fail "a dashboard query does not parse"; }

step "all observability checks passed"

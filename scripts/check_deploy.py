#!/usr/bin/env python3
"""Offline checks of the deployment files (called by scripts/check-deploy.sh).

    check_deploy.py compose                     docker-compose.yml
    check_deploy.py dockerfile                  Dockerfile
    check_deploy.py kubernetes RENDERED.yaml... rendered kustomize output(s)
    check_deploy.py render                      deploy/render/render.yaml
    check_deploy.py topics                      redpanda/bootstrap.sh vs the k8s Job
    check_deploy.py monitoring RENDERED.yaml    PodMonitors and PrometheusRule of
                                                a kustomization with the
                                                components/monitoring component
    check_deploy.py prometheusrule              print the component's
                                                prometheusrule.yaml, made
                                                from deploy/prometheus/alerts.yml
    check_deploy.py kustomize DIR               print DIR rendered (fallback
                                                renderer, when no kustomize)

Which environment variables each service reads is checked by the Rust test
shared/platform/tests/it/deploy_env.rs (it scans the sources); this file checks structure
and cross-references. Each check prints one line per problem and exits 1 if
there is any.
"""

import copy
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = ["todo-api", "todo-recurring", "todo-notifier", "todo-audit", "todo-realtime"]
PORTS = {"todo-api": 8080, "todo-recurring": 8081, "todo-notifier": 8082,
         "todo-audit": 8083, "todo-realtime": 8084}
# Services with a PostgreSQL database (todo-realtime has none).
WITH_DATABASE = {"todo-api", "todo-recurring", "todo-notifier", "todo-audit"}
# The services that verify user tokens (the only ones given JWT_SECRET).
VERIFY_TOKENS = {"todo-api", "todo-audit", "todo-realtime"}
SECRETS = {"JWT_SECRET", "DATABASE_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def path(*parts):
    return os.path.join(ROOT, *parts)


def workspace_binaries():
    """Every [[bin]] name of the workspace members."""
    with open(path("Cargo.toml"), "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    bins = set()
    for member in members:
        with open(path(member, "Cargo.toml"), "rb") as f:
            manifest = tomllib.load(f)
        for b in manifest.get("bin", []):
            bins.add(b["name"])
        if not manifest.get("bin") and os.path.exists(path(member, "src", "main.rs")):
            bins.add(manifest["package"]["name"])
    return bins


def load_all(file):
    with open(file) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------- compose --

def check_compose(file):
    where = os.path.relpath(file, ROOT)
    raw = open(file).read()
    for m in re.finditer(r"(?<!\$)\$\{([^}]*)\}", raw):
        if ":-" not in m.group(1) and "-" not in m.group(1):
            problem(where, f"${{{m.group(1)}}} has no default: `docker compose up` would need a .env file")
    doc = yaml.safe_load(raw)
    services = doc.get("services", {})
    bins = workspace_binaries()
    ours = {}
    host_ports = {}
    for name, svc in services.items():
        image = svc.get("image", "")
        if "build" in svc:
            build = svc["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(os.path.dirname(file), context, dockerfile)):
                problem(where, f"{name}: build file {context}/{dockerfile} does not exist")
        if image.startswith("todo-platform"):
            if "build" not in svc:
                problem(where, f"{name}: uses {image} without `build` (compose would try to pull it)")
            command = svc.get("command")
            if not isinstance(command, list) or not command:
                problem(where, f"{name}: our image needs an explicit command (the binary)")
                continue
            if command[0] not in bins:
                problem(where, f"{name}: command {command[0]!r} is not a binary of the workspace {sorted(bins)}")
            if command[1:] == ["migrate"]:
                continue
            ours[command[0]] = name
            env = svc.get("environment", {})
            if isinstance(env, list):
                env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
            port = str(env.get("PORT", PORTS.get(command[0])))
            targets = [str(p).split(":")[-1] for p in svc.get("ports", [])]
            if port not in targets:
                problem(where, f"{name}: listens on {port} (PORT) but publishes {targets}")
            if command[0] in PORTS and port != str(PORTS[command[0]]):
                problem(where, f"{name}: PORT {port}, expected {PORTS[command[0]]}")
        elif not re.search(r":[\w.-]+$", image) or image.endswith(":latest"):
            problem(where, f"{name}: image {image!r} should be pinned to a version tag")
        for p in svc.get("ports", []):
            parts = str(p).split(":")
            host = ":".join(parts[:-1]) or parts[-1]
            if host in host_ports:
                problem(where, f"{name}: host port {host} already published by {host_ports[host]}")
            host_ports[host] = name
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problem(where, f"{name}: depends on unknown service {dep}")
                continue
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy" and "healthcheck" not in services[dep]:
                problem(where, f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_completed_successfully" and services[dep].get("restart", "no") != "no":
                problem(where, f"{name}: waits for one-shot {dep}, which must not restart")
        for vol in svc.get("volumes", []):
            source = str(vol).split(":")[0]
            if source.startswith((".", "/")) and not os.path.exists(os.path.join(os.path.dirname(file), source)):
                problem(where, f"{name}: bind mount source {source} does not exist")
    missing = [s for s in SERVICES if s not in ours]
    if missing:
        problem(where, f"no service runs {missing}")
    migrations = [n for n, s in services.items() if s.get("command") == ["todo-api", "migrate"]]
    if not migrations:
        problem(where, "no one-shot `todo-api migrate` service")
    if "topics" not in services or "bootstrap.sh" not in " ".join(map(str, services["topics"].get("entrypoint", []))):
        problem(where, "no one-shot topic bootstrap service running redpanda/bootstrap.sh")
    for name, svc in services.items():
        if "healthcheck" in svc and svc.get("image", "").startswith("redpandadata/redpanda"):
            if "rpk cluster health" not in " ".join(map(str, svc["healthcheck"]["test"])):
                problem(where, f"{name}: Redpanda's health check should use `rpk cluster health`")


# ------------------------------------------------------------- Dockerfile --

def check_dockerfile(file):
    where = os.path.relpath(file, ROOT)
    text = open(file).read()
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
    stages = []
    for l in lines:
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", l, re.I)
        if m:
            stages.append({"from": m.group(1), "name": m.group(2), "lines": []})
        elif stages:
            stages[-1]["lines"].append(l)
    if not stages:
        problem(where, "no FROM")
        return
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    resolve = lambda s: re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)
    if not resolve(stages[0]["from"]).startswith("rust:"):
        problem(where, "the builder should start from the rust image")
    final = stages[-1]
    if not re.match(r"(debian:bookworm-slim|gcr\.io/distroless/cc)", resolve(final["from"])):
        problem(where, f"runtime stage is {resolve(final['from'])}, expected debian:bookworm-slim or distroless cc")
    users = [l.split()[1] for l in final["lines"] if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problem(where, "the runtime stage must switch to a non-root USER")
    if "cmake" in text.lower().replace("no cmake", "").replace("cmake-build", ""):
        problem(where, "mentions cmake: rdkafka builds librdkafka with make")
    built = set()
    for m in re.finditer(r"for bin in ([^;]+);", text):
        built |= set(m.group(1).split())
    bins = workspace_binaries()
    if built != set(SERVICES):
        problem(where, f"installs {sorted(built)}, expected {SERVICES}")
    for b in built - bins:
        problem(where, f"{b} is not a binary of the workspace")
    # The image drops the benchmarks crate from the workspace with sed: the
    # pattern must still match a line of the root Cargo.toml.
    for m in re.finditer(r"sed -i -E '/(.+?)/d' Cargo\.toml", text):
        pattern = m.group(1)
        if not re.search(pattern, open(path("Cargo.toml")).read(), re.M):
            problem(where, f"sed /{m.group(1)}/d removes nothing from Cargo.toml")
    if "chef cook" not in text and "dummy" not in text.lower():
        problem(where, "no cached dependency layer (cargo chef cook)")
    if not os.path.isfile(path(".dockerignore")):
        problem(where, "no .dockerignore")
    else:
        ignored = [l.strip() for l in open(path(".dockerignore")) if l.strip() and not l.startswith("#")]
        for needed in ("target/", ".git/"):
            if needed not in ignored:
                problem(".dockerignore", f"does not exclude {needed}")
        for kept in ("migrations", "shared", "producer-api", "consumers", "Cargo.lock"):
            if any(i.rstrip("/") == kept for i in ignored):
                problem(".dockerignore", f"excludes {kept}, which the build needs")


# ------------------------------------------------------------- Kubernetes --

def containers_of(obj):
    spec = obj.get("spec", {})
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
    pod = template.get("spec", {})
    return template, pod, pod.get("containers", [])


def check_kubernetes(files):
    secret_template = load_all(path("deploy", "civo", "secret.example.yaml"))
    secret_keys = {}
    for s in secret_template:
        data = {**s.get("stringData", {}), **s.get("data", {})}
        secret_keys[s["metadata"]["name"]] = set(data)
        for k, v in data.items():
            if "REPLACE" not in str(v):
                problem("deploy/civo/secret.example.yaml", f"{k} holds a value, not a REPLACE placeholder")
    bins = workspace_binaries()
    for file in files:
        where = os.path.basename(file)
        docs = load_all(file)
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        if namespaces != {"todo"}:
            problem(where, f"resources in namespaces {namespaces}, expected only todo")
        configmaps = {n: set(d.get("data", {})) for n, d in by_kind.get("ConfigMap", {}).items()}
        services = by_kind.get("Service", {})
        deployed = {}
        for kind in ("Deployment", "StatefulSet", "Job"):
            for name, obj in by_kind.get(kind, {}).items():
                template, pod, containers = containers_of(obj)
                psc = pod.get("securityContext", {})
                if psc.get("runAsNonRoot") is not True:
                    problem(where, f"{kind} {name}: pod securityContext.runAsNonRoot must be true")
                for c in containers:
                    cid = f"{kind} {name}/{c['name']}"
                    sc = c.get("securityContext", {})
                    if sc.get("allowPrivilegeEscalation") is not False:
                        problem(where, f"{cid}: allowPrivilegeEscalation must be false")
                    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                        problem(where, f"{cid}: must drop ALL capabilities")
                    res = c.get("resources", {})
                    if not res.get("requests") or not res.get("limits"):
                        problem(where, f"{cid}: needs resources.requests and .limits")
                    for ref in c.get("envFrom", []):
                        cm = ref.get("configMapRef", {}).get("name")
                        if cm and cm not in configmaps:
                            problem(where, f"{cid}: envFrom ConfigMap {cm} is not in the kustomization")
                        sec = ref.get("secretRef", {}).get("name")
                        if sec and sec not in secret_keys:
                            problem(where, f"{cid}: envFrom Secret {sec} is not in secret.example.yaml")
                    for e in c.get("env", []):
                        ref = e.get("valueFrom", {}).get("secretKeyRef")
                        if ref and ref.get("key") not in secret_keys.get(ref.get("name"), set()):
                            problem(where, f"{cid}: {e['name']} refers to {ref.get('name')}/{ref.get('key')}, absent from secret.example.yaml")
                        ref = e.get("valueFrom", {}).get("configMapKeyRef")
                        if ref and ref.get("key") not in configmaps.get(ref.get("name"), set()):
                            problem(where, f"{cid}: {e['name']} refers to a missing ConfigMap key")
                    command = c.get("command") or []
                    if "todo-platform" not in c.get("image", ""):
                        continue
                    if not command or command[0] not in bins:
                        problem(where, f"{cid}: command {command} does not start with a workspace binary")
                        continue
                    if kind == "Job":
                        if command != ["todo-api", "migrate"]:
                            problem(where, f"{cid}: a Job of our image should run `todo-api migrate`")
                        continue
                    if sc.get("readOnlyRootFilesystem") is not True:
                        problem(where, f"{cid}: readOnlyRootFilesystem must be true")
                    deployed[command[0]] = name
                    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                    if ports.get("http") != PORTS.get(command[0]):
                        problem(where, f"{cid}: http port {ports.get('http')}, expected {PORTS.get(command[0])}")
                    for probe, route in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
                        got = c.get(probe, {}).get("httpGet", {}).get("path")
                        if got != route:
                            problem(where, f"{cid}: {probe} should GET {route}, has {got}")
                    ann = template.get("metadata", {}).get("annotations", {})
                    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/path") != "/metrics" \
                            or ann.get("prometheus.io/port") != str(ports.get("http")):
                        problem(where, f"{cid}: needs prometheus.io/scrape, /port ({ports.get('http')}) and /path annotations")
                    selector = obj["spec"]["selector"]["matchLabels"]
                    if not any(s["spec"].get("selector") == selector for s in services.values()):
                        problem(where, f"{cid}: no Service selects it")
                    if not any(p["spec"]["selector"]["matchLabels"] == selector
                               for p in by_kind.get("PodDisruptionBudget", {}).values()):
                        problem(where, f"{cid}: no PodDisruptionBudget")
                    if command[0] in WITH_DATABASE and not any(
                            e["name"] == "DATABASE_URL" for e in c.get("env", [])):
                        problem(where, f"{cid}: has a database but no DATABASE_URL")
        missing = [s for s in SERVICES if s not in deployed]
        if missing:
            problem(where, f"no Deployment runs {missing}")
        if not any(containers_of(j)[2] and (containers_of(j)[2][0].get("command") == ["todo-api", "migrate"])
                   for j in by_kind.get("Job", {}).values()):
            problem(where, "no migration Job (`todo-api migrate`)")
        hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", {}).values()}
        for name in hpa_targets - set(by_kind.get("Deployment", {})):
            problem(where, f"HPA targets unknown Deployment {name}")
        for needed in ("todo-api", "todo-realtime"):
            if deployed.get(needed) not in hpa_targets:
                problem(where, f"no HorizontalPodAutoscaler for {needed}")
        for ing_name, ing in by_kind.get("Ingress", {}).items():
            backends = set()
            for rule in ing["spec"].get("rules", []):
                for p in rule.get("http", {}).get("paths", []):
                    svc = p["backend"]["service"]
                    backends.add(svc["name"])
                    target = services.get(svc["name"])
                    if not target:
                        problem(where, f"Ingress {ing_name}: backend {svc['name']} is not a Service")
                        continue
                    names = {sp.get("name") for sp in target["spec"]["ports"]}
                    numbers = {sp["port"] for sp in target["spec"]["ports"]}
                    port = svc["port"]
                    if port.get("name") not in names and port.get("number") not in numbers:
                        problem(where, f"Ingress {ing_name}: {svc['name']} has no port {port}")
            for needed in ("todo-api", "todo-realtime"):
                if needed not in backends:
                    problem(where, f"Ingress {ing_name}: does not route to {needed}")
            ann = ing["metadata"].get("annotations", {})
            if "nginx.ingress.kubernetes.io/proxy-read-timeout" not in ann:
                problem(where, f"Ingress {ing_name}: WebSockets need a long proxy-read-timeout")


# ------------------------------------------------------------ render.yaml --

def check_render(file):
    where = os.path.relpath(file, ROOT)
    doc = yaml.safe_load(open(file))
    bins = workspace_binaries()
    groups = {g["name"]: g.get("envVars", []) for g in doc.get("envVarGroups", [])}
    databases = {d["name"] for d in doc.get("databases", [])}
    services = {s["name"]: s for s in doc.get("services", [])}
    if sorted(services) != sorted(SERVICES):
        problem(where, f"services {sorted(services)}, expected {sorted(SERVICES)}")
    expected_type = {"todo-api": "web", "todo-realtime": "web", "todo-audit": "web",
                     "todo-recurring": "worker", "todo-notifier": "worker"}

    def check_vars(owner, env_vars):
        keys = []
        for v in env_vars:
            if "fromGroup" in v:
                if v["fromGroup"] not in groups:
                    problem(where, f"{owner}: fromGroup {v['fromGroup']} is not defined")
                continue
            key = v.get("key")
            keys.append(key)
            sources = [s for s in ("value", "generateValue", "sync", "fromDatabase", "fromService") if s in v]
            if len(sources) != 1:
                problem(where, f"{owner}: {key} needs exactly one source, has {sources}")
            if "sync" in v and v["sync"] is not False:
                problem(where, f"{owner}: {key}: sync must be false (a prompted secret)")
            if key in SECRETS and "value" in v:
                problem(where, f"{owner}: {key} is a secret: never a literal value")
            if "fromDatabase" in v:
                ref = v["fromDatabase"]
                if ref.get("name") not in databases:
                    problem(where, f"{owner}: {key} refers to unknown database {ref.get('name')}")
                if ref.get("property") != "connectionString":
                    problem(where, f"{owner}: {key} should take the database's connectionString")
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            problem(where, f"{owner}: set twice: {sorted(dupes)}")
        return keys

    group_keys = {name: check_vars(f"group {name}", vs) for name, vs in groups.items()}
    for gname, vs in groups.items():
        for v in vs:
            if "fromDatabase" in v or "fromService" in v:
                problem(where, f"group {gname}: environment groups cannot refer to databases or services")
    for name, svc in services.items():
        if svc.get("type") != expected_type.get(name):
            problem(where, f"{name}: type {svc.get('type')}, expected {expected_type.get(name)}")
        if svc.get("runtime") != "docker":
            problem(where, f"{name}: runtime should be docker")
        if not os.path.isfile(os.path.join(ROOT, svc.get("dockerContext", "."), svc.get("dockerfilePath", "./Dockerfile"))):
            problem(where, f"{name}: dockerfilePath {svc.get('dockerfilePath')} does not exist (relative to the repository)")
        command = str(svc.get("dockerCommand", "")).split()
        if not command or command[0] != name or command[0] not in bins:
            problem(where, f"{name}: dockerCommand {svc.get('dockerCommand')!r} should run the {name} binary")
        if "preDeployCommand" in svc and svc["preDeployCommand"].split()[0] not in bins:
            problem(where, f"{name}: preDeployCommand runs no workspace binary")
        if svc.get("type") == "web" and svc.get("healthCheckPath") not in ("/health", "/ready"):
            problem(where, f"{name}: web services need healthCheckPath /health or /ready")
        if svc.get("plan", "starter") == "free":
            problem(where, f"{name}: a free instance sleeps when idle and stops consuming")
        keys = check_vars(name, svc.get("envVars", []))
        for v in svc.get("envVars", []):
            if "fromGroup" in v:
                keys += group_keys.get(v["fromGroup"], [])
        if name in VERIFY_TOKENS and "JWT_SECRET" not in keys:
            problem(where, f"{name}: JWT_SECRET is not set")
        if name not in VERIFY_TOKENS and "JWT_SECRET" in keys:
            problem(where, f"{name}: verifies no tokens, yet gets JWT_SECRET")
        if name in WITH_DATABASE and "DATABASE_URL" not in keys:
            problem(where, f"{name}: DATABASE_URL is not set")
        if name not in WITH_DATABASE and any(k.startswith("DATABASE_") for k in keys):
            problem(where, f"{name}: has no database, yet sets {[k for k in keys if k.startswith('DATABASE_')]}")
    shared = {v.get("key"): v for vs in groups.values() for v in vs}
    if shared.get("KAFKA_SECURITY_PROTOCOL", {}).get("value") != "SASL_SSL":
        problem(where, "Redpanda Cloud needs KAFKA_SECURITY_PROTOCOL=SASL_SSL")
    if shared.get("KAFKA_SASL_MECHANISM", {}).get("value") != "SCRAM-SHA-256":
        problem(where, "Redpanda Cloud needs KAFKA_SASL_MECHANISM=SCRAM-SHA-256")
    for k in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        if shared.get(k, {}).get("sync") is not False:
            problem(where, f"{k} should be prompted (sync: false)")


# ----------------------------------------------------------------- topics --

def topic_table(text, where):
    m = re.search(r"# BEGIN TOPICS\n(.*?)# END TOPICS", text, re.S)
    if not m:
        problem(where, "no `# BEGIN TOPICS` ... `# END TOPICS` block")
        return []
    rows = [l.split() for l in m.group(1).splitlines()]
    return [r for r in rows if len(r) == 3 and not r[0].startswith(("#", "TOPICS"))]


def check_topics():
    compose = topic_table(open(path("redpanda", "bootstrap.sh")).read(), "redpanda/bootstrap.sh")
    job_file = path("deploy", "civo", "redpanda-demo", "topics-job.yaml")
    job = load_all(job_file)[0]
    script = containers_of(job)[2][0]["args"][0]
    demo = topic_table(script, "deploy/civo/redpanda-demo/topics-job.yaml")
    if compose != demo:
        problem("topics", f"redpanda/bootstrap.sh {compose} != topics-job.yaml {demo}")
    names = [r[0] for r in compose]
    for base in ("task-events", "reminders"):
        if base not in names or f"{base}.dlq" not in names:
            problem("topics", f"{base} and {base}.dlq must both be created")
    retention = {r[0]: int(r[2]) for r in compose}
    for base in ("task-events", "reminders"):
        if base in retention and f"{base}.dlq" in retention and retention[f"{base}.dlq"] <= retention[base]:
            problem("topics", f"{base}.dlq should keep messages longer than {base}")
        # Consumers remember processed ids for 14 days (CONSUMER_DEDUP_RETENTION_HOURS).
        if retention.get(base, 0) > 14 * 24 * 3600 * 1000:
            problem("topics", f"{base} retention exceeds the consumers' dedup retention (14 days)")


# ------------------------------------------------------------ monitoring --

ALERTS = path("deploy", "prometheus", "alerts.yml")
PROMETHEUS_RULE = path("deploy", "civo", "components", "monitoring", "prometheusrule.yaml")
REGENERATE = "python3 scripts/check_deploy.py prometheusrule > deploy/civo/components/monitoring/prometheusrule.yaml"


def prometheus_rule_text():
    """deploy/prometheus/alerts.yml as a PrometheusRule: its `groups:` and
    everything after them (comments included), indented under `spec:`."""
    lines = open(ALERTS).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("groups:"))
    body = "\n".join(("  " + l) if l.strip() else "" for l in lines[start:])
    return f"""# GENERATED from deploy/prometheus/alerts.yml (the rules tested by
# alerts.test.yml): do not edit; after changing alerts.yml run
#   {REGENERATE}
# (scripts/check-deploy.sh fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: todo-platform
  namespace: todo
  labels:
    app.kubernetes.io/name: todo-platform
    app.kubernetes.io/part-of: todo-platform
spec:
{body}
"""


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_monitoring(file):
    """A rendering of the platform with components/monitoring: every
    Deployment of our image is scraped by exactly one PodMonitor through a
    named container port, and the PrometheusRule holds alerts.yml's rules."""
    where = os.path.basename(file)
    docs = load_all(file)
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    for d in monitors + rules:
        if d.get("apiVersion") != "monitoring.coreos.com/v1":
            problem(where, f"{d['kind']} {d['metadata']['name']}: apiVersion {d.get('apiVersion')}, expected monitoring.coreos.com/v1")
    if not monitors:
        problem(where, "no PodMonitor")
    for m in monitors:
        name = m["metadata"]["name"]
        spec = m.get("spec", {})
        if not spec.get("selector", {}).get("matchLabels"):
            problem(where, f"PodMonitor {name}: needs spec.selector.matchLabels")
        endpoints = spec.get("podMetricsEndpoints") or []
        if not endpoints:
            problem(where, f"PodMonitor {name}: no podMetricsEndpoints")
        for e in endpoints:
            if not e.get("port"):
                problem(where, f"PodMonitor {name}: an endpoint without a named port")
            if e.get("path", "/metrics") != "/metrics":
                problem(where, f"PodMonitor {name}: path {e.get('path')}, the services serve /metrics")
        if "namespaceSelector" not in spec:
            namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] == "Deployment"}
            if m["metadata"].get("namespace") not in namespaces:
                problem(where, f"PodMonitor {name}: in namespace {m['metadata'].get('namespace')}, "
                               f"the Deployments in {sorted(map(str, namespaces))}, and no namespaceSelector")
    scraped = set()
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        template, _, containers = containers_of(d)
        ours = [c for c in containers if "todo-platform" in c.get("image", "")]
        if not ours:
            continue
        labels = template.get("metadata", {}).get("labels", {})
        binary = (ours[0].get("command") or ["?"])[0]
        matching = [m for m in monitors if selects(m["spec"].get("selector", {}).get("matchLabels"), labels)]
        if len(matching) != 1:
            problem(where, f"Deployment {d['metadata']['name']}: selected by {len(matching)} PodMonitors, expected 1")
            continue
        ports = {p.get("name"): p.get("containerPort") for c in ours for p in c.get("ports", [])}
        for e in matching[0]["spec"].get("podMetricsEndpoints", []):
            if e.get("port") not in ports:
                problem(where, f"PodMonitor {matching[0]['metadata']['name']}: port {e.get('port')!r} "
                               f"is not a named port of {d['metadata']['name']} ({sorted(map(str, ports))})")
            elif ports[e["port"]] != PORTS.get(binary):
                problem(where, f"PodMonitor {matching[0]['metadata']['name']}: port {e['port']} is "
                               f"{ports[e['port']]}, {binary} serves /metrics on {PORTS.get(binary)}")
        scraped.add(binary)
    missing = [s for s in SERVICES if s not in scraped]
    if missing:
        problem(where, f"no PodMonitor scrapes {missing}")
    if len(rules) != 1:
        problem(where, f"{len(rules)} PrometheusRules, expected 1")
    alerts = yaml.safe_load(open(ALERTS))
    for r in rules:
        if r.get("spec", {}).get("groups") != alerts["groups"]:
            problem(where, f"PrometheusRule {r['metadata']['name']}: its groups differ from "
                           f"deploy/prometheus/alerts.yml; run {REGENERATE}")
    # The same rules, yet edited by hand (the comments differ, say).
    if rules and not problems and open(PROMETHEUS_RULE).read() != prometheus_rule_text():
        problem("deploy/civo/components/monitoring/prometheusrule.yaml",
                f"not what deploy/prometheus/alerts.yml makes; run {REGENERATE}")


# -------------------------------------------------- fallback kustomize ----

def deep_merge(base, patch):
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


def kustomize(directory):
    """A small renderer for the features these kustomizations use:
    resources (files and directories), components, namespace, labels
    (metadata and pod templates), images, and strategic-merge patches of
    maps (ConfigMap data). Used only when no kustomize binary exists."""
    file = os.path.join(directory, "kustomization.yaml")
    k = yaml.safe_load(open(file))
    docs = []
    for r in k.get("resources", []):
        target = os.path.normpath(os.path.join(directory, r))
        docs += kustomize(target) if os.path.isdir(target) else load_all(target)
    for c in k.get("components", []):
        comp_dir = os.path.normpath(os.path.join(directory, c))
        comp = yaml.safe_load(open(os.path.join(comp_dir, "kustomization.yaml")))
        for r in comp.get("resources", []):
            docs += load_all(os.path.join(comp_dir, r))
        for p in comp.get("patches", []):
            for patch in load_all(os.path.join(comp_dir, p["path"])):
                for d in docs:
                    if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]:
                        deep_merge(d, {key: v for key, v in patch.items() if key not in ("apiVersion", "kind", "metadata")})
    for d in docs:
        if "namespace" in k and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = k["namespace"]
        for group in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
            tmpl = d.get("spec", {}).get("template")
            if group.get("includeTemplates") and tmpl:
                tmpl.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
                for claim in d["spec"].get("volumeClaimTemplates", []):
                    claim.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
        for img in k.get("images", []):
            for c in containers_of(d)[2]:
                if c.get("image", "").split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img.get('newTag', 'latest')}"
    return docs


def main():
    what = sys.argv[1]
    if what == "compose":
        check_compose(path("docker-compose.yml"))
    elif what == "dockerfile":
        check_dockerfile(path("Dockerfile"))
    elif what == "kubernetes":
        check_kubernetes(sys.argv[2:])
    elif what == "render":
        check_render(path("deploy", "render", "render.yaml"))
    elif what == "topics":
        check_topics()
    elif what == "monitoring":
        check_monitoring(sys.argv[2])
    elif what == "prometheusrule":
        sys.stdout.write(prometheus_rule_text())
        return
    elif what == "kustomize":
        yaml.safe_dump_all(kustomize(sys.argv[2]), sys.stdout, sort_keys=False)
        return
    else:
        sys.exit(f"unknown check {what}")
    for p in problems:
        print(f"  FAIL {p}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()

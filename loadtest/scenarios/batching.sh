#!/usr/bin/env bash
# Dynamic batching on the bench mlp: batch-1 requests, closed loop, batching off vs on with no
# delay (the default: stack only what is already waiting) vs on with a delay, in one run with
# the three alternating. CONNECTIONS (default 64), DELAY_US (default 200), MAX_BATCH (32).
source "$(dirname "$0")/common.sh"
REPOS=()
for setting in "max_batch_size = 1" \
    "max_batch_size = ${MAX_BATCH:-32}, max_queue_delay_us = 0" \
    "max_batch_size = ${MAX_BATCH:-32}, max_queue_delay_us = ${DELAY_US:-200}"; do
    repo=$(mktemp -d)
    mkdir -p "$repo/mlp/1"
    cp "$FIX/bench/repo/mlp/1/model.onnx" "$repo/mlp/1/"
    echo "batching = { $setting }" >"$repo/mlp/model.toml"
    REPOS+=("$repo")
done
start_sluice 18460 "${REPOS[0]}"; OFF=${PIDS[-1]}
start_sluice 18470 "${REPOS[1]}"; NODELAY=${PIDS[-1]}
start_sluice 18480 "${REPOS[2]}"; DELAY=${PIDS[-1]}
C=${CONNECTIONS:-64}
args=(--body "$FIX/bench/mlp_request_b1.json" -c "$C" -d "${DURATION:-10s}")
for _ in 1 2; do
    load_cpu "mlp b1 c=$C batching off" $OFF --url http://127.0.0.1:18460/v2/models/mlp/infer "${args[@]}"
    load_cpu "mlp b1 c=$C batching delay 0" $NODELAY --url http://127.0.0.1:18470/v2/models/mlp/infer "${args[@]}"
    load_cpu "mlp b1 c=$C batching delay ${DELAY_US:-200}us" $DELAY --url http://127.0.0.1:18480/v2/models/mlp/infer "${args[@]}"
done
for port in 18472 18482; do
    curl -s localhost:$port/metrics | grep -E '^sluice_batch_rows_(sum|count)' | sed "s/^/  :$port /"
done
rm -rf "${REPOS[@]}"

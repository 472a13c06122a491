#!/usr/bin/env bash
# Dynamic batching on the bench mlp: batch-1 requests at 64 connections, batching off vs on,
# closed loop, in one run.
source "$(dirname "$0")/common.sh"
OFF=$(mktemp -d); ON=$(mktemp -d)
for repo in "$OFF" "$ON"; do mkdir -p "$repo/mlp/1"; cp "$FIX/bench/repo/mlp/1/model.onnx" "$repo/mlp/1/"; done
echo "batching = { max_batch_size = ${MAX_BATCH:-32}, max_queue_delay_us = ${DELAY_US:-200} }" >"$ON/mlp/model.toml"
start_sluice 18460 "$OFF"
start_sluice 18470 "$ON"
C=${CONNECTIONS:-64}
for _ in 1 2; do
    load "mlp b1 c=$C batching off" --url http://127.0.0.1:18460/v2/models/mlp/infer \
        --body "$FIX/bench/mlp_request_b1.json" -c $C -d "${DURATION:-10s}"
    load "mlp b1 c=$C batching on " --url http://127.0.0.1:18470/v2/models/mlp/infer \
        --body "$FIX/bench/mlp_request_b1.json" -c $C -d "${DURATION:-10s}"
done
curl -s localhost:18472/metrics | grep -E '^sluice_batch_rows_(sum|count)' | sed 's/^/  /'
rm -rf "$OFF" "$ON"

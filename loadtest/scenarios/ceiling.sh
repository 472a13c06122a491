#!/usr/bin/env bash
# sluice vs a do-nothing HTTP server answering the same bytes (the machine's ceiling for this
# request shape): batch-1 churn, v2 JSON, 16 and 64 connections, in one run.
source "$(dirname "$0")/common.sh"
start_sluice 18400 "$FIX/bench/repo"
"$BIN/sluice-ceiling" --port 18410 --response "$FIX/bench/churn_expected_b1.json" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1
for c in 16 64; do
    load "sluice   churn b1 json c=$c" --url http://127.0.0.1:18400/v2/models/churn/infer \
        --body "$FIX/bench/churn_request_b1.json" -c $c -d "${DURATION:-10s}"
    load "ceiling  churn b1 json c=$c" --url http://127.0.0.1:18410/ \
        --body "$FIX/bench/churn_request_b1.json" -c $c -d "${DURATION:-10s}"
done

#!/usr/bin/env bash
# What the prediction log costs: batch-1 churn over v2 JSON at 64 connections with the log off,
# to the local file sink, and to Kafka (a tansu broker started here), alternating twice so that
# the machine's drift shows. Every record carries its inputs (the default).
#   needs: release builds, tansu on PATH (scripts/install-tansu.sh)
source "$(dirname "$0")/common.sh"
export PATH="$HOME/.cargo/bin:$PATH"
WORK=$(mktemp -d)
KAFKA_PORT=18490
# tansu reads the SQLite path relative to its working directory.
(cd "$WORK" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "sqlite://tansu.db") >"$WORK/tansu.log" 2>&1 &
PIDS+=($!)
sleep 1
tansu topic create sluice.predictions --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
tansu topic create sluice.events --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
for sink in none file kafka; do
    sed -e "s|^sink = \"file\"|sink = \"$sink\"|" -e "s|logs/|$WORK/logs/|" \
        -e "s|^brokers = .*|brokers = \"127.0.0.1:$KAFKA_PORT\"|" \
        "$ROOT/config/sluice.toml" >"$WORK/$sink.toml"
done
C=${C:-64}; DURATION=${DURATION:-10s}
run() {
    local sink=$1
    start_sluice 18480 "$FIX/bench/repo" --config "$WORK/$sink.toml"
    load "warm-up" --url http://127.0.0.1:18480/v2/models/churn/infer \
        --body "$FIX/bench/churn_request_b1.json" -c "$C" -d 2s >/dev/null
    load "sink=$sink c=$C" --url http://127.0.0.1:18480/v2/models/churn/infer \
        --body "$FIX/bench/churn_request_b1.json" -c "$C" -d "$DURATION"
    curl -s localhost:18482/metrics | grep -E '^sluice_predlog_(delivered|dropped|failed)_total' | sed 's/^/    /' || true
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}
for round in 1 2; do
    for sink in none file kafka; do run "$sink"; done
done
rm -rf "$WORK"

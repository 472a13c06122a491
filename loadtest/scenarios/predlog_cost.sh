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
BROKER=$!
sleep 1
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tansu topic create sluice.predictions --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
tansu topic create sluice.events --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
# Each run: a sink, and for Kafka optionally its linger ("kafka@20ms").
RUNS=${RUNS:-"none file kafka"}
for run in $RUNS; do
    sink=${run%@*}; linger=5ms
    [[ $run == *@* ]] && linger=${run#*@}
    sed -e "s|^sink = \"file\"|sink = \"$sink\"|" -e "s|logs/|$WORK/logs/|" \
        -e "s|^brokers = .*|brokers = \"127.0.0.1:$KAFKA_PORT\"|" -e "s|^linger = .*|linger = \"$linger\"|" \
        "$ROOT/config/sluice.toml" >"$WORK/$run.toml"
    # Extra librdkafka properties for experiments, e.g. PRODUCER='{ "acks" = "1" }'.
    if [[ -n ${PRODUCER:-} ]]; then
        sed -i "s|^# producer = .*|producer = $PRODUCER|" "$WORK/$run.toml"
    fi
done
C=${C:-64}; DURATION=${DURATION:-10s}
run() {
    local sink=$1
    start_sluice 18480 "$FIX/bench/repo" --config "$WORK/$sink.toml"
    load "warm-up" --url http://127.0.0.1:18480/v2/models/churn/infer \
        --body "$FIX/bench/churn_request_b1.json" -c "$C" -d 2s >/dev/null
    # CPU per request (sluice's own, and the broker's) holds up on a busy machine, where
    # throughput alone moves with whatever else runs.
    local pid=${PIDS[-1]} before after broker_before broker_after
    before=$(cpu_ticks "$pid"); broker_before=$(cpu_ticks "$BROKER")
    "$BIN/sluice-load" --json --quiet --url http://127.0.0.1:18480/v2/models/churn/infer \
        --body "$FIX/bench/churn_request_b1.json" -c "$C" -d "$DURATION" >"$WORK/run.json"
    after=$(cpu_ticks "$pid"); broker_after=$(cpu_ticks "$BROKER")
    python3 - "$WORK/run.json" "$sink" $((after - before)) $((broker_after - broker_before)) "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); sink = sys.argv[2]
ticks, broker, hz = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
n = sum(d['status_counts'].values()); l = d['latency_ms']
ok = d['status_counts'].get('200', 0)
print(f"sink={sink:6s} {d['throughput_rps']:8.0f} req/s  p50 {l['p50']:5.2f} ms  p99 {l['p99']:6.2f} ms  "
      f"sluice CPU {ticks * 1e6 / hz / n:5.1f} us/req  broker CPU {broker * 1e6 / hz / n:5.1f} us/req  non-200 {n - ok}")
PY
    curl -s localhost:18482/metrics | grep -E '^sluice_predlog_(delivered_total|dropped_total|failed_total)\{stream="predictions"(,reason="backlog_full")?\}' | sed 's/^/    /' || true
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}
for round in 1 2; do
    for run in $RUNS; do run "$run"; done
done
rm -rf "$WORK"

#!/usr/bin/env bash
# Batch-1 churn, v2 JSON, defaults (file prediction log with inputs) on the bench repository:
# each binary NAME=PATH given, ROUNDS interleaved rounds of wrk -t1 -c64 -d6s; CPU per request
# is the server's utime+stime from /proc over the round divided by the requests answered
# (user_us_per_req: utime alone, sluice's own code, which moves less between rounds than the
# kernel's share of the socket work).
# NAME=PATH@CONFIG serves that binary with --config CONFIG (e.g. a [runtime] default = "ort").
# Used for the before/after figures of the architecture change:
#   loadtest/scenarios/binaries.sh old=/tmp/sluice-old new=target/release/sluice
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REPO="${REPO:-$ROOT/gateway/tests/fixtures/bench/repo}"
BODY="${BODY:-$ROOT/gateway/tests/fixtures/bench/churn_request_b1.json}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/libonnxruntime.so}"
LUA=$(mktemp --suffix .lua)
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nlocal f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()\n' "$BODY" >"$LUA"
TICK=$(getconf CLK_TCK)
declare -A PID PORT
port=18700
for spec in "$@"; do
    name=${spec%%=*}; bin=${spec#*=}; extra=()
    case "$bin" in *@*) extra=(--config "$(realpath "${bin#*@}")"); bin=${bin%%@*};; esac
    bin=$(realpath "$bin")
    dir=$(mktemp -d)
    (cd "$dir" && exec "$bin" serve "${extra[@]}" --model-repository "$REPO" --http-port $port --grpc-port $((port+1)) --metrics-port $((port+2)) >"$dir/log" 2>&1) &
    PID[$name]=$!; PORT[$name]=$port
    for _ in $(seq 300); do curl -sf -o /dev/null "localhost:$port/v2/health/ready" && break; sleep 0.1; done
    port=$((port+10))
done
for round in $(seq "${ROUNDS:-3}"); do
    for spec in "$@"; do
        name=${spec%%=*}; p=${PORT[$name]}; pid=${PID[$name]}
        curl -sf -o /dev/null -X POST "localhost:$p/v2/models/churn/infer" -d @"$BODY" || echo "$name: request failed"
        before=$(awk '{print $14 + $15}' /proc/$pid/stat); ubefore=$(awk '{print $14}' /proc/$pid/stat)
        out=$(wrk -t1 -c64 -d6s -s "$LUA" --latency "http://127.0.0.1:$p/v2/models/churn/infer")
        after=$(awk '{print $14 + $15}' /proc/$pid/stat); uafter=$(awk '{print $14}' /proc/$pid/stat)
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p99=$(echo "$out" | awk '$1=="99%" {print $2}')
        non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
        us=$(python3 -c "print(round(($after-$before)/$TICK/$reqs*1e6, 1))")
        user=$(python3 -c "print(round(($uafter-$ubefore)/$TICK/$reqs*1e6, 1))")
        echo "round $round $name rps=$rps p99=$p99 cpu_us_per_req=$us user_us_per_req=$user non2xx=${non2xx:-0}"
    done
done
kill "${PID[@]}" 2>/dev/null

#!/usr/bin/env bash
# 3x overload: measure what a slow model (~0.7 ms/row, one worker) sustains closed loop, then
# offer three times that open loop. Reports the admitted (200) requests' latency, the refusals
# (503) and sluice's resident memory before, at its peak during, and after the flood.
# The model must be the bottleneck: with batching the slow model on two workers answers ~12k
# req/s, and three times that is more than this 2-core machine can send and refuse at all, so
# the load generator falls behind its schedule and the latencies measure the machine.
# QUEUE (64), INSTANCES (1), MAX_BATCH (8; 1 turns batching off), DURATION (20s).
source "$(dirname "$0")/common.sh"
REPO=$(mktemp -d)
mkdir -p "$REPO/slow/1"; cp "$FIX/candidates/slow/model.onnx" "$REPO/slow/1/"
CONFIG=$(mktemp)
printf '[runtime]\nqueue_capacity = %s\ninstances = %s\nbatching = { max_batch_size = %s }\n' \
    "${QUEUE:-64}" "${INSTANCES:-1}" "${MAX_BATCH:-8}" >"$CONFIG"
start_sluice 18480 "$REPO" --config "$CONFIG"
PID=${PIDS[-1]}
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$PID/status; }
URL=http://127.0.0.1:18480/v2/models/slow/infer
BODY=$(mktemp)
python3 -c "import json; print(json.dumps({'inputs':[{'name':'input','shape':[1,64],'datatype':'FP32','data':[0.5]*64}]}))" >"$BODY"
capacity=$("$BIN/sluice-load" --json --url $URL --body "$BODY" -c 16 -d 5s --quiet | python3 -c "import json,sys; print(int(json.load(sys.stdin)['throughput_rps']))")
echo "capacity (closed loop, 16 connections): $capacity req/s; queue_capacity ${QUEUE:-64}"
echo "RSS before: $(rss) MiB"
PEAK=$(mktemp); echo 0 >"$PEAK"
( while true; do r=$(rss); [ "$r" -gt "$(cat "$PEAK")" ] && echo "$r" >"$PEAK"; sleep 0.2; done ) &
SAMPLER=$!; PIDS+=($SAMPLER)
"$BIN/sluice-load" --json --quiet --url $URL --body "$BODY" -c 256 --rate $((capacity * 3)) -d "${DURATION:-20s}" | python3 -c "
import json, sys
d = json.load(sys.stdin); ok = d['ok_latency_ms']
print(f\"offered {d['requests'] / d['duration_s']:.0f} req/s (3x): status {d['status_counts']}, errors {d['errors']}\")
print(f\"admitted: {d['status_counts'].get('200', 0) / d['duration_s']:.0f} req/s, p50 {ok['p50']:.2f} ms, p99 {ok['p99']:.2f} ms, max {ok['max']:.2f} ms\")"
kill $SAMPLER
echo "RSS peak during: $(cat "$PEAK") MiB, after: $(rss) MiB"
rm -rf "$REPO" "$CONFIG" "$BODY" "$PEAK"

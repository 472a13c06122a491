#!/usr/bin/env bash
# The benchmark table: sluice (ONNX Runtime and tract), a do-nothing HTTP server answering the
# same bytes (the machine's ceiling), and a FastAPI + onnxruntime baseline (1 and 2 uvicorn
# workers), on the bench churn and mlp models, batch 1 and 8, 16 and 64 connections, closed
# loop, v2 JSON, all in one run. Prints a table with ratios.
#
#   cargo build --release -p sluice -p sluice-loadtest && loadtest/bench/run.sh
#   DURATION=10s loadtest/bench/run.sh       (default 5s per cell after a 1s warm-up)
source "$(dirname "$0")/../scenarios/common.sh"
VENV="$ROOT/.venv-bench"
if [ ! -x "$VENV/bin/uvicorn" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r "$ROOT/loadtest/bench/requirements.txt"
fi
REPO="$FIX/bench/repo"
TRACT_CONFIG=$(mktemp)
printf '[runtime]\ndefault = "tract"\n' >"$TRACT_CONFIG"

start_sluice 18600 "$REPO"
start_sluice 18610 "$REPO" --config "$TRACT_CONFIG"
for workers in 1 2; do
    port=$((18620 + workers))
    REPO="$REPO" "$VENV/bin/uvicorn" --app-dir "$ROOT/loadtest/bench" fastapi_server:app \
        --port $port --workers $workers --no-access-log --log-level warning >/tmp/fastapi-$port.log 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do
    curl -sf -o /dev/null -X POST localhost:18621/v2/models/mlp/infer -d @"$FIX/bench/mlp_request_b1.json" \
        && curl -sf -o /dev/null -X POST localhost:18622/v2/models/mlp/infer -d @"$FIX/bench/mlp_request_b1.json" && break
    sleep 0.2
done

RESULTS=$(mktemp)
cell() { # name url body connections model batch
    local out
    out=$("$BIN/sluice-load" --json --url "$2" --body "$3" -c "$4" -d "${DURATION:-5s}" --warmup 1s 2>/dev/null || true)
    echo "$1 $5 $6 $4 ${out:-{\}}" >>"$RESULTS"
}
CEILING_PORT=18630
for model in churn mlp; do
    for batch in 1 8; do
        body="$FIX/bench/${model}_request_b${batch}.json"
        "$BIN/sluice-ceiling" --port $CEILING_PORT --response "$FIX/bench/${model}_expected_b${batch}.json" >/dev/null 2>&1 &
        ceiling=$!
        sleep 0.3
        for c in 16 64; do
            cell sluice-ort "http://127.0.0.1:18600/v2/models/$model/infer" "$body" $c $model $batch
            if [ $model = mlp ]; then
                cell sluice-tract "http://127.0.0.1:18610/v2/models/$model/infer" "$body" $c $model $batch
            fi
            cell ceiling "http://127.0.0.1:$CEILING_PORT/" "$body" $c $model $batch
            cell fastapi-1w "http://127.0.0.1:18621/v2/models/$model/infer" "$body" $c $model $batch
            cell fastapi-2w "http://127.0.0.1:18622/v2/models/$model/infer" "$body" $c $model $batch
        done
        kill $ceiling; wait $ceiling 2>/dev/null || true
        CEILING_PORT=$((CEILING_PORT + 1))
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    name, model, batch, conns, blob = line.split(" ", 4)
    d = json.loads(blob) if blob.strip() not in ("", "{}") else {}
    rows[(model, batch, conns, name)] = d
print(f"{'model':6} {'b':>2} {'conn':>4} {'server':12} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs ceiling':>10} {'vs fastapi-1w':>13} {'vs fastapi-2w':>13}")
for (model, batch, conns, name), d in sorted(rows.items()):
    if not d:
        print(f"{model:6} {batch:>2} {conns:>4} {name:12} {'failed':>9}")
        continue
    rps = d["throughput_rps"]
    bad = sum(v for k, v in d["status_counts"].items() if k != "200") + sum(d["errors"].values())
    def ratio(other):
        o = rows.get((model, batch, conns, other), {})
        return f"{rps / o['throughput_rps']:.2f}" if o.get("throughput_rps") else "-"
    mark = f" ({bad} non-200)" if bad else ""
    print(f"{model:6} {batch:>2} {conns:>4} {name:12} {rps:9.0f} {d['latency_ms']['p50']:7.2f} {d['latency_ms']['p99']:7.2f} "
          f"{ratio('ceiling'):>10} {ratio('fastapi-1w'):>13} {ratio('fastapi-2w'):>13}{mark}")
PY
rm -f "$RESULTS" "$TRACT_CONFIG"

#!/usr/bin/env bash
# The bench churn model (LightGBM, two classes) through the whole server on each runtime:
# batch-1 requests, closed loop, v2 JSON, one server per runtime (`sluice serve --runtime`),
# rounds alternating. tract refuses two-class tree classifiers (tract-onnx 0.21 inverts their
# labels), which the script shows from the admin API's last load error. CONNECTIONS (default 64), ROUNDS (3).
source "$(dirname "$0")/common.sh"
repo=$(mktemp -d)
mkdir -p "$repo/churn/1"
cp "$FIX/bench/repo/churn/1/model.onnx" "$repo/churn/1/"
start_sluice 18560 "$repo" --runtime trees; TREES=${PIDS[-1]}
start_sluice 18570 "$repo" --runtime ort; ORT=${PIDS[-1]}
start_sluice 18580 "$repo" --runtime tract
for port in 18560 18570 18580; do
    echo "  :$port churn ready: $(curl -s -o /dev/null -w '%{http_code}' localhost:$port/v2/models/churn/ready)" \
        "platform: $(curl -s localhost:$port/v2/models/churn | python3 -c 'import json,sys; print(json.load(sys.stdin).get("platform"))' 2>/dev/null || echo -)"
done
echo "  tract: $(curl -s localhost:18580/admin/v1/models/churn | grep -o 'two-class[^"]*' | head -1)"
C=${CONNECTIONS:-64}
args=(--body "$FIX/bench/churn_request_b1.json" -c "$C" -d "${DURATION:-10s}")
for _ in $(seq "${ROUNDS:-3}"); do
    load_cpu "churn b1 c=$C trees" $TREES --url http://127.0.0.1:18560/v2/models/churn/infer "${args[@]}"
    load_cpu "churn b1 c=$C ort" $ORT --url http://127.0.0.1:18570/v2/models/churn/infer "${args[@]}"
done
rm -rf "$repo"

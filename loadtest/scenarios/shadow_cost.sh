#!/usr/bin/env bash
# What a shadow costs the primary: mlp v1 at a fixed rate with no shadow, with a healthy shadow
# (mlp v2), a slow one (~0.7 ms/row, 40x mlp) and a failing one (a model whose inputs do not
# fit), every request sampled.
source "$(dirname "$0")/common.sh"
REPO=$(mktemp -d)
for v in 1 2; do mkdir -p "$REPO/mlp/$v"; cp "$FIX/bench/repo/mlp/$v/model.onnx" "$REPO/mlp/$v/"; done
mkdir -p "$REPO/mlp/3" "$REPO/mlp/4"
cp "$FIX/candidates/slow/model.onnx" "$REPO/mlp/3/"
cp "$ROOT/models/types/1/model.onnx" "$REPO/mlp/4/"
echo 'version_policy = "all"' >"$REPO/mlp/model.toml"
export SLUICE_ADMIN_TOKEN=scenario
start_sluice 18440 "$REPO"
RATE=${RATE:-3000}; DURATION=${DURATION:-15s}
policy() {
    curl -sf -X PUT localhost:18440/admin/v1/models/mlp/traffic -H "Authorization: Bearer scenario" -d "$1" >/dev/null
}
run() {
    load "$1" --url http://127.0.0.1:18440/v2/models/mlp/infer \
        --body "$FIX/bench/mlp_request_b1.json" -c 32 --rate "$RATE" -d "$DURATION"
}
policy '{"primary": "1"}'
run "no shadow        rate=$RATE"
policy '{"primary": "1", "shadow": {"version": "2", "sample_rate": 1.0}}'
run "healthy shadow   rate=$RATE"
policy '{"primary": "1", "shadow": {"version": "3", "sample_rate": 1.0}}'
run "slow shadow      rate=$RATE"
policy '{"primary": "1", "shadow": {"version": "4", "sample_rate": 1.0}}'
run "failing shadow   rate=$RATE"
curl -s localhost:18440/admin/v1/models/mlp | python3 -c "
import json, sys
for s in json.load(sys.stdin)['shadow']:
    print(f\"  shadow v{s['version']}: compared {s['compared']}, failed {s['failed']}, dropped {s['dropped']}, agreement {s['agreement']}\")"
rm -rf "$REPO"

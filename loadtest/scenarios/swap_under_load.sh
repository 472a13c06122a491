#!/usr/bin/env bash
# Hot swap under load: a fixed-rate run (open loop) on mlp while its primary version is swapped
# 1 <-> 2 every second, against the same run without swaps. Two kinds of swap:
#   MODE=load    (default) through the repository API: each swap loads the new version
#                (session build, warm-up) and unloads the old one;
#   MODE=policy  both versions stay loaded and the traffic policy's primary flips (the
#                instant-rollback path).
source "$(dirname "$0")/common.sh"
REPO=$(mktemp -d)
for v in 1 2; do mkdir -p "$REPO/mlp/$v"; cp "$FIX/bench/repo/mlp/$v/model.onnx" "$REPO/mlp/$v/"; done
MODE=${MODE:-load}
if [ "$MODE" = load ]; then
    echo 'version_policy = { specific = [1] }' >"$REPO/mlp/model.toml"
fi
export SLUICE_ADMIN_TOKEN=scenario
start_sluice 18430 "$REPO"
RATE=${RATE:-2000}; DURATION=${DURATION:-30s}
run() {
    load "$1" --url http://127.0.0.1:18430/v2/models/mlp/infer \
        --body "$FIX/bench/mlp_request_b1.json" -c 32 --rate "$RATE" -d "$DURATION"
}
run "no swaps       rate=$RATE $MODE"
(
    v=1
    while true; do
        v=$((3 - v))
        if [ "$MODE" = load ]; then
            echo "version_policy = { specific = [$v] }" >"$REPO/mlp/model.toml"
            "$BIN/sluice" ctl --url http://127.0.0.1:18430 load mlp >/dev/null || echo "swap failed" >&2
        else
            curl -sf -X PUT localhost:18430/admin/v1/models/mlp/traffic \
                -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN" -d "{\"primary\": \"$v\"}" >/dev/null \
                || echo "swap failed" >&2
        fi
        sleep 1
    done
) &
SWAPPER=$!
PIDS+=($SWAPPER)
run "swap every 1 s rate=$RATE $MODE"
kill $SWAPPER
rm -rf "$REPO"

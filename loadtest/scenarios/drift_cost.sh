#!/usr/bin/env bash
# What inline drift costs: the same model served by two sluices, one with a profile.json and
# drift on, one with drift off, batch-1 and batch-8 requests, closed loop, alternated in one
# run. MODEL=churn (12 features, a probability) or mlp (64 features, an argmax class).
source "$(dirname "$0")/common.sh"
MODEL=${MODEL:-churn}
OFF=$(mktemp -d); ON=$(mktemp -d)
for repo in "$OFF" "$ON"; do mkdir -p "$repo/$MODEL/1"; cp "$FIX/bench/repo/$MODEL/1/model.onnx" "$repo/$MODEL/1/"; done
"$BIN/sluice" profile --model-repository "$ON" --model "$MODEL" --version 1 \
    --sample "$FIX/bench/${MODEL}_sample.npy" >/dev/null
# The prediction log is off in both, so that only drift differs.
printf '[drift]\nenabled = false\n[prediction_log]\nsink = "none"\n' >"$OFF/off.toml"
printf '[drift]\nenabled = true\n[prediction_log]\nsink = "none"\n' >"$ON/on.toml"
start_sluice 18480 "$OFF" --config "$OFF/off.toml"
OFF_PID=${PIDS[-1]}
start_sluice 18490 "$ON" --config "$ON/on.toml"
ON_PID=${PIDS[-1]}
C=${CONNECTIONS:-64}
for _ in 1 2; do
    for b in 1 8; do
        load_cpu "$MODEL b$b c=$C drift off" "$OFF_PID" --url http://127.0.0.1:18480/v2/models/$MODEL/infer \
            --body "$FIX/bench/${MODEL}_request_b$b.json" -c $C -d "${DURATION:-10s}"
        load_cpu "$MODEL b$b c=$C drift on " "$ON_PID" --url http://127.0.0.1:18490/v2/models/$MODEL/infer \
            --body "$FIX/bench/${MODEL}_request_b$b.json" -c $C -d "${DURATION:-10s}"
    done
done
curl -s localhost:18492/metrics | grep -E '^sluice_(prediction_drift_psi|drift_window_rows)' | sed 's/^/  /'
rm -rf "$OFF" "$ON"

#!/usr/bin/env bash
# Batch-1 churn over HTTP JSON, HTTP binary (Triton's extension) and gRPC, 64 connections.
source "$(dirname "$0")/common.sh"
start_sluice 18420 "$FIX/bench/repo"
BINARY=$(mktemp)
python3 - "$FIX/bench/churn_request_b1.json" "$BINARY" >/tmp/binary-header-length <<'PY'
import json, struct, sys
request = json.load(open(sys.argv[1]))
data = request["inputs"][0]["data"]
header = json.dumps({
    "inputs": [{"name": "input", "shape": [1, 12], "datatype": "FP32",
                "parameters": {"binary_data_size": 4 * len(data)}}],
    "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"binary_data": True}}],
}).encode()
open(sys.argv[2], "wb").write(header + struct.pack(f"<{len(data)}f", *data))
print(len(header))
PY
HL=$(cat /tmp/binary-header-length)
C=${CONNECTIONS:-64}
load "http json   c=$C" --url http://127.0.0.1:18420/v2/models/churn/infer \
    --body "$FIX/bench/churn_request_b1.json" -c $C -d "${DURATION:-10s}"
load "http binary c=$C" --url http://127.0.0.1:18420/v2/models/churn/infer --body "$BINARY" \
    -H "Inference-Header-Content-Length: $HL" -H "Content-Type: application/octet-stream" \
    -c $C -d "${DURATION:-10s}"
load "grpc        c=$C" --protocol grpc --url http://127.0.0.1:18421/v2/models/churn/infer \
    --body "$FIX/bench/churn_request_b1.json" -c $C -d "${DURATION:-10s}"
rm -f "$BINARY"

# Shared helpers for the measurement scenarios. Source it; needs release builds:
#   cargo build --release -p sluice -p sluice-loadtest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# SLUICE_BIN_DIR: binaries built elsewhere (e.g. a shared CARGO_TARGET_DIR, copied aside).
BIN="${SLUICE_BIN_DIR:-$ROOT/target/release}"
FIX="$ROOT/gateway/tests/fixtures"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/libonnxruntime.so}"
export NO_COLOR=1 RUST_LOG="${RUST_LOG:-warn}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_sluice PORT_BASE REPO [extra serve args...]: HTTP on PORT_BASE, gRPC +1, metrics +2.
start_sluice() {
    local base=$1 repo=$2; shift 2
    "$BIN/sluice" serve --model-repository "$repo" --http-port "$base" \
        --grpc-port $((base + 1)) --metrics-port $((base + 2)) "$@" >"/tmp/sluice-$base.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -sf "localhost:$base/v2/health/ready" >/dev/null && return 0
        sleep 0.1
    done
    echo "sluice on $base did not become ready" >&2; cat "/tmp/sluice-$base.log" >&2; return 1
}

# load LABEL sluice-load-args...: one run, one summary line.
load() {
    local label=$1; shift
    "$BIN/sluice-load" --json --quiet "$@" | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['latency_ms']
bad = sum(v for k, v in d['status_counts'].items() if k != '200') + sum(d['errors'].values())
print(f\"{'$label':34s} {d['throughput_rps']:9.0f} req/s  p50 {l['p50']:6.2f} ms  p99 {l['p99']:6.2f} ms  max {l['max']:7.2f} ms  non-200/errors {bad}\")"
}

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# load_cpu LABEL PID sluice-load-args...: like `load`, plus the CPU that process PID spent per
# request. CPU per request holds up on a busy machine, where throughput moves with whatever
# else runs.
load_cpu() {
    local label=$1 pid=$2; shift 2
    local before after out
    out=$(mktemp)
    before=$(cpu_ticks "$pid")
    "$BIN/sluice-load" --json --quiet "$@" >"$out"
    after=$(cpu_ticks "$pid")
    python3 - "$out" "$label" $((after - before)) "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); label = sys.argv[2]; ticks, hz = int(sys.argv[3]), int(sys.argv[4])
n = sum(d['status_counts'].values()); l = d['latency_ms']
bad = n - d['status_counts'].get('200', 0) + sum(d['errors'].values())
print(f"{label:34s} {d['throughput_rps']:9.0f} req/s  p50 {l['p50']:6.2f} ms  p99 {l['p99']:6.2f} ms  "
      f"CPU {ticks * 1e6 / hz / max(n, 1):6.1f} us/req  non-200/errors {bad}")
PY
    rm -f "$out"
}

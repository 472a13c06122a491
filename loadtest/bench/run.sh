#!/usr/bin/env bash
# The benchmark table: sluice (defaults: file prediction log with inputs; the log off; the log
# to Kafka when tansu is on PATH; tract for mlp), a do-nothing hyper server answering the same
# bytes (the machine's ceiling), and a FastAPI + onnxruntime baseline (1 uvicorn worker), on the
# bench churn and mlp models, batch 1 and 8, closed loop, v2 JSON. Every server is measured in
# ROUNDS interleaved rounds (so that a busy machine's drift lands on all of them alike) and the
# table shows medians: throughput, p50/p99, and CPU per request (user+system CPU of the
# server's whole process tree, from /proc, over the requests answered), each also as a ratio to
# the ceiling. The Kafka row's CPU is sluice's own; the broker's is printed apart.
#
#   cargo build --release -p sluice -p sluice-loadtest && loadtest/bench/run.sh
#   LOAD=sluice-load loadtest/bench/run.sh     (the load generator: wrk (default) or sluice-load)
#   ROUNDS=5 DURATION=10s CONNS="16 64" loadtest/bench/run.sh   (defaults: 3, 6s, 64)
#   SMOKE=1 loadtest/bench/run.sh              (CI: every server once for 1s, churn b1, no FastAPI)
source "$(dirname "$0")/../scenarios/common.sh"
export PATH="$HOME/.cargo/bin:$PATH"
LOAD=${LOAD:-wrk}
if [ "$LOAD" = wrk ] && ! command -v wrk >/dev/null; then
    echo "wrk not found: using sluice-load" >&2
    LOAD=sluice-load
fi
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-6s}; CONNS=${CONNS:-64}
ROWS=${ROWS:-"churn:1 churn:8 mlp:1 mlp:8"}
FASTAPI=${FASTAPI:-1}
if [ -n "${SMOKE:-}" ]; then
    ROUNDS=1; DURATION=1s; CONNS=16; ROWS="churn:1"; FASTAPI=0
fi
WORK=$(mktemp -d)
REPO="$FIX/bench/repo"

# Configs: the documented defaults with the log's files in $WORK, the log off, Kafka, tract.
sed -e "s|logs/|$WORK/logs/|" "$ROOT/config/sluice.toml" >"$WORK/defaults.toml"
sed -e 's|^sink = "file"|sink = "none"|' "$WORK/defaults.toml" >"$WORK/logoff.toml"
sed -e 's|^default = "auto"|default = "tract"|' "$WORK/defaults.toml" >"$WORK/tract.toml"

declare -A PORT PID
SERVERS=()
serve() { # name port config
    start_sluice "$2" "$REPO" --config "$3"
    PORT[$1]=$2; PID[$1]=${PIDS[-1]}; SERVERS+=("$1")
}
serve sluice 18600 "$WORK/defaults.toml"
serve sluice-logoff 18610 "$WORK/logoff.toml"
serve sluice-tract 18620 "$WORK/tract.toml"
BROKER=
if command -v tansu >/dev/null; then
    KAFKA_PORT=18690
    (cd "$WORK" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "sqlite://tansu.db") \
        >"$WORK/tansu.log" 2>&1 &
    PIDS+=($!); BROKER=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT) 2>/dev/null && break; sleep 0.1; done
    for topic in sluice.predictions sluice.events; do
        tansu topic create $topic --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 || true
    done
    sed -e 's|^sink = "file"|sink = "kafka"|' -e "s|^brokers = .*|brokers = \"127.0.0.1:$KAFKA_PORT\"|" \
        "$WORK/defaults.toml" >"$WORK/kafka.toml"
    serve sluice-kafka 18640 "$WORK/kafka.toml"
fi
if [ "$FASTAPI" = 1 ]; then
    VENV="$ROOT/.venv-bench"
    if [ ! -x "$VENV/bin/uvicorn" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q -r "$ROOT/loadtest/bench/requirements.txt"
    fi
    REPO="$REPO" "$VENV/bin/uvicorn" --app-dir "$ROOT/loadtest/bench" fastapi_server:app \
        --port 18650 --workers 1 --no-access-log --log-level warning >"$WORK/fastapi.log" 2>&1 &
    PIDS+=($!); PORT[fastapi]=18650; PID[fastapi]=$!; SERVERS+=(fastapi)
    for _ in $(seq 150); do
        curl -sf -o /dev/null -X POST localhost:18650/v2/models/mlp/infer -d @"$FIX/bench/mlp_request_b1.json" && break
        sleep 0.2
    done
fi

# utime + stime, in clock ticks, of a process and every descendant (uvicorn's workers).
tree_ticks() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); stats = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            stats[int(p)] = (int(f[1]), int(f[11]) + int(f[12]))
        except OSError:
            pass
tree, frontier = {root}, [root]
while frontier:
    parent = frontier.pop()
    for pid, (ppid, _) in stats.items():
        if ppid == parent and pid not in tree:
            tree.add(pid); frontier.append(pid)
print(sum(stats[p][1] for p in tree if p in stats))
PY
}

# One cell: NAME PID URL BODY CONNECTIONS -> one JSON line (rps, p50/p99 ms, CPU us/request).
cell() {
    local name=$1 pid=$2 url=$3 body=$4 c=$5 out before after broker_before=0 broker_after=0
    curl -sf -o /dev/null -X POST "$url" -d @"$body" || echo "$name: warm-up request failed" >&2
    before=$(tree_ticks "$pid")
    [ -n "$BROKER" ] && broker_before=$(tree_ticks "$BROKER")
    if [ "$LOAD" = wrk ]; then
        printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nlocal f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()\n' \
            "$body" >"$WORK/body.lua"
        out=$(wrk -t1 -c"$c" -d"$DURATION" -s "$WORK/body.lua" --latency "$url" 2>&1 || true)
    else
        out=$("$BIN/sluice-load" --json --quiet --url "$url" --body "$body" -c "$c" -d "$DURATION" 2>/dev/null || true)
    fi
    after=$(tree_ticks "$pid")
    [ -n "$BROKER" ] && broker_after=$(tree_ticks "$BROKER")
    python3 - "$LOAD" $((after - before)) $((broker_after - broker_before)) "$(getconf CLK_TCK)" "$out" <<'PY'
import json, re, sys
load, ticks, broker, hz, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
try:
    if load == "wrk":
        n = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        bad = int(m.group(1)) if m else 0
    else:
        d = json.loads(out)
        n = sum(d["status_counts"].values()); rps = d["throughput_rps"]
        p50, p99 = d["latency_ms"]["p50"], d["latency_ms"]["p99"]
        bad = n - d["status_counts"].get("200", 0) + sum(d["errors"].values())
    print(json.dumps({"rps": rps, "p50": p50, "p99": p99, "bad": bad,
                      "cpu_us": ticks * 1e6 / hz / max(n, 1), "broker_us": broker * 1e6 / hz / max(n, 1)}))
except (AttributeError, ValueError, KeyError):
    print("{}")
PY
}

RESULTS="$WORK/results"
for round in $(seq "$ROUNDS"); do
    # One ceiling per row, on the same ports every round (18660 and up: clear of the servers').
    CEILING_PORT=18660
    for row in $ROWS; do
        model=${row%:*}; batch=${row#*:}
        body="$FIX/bench/${model}_request_b${batch}.json"
        "$BIN/sluice-ceiling" --port $CEILING_PORT --response "$FIX/bench/${model}_expected_b${batch}.json" >/dev/null 2>&1 &
        ceiling=$!
        sleep 0.3
        for c in $CONNS; do
            servers=(ceiling "${SERVERS[@]}")
            for name in "${servers[@]}"; do
                # The log variants are measured on churn batch 1; tract serves mlp only.
                case "$name" in
                    sluice-logoff|sluice-kafka) [ "$row" = churn:1 ] || continue ;;
                    sluice-tract) [ "$model" = mlp ] || continue ;;
                esac
                if [ "$name" = ceiling ]; then
                    pid=$ceiling; url="http://127.0.0.1:$CEILING_PORT/"
                else
                    pid=${PID[$name]}; url="http://127.0.0.1:${PORT[$name]}/v2/models/$model/infer"
                fi
                echo "$model $batch $c $name $(cell "$name" "$pid" "$url" "$body" "$c")" >>"$RESULTS"
            done
        done
        kill $ceiling 2>/dev/null || true; wait $ceiling 2>/dev/null || true
        CEILING_PORT=$((CEILING_PORT + 1))
    done
done

echo "load: $LOAD, $ROUNDS interleaved rounds of $DURATION per cell, medians; $(nproc) cores, $(date -u +%Y-%m-%d)"
status=0
python3 - "$RESULTS" ${SMOKE:+smoke} <<'PY' || status=$?
import json, statistics, sys
cells = {}
for line in open(sys.argv[1]):
    model, batch, conns, name, blob = line.split(" ", 4)
    d = json.loads(blob)
    cells.setdefault((model, int(batch), int(conns), name), []).append(d)
def med(runs, key):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None
print(f"{'model':6} {'b':>2} {'conn':>4} {'server':14} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
      f"{'CPU us/req':>10} {'rps/ceil':>8} {'CPU/ceil':>8} {'p99/ceil':>8}")
order = ["ceiling", "sluice", "sluice-logoff", "sluice-kafka", "sluice-tract", "fastapi"]
failed = 0
for key in sorted(cells, key=lambda k: (k[0], k[1], k[2], order.index(k[3]))):
    model, batch, conns, name = key
    runs = cells[key]
    rps = med(runs, "rps")
    if rps is None:
        print(f"{model:6} {batch:>2} {conns:>4} {name:14} {'failed':>8}")
        failed += 1
        continue
    ceiling = cells.get((model, batch, conns, "ceiling"), [])
    def ratio(k):
        c = med(ceiling, k)
        return f"{med(runs, k) / c:.2f}" if c else "-"
    bad = sum(r.get("bad", 0) for r in runs)
    failed += bad > 0
    extra = f"  broker {med(runs, 'broker_us'):.1f} us/req" if name == "sluice-kafka" else ""
    extra += f"  ({bad} non-2xx)" if bad else ""
    print(f"{model:6} {batch:>2} {conns:>4} {name:14} {rps:8.0f} {med(runs, 'p50'):7.2f} {med(runs, 'p99'):7.2f} "
          f"{med(runs, 'cpu_us'):10.1f} {ratio('rps'):>8} {ratio('cpu_us'):>8} {ratio('p99'):>8}{extra}")
# The smoke run (CI) fails on a server that did not answer, or answered anything but 2xx.
sys.exit(1 if failed and len(sys.argv) > 2 else 0)
PY
rm -rf "$WORK"
exit $status

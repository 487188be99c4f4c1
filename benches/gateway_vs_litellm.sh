#!/usr/bin/env bash
# The gateway example side by side with LiteLLM's proxy: the same
# config.yaml, the same mock upstream (the mock_server example, in its own
# process), the same open-loop load generator (benches/gateway_load.rs).
#
#   bash benches/gateway_vs_litellm.sh            # everything (~15 min)
#   ONLY=gateway bash benches/gateway_vs_litellm.sh   # without LiteLLM
#
# For each mode (whole answers, streams) it measures, at 50, 200 and 1,000
# requests/s for DURATION seconds each (default 10): the p50 and p99 of the
# time to the first byte and to the end, calling the mock directly and
# through each gateway; the added latency is the difference. Then it raises
# the rate until a target fails a request or its p99 passes 1 s: the
# highest rate it sustained. Results go to target/gateway-bench/, one JSON
# line per run, and a Markdown table on stdout.
#
# LiteLLM is installed into a venv under target/ (litellm[proxy] pinned, as
# ../PEERS.md found it installs here, with prisma, without which it answers
# a keyless request with a 500). It runs with one worker, as the gateway
# runs on one machine's cores. Needs python3 and network access to PyPI on
# the first run. Not part of CI: a load test of minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

LITELLM_VERSION=${LITELLM_VERSION:-1.100.5}
DURATION=${DURATION:-10}
ONLY=${ONLY:-}
OUT=target/gateway-bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url, seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if curl -sf -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "not up: $1" >&2
  return 1
}

echo "--- build (release)"
cargo build --release --all-features --example gateway --example mock_server
LOADGEN=$(cargo bench --all-features --bench gateway_load --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="gateway_load" and m.get("executable"):
        print(m["executable"])')

if [ "$ONLY" != "gateway" ]; then
  VENV=target/litellm-venv
  if [ ! -x "$VENV/bin/litellm" ]; then
    echo "--- installing litellm[proxy]==$LITELLM_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" prisma
  fi
fi

echo "--- mock upstream"
./target/release/examples/mock_server > "$OUT/mock.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -q '^openai:' "$OUT/mock.out" 2>/dev/null && break; sleep 0.1; done
UPSTREAM=$(awk '/^openai:/ {print $2}' "$OUT/mock.out")

cat > "$OUT/config.yaml" <<EOF
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: $UPSTREAM
      api_key: sk-upstream
general_settings:
  master_key: sk-bench-master
EOF

echo "--- gateway"
GW_PORT=$(free_port)
./target/release/examples/gateway --config "$OUT/config.yaml" --host 127.0.0.1 --port "$GW_PORT" \
  2> "$OUT/gateway.log" &
pids+=($!)
wait_http "http://127.0.0.1:$GW_PORT/health/liveliness" 20

declare -A URL
URL[direct]="$UPSTREAM/chat/completions"
URL[gateway]="http://127.0.0.1:$GW_PORT/v1/chat/completions"
TARGETS="direct gateway"

if [ "$ONLY" != "gateway" ]; then
  echo "--- litellm $LITELLM_VERSION"
  LL_PORT=$(free_port)
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=ERROR \
    "$VENV/bin/litellm" --config "$OUT/config.yaml" --host 127.0.0.1 --port "$LL_PORT" \
    --num_workers 1 > "$OUT/litellm.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$LL_PORT/health/liveliness" 90
  URL[litellm]="http://127.0.0.1:$LL_PORT/v1/chat/completions"
  TARGETS="direct gateway litellm"
fi

run() { # target, rate, stream(0/1), duration, phase -> JSON line
  local flag=""
  [ "$3" = 1 ] && flag="--stream"
  "$LOADGEN" --url "${URL[$1]}" --key sk-bench-master --rate "$2" --duration "$4" $flag \
    | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['target']='$1'; d['phase']='$5'; print(json.dumps(d))" \
    | tee -a "$RESULTS"
}

warm() { # each target, a few seconds, results not kept
  for t in $TARGETS; do
    "$LOADGEN" --url "${URL[$t]}" --key sk-bench-master --rate 20 --duration 2 > /dev/null
  done
}

echo "--- fixed rates"
warm
for stream in 0 1; do
  for rate in 50 200 1000; do
    for t in $TARGETS; do
      run "$t" "$rate" "$stream" "$DURATION" fixed > /dev/null
      sleep 1
    done
  done
done

echo "--- highest sustained rate"
for stream in 0 1; do
  for t in $TARGETS; do
    for rate in 50 100 200 300 500 700 1000 1500 2000 3000 4000 6000; do
      line=$(run "$t" "$rate" "$stream" 5 ramp)
      ok=$(echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(int(d["failed"]==0 and d["total_p99_ms"]<1000))')
      echo "$line" | sed 's/^/  /' | cut -c1-160 >&2
      sleep 1
      [ "$ok" = 1 ] || break
    done
  done
done

echo "--- results ($RESULTS)"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def key(r): return (r["target"], r["stream"], r["rate"])
fixed, ramp = {}, {}
for r in rows:
    (fixed if r["phase"] == "fixed" else ramp)[key(r)] = r
targets = sorted({r["target"] for r in rows if r["target"] != "direct"})
for stream in (False, True):
    print(f"\n### {'streaming' if stream else 'whole answers'}\n")
    print("| rate (req/s) | target | TTFB p50 | TTFB p99 | total p50 | total p99 | added p50 | added p99 | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in (50, 200, 1000):
        base = fixed.get(("direct", stream, rate))
        for t in ["direct"] + targets:
            r = fixed.get((t, stream, rate))
            if not r: continue
            add = lambda k: (f"{r[k]-base[k]:+.2f} ms" if base and t != "direct" else "")
            print(f"| {rate} | {t} | {r['ttfb_p50_ms']:.2f} ms | {r['ttfb_p99_ms']:.2f} ms | "
                  f"{r['total_p50_ms']:.2f} ms | {r['total_p99_ms']:.2f} ms | "
                  f"{add('total_p50_ms')} | {add('total_p99_ms')} | {r['failed']} |")
    print()
    for t in ["direct"] + targets:
        ok = [k[2] for k, r in ramp.items() if k[0] == t and k[1] == stream
              and r["failed"] == 0 and r["total_p99_ms"] < 1000]
        print(f"- highest sustained rate, {t}: {max(ok) if ok else 'none of the rates tried'} req/s")
PY

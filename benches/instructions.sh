#!/usr/bin/env bash
# What the README stack costs over the bare provider in instructions and
# L1 cache misses, not seconds: the `peers` benchmark's clients run under
# valgrind, whose counts move far less than CPU time over loopback, which
# drifts by several microseconds per call between runs. They still move by
# a thousand or two per call between runs minutes apart (how reads split
# and where malloc finds room depend on timing): compare two builds by
# running them alternately, not against a figure from earlier.
#
#   bash benches/instructions.sh          # short calls and streamed events (~1 min)
#
# Each client runs twice, with fewer and more rounds; the difference,
# divided by the calls (or events) between the two, leaves out start-up:
# the cost of one more call (or event). Then the same under cachegrind's
# cache simulation, for the misses. The server process is not counted
# (valgrind follows no child). Needs valgrind (on every machine here, or
# Debian's package). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --bench peers --no-run 2>/dev/null
BIN=$(cargo bench --bench peers --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "peers" and m.get("executable"):
        print(m["executable"])')

# Instructions (and, with cachegrind, misses) for one run: $1 tool, $2
# client, $3 workload, $4 rounds.
counts() {
    local out sim=()
    [ "$1" = cachegrind ] && sim=(--cache-sim=yes)
    out=$(PEERS_CLIENT="$2" PEERS_WORKLOAD="$3" PEERS_ROUNDS="$4" \
        valgrind --tool="$1" "${sim[@]}" --"$1"-out-file=/dev/null \
        "$BIN" --bench 2>&1 >/dev/null)
    local refs i1 d1
    refs=$(grep -E 'Collected|I +refs' <<<"$out" | grep -oE '[0-9,]+$' | tr -d , | tail -1)
    i1=$(grep -E 'I1 +misses' <<<"$out" | grep -oE '[0-9,]+$' | tr -d , || echo 0)
    d1=$(grep -E 'D1 +misses' <<<"$out" | grep -oE '[0-9,]+ +\(' | grep -oE '[0-9,]+' | tr -d , || echo 0)
    echo "$refs ${i1:-0} ${d1:-0}"
}

# $1 workload, $2 and $3 rounds, $4 units per round, $5 unit name.
measure() {
    echo "$1: per $5, the stack beside bare (instructions; L1 misses, instruction and data)"
    for client in bare "README stack"; do
        read -r a _ _ <<<"$(counts callgrind "$client" "$1" "$2")"
        read -r b _ _ <<<"$(counts callgrind "$client" "$1" "$3")"
        read -r _ i1a d1a <<<"$(counts cachegrind "$client" "$1" "$2")"
        read -r _ i1b d1b <<<"$(counts cachegrind "$client" "$1" "$3")"
        local units=$(( ($3 - $2) * $4 ))
        printf '  %-14s %8d instructions  %6d I1  %6d D1\n' "$client" \
            $(( (b - a) / units )) $(( (i1b - i1a) / units )) $(( (d1b - d1a) / units ))
    done
}

# A round of short/1 is 200 calls; of stream/1, 4 streams of 1,000 events.
measure short/1 2 6 200 call
measure stream/1 1 3 4000 event

#!/bin/bash
# End-to-end latency of `tomo-streamer run` on one rank: last frame -> volume written,
# streaming (fixed CoR, accumulators fit) against reconstruction at close (the same
# pipeline, streaming refused by a --memory budget the accumulators do not fit).
# A simulated scan of WIDTH columns, ROWS rows and P projections is sent at RATE frames/s;
# the figure is the `latency:` line `run` prints under `volume:`. Pairs alternate.
# Usage: tools/bench_run_streaming.sh [RUNS] [WIDTH] [ROWS] [P] [RATE] [MEMORY_GIB]
set -euo pipefail
runs=${1:-5}; width=${2:-512}; rows=${3:-32}; angles=${4:-600}; rate=${5:-60}
memory=${6:-0.1}  # at-close runs: small enough that the accumulators do not fit
here=$(cd "$(dirname "$0")/.." && pwd)
ts=${TOMO_STREAMER:-$here/.venv/bin/tomo-streamer}
work=$(mktemp -d)
center=$(python3 -c "print(($width - 1) / 2)")
printf 'pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fourier_fbp\n    parameters: {center: %s}\n' "$center" > "$work/p.yaml"
one() {  # one scan through run; prints its latency line
  local out=$work/$1; shift
  local port=$((20000 + RANDOM % 20000))
  "$ts" run "$work/p.yaml" --scans 1 --out "$out" --block 50 --listen "tcp://127.0.0.1:$port" \
    "$@" > "$out.log" 2>&1 &
  local pid=$!
  sleep 4  # the service binds (a readiness handshake would be better; a benchmark only)
  "$ts" simulate --connect "tcp://127.0.0.1:$port" --rows "$rows" --cols "$width" \
    --projections "$angles" --rate "$rate" --scan-id s > "$out.sim.log" 2>&1
  wait "$pid" || true
  grep -h "^  latency" "$out.log"
}
uptime
for i in $(seq "$runs"); do
  one "s$i"; one "b$i" --memory "$memory"
done
uptime
rm -rf "$work"

#!/bin/bash
# End-to-end latency of `tomo-streamer run` on RANKS ranks: last frame -> volume written,
# streaming (fixed CoR, accumulators fit) against reconstruction at close (the same
# pipeline, streaming refused by a --memory budget the accumulators do not fit).
# A simulated scan of WIDTH columns, ROWS rows and P projections is sent at RATE frames/s;
# the figure is the `latency:` line `run` prints under `volume:`. Pairs alternate.
# Each run also prints the plan's `reconstruction:` line (streaming or at close, and why),
# any fallback, and the sender's summary (with CANNOT_WAIT=1 the simulated detector cannot
# be held back: frames the consumer cannot take at once are dropped and counted, `DROPPED`).
# RANKS > 1 runs `mpiexec -n RANKS tomo-streamer run --from ADDR` (every rank connects; the
# simulated detector binds and deals frames round-robin to the ranks); 1 rank listens.
# EARLY=1: the CoR is left to be found (nothing carried: a 180° scan's first scan of its
# sample); *streaming* is `run`'s default early CoR estimate (`--early-center 0.5`), *at
# close* is `--early-center off` (the CoR policy at close, as before the early estimate);
# MEMORY_GIB is not used then.
# BATCH=1: the second figure is not `run` at close but issue 19's denominator: the wall time
# of `tomo-streamer recon` (under `mpiexec -n RANKS` for RANKS > 1) of the same scan, saved
# once by `simulate --save` with the same options (the same seed: the same frames), with the
# same pipeline file and recon's own memory plan; printed as `recon wall X s` (the whole
# command, start-up included), then the largest difference between its volume and the
# streamed one relative to the volume's peak (`recon vs run`: the two are the same scan).
# TIMELINE=1 (RANKS > 1): the ranks run under tools/rank_timeline.py, which prints per rank
# what ran after its last projection frame (accumulator adds, projection blocks, close).
# Usage: [CANNOT_WAIT=1] [ONLY=streaming|close] [BATCH=1] [TIMELINE=1] tools/bench_run_streaming.sh [RUNS] [WIDTH] [ROWS] [P] [RATE] [MEMORY_GIB] [RANKS]
set -euo pipefail
runs=${1:-5}; width=${2:-512}; rows=${3:-32}; angles=${4:-600}; rate=${5:-60}
memory=${6:-0.1}  # at-close runs (per rank): small enough that the accumulators do not fit
ranks=${7:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
ts=${TOMO_STREAMER:-$here/.venv/bin/tomo-streamer}
mpiexec=${MPIEXEC:-$(dirname "$ts")/mpiexec}
work=$(mktemp -d)
center=$(python3 -c "print(($width - 1) / 2)")
fixed="{center: $center}"
[ -z "${EARLY:-}" ] || fixed="{}"
printf 'pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fourier_fbp\n    parameters: %s\n' "$fixed" > "$work/p.yaml"
one() {  # one scan through run; prints its latency line
  local out=$work/$1; shift
  local port=$((20000 + RANDOM % 20000))
  local address=tcp://127.0.0.1:$port
  if [ "$ranks" -gt 1 ]; then
    local command=("$ts")
    [ -z "${TIMELINE:-}" ] || command=("$(dirname "$ts")/python" "$here/tools/rank_timeline.py")
    "$mpiexec" -n "$ranks" "${command[@]}" run "$work/p.yaml" --scans 1 --out "$out" --block 50 \
      --from "$address" "$@" > "$out.log" 2>&1 &
    local source=(--bind "$address")
  else
    "$ts" run "$work/p.yaml" --scans 1 --out "$out" --block 50 --listen "$address" \
      "$@" > "$out.log" 2>&1 &
    local source=(--connect "$address")
  fi
  local pid=$!
  sleep 4  # the service binds or connects (a readiness handshake would be better; a benchmark)
  "$ts" simulate "${source[@]}" --rows "$rows" --cols "$width" \
    --projections "$angles" --rate "$rate" --scan-id s ${CANNOT_WAIT:+--cannot-wait} \
    > "$out.sim.log" 2>&1 || true
  wait "$pid" || true
  grep -h "^  latency\|reconstruction: \|streaming: back\|^rank [0-9]*: \|^  CoR\|early estimate\|error\|refused\|FAILED" "$out.log" || true
  grep -h "^sent\|^DROPPED\|^ABORTED" "$out.sim.log" || true
}
batch() {  # the same scan as a file, reconstructed by `recon`: its wall time
  local out=$work/$1.h5
  if [ ! -f "$work/scan.nxs" ]; then
    "$ts" simulate --rows "$rows" --cols "$width" --projections "$angles" \
      --save "$work/scan.nxs" > /dev/null
  fi
  local launcher=()
  [ "$ranks" -le 1 ] || launcher=("$mpiexec" -n "$ranks")
  local start end
  start=$(date +%s.%N)
  "${launcher[@]}" "$ts" recon "$work/scan.nxs" -o "$out" --pipeline "$work/p.yaml" --quiet \
    > "$out.log" 2>&1 || { echo "recon FAILED:"; tail -3 "$out.log"; return 0; }
  end=$(date +%s.%N)
  python3 -c "print(f'  recon wall {$end - $start:.2f} s')"
  "$(dirname "$ts")/python" - "$out" "$work" <<'EOF'
import pathlib, sys
import h5py, numpy as np
def volume(path):
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset)
                     and obj.ndim == 3 else None)
        return np.asarray(found[0][...], dtype=np.float64) if found else None
batch = volume(sys.argv[1])
streamed = sorted(pathlib.Path(sys.argv[2]).glob("s*/s.h5"))  # the master of scan s
run = volume(streamed[-1]) if streamed else None
if batch is None or run is None or batch.shape != run.shape:
    print(f"  recon vs run: not compared ({None if run is None else run.shape} against "
          f"{None if batch is None else batch.shape})")
else:
    print(f"  recon vs run: {np.abs(batch - run).max() / np.abs(batch).max():.1e} of the peak")
EOF
}
uptime
for i in $(seq "$runs"); do
  [ "${ONLY:-}" = close ] || one "s$i"
  if [ -n "${BATCH:-}" ]; then
    [ "${ONLY:-}" = streaming ] || batch "r$i"
  elif [ -n "${EARLY:-}" ]; then
    [ "${ONLY:-}" = streaming ] || one "b$i" --early-center off
  else
    [ "${ONLY:-}" = streaming ] || one "b$i" --memory "$memory"
  fi
done
uptime
rm -rf "$work"

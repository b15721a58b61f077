#!/bin/bash
# Issue 19's end-to-end benchmark in one command (docs/performance.md, "The close without
# poll periods"): latency last frame -> volume complete through `run`, streaming against
# the same pipeline reconstructed at close (a --memory the accumulators do not fit), on
# 1 and 2 ranks, medians of RUNS, via tools/bench_run_streaming.sh. Cases (one per line
# of CASES: "WIDTH ROWS P RATE MEMORY_GIB RANKS"; rows are cropped to fit this machine):
#   N = 1024, P = 1200 at 40 frames/s, 32 rows; N = 2048, P = 1800 at 30 frames/s,
#   16 rows per rank (the at-close plan needs one 2048-wide sinogram's 665 MiB, so the
#   band must hold enough rows for a budget between at close and streaming to exist).
# OLD=TREE: every run is alternated with the code of TREE (a `git archive` of another
# commit, run through this venv with PYTHONPATH=TREE), labelled "old".
# RATES="R1 R2 ..." (optional): then the highest detector rate with nothing dropped, per
# rank count (N = 1024 case, streaming, CANNOT_WAIT=1: the simulated detector cannot be
# held back; frames the consumer cannot take are dropped and counted).
# BATCH=1: the issue's own ratio (docs/performance.md, "Issue 19 benchmark (as defined)"):
# the denominator is not `run` at close but the wall time of `tomo-streamer recon` of the
# same scan file (saved by `simulate --save`, the same frames) with the same pipeline on the
# same rank count (tools/bench_run_streaming.sh BATCH=1, which also prints how far recon's
# volume is from the streamed one); CASES default to BATCH_CASES below (MEMORY_GIB unused).
# Prints one line per run ("N ranks code mode latency") and a table of medians.
# Usage: [OLD=TREE] [BATCH=1] [RATES="120 180 240"] [CASES="..."] tools/bench_close_latency.sh [RUNS]
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
cases=${CASES:-"1024 32 1200 40 0.5 1
1024 32 1200 40 0.3 2
2048 16 1800 30 1.0 1
2048 32 1800 30 1.0 2"}
if [ -n "${BATCH:-}" ]; then  # the same scan on 1 and 2 ranks; sent rates nothing drops at
  cases=${CASES:-"1024 32 1200 60 0 1
1024 32 1200 60 0 2
2048 16 1800 30 0 1
2048 16 1800 30 0 2"}
fi
results=$(mktemp)
measure() {  # code mode width rows p rate memory ranks: one run, its latency line
  local code=$1 mode=$2; shift 2
  local line
  if [ "$code" = old ]; then
    line=$(cd /tmp && PYTHONPATH=$OLD ONLY=$mode "$here/tools/bench_run_streaming.sh" 1 "$@" 2>&1 < /dev/null)
  else
    line=$(ONLY=$mode "$here/tools/bench_run_streaming.sh" 1 "$@" 2>&1 < /dev/null)
  fi
  local latency
  latency=$(sed -n 's/.*last frame→volume \([0-9.]*\) s.*/\1/p' <<< "$line" | head -1)
  echo "$1 ranks=$6 $code $mode ${latency:-none} ($(uptime | sed 's/.*load average: //'))" \
    | tee -a "$results"
  grep -h "^DROPPED\|FAILED\|fell back\|streaming: back" <<< "$line" || true
}
measure_batch() {  # code width rows p rate memory ranks: one streamed run, one recon of its scan
  local code=$1; shift
  local lines
  if [ "$code" = old ]; then
    lines=$(cd /tmp && PYTHONPATH=$OLD BATCH=1 "$here/tools/bench_run_streaming.sh" 1 "$@" 2>&1 < /dev/null)
  else
    lines=$(BATCH=1 "$here/tools/bench_run_streaming.sh" 1 "$@" 2>&1 < /dev/null)
  fi
  local latency wall load
  latency=$(sed -n 's/.*last frame→volume \([0-9.]*\) s.*/\1/p' <<< "$lines" | head -1)
  wall=$(sed -n 's/.*recon wall \([0-9.]*\) s.*/\1/p' <<< "$lines" | head -1)
  load=$(uptime | sed 's/.*load average: //')
  echo "$1 ranks=$6 $code streaming ${latency:-none} ($load)" | tee -a "$results"
  echo "$1 ranks=$6 $code recon ${wall:-none} ($load)" | tee -a "$results"
  grep -h "reconstruction: \|^sent\|recon vs run\|^DROPPED\|FAILED\|fell back\|streaming: back" \
    <<< "$lines" || true
}
uptime
while read -r width rows p rate memory ranks; do
  [ -n "$width" ] || continue
  for i in $(seq "$runs"); do
    if [ -n "${BATCH:-}" ]; then
      measure_batch new "$width" "$rows" "$p" "$rate" "$memory" "$ranks"
      [ -z "${OLD:-}" ] || measure_batch old "$width" "$rows" "$p" "$rate" "$memory" "$ranks"
      continue
    fi
    for mode in streaming close; do
      measure new "$mode" "$width" "$rows" "$p" "$rate" "$memory" "$ranks"
      [ -z "${OLD:-}" ] || measure old "$mode" "$width" "$rows" "$p" "$rate" "$memory" "$ranks"
    done
  done
done < <(printf "%s\n" "$cases")
for ranks in 1 2; do
  for rate in ${RATES:-}; do
    echo "rate $rate frames/s, $ranks rank(s), N = 1024, 32 rows, P = 1200, streaming:"
    CANNOT_WAIT=1 ONLY=streaming "$here/tools/bench_run_streaming.sh" 1 1024 32 1200 "$rate" \
      0.3 "$ranks" 2>&1 | grep "latency\|^sent\|^DROPPED\|fell\|back" || true
  done
done
uptime
python3 - "$results" <<'EOF'
import statistics, sys
rows = [line.split()[:5] for line in open(sys.argv[1])]
cases = sorted({(int(r[0]), r[1], r[2]) for r in rows})
second = "recon" if any(r[3] == "recon" for r in rows) else "close"
label = "batch recon" if second == "recon" else "at close"
print(f"| N | ranks | code | streaming (runs) | median | {label} (runs) | median | ratio |")
for n, ranks, code in cases:
    got = {mode: [float(r[4]) for r in rows if (int(r[0]), r[1], r[2], r[3]) ==
                  (n, ranks, code, mode) and r[4] != "none"] for mode in ("streaming", second)}
    if not got["streaming"] or not got[second]:
        continue
    s, c = statistics.median(got["streaming"]), statistics.median(got[second])
    print(f"| {n} | {ranks[6:]} | {code} | {' '.join(f'{v:.2f}' for v in got['streaming'])} | "
          f"{s:.2f} s | {' '.join(f'{v:.2f}' for v in got[second])} | {c:.2f} s | "
          f"{s / c:.2f} |")
EOF
rm -f "$results"

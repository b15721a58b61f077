#!/usr/bin/env bash
# The one prepared device check (issue 18): on a CUDA machine, within 8 minutes on one H100,
#   1. makes a venv (or reuses --venv) and installs the package with the `gpu` extra, and
#      httomolibgpu with --no-deps where it installs (its absence is recorded, not fatal);
#   2. runs the `gpu`-marked tests of tests/stages and tests/pipeline (CPU/GPU agreement,
#      fourier_fbp on cufinufft, the CUDA back-projection kernel, the executor's queue,
#      the streaming accumulators on CuPy) and of tests/run/test_device_queue_on_ranks.py
#      (two in-process ranks sharing the one GPU through their queues; a cupy
#      fourier_fbp streaming on 1 and 2 ranks): small scans, seconds in all;
#   3. runs tools/gpu_bench.py: per-stage throughput on CuPy vs NumPy (vs httomolibgpu),
#      recon --device gpu of a simulated 2048-wide scan with fbp and with fourier_fbp
#      (GVoxel/s, peak device memory, the transfers line);
# and leaves gpu_check.json (+ the logs, + the seconds of each phase) in --out.
# Budget (its own estimate on one H100): install ~1 min with the wheels cached, the gpu
# tests up to 1.5 min, the benchmark ~5.5 min (330 s reserved); each phase gets what is
# left of 8 minutes, and a phase that would start with too little fails in one line.
#
# Usage: tools/gpu_check.sh [--out DIR] [--venv DIR] [--wheels DIR] [--dry-run]
#   --wheels DIR  install offline from wheels in DIR (a machine without an index)
#   --dry-run     no device needed: print the install steps, run the gpu tests (they skip
#                 cleanly) and the benchmark in its --dry-run mode; CI runs this.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/gpu-check"
VENV=""
WHEELS=""
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --venv) VENV="$(cd "$2" && pwd)"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "error: gpu_check.sh: expected --out DIR|--venv DIR|--wheels DIR|--dry-run, got '$1'" >&2
           exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
started=$(date +%s)
BUDGET=480  # seconds for the whole check
BENCH_MIN=330  # the benchmark's share (gpu_bench.py's own estimate)
say() { echo "[gpu_check $(( $(date +%s) - started ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - started) )); }

PIP_SOURCE=()
if [ -n "$WHEELS" ]; then PIP_SOURCE=(--no-index --find-links "$WHEELS"); fi

if [ "$DRY_RUN" = 1 ]; then
    PYTHON="${VENV:+$VENV/bin/python}"
    PYTHON="${PYTHON:-python3}"
    say "dry run: would create ${VENV:-$OUT/venv} and run:"
    say "  pip install ${PIP_SOURCE[*]} -e '$REPO[dev,gpu]'"
    say "  pip install ${PIP_SOURCE[*]} --no-deps httomolibgpu   (optional)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1 \
        || echo "nvidia-smi: not available" > "$OUT/nvidia-smi.txt"
else
    if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; then
        echo "error: gpu_check.sh: expected a CUDA machine (nvidia-smi works), got none; use --dry-run" >&2
        exit 2
    fi
    VENV="${VENV:-$OUT/venv}"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    PYTHON="$VENV/bin/python"
    say "installing the gpu extra"
    INSTALL_MAX=$(( BUDGET - BENCH_MIN - 30 ))  # what the budget leaves the install
    timeout "$INSTALL_MAX" "$PYTHON" -m pip install -q "${PIP_SOURCE[@]}" -e "$REPO[dev,gpu]" \
        > "$OUT/pip.log" 2>&1 \
        || { echo "error: gpu_check.sh: pip install of the gpu extra failed or took over ${INSTALL_MAX}s (see $OUT/pip.log; --wheels DIR installs from local wheels)" >&2; exit 2; }
    if timeout 60 "$PYTHON" -m pip install -q "${PIP_SOURCE[@]}" --no-deps httomolibgpu >> "$OUT/pip.log" 2>&1; then
        say "httomolibgpu installed (--no-deps)"
    else
        say "httomolibgpu did not install: its column stays null"
    fi
    "$PYTHON" -c "import cupy; assert cupy.is_available(), 'cupy sees no device'; print('cupy', cupy.__version__)" \
        > "$OUT/cupy.log" 2>&1 \
        || { echo "error: gpu_check.sh: expected cupy to see a CUDA device, got none (see $OUT/cupy.log)" >&2; exit 2; }
fi
install_s=$(( $(date +%s) - started ))

tests_limit=$(( $(left) - BENCH_MIN ))
if [ "$tests_limit" -gt 120 ]; then tests_limit=120; fi
if [ "$tests_limit" -lt 30 ]; then
    echo "error: gpu_check.sh: expected 8 minutes for the whole check, got $(left) s left after the install" >&2
    exit 1
fi
say "gpu-marked tests (at most ${tests_limit}s)"
set +e
(cd "$REPO" && timeout "$tests_limit" "$PYTHON" -m pytest -m gpu -q -p no:randomly \
    tests/stages tests/pipeline tests/run/test_device_queue_on_ranks.py \
    --junitxml="$OUT/gpu-tests.xml") > "$OUT/gpu-tests.log" 2>&1
tests_rc=$?
set -e
tail -n 3 "$OUT/gpu-tests.log"
tests_s=$(( $(date +%s) - started - install_s ))

bench_limit=$(( $(left) - 5 ))
say "benchmark (at most ${bench_limit}s)"
BENCH_ARGS=(--out "$OUT/gpu_check.json")
if [ "$DRY_RUN" = 1 ]; then BENCH_ARGS+=(--dry-run); fi
timeout "$bench_limit" "$PYTHON" "$REPO/tools/gpu_bench.py" "${BENCH_ARGS[@]}" > "$OUT/bench.log" 2>&1 \
    || { echo "error: gpu_check.sh: the benchmark failed or ran past the 8-minute budget (see $OUT/bench.log)" >&2; exit 1; }
bench_s=$(( $(date +%s) - started - install_s - tests_s ))
"$PYTHON" - "$OUT/gpu_check.json" "$tests_rc" "$install_s" "$tests_s" "$bench_s" "$BUDGET" <<'PY'
import json, sys
path = sys.argv[1]
tests_rc, install_s, tests_s, bench_s, budget_s = (int(v) for v in sys.argv[2:])
report = json.load(open(path))
report["gpu_tests_exit_code"] = tests_rc  # 0: passed; 5: none collected
report["seconds"] = {"install": install_s, "gpu_tests": tests_s, "benchmark": bench_s,
                     "total": install_s + tests_s + bench_s, "budget": budget_s}
json.dump(report, open(path, "w"), indent=2)
PY
say "done: $OUT/gpu_check.json (gpu tests exit code $tests_rc)"
if [ "$tests_rc" != 0 ] && [ "$tests_rc" != 5 ]; then exit 1; fi

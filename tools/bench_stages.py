"""Benchmark: per-stage CPU throughput against the same operation in a reference library.

Each stage is called through the registry (``REGISTRY[name].run(block, params, ...)``:
parameter model, shape check and all) on a float32 block, and, in the same run, the
same operation is done the most direct way with the library a user would otherwise call:

* ``normalize`` (and with ``minus_log``, also on raw ``uint16`` counts as a detector
  sends them), ``minus_log``: plain NumPy,
  ``(x - dark.mean(0)) / (flat.mean(0) - dark.mean(0))`` (``-log`` of it; float32 means):
  the ceiling of a straightforward implementation (no ``eps`` clamp, no checks);
* every projection stage is also timed against ``np.copyto`` of its block into a new
  float32 block (column "ours / copy"): the memory-bandwidth ceiling of a stage that
  returns a new block;
* ``remove_outlier``: ``scipy.ndimage.median_filter`` + ``np.where`` (what TomoPy does);
* ``median_filter`` / ``gaussian_filter``: one ``scipy.ndimage`` call on the whole block;
* ``remove_stripe_based_sorting`` / ``remove_all_stripe``: ``algotom.prep.removal``
  called directly on each sinogram (our stages wrap it: the ratio is wrapper overhead);
* ``paganin``, ``remove_stripe_fw``: no peer (TomoPy, the reference, is not installed):
  absolute figures only.

Runs of "ours" and "peer" are interleaved (order alternating from run to run) so machine
noise hits both alike; each figure is the median of ``--runs`` runs. The CPU time per call
(``time.process_time``: all the process's threads) is printed and kept in the JSON
(``cpu_median_s``) beside the wall time: on a loaded machine it still says how much work
each side does, where the wall-time ratio says little. Throughput is
frames/s (projection stages) or sinograms/s (sinogram stages), and GB/s of the input
block.

Usage::

    python tools/bench_stages.py                    # 2048² frames, 1800×2048 sinograms
    python tools/bench_stages.py --runs 7 --json out.json --stages normalize paganin
    python tools/bench_stages.py --quick            # small sizes, 1 run: a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from algotom.prep import removal
from scipy import ndimage

from stages.registry import REGISTRY

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Case:
    """One line of the table: a stage with its parameters and its peer (or none)."""

    label: str
    stage: str
    params: dict[str, Any]
    kind: str  # "frames": projection block of frames; "sinograms": the unit is a sinogram
    layout: str  # "projection" (angles, rows, cols) or "sinogram" (rows, angles, cols)
    peer_name: str
    peer: Callable[[Array, Array, Array], Array] | None
    #: "float32", or "uint16": raw detector counts (frames, darks and flats), as streamed
    dtype: str = "float32"


def _copy_to_float32(x: Array) -> Array:
    """The bandwidth ceiling of a stage that returns a new float32 block: one converting copy."""
    out = np.empty(x.shape, dtype=np.float32)
    np.copyto(out, x, casting="unsafe")
    return out


def _np_normalize(x: Array, darks: Array, flats: Array) -> Array:
    # float32 means, so uint16 references do not turn the peer into float64 arithmetic
    dark = darks.mean(0, dtype=np.float32)
    out: Array = (x - dark) / (flats.mean(0, dtype=np.float32) - dark)
    return out


def _np_normalize_log(x: Array, darks: Array, flats: Array) -> Array:
    return -np.log(_np_normalize(x, darks, flats))


def _np_minus_log(x: Array, darks: Array, flats: Array) -> Array:
    return -np.log(x)


OUTLIER_DIF = 0.5


def _scipy_outlier(x: Array, darks: Array, flats: Array) -> Array:
    median = ndimage.median_filter(x, size=(1, 3, 3))
    return np.where(x - median >= OUTLIER_DIF, median, x)


def _scipy_median(x: Array, darks: Array, flats: Array) -> Array:
    out: Array = ndimage.median_filter(x, size=(1, 3, 3))
    return out


def _scipy_gaussian(x: Array, darks: Array, flats: Array) -> Array:
    out: Array = ndimage.gaussian_filter(x, sigma=(0, 3.0, 3.0))
    return out


def _algotom_sorting(x: Array, darks: Array, flats: Array) -> Array:
    return np.stack([removal.remove_stripe_based_sorting(s, size=21, dim=1) for s in x])


def _algotom_all(x: Array, darks: Array, flats: Array) -> Array:
    return np.stack([removal.remove_all_stripe(s, snr=3.0, la_size=51, sm_size=21,
                                               drop_ratio=0.1, dim=1) for s in x])


CASES: tuple[Case, ...] = (
    Case("normalize", "normalize", {}, "frames", "projection", "NumPy", _np_normalize),
    Case("normalize minus_log", "normalize", {"minus_log": True}, "frames", "projection",
         "NumPy + -log", _np_normalize_log),
    Case("normalize minus_log uint16", "normalize", {"minus_log": True}, "frames",
         "projection", "NumPy + -log", _np_normalize_log, dtype="uint16"),
    Case("minus_log", "minus_log", {}, "frames", "projection", "NumPy -log", _np_minus_log),
    Case("remove_outlier", "remove_outlier", {"dif": OUTLIER_DIF}, "frames", "projection",
         "ndimage.median_filter + where", _scipy_outlier),
    Case("median_filter", "median_filter", {}, "frames", "projection",
         "ndimage.median_filter", _scipy_median),
    Case("gaussian_filter", "gaussian_filter", {}, "frames", "projection",
         "ndimage.gaussian_filter", _scipy_gaussian),
    Case("paganin", "paganin", {}, "frames", "projection", "(TomoPy absent)", None),
    Case("remove_stripe_fw", "remove_stripe_fw", {}, "sinograms", "sinogram",
         "(TomoPy absent)", None),
    Case("remove_stripe_based_sorting", "remove_stripe_based_sorting", {}, "sinograms",
         "sinogram", "algotom", _algotom_sorting),
    Case("remove_all_stripe", "remove_all_stripe", {}, "sinograms", "sinogram", "algotom",
         _algotom_all),
)


def make_inputs(args: argparse.Namespace) -> dict[str, Array]:
    """Float32 test data: frames near 1 (transmission-like), references, sinograms."""
    rng = np.random.default_rng(0)
    size, n = args.size, args.frames
    frames = (0.5 + rng.random((n, size, size), dtype=np.float32)) * 1000
    darks = rng.random((args.refs, size, size), dtype=np.float32) * 10
    flats = 1500 + rng.random((args.refs, size, size), dtype=np.float32) * 100
    transmission = 0.1 + 0.9 * rng.random((n, size, size), dtype=np.float32)
    sinos = 0.1 + 0.9 * rng.random((args.sinos, args.angles, args.cols), dtype=np.float32)
    # Stripes: a few columns with a constant offset, so Vo's detection has work to do.
    stripe_cols = rng.choice(args.cols, size=max(1, args.cols // 100), replace=False)
    sinos[:, :, stripe_cols] *= 1.2
    return {
        "frames": frames, "darks": darks, "flats": flats, "transmission": transmission,
        "frames_uint16": frames.astype(np.uint16), "darks_uint16": darks.astype(np.uint16),
        "flats_uint16": flats.astype(np.uint16),
        "sinogram": sinos,
    }


def block_for(case: Case, data: dict[str, Array]) -> Array:
    if case.layout == "sinogram":
        return data["sinogram"]
    if case.stage == "normalize":
        return data["frames_uint16" if case.dtype == "uint16" else "frames"]
    return data["transmission"]


def units_of(case: Case, block: Array) -> int:
    """Frames or sinograms in ``block``."""
    if case.kind == "frames":
        return int(block.shape[0])
    return int(block.shape[1] if case.layout == "projection" else block.shape[0])


def time_once(fn: Callable[[], Array]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all the process's threads) of one call: the CPU time
    is the work done whatever the load, the wall time what a user waits."""
    began, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - began, time.process_time() - cpu


def bench_case(case: Case, data: dict[str, Array], runs: int) -> dict[str, Any]:
    spec = REGISTRY[case.stage]
    params = spec.params(**case.params)
    block = block_for(case, data)
    suffix = "_uint16" if case.dtype == "uint16" else ""
    darks, flats = data["darks" + suffix], data["flats" + suffix]

    def ours() -> Array:
        return spec.run(block, params, darks=darks, flats=flats)

    sides: dict[str, Callable[[], Array]] = {"ours": ours}
    if case.peer is not None:
        peer = case.peer
        sides["peer"] = lambda: peer(block, darks, flats)
    if case.kind == "frames":
        sides["copy"] = lambda: _copy_to_float32(block)
    times: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    order = list(sides)
    for run in range(runs):
        for side in order if run % 2 == 0 else order[::-1]:
            wall, used = time_once(sides[side])
            times[side].append(wall)
            cpu[side].append(used)
    units = units_of(case, block)
    row: dict[str, Any] = {
        "stage": case.label, "params": case.params, "peer_name": case.peer_name,
        "unit": "frame" if case.kind == "frames" else "sinogram",
        "block": list(block.shape), "dtype": str(block.dtype), "input_bytes": block.nbytes,
        "runs": runs,
    }
    for side, values in times.items():
        median = statistics.median(values)
        row[side] = {"median_s": median, "units_per_s": units / median,
                     "GB_per_s": block.nbytes / median / 1e9,
                     "cpu_median_s": statistics.median(cpu[side]),
                     "all_s": [round(v, 4) for v in values]}
    if "peer" in row:
        row["ratio"] = row["ours"]["units_per_s"] / row["peer"]["units_per_s"]
    if "copy" in row:
        row["of_copy"] = row["ours"]["units_per_s"] / row["copy"]["units_per_s"]
    return row


def _fmt(side: dict[str, Any], unit: str) -> str:
    short = "f/s" if unit == "frame" else "sino/s"
    return f"{side['units_per_s']:.3g} {short}, {side['GB_per_s']:.3f} GB/s"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| stage | block | peer | ours | peer | ours / peer | ours / copy |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        shape = "×".join(str(n) for n in row["block"])
        peer = _fmt(row["peer"], row["unit"]) if "peer" in row else "—"
        ratio = f"**{row['ratio']:.2f}**" if "ratio" in row else "—"
        of_copy = f"{100 * row['of_copy']:.1f} %" if "of_copy" in row else "—"
        shape += f" {row['dtype']}"
        lines.append(f"| {row['stage']} | {shape} | {row['peer_name']} | "
                     f"{_fmt(row['ours'], row['unit'])} | {peer} | {ratio} | {of_copy} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {"cpu": model, "nproc": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048, help="frame edge (rows = cols)")
    parser.add_argument("--frames", type=int, default=4, help="frames per projection block")
    parser.add_argument("--refs", type=int, default=4, help="darks and flats (each)")
    parser.add_argument("--sinos", type=int, default=2, help="sinograms per sinogram block")
    parser.add_argument("--angles", type=int, default=1800)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--stages", nargs="+", default=None,
                        choices=sorted({case.stage for case in CASES}),
                        help="only these stages (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 run, 256² frames ×2, 2 sinograms 180×256 "
                             "(overrides the size options)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.size, args.frames, args.refs = 1, 256, 2, 2
        args.sinos, args.angles, args.cols = 2, 180, 256
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = make_inputs(args)
    cases = [c for c in CASES if args.stages is None or c.stage in args.stages]
    info = machine()
    print(f"# {info['date']}, {info['cpu']}, nproc {info['nproc']}, runs {args.runs}",
          flush=True)
    rows = []
    for case in cases:
        row = bench_case(case, data, args.runs)
        rows.append(row)
        ratio = f", ours/peer {row['ratio']:.2f}" if "ratio" in row else ""
        if "of_copy" in row:
            ratio += f", ours/np.copyto {100 * row['of_copy']:.1f} %"
        peer = f" | {row['peer_name']}: {_fmt(row['peer'], row['unit'])}" if "peer" in row else ""
        print(f"{row['stage']:>28s}: ours {_fmt(row['ours'], row['unit'])}{peer}{ratio}",
              flush=True)
        cpu = ", ".join(f"{side} {1e3 * row[side]['cpu_median_s']:.1f} ms"
                        for side in ("ours", "peer") if side in row)
        print(f"{'':>28s}  CPU per call (all threads, median): {cpu}", flush=True)
    print()
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

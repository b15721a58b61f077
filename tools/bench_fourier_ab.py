"""A/B benchmark: ``fourier_fbp`` of a git revision against this checkout's, and both
against the FFT-only bound, their runs alternating in one process.

The revision's ``stages/recon/fourier.py`` (``git show REF:…``) is loaded beside this
checkout's as its own module; both reconstruct the same Shepp–Logan block (N, P =
1200·N/1024 over 180°, ``--rows`` rows, Hann, ``--threads``, a per-scan
:class:`~stages.recon.fourier.FourierFbpCache` each, as a scan's blocks run) and must
agree to float32 rounding. Every run times each side once, the order rotated and
reversed from run to run so that the machine's load hits all sides alike; the table
gives medians of wall time and of process CPU time (all threads), and each side's
speed over the bound's (``bound / side``, from the medians; ``cpu`` the same ratio of
CPU times, which the other processes on a shared machine disturb less).

Three bounds, each the FFTs ``fourier_fbp`` cannot avoid on the same shapes and threads
(per pair of rows: forward and inverse FFT of ``P × L`` for the filter, the window FFT
of ``P × M``, the grid's row FFT and its column FFT pruned to ``N`` columns):

* ``bound (bench_recon)``: ``tools/bench_recon.py``'s, unchanged (fresh ``np.ones``
  inputs per pair, the column FFT out of place, the filter FFTs on all ``P`` at once);
* ``bound, in place``: the same with the column FFT in place, as ``fourier_fbp`` does it;
* ``bound, strict``: in place, the filter FFTs in chunks of 32 projections as
  ``fourier_fbp`` runs them, the inputs allocated once (FFTs and nothing else).

Usage::

    python tools/bench_fourier_ab.py                      # main vs checkout, N = 1024
    python tools/bench_fourier_ab.py --ref 19afa81 --runs 11 --threads 1 --rows 4
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_recon import fitted_error, phantom  # noqa: E402

from stages.recon import fourier  # noqa: E402
from stages.recon.fbp import padded_length  # noqa: E402

Array = npt.NDArray[Any]
#: Projections per filter chunk in the strict bound (``fourier_fbp``'s ``_CHUNK``).
_CHUNK = 32


def load_revision(ref: str, workdir: Path) -> ModuleType:
    """``stages/recon/fourier.py`` of git revision ``ref``, imported as its own module."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:stages/recon/fourier.py"],
                            check=True, capture_output=True, text=True).stdout
    path = workdir / "fourier_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fourier_ref", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fourier_ref"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def bound(threads: int, shape: tuple[int, int, int], variant: str) -> Callable[[], None]:
    """One call's FFT-only bound (see the module docstring for the variants)."""
    rows, count, cols = shape
    length = padded_length(cols)
    window, grid = fourier.window_length(cols, False), fourier._grid_size(cols)
    pairs = (rows + 1) // 2
    workers = min(pairs, threads)
    inner = max(1, threads // workers)
    local = threading.local()  # the strict bound's inputs, one set per pool thread

    def filtered(projections: Array) -> None:
        spectrum = scipy.fft.fft(projections, axis=-1, workers=inner)
        result = scipy.fft.ifft(spectrum, axis=-1, workers=inner, overwrite_x=True)
        scipy.fft.fft(result[:, :window], axis=-1, workers=inner)

    def pair(_: int) -> None:
        if variant == "strict":
            if not hasattr(local, "inputs"):
                local.inputs = (np.ones((count, length), np.complex64),
                                np.ones((grid, grid), np.complex64))
            projections, spread = local.inputs
            for first in range(0, count, _CHUNK):
                filtered(projections[first : first + _CHUNK])
        else:
            projections = np.ones((count, length), dtype=np.complex64)
            filtered(projections)
            spread = np.ones((grid, grid), dtype=np.complex64)
        lines = scipy.fft.ifft(spread, axis=-1, workers=inner, overwrite_x=True)
        scipy.fft.ifft(lines[:, :cols], axis=0, workers=inner,
                       overwrite_x=variant != "bench_recon")

    pool = ThreadPoolExecutor(max_workers=workers)  # kept: its threads keep their inputs

    def run() -> None:
        list(pool.map(pair, range(pairs)))
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ref", default="main", help="git revision to compare against")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    count = round(1200 * args.size / 1024)
    block, angles, truth, center = phantom(args.size, count, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        reference = load_revision(args.ref, Path(tmp))

        def ours(module: ModuleType) -> Callable[[], Array]:
            cache = module.FourierFbpCache()
            return lambda: module.fourier_fbp(  # type: ignore[no-any-return]
                block, angles_deg=angles, center=center, filter_name="hann",
                threads=args.threads, cache=cache)

        sides: dict[str, Callable[[], Any]] = {
            args.ref: ours(reference), "checkout": ours(fourier),
            "bound (bench_recon)": bound(args.threads, block.shape, "bench_recon"),
            "bound, in place": bound(args.threads, block.shape, "in place"),
            "bound, strict": bound(args.threads, block.shape, "strict"),
        }
        before, after = sides[args.ref](), sides["checkout"]()
        print(f"N={args.size} P={count} rows={args.rows} threads={args.threads}: checkout vs "
              f"{args.ref} max |diff| {float(np.abs(after - before).max()):.3g} (peak "
              f"{float(np.abs(before).max()):.3g}); rel. L2 (fit) {args.ref} "
              f"{fitted_error(before[0], truth):.5f}, checkout {fitted_error(after[0], truth):.5f}")
        print(f"load at start {os.getloadavg()}", flush=True)
        names = list(sides)
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for run in range(args.runs):
            order = names[run % len(names):] + names[: run % len(names)]
            for name in order if run % 2 == 0 else order[::-1]:
                began_cpu, began = time.process_time(), time.perf_counter()
                sides[name]()
                wall[name].append(time.perf_counter() - began)
                cpu[name].append(time.process_time() - began_cpu)
        print(f"load at end {os.getloadavg()}")
    print("| side | wall (ms) | CPU (ms) | slices/s | "
          + " | ".join(f"{b}: wall, cpu" for b in names[2:]) + " |")
    print("|---|---|---|---|" + "---|" * len(names[2:]))
    for name in names:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        ratios = [f"{statistics.median(wall[b]) / w:.3f}, {statistics.median(cpu[b]) / c:.3f}"
                  for b in names[2:]]
        print(f"| {name} | {w * 1e3:.0f} | {c * 1e3:.0f} | {args.rows / w:.1f} | "
              + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

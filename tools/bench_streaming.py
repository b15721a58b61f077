"""Benchmark: the volume after the last frame, streaming accumulator against batch.

A simulated scan (exact line integrals of the 3-D Shepp–Logan phantom, ``--size`` wide,
``--angles`` projections over 180°, a band of ``--rows`` detector rows) arrives in
projection blocks of ``--block`` frames. Per run:

* **batch**: ``fourier_fbp`` on the whole sinogram after the last frame (today's
  ``run``): latency = its wall time;
* **streaming**: :class:`stages.recon.streaming.StreamingFbp` takes each block as it
  arrives; latency = the last block's ``add`` + ``finish`` (the FFT along y and the
  deconvolution; with ``--whole-grid`` the whole grid FFT).
  The other blocks' ``add`` times are what the accumulator spends while the scan
  arrives: ``keeps up`` is the detector rate (frames/s) it sustains for this band, and
  ``total`` is all its work against batch. ``--last K`` tapers the blocks toward the
  end of the scan (:func:`stages.recon.streaming.tapered_block`, as ``run`` does when it
  streams), so that the last block holds ``K … 2K-1`` frames.

Both reconstruct the same data with the same parameters; the run checks they agree to
1e-5 relative. Ratios are of medians over ``--runs`` runs. The latency ratio does not
depend on the number of rows (every figure scales with them); a full 1024-row volume is
``1024 / rows`` bands, each of which is streamed on its rank. ``uptime``'s load is
printed before and after: the machine is shared.

Usage::

    python tools/bench_streaming.py                       # N = 1024, P = 1200, 8 rows
    python tools/bench_streaming.py --block 50 --runs 7 --json out.json
    python tools/bench_streaming.py --last 12       # blocks tapered to a small last one
    python tools/bench_streaming.py --size 128 --angles 150 --rows 2 --runs 1   # smoke
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.recon.fourier import FourierFbpParams, fourier_fbp
from stages.recon.streaming import StreamingFbp, streaming_memory, tapered_block
from streamer.sources.phantom import fit_radius_px, project, shepp_logan_3d


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _block_starts(count: int, block: int, last: int | None) -> list[int]:
    """First frame of each block, then ``count``: blocks of ``block`` frames, tapered
    toward the end down to ``last`` frames (:func:`tapered_block`) when ``last`` is given."""
    starts = [0]
    while starts[-1] < count:
        remaining = count - starts[-1]
        size = min(block, remaining) if last is None else tapered_block(remaining, block, last)
        starts.append(starts[-1] + size)
    return starts


def _run_once(sino: np.ndarray[Any, Any], angles: np.ndarray[Any, Any],
              params: FourierFbpParams, *, block: int, last: int | None,
              rows_early: bool) -> dict[str, float]:
    rows, count, cols = sino.shape
    started = time.perf_counter()
    want = fourier_fbp(sino, angles_deg=angles, **params.model_dump())
    batch = time.perf_counter() - started

    started = time.perf_counter()
    band = StreamingFbp(rows, cols, angles, params, rows_early=rows_early)
    setup = time.perf_counter() - started
    adds = []
    starts = _block_starts(count, block, last)
    for first, end in itertools.pairwise(starts[:-1]):
        started = time.perf_counter()
        band.add(sino[:, first:end], angles[first:end])
        adds.append(time.perf_counter() - started)
    started = time.perf_counter()
    band.add(sino[:, starts[-2] :], angles[starts[-2] :])
    finishing = time.perf_counter()
    got = band.finish()
    done = time.perf_counter()
    latency, finish = done - started, done - finishing
    error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    during = setup + sum(adds)
    return {
        "batch_s": batch,
        "latency_s": latency,
        "finish_s": finish,
        "during_scan_s": during,
        "keeps_up_fps": starts[-2] / sum(adds) if adds else float("nan"),
        "last_block_frames": count - starts[-2],
        "total_ratio": (during + latency) / batch,
        "relative_difference": error,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="detector width = slice edge N")
    parser.add_argument("--angles", type=int, default=1200, help="projections over 180°")
    parser.add_argument("--rows", type=int, default=8, help="detector rows in the band")
    parser.add_argument("--block", type=int, default=100, help="frames per projection block")
    parser.add_argument("--last", type=int, default=None,
                        help="taper the blocks toward the end of the scan down to this many "
                        "frames (stages.recon.streaming.tapered_block); default: no taper")
    parser.add_argument("--runs", type=int, default=5, help="runs (medians are reported)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: CPUs)")
    parser.add_argument("--whole-grid", action="store_true",
                        help="keep G x G grids and run the whole FFT at finish "
                        "(rows_early=False)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if min(args.size, args.angles, args.rows, args.block, args.runs,
           1 if args.last is None else args.last) < 1:
        print("error: --size, --angles, --rows, --block, --last and --runs must be >= 1",
              file=sys.stderr)
        return 2
    angles = np.linspace(0.0, 180.0, args.angles, endpoint=False)
    radius = fit_radius_px(args.size)
    frames = project(shepp_logan_3d(), angles, args.rows, args.size, radius_px=radius,
                     z_scale_px=radius)
    sino = np.ascontiguousarray(np.transpose(frames, (1, 0, 2)), dtype=np.float32)
    params = FourierFbpParams(filter_name="hann", threads=args.threads)
    load_before = _load()
    early = not args.whole_grid
    runs = [_run_once(sino, angles, params, block=args.block, last=args.last, rows_early=early)
            for _ in range(args.runs)]
    load_after = _load()
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    ratio = median["latency_s"] / median["batch_s"]
    memory = streaming_memory(args.rows, args.size, args.angles, params, rows_early=early)
    mode = "whole grid at finish" if args.whole_grid else "x FFT per block"
    taper = "" if args.last is None else f" tapered to {args.last} at the end"
    print(f"streaming ({mode}) vs batch, N = {args.size}, P = {args.angles}, {args.rows} "
          f"rows, blocks of {args.block} frames{taper}, {args.runs} runs; load before "
          f"{load_before}, "
          f"after {load_after}")
    print(f"  batch fourier_fbp after the last frame: {median['batch_s']:.3f} s")
    print(f"  streaming, last block + finish:         {median['latency_s']:.3f} s "
          f"(ratio {ratio:.3f}; finish alone {median['finish_s']:.3f} s)")
    print(f"  streaming work while the scan arrives:  {median['during_scan_s']:.3f} s; keeps up "
          f"with {median['keeps_up_fps']:.0f} frames/s for {args.rows} rows; all work / batch "
          f"{median['total_ratio']:.2f}")
    print(f"  memory per band: {memory / 2**20:.0f} MiB "
          f"({memory / args.rows / 2**20:.1f} MiB per row); max relative difference to batch "
          f"{max(run['relative_difference'] for run in runs):.1e}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "size": args.size, "angles": args.angles, "rows": args.rows, "block": args.block,
            "last": args.last,
            "rows_early": early,
            "runs": runs, "median": median, "latency_ratio": ratio, "memory_bytes": memory,
            "load_before": load_before, "load_after": load_after,
        }, indent=2))
    worst = max(run["relative_difference"] for run in runs)
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())

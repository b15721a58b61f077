"""Benchmark: the HDF5 volume writer against raw h5py writes of the same slices.

Both write the same float32 slices, band by band as the ``run`` service does, into the
same folder (same filesystem), and each timed run goes from creating the file to closing
it:

* **raw**: ``h5py.File(path, "w")``, one ``create_dataset`` (contiguous, float32),
  ``ds[a:b] = band`` for each band, one ``flush``, ``close``: the ceiling;
* **sink**: :class:`streamer.sinks.Hdf5VolumeWriter` (NeXus layout, metadata, angles,
  pipeline, one slice per chunk, NaN fill, each slice's bytes written as its chunk with
  ``write_direct_chunk``; every band flushed, then its ``slice_written`` marks set and
  flushed again, for crash consistency), ``close(complete=True, report=…)``;
* **raw_chunked** (diagnostic, ``--modes``): raw with the writer's chunking
  ``(1, ny, nx)``, ``ds[a:b] = band`` and a flush after every band: what the writer did
  before it wrote chunks directly.

Before each timed run the file of the previous run is deleted and ``os.sync()`` pushes
dirty pages out (not timed), so every run starts with a clean page cache; no run calls
``fsync``, so the figures are of writing into the operating system's cache as the service
does, throttled by writeback when the cache fills. Modes alternate, order swapped every
run; figures are medians of ``--runs``.

Usage::

    python tools/bench_hdf5.py                      # 64 slices of 1024², bands of 8, 5 runs
    python tools/bench_hdf5.py --dir /data/scratch --runs 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamer.sinks import Hdf5VolumeWriter

Array = np.ndarray[Any, Any]
MODES = ("raw", "sink", "raw_chunked")


def write_raw(path: Path, volume: Array, band: int, *, chunked: bool) -> None:
    """Raw h5py: one dataset, a slab per band; one flush at the end (or one per band)."""
    n, ny, nx = volume.shape
    with h5py.File(path, "w") as file:
        ds = file.create_dataset(
            "data", shape=volume.shape, dtype=np.float32,
            chunks=(1, ny, nx) if chunked else None,
        )
        for first in range(0, n, band):
            ds[first:first + band] = volume[first:first + band]
            if chunked:
                file.flush()
        file.flush()


def write_sink(path: Path, volume: Array, band: int) -> None:
    """The service's writer, with the metadata the service stores."""
    n, ny, nx = volume.shape
    writer = Hdf5VolumeWriter(
        path, detector_rows=range(n), slice_shape=(ny, nx),
        angles_deg=np.linspace(0.0, 180.0, int(1.2 * nx), endpoint=False),
        center_of_rotation=(nx - 1) / 2, center_method="given",
        pipeline_yaml="pipeline:\n  - method: fbp\n", scan="bench",
        metadata={"bench": "tools/bench_hdf5.py"},
    )
    for first in range(0, n, band):
        writer.write(first, volume[first:first + band])
    writer.close(complete=True, report={"scan": "bench", "status": "complete"})


def runner(mode: str, volume: Array, band: int) -> Callable[[Path], None]:
    if mode == "raw":
        return lambda path: write_raw(path, volume, band, chunked=False)
    if mode == "raw_chunked":
        return lambda path: write_raw(path, volume, band, chunked=True)
    return lambda path: write_sink(path, volume, band)


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((args.slices, args.size, args.size)).astype(np.float32)
    modes = list(args.modes)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        order = modes if run % 2 == 0 else modes[::-1]
        for mode in order:
            path = folder / f"bench_{mode}.h5"
            path.unlink(missing_ok=True)
            os.sync()
            began = time.perf_counter()
            runner(mode, volume, args.band)(path)
            times[mode].append(time.perf_counter() - began)
            path.unlink()
    nbytes = volume.nbytes
    result: dict[str, Any] = {"bytes": nbytes, "modes": {}}
    for mode, values in times.items():
        median = statistics.median(values)
        result["modes"][mode] = {
            "seconds": values, "median_s": median, "gb_per_s": nbytes / median / 1e9,
            "slices_per_s": args.slices / median,
        }
    if "raw" in times and "sink" in times:
        result["ratio"] = result["modes"]["raw"]["median_s"] / result["modes"]["sink"]["median_s"]
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024, help="slice edge (ny = nx)")
    parser.add_argument("--band", type=int, default=8, help="slices per band")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder to write into (default: a temporary folder in the cwd)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.slices, args.size, args.band, args.runs) < 1:
        parser.error("--slices, --size, --band and --runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_hdf5_", dir=args.dir or Path.cwd()) as tmp:
        result = measure(args, Path(tmp))
    print(f"{args.slices} slices of {args.size}x{args.size} float32 "
          f"({result['bytes'] / 2**20:.0f} MiB) in bands of {args.band}, "
          f"median of {args.runs} runs")
    print("| mode | median s | GB/s | slices/s |")
    print("|---|---|---|---|")
    for mode, row in result["modes"].items():
        print(f"| {mode} | {row['median_s']:.3f} | {row['gb_per_s']:.2f} | "
              f"{row['slices_per_s']:.0f} |")
    if "ratio" in result:
        print(f"sink / raw (throughput ratio) = {result['ratio']:.2f}")
    if args.json is not None:
        info = {"python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "h5py": h5py.__version__,
                "hdf5": h5py.version.hdf5_version}
        args.json.write_text(json.dumps(
            {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
             **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

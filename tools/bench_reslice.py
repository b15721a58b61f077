"""Benchmark: the reslice (BandExchange) against a raw MPI Alltoallv of the same bytes.

Run under MPI, all ranks in one job::

    mpiexec -n 2 .venv/bin/python tools/bench_reslice.py
    mpiexec -n 4 .venv/bin/python tools/bench_reslice.py --rows 1024 --cols 1024 \\
        --projections 256 --repeats 5 --json reslice-4.json

Every rank holds a round-robin share of ``projections`` float32 frames, as a PUSH deals
messages of ``--deal`` frames (default 1: frame i on rank i % R), in sorted blocks of
``--block`` frames (as the correction hands them on). Two ways to give rank r the rows
of its band of every frame, alternated so machine noise hits both alike (one untimed
warm-up of each first):

- **reslice**: the real :class:`streamer.exchange.reslice.BandExchange` on a duplicated
  communicator, fed as a stream would feed it — ``scatter`` per block, a ``poll`` after
  each — then ``finish_sending`` and ``wait``, which returns the band as C-contiguous
  sinograms ``(band_rows, projections, cols)`` sorted by frame index (with
  ``first_index=0``, frames land in their final columns; ``--arrival-order`` leaves it
  out, so frames land in arrival order and the band is sorted in one pass at the end);
- **raw**: one ``comm.Alltoallv`` of the same bytes, from a send buffer packed by
  destination before the clock starts, into a receive buffer allocated in the timed
  region (as the reslice allocates its band): the transport ceiling, in frame order,
  not in sinogram order.

Times run from a barrier to a barrier (the slowest rank). Prints medians, the ratio
raw / reslice (1.0: the reslice is as fast as the raw collective; target >= 0.7), and
per rank: the exchange's own peak count (band buffer + blocks kept alive by sends in
flight + receive scratch), pieces sent and band-sorting time, from the last timed run;
and measured RSS: with the frames loaded, its peak growth during the reslice-only
warm-up, and its growth while the band is held. The warm-up checks the bands against
regenerated frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from streamer.exchange.links import RankLink
from streamer.exchange.reslice import DEFAULT_MAX_IN_FLIGHT_BYTES, BandExchange, row_bands

MIB = 1 << 20


def frame(index: int, rows: int, cols: int) -> np.ndarray:
    """Frame ``index``, the same on every rank (regenerated to check the bands)."""
    return np.random.default_rng(index).random((rows, cols), dtype=np.float32)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_reslice(link: RankLink, serial: int, args: argparse.Namespace, indices: np.ndarray,
                frames: np.ndarray, *, check: bool) -> tuple[float, dict[str, Any]]:
    comm = link.comm
    comm.Barrier()
    started = time.perf_counter()
    exchange = BandExchange(link, scan_serial=serial, rows=args.rows, cols=args.cols,
                            projections=args.projections,
                            max_in_flight_bytes=int(args.cap_mib * MIB),
                            first_index=None if args.arrival_order else 0)
    for first in range(0, len(indices), args.block):
        part = slice(first, first + args.block)
        exchange.scatter(indices[part], indices[part] * 0.5, frames[part])
        exchange.poll()
    exchange.finish_sending()
    band = exchange.wait(600.0)
    comm.Barrier()
    elapsed = time.perf_counter() - started
    rss_with_band = rss_bytes()
    if check:
        a, b = band.rows
        assert np.array_equal(band.indices, np.arange(args.projections))
        for index in np.random.default_rng(0).choice(args.projections, 3, replace=False):
            expected = frame(int(index), args.rows, args.cols)[a:b]
            assert np.array_equal(band.sinograms[:, index, :], expected), index
        assert band.sinograms.flags.c_contiguous
    stats = exchange.stats
    return elapsed, {"rss_with_band_bytes": rss_with_band,
                     "band_bytes": stats.band_bytes, "peak_held_bytes": stats.peak_held_bytes,
                     "peak_in_flight_bytes": stats.peak_in_flight_bytes,
                     "send_wait_s": stats.send_wait_seconds, "exchange_s": stats.seconds,
                     "assembly_s": stats.assembly_seconds,
                     "assembly_bytes": stats.assembly_bytes, "pieces_sent": stats.pieces_sent}


def run_raw(comm: Any, send: np.ndarray, send_counts: list[int], recv_counts: list[int]
            ) -> float:
    send_displs = np.concatenate([[0], np.cumsum(send_counts)[:-1]]).tolist()
    recv_displs = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]).tolist()
    comm.Barrier()
    started = time.perf_counter()
    receive = np.empty(sum(recv_counts), dtype=np.float32)
    comm.Alltoallv([send, (send_counts, send_displs), MPI.FLOAT],
                   [receive, (recv_counts, recv_displs), MPI.FLOAT])
    comm.Barrier()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--projections", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", type=int, default=16, help="frames per scatter")
    parser.add_argument("--deal", type=int, default=1, help="frames per dealt message")
    parser.add_argument("--arrival-order", action="store_true",
                        help="no first_index: frames land in arrival order")
    parser.add_argument("--cap-mib", type=float, default=DEFAULT_MAX_IN_FLIGHT_BYTES / MIB,
                        help="max_in_flight_bytes, MiB")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    world = RankLink.world()
    link = world.duplicate()
    raw_comm = world.comm.Dup()
    rank, size = world.rank, world.size
    bands = row_bands(args.rows, size)
    messages = [np.arange(first, min(first + args.deal, args.projections))
                for first in range(0, args.projections, args.deal)]
    holders = [np.concatenate(messages[r::size] or [np.empty(0, int)]) for r in range(size)]
    indices = holders[rank]
    frames = np.empty((len(indices), args.rows, args.cols), dtype=np.float32)
    for position, index in enumerate(indices):
        frames[position] = frame(int(index), args.rows, args.cols)
    raw_comm.Barrier()
    rss_frames, peak_before = rss_bytes(), peak_rss_bytes()
    _, memory = run_reslice(link, 0, args, indices, frames, check=True)  # warm-up, checked
    rss_growth = max(0, peak_rss_bytes() - max(peak_before, rss_frames))
    rss_band = memory.pop("rss_with_band_bytes") - rss_frames
    # raw: the same rows, packed by destination before the clock starts
    send = np.concatenate([frames[:, a:b, :].reshape(-1) for a, b in bands])
    send_counts = [len(indices) * (b - a) * args.cols for a, b in bands]
    mine = bands[rank][1] - bands[rank][0]
    recv_counts = [len(holders[r]) * mine * args.cols for r in range(size)]
    run_raw(raw_comm, send, send_counts, recv_counts)  # warm-up
    times: dict[str, list[float]] = {"reslice": [], "raw": []}
    for repeat in range(args.repeats):
        order = ("reslice", "raw") if repeat % 2 == 0 else ("raw", "reslice")
        for mode in order:
            if mode == "reslice":
                elapsed, last = run_reslice(link, repeat + 1, args, indices, frames,
                                            check=False)
                memory |= {key: last[key] for key in (
                    "peak_held_bytes", "pieces_sent", "peak_in_flight_bytes", "assembly_s",
                    "assembly_bytes")}
            else:
                elapsed = run_raw(raw_comm, send, send_counts, recv_counts)
            times[mode].append(elapsed)

    memory |= {"rss_frames_bytes": rss_frames, "rss_growth_bytes": rss_growth,
               "rss_band_bytes": rss_band,
               "frames_bytes": frames.nbytes}
    everyone = world.comm.gather(memory, root=0)
    if rank == 0:
        total = args.projections * args.rows * args.cols * 4
        reslice, raw = statistics.median(times["reslice"]), statistics.median(times["raw"])
        result = {"ranks": size, "rows": args.rows, "cols": args.cols,
                  "projections": args.projections, "block": args.block, "deal": args.deal,
                  "first_index": None if args.arrival_order else 0,
                  "cap_mib": args.cap_mib, "total_bytes": total, "times_s": times,
                  "median_s": {"reslice": reslice, "raw": raw}, "ratio": raw / reslice,
                  "memory_per_rank": everyone}
        print(f"{size} ranks, {args.rows} rows x {args.cols} cols x {args.projections} "
              f"projections float32 ({total / MIB:.0f} MiB), dealt by {args.deal}, blocks of "
              f"{args.block}, cap {args.cap_mib:g} MiB, "
              f"{'arrival order' if args.arrival_order else 'first_index=0'}, "
              f"{args.repeats} repeats")
        for mode in ("reslice", "raw"):
            runs = ", ".join(f"{t:.3f}" for t in times[mode])
            median = statistics.median(times[mode])
            print(f"  {mode:8s} median {median:.3f} s ({total / median / 1e9:.2f} GB/s of "
                  f"data) runs: {runs}")
        print(f"  ratio raw/reslice: {raw / reslice:.2f}")
        for r, m in enumerate(everyone):
            print(f"  rank {r}: band {m['band_bytes'] / MIB:.0f} MiB, held peak "
                  f"{m['peak_held_bytes'] / MIB:.0f} MiB (in flight peak "
                  f"{m['peak_in_flight_bytes'] / MIB:.1f} MiB), {m['pieces_sent']} pieces sent, "
                  f"band sorting {m['assembly_s']:.3f} s; RSS: "
                  f"{m['rss_frames_bytes'] / MIB:.0f} MiB with its frames "
                  f"({m['frames_bytes'] / MIB:.0f} MiB), peak +{m['rss_growth_bytes'] / MIB:.0f}"
                  f" MiB during the reslice, +{m['rss_band_bytes'] / MIB:.0f} MiB holding "
                  "the band")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    raw_comm.Free()
    link.free()
    return 0


if __name__ == "__main__":
    sys.exit(main())

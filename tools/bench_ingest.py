"""Benchmark: simulate → ingest against a raw pyzmq PUSH/PULL of the same frames.

Both paths send the same simulated frames over the same transport (TCP loopback by
default) from a separate sender process, alternating raw and ingest runs so machine
noise hits both alike. The raw path receives each frame zero-copy and drops it — the
ceiling of the transport. The ingest path runs the real service: msgpack header decode,
validation before allocation, accounting, and the frame stored (zero-copy view) in the
frame store, from which a drain takes it as downstream would.

Usage::

    python tools/bench_ingest.py                       # 2048² and 512² uint16, 5 runs each
    python tools/bench_ingest.py --sizes 512 --runs 7 --json out.json

Prints medians of frames/s and GB/s for each path and the ratio ingest/raw, and the
receiving process's CPU time per frame (``time.process_time``: this thread and libzmq's
I/O thread), which the load of other processes on a shared machine disturbs far less
than the wall-clock rate, and its minor page faults per frame (freed receive buffers the
heap handed back to the kernel and faulted in again; see ``streamer/ingest/heap.py``).

Every run's receiver is a fresh process (this script with ``--one-run``), so a raw run
never inherits the allocator setting an ingest run made (``raw_keep_heap`` measures the
bare loop with that setting).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.store import FrameStore
from streamer.sources.scan import ScanLayout
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import FramesHeader, encode_frames
from streamer.wire.transport import Endpoint, open_socket

POOL = 4  # distinct simulated frames, cycled


@dataclass(frozen=True)
class PoolScan:
    """A scan of ``frames`` projections cycling through a pool of simulated frames."""

    pool: np.ndarray
    frames: int

    @property
    def layout(self) -> ScanLayout:
        return ScanLayout(
            rows=self.pool.shape[1], cols=self.pool.shape[2], dtype=self.pool.dtype,
            image_keys=np.zeros(self.frames, np.int8),
            angles_deg=np.linspace(0, 180, self.frames, endpoint=False),
            normalisation="air", source="bench",
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        if stop - start == 1:
            return self.pool[start % len(self.pool)][None]  # a view: no copy in the sender
        return np.stack([self.pool[i % len(self.pool)] for i in range(start, stop)])

    def close(self) -> None:
        pass


def simulated_pool(size: int) -> np.ndarray:
    scan = SimulatedScan(SimulationConfig(rows=size, cols=size, projections=POOL, flats=1,
                                          darks=1))
    first = scan.layout.frames - POOL
    return np.ascontiguousarray(scan.read(first, first + POOL))


def sender_main(address: str, size: int, frames: int, mode: str, ready: Any) -> None:
    pool = simulated_pool(size)
    scan = PoolScan(pool, frames)
    with zmq.Context() as context:
        push = open_socket(context, "push", Endpoint(address, bind=False), hwm=16,
                           send_timeout_ms=60_000, linger_ms=60_000)
        ready.set()
        if mode in ("raw", "raw_keep_heap"):
            for index in range(frames):
                push.send(pool[index % POOL], copy=False)
            push.send(b"")  # end marker
        elif mode == "raw_multipart":  # our exact messages, received without ingest
            layout = scan.layout
            for index in range(frames):
                header = FramesHeader(
                    scan="raw", first=index, count=1, keys=[0], angles=[0.0],
                    dtype=layout.dtype_name, shape=(layout.rows, layout.cols), t=time.time(),
                )
                push.send_multipart(encode_frames(header, pool[index % POOL][None]), copy=False)
            push.send(b"")
        else:
            send_scan(push, scan, SendOptions(block=1, scan_id=f"bench-{size}"))
        push.close()


Measure = tuple[float, float, int]  # wall s, receiver CPU s, receiver minor page faults


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def receive_raw(pull: zmq.Socket[Any], frames: int) -> Measure:
    got = faults = 0
    began = cpu = 0.0
    while True:
        if not pull.poll(60_000):
            raise RuntimeError("raw: no message within 60 s")
        message = pull.recv_multipart(copy=False)
        if got == 0:
            began, cpu, faults = time.perf_counter(), time.process_time(), _faults()
        if len(message[0]) == 0:
            break
        got += 1
    if got != frames:
        raise RuntimeError(f"raw: expected {frames} frames, got {got}")
    return time.perf_counter() - began, time.process_time() - cpu, _faults() - faults


def receive_ingest(pull: zmq.Socket[Any], frames: int) -> Measure:
    taken = 0
    marks: dict[str, float] = {}

    def drain(store: FrameStore) -> None:
        nonlocal taken
        taken += len(store.take())

    def on_event(event: Any) -> None:
        if "first" not in marks:
            marks["first"], marks["cpu"] = time.perf_counter(), time.process_time()
            marks["faults"] = _faults()

    service = IngestService(pull, IngestSettings(poll_ms=50, burst=256), drain=drain,
                            on_event=on_event)
    reports = service.run(max_scans=1)
    ended, cpu, faults = time.perf_counter(), time.process_time(), _faults()
    report = reports[0]
    if not report.complete or taken != frames:
        raise RuntimeError(f"ingest: scan not complete ({report.status}), took {taken}")
    return ended - marks["first"], cpu - marks["cpu"], faults - int(marks["faults"])


def one_run(size: int, frames: int, mode: str) -> Measure:
    """One run in a fresh receiving process (this one: see :func:`main`'s ``--one-run``),
    so that no run inherits another's allocator settings or heap."""
    if mode == "raw_keep_heap":  # the bare loop with the heap setting ingest makes
        from streamer.ingest.heap import DEFAULT_KEEP_BYTES, keep_freed_heap

        not_kept = keep_freed_heap(DEFAULT_KEEP_BYTES)
        if not_kept is not None:
            raise RuntimeError(f"raw_keep_heap: {not_kept}")
    ctx = mp.get_context("spawn")
    with zmq.Context() as context:
        pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16)
        address = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        ready = ctx.Event()
        sender = ctx.Process(target=sender_main, args=(address, size, frames, mode, ready))
        sender.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("sender did not start")
            if mode == "ingest":
                seconds = receive_ingest(pull, frames)
            else:
                seconds = receive_raw(pull, frames)  # (wall, CPU) seconds
        finally:
            sender.join(120)
            pull.close(linger=0)
    return seconds


def run_in_fresh_process(size: int, frames: int, mode: str) -> Measure:
    done = subprocess.run(
        [sys.executable, __file__, "--one-run", mode, str(size), str(frames)],
        check=True, capture_output=True, text=True,
    )
    wall, cpu, faults = json.loads(done.stdout.splitlines()[-1])
    return float(wall), float(cpu), int(faults)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 512])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bytes-per-run", type=float, default=2.0e9)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--modes", nargs="+", default=["raw", "ingest"],
                        choices=["raw", "raw_multipart", "raw_keep_heap", "ingest"],
                        help="raw_multipart: our messages received raw; raw_keep_heap: raw "
                             "with ingest's heap setting (diagnostics)")
    parser.add_argument("--one-run", nargs=3, metavar=("MODE", "SIZE", "FRAMES"),
                        help=argparse.SUPPRESS)  # the receiving process of one run
    args = parser.parse_args()
    if args.one_run:
        mode, size, frames = args.one_run
        print(json.dumps(one_run(int(size), int(frames), mode)), flush=True)
        return 0
    results = []
    for size in args.sizes:
        frame_bytes = size * size * 2
        frames = max(50, int(args.bytes_per_run // frame_bytes))
        times: dict[str, list[float]] = {mode: [] for mode in args.modes}
        cpus: dict[str, list[float]] = {mode: [] for mode in args.modes}
        faults: dict[str, list[int]] = {mode: [] for mode in args.modes}
        for _ in range(args.runs):
            for mode in args.modes:
                wall, cpu, fault_count = run_in_fresh_process(size, frames, mode)
                times[mode].append(wall)
                cpus[mode].append(cpu)
                faults[mode].append(fault_count)
        row: dict[str, Any] = {"frame": f"{size}x{size} uint16", "frame_bytes": frame_bytes,
                               "frames_per_run": frames, "runs": args.runs}
        for mode, values in times.items():
            median = statistics.median(values)
            row[mode] = {"median_s": median, "frames_per_s": frames / median,
                         "GB_per_s": frames * frame_bytes / median / 1e9,
                         "all_s": [round(v, 4) for v in values],
                         "cpu_us_per_frame": statistics.median(cpus[mode]) / frames * 1e6,
                         "page_faults_per_frame": statistics.median(faults[mode]) / frames}
        if "raw" in times and "ingest" in times:
            row["ratio"] = row["ingest"]["frames_per_s"] / row["raw"]["frames_per_s"]
        results.append(row)
        shown = ", ".join(f"{mode} {row[mode]['GB_per_s']:.2f} GB/s "
                          f"({row[mode]['frames_per_s']:.0f} f/s, receiver CPU "
                          f"{row[mode]['cpu_us_per_frame']:.0f} us/frame, "
                          f"{row[mode]['page_faults_per_frame']:.1f} page faults/frame)"
                          for mode in times)
        ratio = f", ratio {row['ratio']:.3f}" if "ratio" in row else ""
        print(f"{row['frame']:>18s}: {shown}{ratio}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

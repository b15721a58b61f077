"""Benchmark: how long the ingest loop stays paused after downstream frees its store.

The ingest service stops reading while its frame store is full (downstream behind:
``run``'s reconstruction worker busy). This measures the delay from the moment the worker
goes idle to the next frame taken, with the two ways the pause can end, alternating in
one process so machine noise hits both alike:

- ``sleep``: a poll period's sleep (the loop before session 7: ``time.sleep(poll)``);
- ``event``: the worker's idle event (``IngestService(await_downstream=…)``, what ``run``
  passes: ``RankedReconstruction.wait``).

Each try ingests one small scan (a start, eight one-frame messages, an end) from an
in-memory socket into a store that one frame fills; the first frame makes the worker
busy for a random 5-50 ms.

Usage::

    python tools/bench_ingest_pause.py                 # 30 tries per mode
    python tools/bench_ingest_pause.py --tries 100 --json out.json

Prints the median and the largest delay (ms) of each mode.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.store import FrameStore
from streamer.wire.protocol import (
    EndHeader,
    FramesHeader,
    StartHeader,
    encode_frames,
    encode_header,
)

ROWS, COLS = 2, 3
START = StartHeader(scan="bench", rows=ROWS, cols=COLS, dtype="uint8", frames=8,
                    projections=8, flats=0, darks=0, normalisation="air")
MODES = ("sleep", "event")


class QueueSocket:
    """A PULL socket's receive side over queued messages (``zmq.Again`` when none)."""

    closed = False

    def __init__(self, messages: list[list[Any]]) -> None:
        self.messages = deque(messages)

    def recv_multipart(self, copy: bool = True) -> list[Any]:
        if not self.messages:
            raise zmq.Again()
        return self.messages.popleft()

    def getsockopt(self, option: int) -> int:
        return -1

    def setsockopt(self, option: int, value: int) -> None:
        pass


def scan_messages() -> list[list[Any]]:
    frames = [encode_frames(FramesHeader(scan="bench", first=i, count=1, keys=[0],
                                         angles=[float(i)], dtype="uint8",
                                         shape=(ROWS, COLS)),
                            np.zeros((1, ROWS, COLS), np.uint8)) for i in range(8)]
    return [[encode_header(START)], *frames, [encode_header(EndHeader(scan="bench", sent=8))]]


def one_try(mode: str, rng: random.Random) -> float:
    """The delay (s) from the worker going idle to the next frame taken."""
    idle = threading.Event()
    idle.set()
    freed: list[float] = []
    resumed: list[float] = []
    busy_s = rng.uniform(0.005, 0.05)

    def work() -> None:
        time.sleep(busy_s)
        freed.append(time.perf_counter())
        idle.set()

    def drain(store: FrameStore) -> None:
        if not len(store) or not idle.is_set():
            return  # nothing held, or the worker is busy: the frames wait
        if freed and not resumed:
            resumed.append(time.perf_counter())
        store.take()
        if not freed:  # the first frame keeps the worker busy for a while
            idle.clear()
            threading.Thread(target=work, daemon=True).start()

    wait: Callable[[float], object] = time.sleep if mode == "sleep" else idle.wait
    service = IngestService(QueueSocket(scan_messages()),  # type: ignore[arg-type]
                            IngestSettings(idle_timeout_s=5.0, store_bytes=ROWS * COLS),
                            drain=drain, await_downstream=wait)
    service.run(max_scans=1)
    return resumed[0] - freed[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=30, help="tries per mode (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    delays: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.tries):
        for mode in MODES:  # alternating: the same machine noise for both
            delays[mode].append(one_try(mode, rng) * 1000)
    figures = {mode: {"median_ms": statistics.median(values), "max_ms": max(values),
                      "tries": len(values)} for mode, values in delays.items()}
    for mode, row in figures.items():
        print(f"{mode:>5}: resumed {row['median_ms']:.2f} ms after the worker went idle "
              f"(median; max {row['max_ms']:.2f} ms, {row['tries']} tries)")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared pieces of the live-feed tests: a scan streamed into the ``run`` service's
components (ingest → the runner on one rank, :func:`tests.run.ranks.one_rank`) with a
feed attached."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from stages.registry import REGISTRY
from streamer.ingest.accounting import ScanReport
from streamer.ingest.service import IngestService, IngestSettings
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.pipeline.config import parse_pipeline
from streamer.run.ranks import RankedReconstruction
from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.sources.simulate import SimulatedScan
from streamer.wire.protocol import EndHeader, FramesHeader, encode_frames, encode_header
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.run.ranks import one_rank

PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"
JOIN_S = 60.0


def fixed_center_pipeline(center: float) -> str:
    return ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
            f"  - method: fbp\n    parameters: {{center: {center}}}\n")


@dataclass
class LiveRun:
    """A ``run`` service (ingest + the runner on one rank + feed) on a loopback socket."""

    live: RankedReconstruction
    feed: LiveFeed
    push: zmq.Socket[Any]
    service: IngestService
    thread: threading.Thread
    stop: threading.Event
    reports: list[ScanReport] = field(default_factory=list)

    def send(self, scan: SimulatedScan, options: SendOptions,
             on_progress: Callable[[int, int], None] | None = None) -> None:
        send_scan(self.push, scan, options, on_progress=on_progress)

    def send_refs_first_shuffled(self, scan: SimulatedScan, scan_id: str, *, block: int = 8,
                                 seed: int = 0,
                                 after_block: Callable[[int], None] | None = None) -> None:
        """Darks and flats first, then the projections in blocks of shuffled order (so the
        preview sees the angles arrive in random order); ``after_block(projections sent)``
        after each message (a handshake: the next block waits for it)."""
        layout = scan.layout
        self.push.send(encode_header(start_header(layout, scan_id)))
        refs = int(np.count_nonzero(layout.image_keys != 0))
        firsts = [(0, refs)] + [(first, min(first + block, layout.frames))
                                for first in range(refs, layout.frames, block)]
        order = [firsts[0]] + [firsts[1:][i] for i in
                               np.random.default_rng(seed).permutation(len(firsts) - 1)]
        sent = 0
        for first, last in order:
            header = FramesHeader(scan=scan_id, first=first, count=last - first,
                                  keys=layout.image_keys[first:last].tolist(),
                                  angles=layout.angles_deg[first:last].tolist(),
                                  dtype=layout.dtype_name, shape=(layout.rows, layout.cols))
            self.push.send_multipart(encode_frames(header, scan.read(first, last)))
            sent += last - first
            if after_block is not None:
                after_block(sent - refs)
        self.push.send(encode_header(EndHeader(scan=scan_id, sent=sent)))

    def join(self) -> None:
        self.thread.join(JOIN_S)
        assert not self.thread.is_alive(), "the run service did not finish its scans"


@pytest.fixture
def live_run(context: zmq.Context[Any], tmp_path: Path) -> Iterator[Callable[..., LiveRun]]:
    """Start a run service with a feed; ``make(scans=1, pipeline=..., **feed settings)``."""
    made: list[tuple[LiveRun, zmq.Socket[Any]]] = []

    def make(scans: int = 1, pipeline: str = PIPELINE, block_frames: int = 8,
             **feed_settings: Any) -> LiveRun:
        steps = parse_pipeline(pipeline, REGISTRY, source="feed-test").steps
        feed = LiveFeed(FeedSettings(**feed_settings))
        runner = one_rank(steps, pipeline, tmp_path / "volumes", feed=feed,
                          block_frames=block_frames, block_sinograms=4)
        live = runner.ranked
        pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16)
        push = open_socket(context, "push", Endpoint(bound_address(pull), bind=False), hwm=16,
                           send_timeout_ms=30_000)
        service = runner.service(pull, IngestSettings(idle_timeout_s=30.0))
        stop = threading.Event()
        thread = threading.Thread(target=service.run,
                                  kwargs={"max_scans": scans, "stop": stop},
                                  name="ingest", daemon=True)
        run = LiveRun(live, feed, push, service, thread, stop)
        made.append((run, pull))
        thread.start()
        return run

    yield make
    for run, pull in made:
        run.stop.set()  # a service still running (a failed test) stops at its next turn
        run.thread.join(JOIN_S)
        run.push.close(linger=0)
        pull.close(linger=0)
        run.feed.close()

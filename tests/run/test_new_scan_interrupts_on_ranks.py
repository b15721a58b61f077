"""A new scan's ``start`` interrupts the previous scan's reconstruction on 2 in-process
ranks (the ``run`` service: ranks in threads, each with its own PULL socket, cluster
ingest and worker; ``interrupt_after_s``, issue 19): every rank sees the start (rank 0
orders it) and stops its band between blocks by itself, so the interrupted scan's master
is incomplete and names each rank's reason; the new scan is served complete, and the
job goes on (no rank's ``stop`` is set: that is Ctrl-C's, ``test_stop_on_ranks``).

Deterministic: the source sends both scans at once, so ``b``'s start may be taken up
before or during ``a``'s band; each rank's injected clock stands still (the grace of
1 s never runs out) until that rank's worker has written ``a``'s first block and seen
``b``'s start taken up (it waits for it, bounded), then jumps past the grace. So every
rank stops at its second block whatever the arrival order; no timing is asserted.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import h5py
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryLink
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import ScanOpened
from streamer.pipeline.config import parse_pipeline
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from streamer.wire.transport import Endpoint, open_socket
from tests.run.ranks import run_ranks
from tests.run.test_service_on_ranks import CONFIG, JOIN_S, PIPELINE, _source

RANKS = 2


def test_a_new_scan_interrupts_every_rank_between_blocks(tmp_path: Path) -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="interrupt.yaml").steps
    ready, address = threading.Event(), []
    source = _source(RANKS, ready, address)
    assert ready.wait(JOIN_S)
    out = tmp_path / "volumes"
    opened_b = [threading.Event() for _ in range(RANKS)]
    waited: list[list[bool]] = [[] for _ in range(RANKS)]
    stops = [threading.Event() for _ in range(RANKS)]
    grace_over = [False] * RANKS  # per rank: its injected clock jumps past the grace

    def rank(link: MemoryLink) -> list[ScanOutput]:
        me = link.rank
        control, band_link = link.duplicate(), link.duplicate()

        def on_block(scan: str, slices: int, rows: int) -> None:
            if scan == "a" and not waited[me]:
                waited[me].append(opened_b[me].wait(JOIN_S))
                grace_over[me] = True

        def clock() -> float:  # the grace runs out only after a's first block
            return 100.0 if grace_over[me] else 0.0

        ranked = RankedReconstruction(steps, PIPELINE, out, control, band_link,
                                      block_frames=8, block_sinograms=2,
                                      memory_bytes=1 << 28, background=True,
                                      on_block=on_block, stop=stops[me],
                                      interrupt_after_s=1.0, clock=clock)

        def on_event(event: Any) -> None:
            ranked.on_event(event)
            if isinstance(event, ScanOpened) and event.start.scan == "b":
                opened_b[me].set()

        with zmq.Context() as context:
            pull = open_socket(context, "pull", Endpoint(address[0], bind=False), hwm=8)
            try:
                service = IngestService(pull, IngestSettings(idle_timeout_s=10),
                                        drain=ranked.drain, on_event=on_event,
                                        cluster=ClusterIngest(link, 10.0))
                service.run(max_scans=2, stop=stops[me])
                assert ranked.wait(JOIN_S), "the worker never finished"
            finally:
                pull.close()
        return ranked.outputs

    results = run_ranks(RANKS, rank)
    source.join(JOIN_S)
    assert waited == [[True], [True]], "a rank never took b's start up during a's band"
    assert not any(stop.is_set() for stop in stops)  # an interruption is not a stop
    outputs = {output.scan: output for output in results[0]}
    assert list(outputs) == ["a", "b"]  # in order
    band = CONFIG.rows // RANKS
    first, second = outputs["a"], outputs["b"]
    assert second.complete and second.slices == CONFIG.rows
    assert not first.complete and first.slices == RANKS * 2  # one block of 2 per rank
    assert first.error is not None and first.path is not None
    for me in range(RANKS):
        assert (f"rank {me}: interrupted: scan 'b' started after 2 of {band} slices"
                in first.error), first.error
    with h5py.File(first.path) as file:
        assert not bool(file["/entry"].attrs["complete"])
        report = json.loads(file["/entry/process/report"][()])
        assert len(report["reconstruction_errors"]) == RANKS, report

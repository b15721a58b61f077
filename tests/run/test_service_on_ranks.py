"""The ``run`` service on 1 and 2 in-process ranks (ranks in threads, each with its own
PULL socket and cluster ingest) with the reconstruction in a worker thread: while a
scan is reconstructed, the ingest thread goes on reading its socket and accepts the next
scan's frames (they wait in the store); both volumes come out complete and right.

Deterministic: rank 0's worker, at its first written block of scan ``a``, waits (bounded)
until its own ingest thread has accepted frames of scan ``b``. Were the reconstruction in
the ingest thread, nothing would read the socket meanwhile and the wait would fail."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryLink
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import FramesAccepted
from streamer.pipeline.config import parse_pipeline
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction, recon_on_ranks
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.mpi.test_mpi_ingest import wait_for_peers
from tests.run.ranks import run_ranks

JOIN_S = 60.0
CONFIG = SimulationConfig.from_kwargs(rows=8, cols=32, projections=40, cor_px=16.0)
PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann, center: 16.0}
"""


def _source(ranks: int, ready: threading.Event, address: list[str]) -> threading.Thread:
    def run() -> None:
        with zmq.Context() as context:
            push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True),
                               hwm=8, send_timeout_ms=int(JOIN_S * 1000), linger_ms=10_000)
            address.append(bound_address(push))
            monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            ready.set()
            try:
                wait_for_peers(push, monitor, ranks)
                for scan_id in ("a", "b"):
                    send_scan(push, SimulatedScan(CONFIG),
                              SendOptions(scan_id=scan_id, block=4))
            finally:
                push.disable_monitor()
                monitor.close(linger=0)
                push.close()

    thread = threading.Thread(target=run, name="source", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ranks", [1, 2])
def test_ingest_reads_the_next_scan_while_the_worker_reconstructs(
        tmp_path: Path, ranks: int) -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="service.yaml").steps
    ready, address = threading.Event(), []
    source = _source(ranks, ready, address)
    assert ready.wait(JOIN_S)
    out = tmp_path / "volumes"
    seen_b = [threading.Event() for _ in range(ranks)]
    waited: list[bool] = []

    def rank(link: MemoryLink) -> list[ScanOutput]:
        me = link.rank
        control, band_link = link.duplicate(), link.duplicate()

        def on_block(scan: str, slices: int, rows: int) -> None:
            if me == 0 and scan == "a" and not waited:
                waited.append(seen_b[0].wait(JOIN_S))

        ranked = RankedReconstruction(steps, PIPELINE, out, control, band_link,
                                      block_frames=8, block_sinograms=2,
                                      memory_bytes=1 << 28, background=True,
                                      on_block=on_block)

        def on_event(event: Any) -> None:
            if isinstance(event, FramesAccepted) and event.start.scan == "b":
                seen_b[me].set()
            ranked.on_event(event)

        with zmq.Context() as context:
            pull = open_socket(context, "pull", Endpoint(address[0], bind=False), hwm=8)
            try:
                service = IngestService(pull, IngestSettings(idle_timeout_s=10),
                                        drain=ranked.drain, on_event=on_event,
                                        cluster=ClusterIngest(link, 10.0))
                service.run(max_scans=2)
                assert ranked.wait(JOIN_S), "the worker never finished"
            finally:
                pull.close()
        return ranked.outputs

    results = run_ranks(ranks, rank)
    source.join(JOIN_S)
    assert waited == [True], "the ingest thread did not read scan b during a's reconstruction"
    outputs = {output.scan: output for output in results[0]}
    assert sorted(outputs) == ["a", "b"]
    reference = tmp_path / "one.h5"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    run_ranks(1, lambda link: recon_on_ranks(
        SimulatedScan(CONFIG), ReconSettings(reference, pipeline=pipeline), link))
    with h5py.File(reference) as file:
        expected = file["/entry/reconstruction/data"][...]
    for scan_id, output in outputs.items():
        assert output.complete, output
        assert output.path == out / f"{scan_id}.h5"
        with h5py.File(output.path) as file:
            assert bool(file["/entry"].attrs["complete"])
            data = file["/entry/reconstruction/data"][...]
        np.testing.assert_allclose(data, expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())

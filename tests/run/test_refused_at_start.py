"""The planner refuses at ``start`` a scan whose band cannot fit the memory budget, on one
rank and on two (in-process ranks in threads, each with its own PULL socket and cluster
ingest, the runner in the worker mode ``run`` uses): one line names what the scan needs
(the rank's band and the references) and the budget; the scan is reported failed with
that line and every frame of it is counted; no output is written for it; the service
stays up and the next scan comes out complete.

The scan announces 2 000 000 projections of 8 × 32: its band alone (8 rows on one rank,
4 on each of two) is 1 953 MiB or 977 MiB per rank, against a 64 MiB budget. It sends
two frames (then its end): nothing of it is held; then a normal scan follows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import h5py
import pytest
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryLink
from streamer.ingest.accounting import ScanReport
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.run.ranks import RankedReconstruction
from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import EndHeader, FramesHeader, encode_frames, encode_header
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.mpi.test_mpi_ingest import wait_for_peers
from tests.run.ranks import run_ranks

JOIN_S = 60.0
BUDGET = 64 * 2**20
HUGE = 2_000_000  # projections the refused scan announces
CONFIG = SimulationConfig.from_kwargs(rows=8, cols=32, projections=40, cor_px=16.0)
PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann, center: 16.0}
"""


def _play(push: zmq.Socket[Any]) -> None:
    """The refused scan (its start, two frames, its end), then a normal one."""
    scan = SimulatedScan(CONFIG)
    layout = scan.layout
    start = start_header(layout, "huge")
    push.send(encode_header(start.model_copy(update={
        "projections": HUGE, "frames": HUGE + start.flats + start.darks})))
    header = FramesHeader(scan="huge", first=0, count=2, keys=[2, 2], angles=[0.0, 0.0],
                          dtype="uint16", shape=(CONFIG.rows, CONFIG.cols))
    push.send_multipart(encode_frames(header, scan.read(0, 2)))
    push.send(encode_header(EndHeader(scan="huge", sent=2)))
    send_scan(push, scan, SendOptions(scan_id="good", block=4))


def _source(ranks: int, ready: threading.Event, address: list[str],
            failed: list[BaseException], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        with zmq.Context() as context:
            push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True),
                               hwm=8, send_timeout_ms=int(JOIN_S * 1000), linger_ms=10_000)
            address.append(bound_address(push))
            monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            ready.set()
            try:
                wait_for_peers(push, monitor, ranks)
                _play(push)
            except BaseException as error:  # raised in the test; the ranks stop
                failed.append(error)
                stop.set()
                raise
            finally:
                push.disable_monitor()
                monitor.close(linger=0)
                push.close()

    thread = threading.Thread(target=run, name="source", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_band_that_cannot_fit_is_refused_at_start_and_the_next_scan_is_served(
        tmp_path: Path, ranks: int) -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="refused.yaml").steps
    ready, address, failed, stop = threading.Event(), [], [], threading.Event()
    source = _source(ranks, ready, address, failed, stop)
    assert ready.wait(JOIN_S)
    out = tmp_path / "volumes"
    reports: list[ScanReport] = []
    lines: list[str] = []

    def rank(link: MemoryLink) -> RankedReconstruction:
        ranked = RankedReconstruction(
            steps, PIPELINE, out, link.duplicate(), link.duplicate(), memory_bytes=BUDGET,
            background=True, log=lines.append if link.rank == 0 else None)
        with zmq.Context() as context:
            pull = open_socket(context, "pull", Endpoint(address[0], bind=False), hwm=8)
            try:
                service = IngestService(
                    pull, IngestSettings(idle_timeout_s=10), drain=ranked.drain,
                    on_event=ranked.on_event, cluster=ClusterIngest(link, 10.0),
                    on_report=reports.append if link.rank == 0 else None)
                service.run(max_scans=2, stop=stop)  # the refused scan counts: the service goes on
                assert ranked.wait(JOIN_S), "the worker never finished"
            finally:
                pull.close()
        return ranked

    ranked = run_ranks(ranks, rank)[0]
    source.join(JOIN_S)
    assert not source.is_alive() and not failed, failed
    by_scan = {report.scan: report for report in reports}
    assert sorted(by_scan) == ["good", "huge"]
    huge = by_scan["huge"]
    band = -(-CONFIG.rows // ranks)
    needed = (band * HUGE * CONFIG.cols * 4 + 30 * CONFIG.rows * CONFIG.cols * 4) / 2**20
    assert huge.status == "failed" and huge.failure is not None
    assert "\n" not in huge.failure
    assert huge.failure.startswith("refused at its start: memory: the scan needs "
                                   f"{needed:,.1f} MiB held while it runs (sinogram buffer "
                                   f"{band} rows x {HUGE} projections x {CONFIG.cols} "
                                   "columns float32")
    assert "the memory budget is 64.0 MiB (--memory)" in huge.failure
    # counted: each frame sent is in one bucket. Frames that came before the start was
    # opened on every rank (held pending by the cluster) are counted received when it
    # opens, then dropped with the scan; later ones are rejected (``scan_failed``).
    rejected = huge.rejected.get("scan_failed", {}).get("frames", 0)
    assert sum(huge.received.values()) + rejected + huge.duplicate == 2
    assert huge.received["projections"] == 0 and huge.missing["projections"] == HUGE
    assert any(line == huge.failure for line in lines)  # rank 0 says so once, at start
    outputs = {output.scan: output for output in ranked.outputs}
    assert outputs["huge"].path is None and outputs["huge"].error == huge.failure
    good = by_scan["good"]
    assert good.complete and outputs["good"].complete
    path = outputs["good"].path
    assert path is not None
    with h5py.File(path) as file:
        assert bool(file["/entry"].attrs["complete"])
        assert file["/entry/reconstruction/data"].shape == (CONFIG.rows, CONFIG.cols,
                                                            CONFIG.cols)

"""Ingest on several MPI ranks for real: every rank pulls from one PUSH source.

Run by tests/mpi/test_launch.py as ``mpiexec -n 2 python -m pytest -m mpi tests/mpi``;
every rank runs the same tests in the same order. Rank 0 also plays the source, in a
thread, and starts sending only once every rank's socket has connected (a socket-monitor
handshake), so the round-robin really spreads the frames.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.store import FrameStore
from streamer.sources.memory import ArrayScan
from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.wire.protocol import EndHeader, FramesHeader, encode_frames, encode_header
from streamer.wire.transport import Endpoint, bound_address, open_socket

pytestmark = pytest.mark.mpi
JOIN_S = 60.0


@pytest.fixture(scope="module")
def link() -> RankLink:
    return RankLink.world()


@pytest.fixture
def shared_dir(link: RankLink, request: pytest.FixtureRequest) -> Path:
    root = Path(os.environ["TOMO_MPI_TMP"]) / request.node.name
    if link.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
    link.comm.Barrier()
    return root


def make_scan(projections: int, seed: int) -> ArrayScan:
    rng = np.random.default_rng(seed)
    keys = [2] * 2 + [1] * 3 + [0] * projections
    frames = rng.integers(0, 4000, size=(len(keys), 4, 8), dtype=np.uint16)
    return ArrayScan(frames, keys, np.arange(len(keys), dtype=float))


def wait_for_peers(push: zmq.Socket[Any], monitor: zmq.Socket[Any], peers: int) -> None:
    poller = zmq.Poller()
    poller.register(monitor, zmq.POLLIN)
    joined = 0
    while joined < peers:
        assert poller.poll(JOIN_S * 1000), f"only {joined} of {peers} ranks connected"
        if recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            joined += 1


def source(shared_dir: Path, peers: int, ready: threading.Event, play: Any) -> threading.Thread:
    """Rank 0's source thread: bind a random loopback port (written to ``address.txt``
    for the other ranks), wait for every rank, then run ``play(push)``. TCP, not ipc://:
    libzmq's ipc transport can drop messages queued when a PUSH closes (libzmq #4660)."""

    def run() -> None:
        with zmq.Context() as context:
            push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True),
                               hwm=8, send_timeout_ms=int(JOIN_S * 1000), linger_ms=10_000)
            (shared_dir / "address.txt").write_text(bound_address(push))
            monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            ready.set()
            try:
                wait_for_peers(push, monitor, peers)
                play(push)
            finally:
                push.disable_monitor()
                monitor.close(linger=0)
                push.close()

    thread = threading.Thread(target=run, name="source")
    thread.start()
    return thread


def test_scans_are_spread_over_ranks_and_reported_once(link: RankLink, shared_dir: Path) -> None:
    complete = make_scan(60, seed=1)
    partial = make_scan(30, seed=2)

    def play(push: zmq.Socket[Any]) -> None:
        send_scan(push, complete, SendOptions(block=3, order="shuffle", scan_id="whole"))
        layout = partial.layout
        push.send(encode_header(start_header(layout, "holes")))
        for first in range(0, layout.frames, 5):
            if first in (10, 25):  # two blocks never sent
                continue
            count = min(5, layout.frames - first)
            header = FramesHeader(scan="holes", first=first, count=count,
                                  keys=layout.image_keys[first:first + count].tolist(),
                                  angles=[0.0] * count, dtype="uint16", shape=(4, 8))
            push.send_multipart(encode_frames(header, partial.read(first, first + count)))
        push.send(encode_header(EndHeader(scan="holes", sent=layout.frames - 10)))

    ready = threading.Event()
    thread = None
    if link.rank == 0:
        thread = source(shared_dir, link.size, ready, play)
        assert ready.wait(JOIN_S)
    link.comm.Barrier()  # the source is bound before anyone connects
    address = (shared_dir / "address.txt").read_text()
    taken: list[int] = []

    def drain(store: FrameStore) -> None:
        taken.extend(frame.index for frame in store.take())

    with zmq.Context() as context:
        pull = open_socket(context, "pull", Endpoint(address, bind=False), hwm=8)
        cluster = ClusterIngest(link, idle_timeout_s=5.0)
        service = IngestService(pull, IngestSettings(idle_timeout_s=5.0, poll_ms=20),
                                drain=drain, cluster=cluster)
        try:
            service.run(max_scans=2)
        finally:
            pull.close(linger=0)
    if thread is not None:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    counts = link.comm.allgather(len(taken))
    assert all(count > 0 for count in counts), f"frames per rank: {counts}"
    if link.rank == 0:
        # Back-to-back scans can overlap in flight across ranks, so rank 0 may learn of
        # the second start first; each scan is still accounted completely.
        by_scan = {report.scan: report for report in service.reports}
        whole, holes = by_scan["whole"], by_scan["holes"]
        assert whole.scan == "whole" and whole.complete and whole.duplicate == 0
        assert whole.received == {"projections": 60, "flats": 3, "darks": 2}
        assert sum(counts) == complete.layout.frames + partial.layout.frames - 10
        assert holes.status == "incomplete" and holes.close_reason == "end"
        assert holes.missing_ranges == [[10, 15], [25, 30]]
        assert holes.sent_by_source == partial.layout.frames - 10
    else:
        assert service.reports == []


def test_ingest_command_on_two_ranks_writes_one_report(link: RankLink, shared_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    scan = make_scan(40, seed=3)
    ready = threading.Event()
    thread = None
    if link.rank == 0:
        thread = source(shared_dir, link.size, ready,
                        lambda push: send_scan(push, scan, SendOptions(scan_id="cli", block=4)))
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    address = (shared_dir / "address.txt").read_text()
    reports = shared_dir / "reports"
    code = main(["ingest", "--from", address, "--scans", "1", "--report-dir", str(reports),
                 "--idle-timeout", "5"])
    if thread is not None:
        thread.join(JOIN_S)
    assert code == 0
    link.comm.Barrier()
    assert [p.name for p in reports.iterdir()] == ["cli.json"]
    report = json.loads((reports / "cli.json").read_text())
    assert report["complete"] and report["config"]["ranks"] == link.size
    out = capsys.readouterr().out
    assert ("COMPLETE" in out) == (link.rank == 0)

"""Multi-rank ingest coordination, driven without MPI or sockets.

Two (or three) ranks are :class:`IngestService` objects joined by an in-memory link; the
test plays the source's round-robin by hand and steps the ranks in chosen orders, so the
races of a real run (frames before their ``start``, ``end`` on another rank, a rank that
never saw the scan) are reproduced deterministically. The same code runs under real MPI
in ``tests/mpi/``.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from streamer.exchange.links import Received
from streamer.ingest.cluster import SUPERSEDE_GRACE_S, ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.wire.protocol import (
    AbortHeader,
    EndHeader,
    FramesHeader,
    StartHeader,
    encode_frames,
    encode_header,
)

ROWS, COLS = 2, 3
IDLE_S = 5.0


class Network:
    def __init__(self, size: int) -> None:
        self.size = size
        self.queues: list[deque[Received]] = [deque() for _ in range(size)]


class FakeLink:
    def __init__(self, network: Network, rank: int) -> None:
        self.network = network
        self._rank = rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self.network.size

    def send(self, dest: int, tag: int, payload: bytes) -> None:
        self.network.queues[dest].append(Received(self._rank, tag, bytes(payload)))

    def send_to_others(self, tag: int, payload: bytes) -> None:
        for dest in range(self.size):
            if dest != self._rank:
                self.send(dest, tag, payload)

    def poll(self, limit: int = 1000) -> list[Received]:
        queue = self.network.queues[self._rank]
        return [queue.popleft() for _ in range(min(limit, len(queue)))]

    def flush(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _NoSocket:
    pass


def make_ranks(size: int = 2) -> tuple[list[IngestService], Clock]:
    network, clock = Network(size), Clock()
    ranks = []
    for rank in range(size):
        cluster = ClusterIngest(FakeLink(network, rank), idle_timeout_s=IDLE_S)
        service = IngestService(_NoSocket(), IngestSettings(idle_timeout_s=IDLE_S),  # type: ignore[arg-type]
                                clock=clock, cluster=cluster)
        ranks.append(service)
    return ranks, clock


def step(ranks: list[IngestService], rounds: int = 3) -> None:
    for _ in range(rounds):
        for service in ranks:
            service._cluster_step()


START = StartHeader(scan="A", rows=ROWS, cols=COLS, dtype="uint8", frames=8, projections=6,
                    flats=1, darks=1, normalisation="flat_dark")
KEYS = [2, 1, 0, 0, 0, 0, 0, 0]


def frames(first: int, count: int, scan: str = "A") -> list[object]:
    header = FramesHeader(scan=scan, first=first, count=count, keys=KEYS[first:first + count],
                          angles=[0.0] * count, dtype="uint8", shape=(ROWS, COLS))
    return encode_frames(header, np.zeros((count, ROWS, COLS), np.uint8))


def test_round_robin_scan_is_merged_into_one_complete_report() -> None:
    (rank0, rank1), _ = make_ranks()
    rank0.handle_parts(frames(0, 2))  # frames beat their start to rank 0
    rank1.handle_parts([encode_header(START)])  # the start went to rank 1
    rank1.handle_parts(frames(2, 2))
    step([rank0, rank1])
    rank0.handle_parts(frames(4, 2))
    rank1.handle_parts(frames(6, 2))
    rank1.handle_parts(frames(6, 1))  # a resend, dealt to rank 1 again
    rank0.handle_parts(frames(2, 1))  # a resend, dealt to the other rank
    rank1.handle_parts([encode_header(EndHeader(scan="A", sent=10))])
    step([rank0, rank1])
    assert rank1.reports == []
    (report,) = rank0.reports
    assert report.complete and report.close_reason == "end"
    assert report.received == {"projections": 6, "flats": 1, "darks": 1}
    assert report.duplicate == 2 and report.sent_by_source == 10


def test_end_waits_for_frames_still_in_flight_to_other_ranks() -> None:
    (rank0, rank1), _ = make_ranks()
    rank0.handle_parts([encode_header(START)])
    rank0.handle_parts(frames(0, 4))
    rank0.handle_parts([encode_header(EndHeader(scan="A", sent=8))])
    step([rank0, rank1])
    assert rank0.reports == []  # rank 1's four frames have not been read yet
    rank1.handle_parts(frames(4, 4))
    step([rank0, rank1])
    (report,) = rank0.reports
    assert report.complete


def test_idle_timeout_closes_everywhere_and_lists_missing_frames() -> None:
    (rank0, rank1), clock = make_ranks()
    rank1.handle_parts([encode_header(START)])
    rank1.handle_parts(frames(0, 3))
    step([rank0, rank1])
    clock.now += IDLE_S - 0.1
    step([rank0, rank1])
    assert rank0.reports == []
    clock.now += 0.2
    step([rank0, rank1])
    (report,) = rank0.reports
    assert report.status == "incomplete" and report.close_reason.startswith("source_timeout")
    assert report.missing == {"projections": 5, "flats": 0, "darks": 0}
    assert report.missing_ranges == [[3, 8]]


def test_abort_on_any_rank_aborts_the_scan() -> None:
    (rank0, rank1, rank2), _ = make_ranks(3)
    rank2.handle_parts([encode_header(START)])
    rank1.handle_parts(frames(0, 2))
    rank0.handle_parts([encode_header(AbortHeader(scan="A", reason="beam dump"))])
    step([rank0, rank1, rank2])
    (report,) = rank0.reports
    assert report.status == "aborted" and report.close_reason == "abort: beam dump"
    assert report.received["darks"] == 1 and report.received["flats"] == 1


def test_new_scan_supersedes_the_open_one_after_a_grace_for_its_end() -> None:
    (rank0, rank1), clock = make_ranks()
    rank0.handle_parts([encode_header(START)])
    step([rank0, rank1])
    rank1.handle_parts(frames(0, 8))
    second = START.model_copy(update={"scan": "B"})
    rank1.handle_parts([encode_header(second)])  # no end for A: it may be in flight
    step([rank0, rank1])
    assert rank0.reports == [] and rank0.state.current.start.scan == "A"  # type: ignore[union-attr]
    clock.now += SUPERSEDE_GRACE_S
    step([rank0, rank1])
    first_report = rank0.reports[0]
    assert first_report.scan == "A" and first_report.complete
    assert "superseded" in first_report.close_reason
    rank0.handle_parts(frames(0, 8, scan="B"))
    rank0.handle_parts([encode_header(EndHeader(scan="B", sent=8))])
    step([rank0, rank1])
    assert [r.scan for r in rank0.reports] == ["A", "B"] and rank0.reports[1].complete


def test_next_scan_waits_while_the_previous_one_is_ending() -> None:
    """A scan's last frames can still sit in another rank's queue when the next start
    arrives: the new scan must not cut them off."""
    (rank0, rank1), _ = make_ranks()
    rank0.handle_parts([encode_header(START)])
    step([rank0, rank1])
    rank0.handle_parts(frames(0, 4))
    rank0.handle_parts([encode_header(EndHeader(scan="A", sent=8))])
    second = START.model_copy(update={"scan": "B"})
    rank0.handle_parts([encode_header(second)])
    rank0.handle_parts(frames(0, 2, scan="B"))  # B's frames wait for B's start
    step([rank0, rank1])
    assert rank0.state.current.start.scan == "A"  # type: ignore[union-attr]
    rank1.handle_parts(frames(4, 4))  # A's stragglers, queued on rank 1
    step([rank0, rank1])
    first = rank0.reports[0]
    assert first.scan == "A" and first.complete and first.close_reason == "end"
    assert rank0.state.current.start.scan == "B"  # type: ignore[union-attr]
    assert rank0.state.current.received[2] == 1  # B's early frames were replayed


def test_stopping_rank_0_closes_open_scans_and_stops_the_others() -> None:
    (rank0, rank1), _ = make_ranks()
    rank0.handle_parts([encode_header(START)])
    rank1.handle_parts(frames(0, 5))
    step([rank0, rank1])
    for event in rank0.cluster.finish(rank0.state, rank0.clock()):  # type: ignore[union-attr]
        rank0._dispatch(event)
    step([rank1])  # rank 1 gets CLOSE and hands in its account
    step([rank0])
    rank0.cluster.stop_others()  # type: ignore[union-attr]
    step([rank1])
    (report,) = rank0.reports
    assert report.close_reason == "service_stopped" and report.received["projections"] == 3
    assert rank1.cluster.stopped  # type: ignore[union-attr]

"""A scan's close is heard without poll periods (issue 19): the ingest loop steps the
cluster as soon as a ``start``/``end``/``abort`` is read, merges a close's accounts in
the step that closed it, and, while a close is in play on several ranks, waits for its
socket only a few milliseconds at a time (growing with the quiet), so the other ranks'
MPI messages (which wake nobody) are read at once. Driven without MPI or real sockets,
with the injected clock of ``test_cluster``: no timing is asserted, only what each step
decides and how long the loop would wait.
"""

from __future__ import annotations

import pytest

from streamer.exchange.links import MemoryNetwork
from streamer.ingest.cluster import (
    CONTROL_POLL_S,
    QUIET_FRACTION,
    ClusterIngest,
    control_wait_s,
)
from streamer.ingest.service import IngestService, IngestSettings
from streamer.wire.protocol import EndHeader, encode_header
from tests.ingest.queue_socket import QueueSocket
from tests.ingest.test_cluster import IDLE_S, START, Clock, frames, make_ranks

POLL_S = IngestSettings().poll_ms / 1000


def test_the_wait_starts_short_and_grows_with_the_quiet_up_to_the_poll_period() -> None:
    assert control_wait_s(0.0, POLL_S) == CONTROL_POLL_S
    assert control_wait_s(-1.0, POLL_S) == CONTROL_POLL_S  # a clock step back
    assert control_wait_s(0.4, POLL_S) == pytest.approx(0.4 * QUIET_FRACTION)
    assert control_wait_s(60.0, POLL_S) == POLL_S
    waits = [control_wait_s(q / 100, POLL_S) for q in range(200)]
    assert waits == sorted(waits)


def test_a_close_in_play_on_two_ranks_shortens_the_wait_for_the_socket() -> None:
    (rank0, rank1), clock = make_ranks()
    assert rank0.cluster is not None and rank1.cluster is not None
    # nothing open: the poll period (nothing to hear sooner)
    assert rank1.cluster.wait_s(rank1.state, clock.now, POLL_S, None) == POLL_S
    rank0.handle_parts([encode_header(START)])
    rank0._cluster_step()  # rank 0 opens the scan and tells rank 1
    rank1._cluster_step()
    heard = clock.now
    assert rank1.state.current is not None
    for service in (rank0, rank1):
        assert service.cluster is not None
        assert service.cluster.wait_s(service.state, clock.now, POLL_S, heard) == \
            CONTROL_POLL_S
    clock.now += 0.4  # quiet: the wait grows with it
    assert rank1.cluster.wait_s(rank1.state, clock.now, POLL_S, heard) == \
        pytest.approx(0.4 * QUIET_FRACTION)
    clock.now += IDLE_S / 2
    assert rank1.cluster.wait_s(rank1.state, clock.now, POLL_S, heard) == POLL_S


def test_one_rank_waits_the_poll_period_and_reports_in_the_closing_step() -> None:
    clock = Clock()
    cluster = ClusterIngest(MemoryNetwork(1).link(0), idle_timeout_s=IDLE_S)
    end = [encode_header(EndHeader(scan="A", sent=8))]
    after = frames(0, 1, scan="B")  # the next scan's message stays unread
    socket = QueueSocket([[encode_header(START)], frames(0, 8), end, after])
    service = IngestService(socket, IngestSettings(idle_timeout_s=IDLE_S),  # type: ignore[arg-type]
                            clock=clock, cluster=cluster)
    assert service._receive_burst() == 1  # the start: the cluster opens it now
    service._cluster_step()
    assert service.state.current is not None
    assert cluster.wait_s(service.state, clock.now, POLL_S, clock.now) == POLL_S  # no peers
    assert service._receive_burst() == 2  # the frames, then the end: stop there
    assert list(socket.messages) == [after]
    service._cluster_step()  # decided, closed and merged in this one step
    (report,) = service.reports
    assert report.complete and report.close_reason == "end"


def test_rank_0_decides_in_the_step_after_the_end_and_rank_1_hears_it_next() -> None:
    (rank0, rank1), _ = make_ranks()
    rank0.handle_parts([encode_header(START)])
    rank0._cluster_step()
    rank1._cluster_step()
    rank1.socket = QueueSocket([frames(4, 4), [encode_header(EndHeader(scan="A", sent=8))],
                                frames(0, 1, scan="B")])  # type: ignore[assignment]
    rank0.handle_parts(frames(0, 4))
    assert rank1._receive_burst() == 2  # its frames, then the end (forwarded at once)
    rank1._cluster_step()  # its count goes to rank 0
    rank0._cluster_step()  # every count and the end are in: closed everywhere
    assert rank0.state.current is None
    assert rank1.state.current is not None
    rank1._cluster_step()  # CLOSE heard: its account goes to rank 0
    assert rank1.state.current is None
    rank0._cluster_step()
    (report,) = rank0.reports
    assert report.complete and report.close_reason == "end"
    assert rank0.cluster is not None
    # nothing in play any more: back to the poll period
    assert rank0.cluster.wait_s(rank0.state, 0.0, POLL_S, None) == POLL_S

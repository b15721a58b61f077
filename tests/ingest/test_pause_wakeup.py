"""The ingest loop's pauses end on the event that ends them, not a poll period later
(issue: sleeps where an event should wake). A full store waits for downstream's own
signal (``await_downstream``: the reconstruction worker going idle); without one, and
for what comes over MPI (rank 0's wait for every rank's account when the service stops),
the loop backs off from 1 ms instead of sleeping a whole poll period each round. The
longest wait, a poll period, is unchanged. Driven with an injected ``sleep`` and clock:
no timing is asserted, only which waits the loop asked for.
"""

from __future__ import annotations

import pytest

from streamer.ingest.cluster import FIRST_BACKOFF_S, backoff_s
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.store import FrameStore
from streamer.wire.protocol import EndHeader, encode_header
from tests.ingest.queue_socket import QueueSocket
from tests.ingest.test_cluster import IDLE_S, START, frames, make_ranks

POLL_S = IngestSettings().poll_ms / 1000
#: One frame of ``test_cluster``'s scan (2 x 3 uint8): a store of this size is full
#: with one frame held.
FRAME_BYTES = 6


class BusyDownstream:
    """A drain that leaves the frames in the store while its worker is busy, the way
    ``RankedReconstruction.drain`` does; ``busy_drains`` drains of held frames are
    refused."""

    def __init__(self, busy_drains: int) -> None:
        self.busy_drains = busy_drains
        self.taken = 0

    def drain(self, store: FrameStore) -> None:
        if self.busy_drains > 0 and len(store):
            self.busy_drains -= 1
            return
        self.taken += len(store.take())


def one_scan() -> QueueSocket:
    """The start, the scan's eight frames one per message, and its end."""
    return QueueSocket([[encode_header(START)], *(frames(i, 1) for i in range(8)),
                        [encode_header(EndHeader(scan="A", sent=8))]])


def test_the_back_off_starts_at_1_ms_doubles_and_stops_at_the_poll_period() -> None:
    waits = [backoff_s(rounds, POLL_S) for rounds in range(12)]
    assert waits[:3] == [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S, 4 * FIRST_BACKOFF_S]
    assert waits == sorted(waits)
    assert waits[-1] == POLL_S
    assert backoff_s(10**6, POLL_S) == POLL_S  # no overflow on a very long wait


def test_a_full_store_waits_for_downstreams_signal_not_a_poll_period() -> None:
    # refused after the first frame's message, and once more before the loop pauses
    downstream = BusyDownstream(busy_drains=2)
    waited: list[float] = []

    def await_downstream(longest_s: float) -> bool:
        waited.append(longest_s)
        return True  # the worker went idle: the next drain takes the frames

    slept: list[float] = []
    service = IngestService(one_scan(),  # type: ignore[arg-type]
                            IngestSettings(idle_timeout_s=IDLE_S, store_bytes=FRAME_BYTES),
                            drain=downstream.drain, await_downstream=await_downstream,
                            sleep=slept.append)
    (report,) = service.run(max_scans=1)
    assert waited == [POLL_S]  # one pause, bounded by the poll period, ended by the signal
    assert slept == []
    assert report.complete and downstream.taken == 8


def test_without_a_signal_a_full_store_is_retried_after_a_back_off_from_1_ms() -> None:
    downstream = BusyDownstream(busy_drains=4)  # after the message, then 3 pauses
    slept: list[float] = []
    service = IngestService(one_scan(),  # type: ignore[arg-type]
                            IngestSettings(idle_timeout_s=IDLE_S, store_bytes=FRAME_BYTES),
                            drain=downstream.drain, sleep=slept.append)
    (report,) = service.run(max_scans=1)
    assert slept == [backoff_s(0, POLL_S), backoff_s(1, POLL_S), backoff_s(2, POLL_S)]
    assert report.complete and downstream.taken == 8


def test_rank_0_stopping_waits_for_the_accounts_from_1_ms_not_a_poll_period() -> None:
    (rank0, rank1), clock = make_ranks()
    rank0.handle_parts([encode_header(START)])
    rank1.handle_parts(frames(0, 5))
    for service in (rank0, rank1, rank0):
        service._cluster_step()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        """Rank 1 hears CLOSE and hands in its account during rank 0's first wait."""
        slept.append(seconds)
        clock.now += seconds
        rank1._cluster_step()

    rank0.sleep = sleep
    rank0._cluster_finish()
    assert slept == [FIRST_BACKOFF_S]
    (report,) = rank0.reports
    assert report.close_reason == "service_stopped"
    assert report.received["projections"] == 3  # rank 1's account is in it


def test_rank_0_stops_waiting_for_a_silent_rank_at_the_same_deadline() -> None:
    (rank0, rank1), clock = make_ranks()
    rank0.handle_parts([encode_header(START)])
    rank1.handle_parts(frames(0, 5))
    for service in (rank0, rank1, rank0):
        service._cluster_step()
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # rank 1 never answers
        slept.append(seconds)
        clock.now += seconds

    rank0.sleep = sleep
    rank0._cluster_finish()
    assert sum(slept[:-1]) < IDLE_S <= sum(slept)  # the deadline, as before
    assert max(slept) == POLL_S and slept == sorted(slept)
    (report,) = rank0.reports
    assert report.close_reason.startswith("service_stopped (no account from ranks [1]")
    assert not report.complete


@pytest.mark.parametrize("busy_drains", [0, 2])
def test_a_close_hands_over_held_frames_after_downstreams_signal(busy_drains: int) -> None:
    """At a close the held frames go downstream first: the wait for a busy worker is its
    signal too (one wait per refused drain, each bounded by the poll period)."""
    downstream = BusyDownstream(busy_drains=busy_drains)
    waited: list[float] = []
    service = IngestService(QueueSocket([]),  # type: ignore[arg-type]
                            IngestSettings(idle_timeout_s=IDLE_S),
                            drain=downstream.drain, await_downstream=waited.append,
                            sleep=pytest.fail)
    for message in [[encode_header(START)], frames(0, 4)]:
        service.handle_parts(message)  # held, not drained
    assert len(service.store) == 4
    assert service._hand_over_held_frames() is None
    assert waited == [POLL_S] * busy_drains
    assert not len(service.store) and downstream.taken == 4

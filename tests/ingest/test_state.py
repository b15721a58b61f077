"""The ingest rules, driven directly (no sockets): every frame ends in one bucket."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import ProtocolError
from streamer.ingest.state import FramesAccepted, IngestState, ScanClosed, ScanOpened
from streamer.wire.protocol import (
    AbortHeader,
    EndHeader,
    FramesHeader,
    FramesMessage,
    StartHeader,
)

ROWS, COLS = 3, 4


def start(scan: str = "s1", darks: int = 2, flats: int = 2, projections: int = 6) -> StartHeader:
    return StartHeader(
        scan=scan,
        rows=ROWS,
        cols=COLS,
        dtype="uint16",
        frames=darks + flats + projections,
        darks=darks,
        flats=flats,
        projections=projections,
        normalisation="flat_dark",
    )


def keys_for(header: StartHeader) -> list[int]:
    return [2] * header.darks + [1] * header.flats + [0] * header.projections


def frames(
    scan_start: StartHeader,
    first: int,
    count: int,
    *,
    keys: list[int] | None = None,
    dtype: str = "uint16",
    shape: tuple[int, int] = (ROWS, COLS),
) -> FramesMessage:
    all_keys = keys_for(scan_start) + [0] * 100
    header = FramesHeader(
        scan=scan_start.scan,
        first=first,
        count=count,
        keys=keys if keys is not None else all_keys[first : first + count],
        angles=[float(i) for i in range(first, first + count)],
        dtype=dtype,  # type: ignore[arg-type]
        shape=shape,
    )
    data = np.zeros((count, *shape), dtype=header.wire_dtype)
    return FramesMessage(header, data)


def closed_report(events: list[object]) -> ScanClosed:
    closed = [event for event in events if isinstance(event, ScanClosed)]
    assert len(closed) == 1, events
    return closed[0]


def test_complete_scan_in_order() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    assert isinstance(state.handle_message(header, 0.0)[0], ScanOpened)
    for first in range(0, header.frames, 3):
        events = state.handle_message(frames(header, first, min(3, header.frames - first)), 1.0)
        assert isinstance(events[0], FramesAccepted) and events[0].accepted.all()
    report = closed_report(state.handle_message(EndHeader(scan="s1", sent=10), 2.0)).report
    assert report.status == "complete"
    assert report.received == {"projections": 6, "flats": 2, "darks": 2}
    assert report.missing == {"projections": 0, "flats": 0, "darks": 0}
    assert report.sent_by_source == 10
    assert report.duplicate == report.out_of_range == 0 and report.rejected == {}


def test_duplicates_and_out_of_order_are_counted_not_double_counted() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    order = [(6, 4), (0, 3), (3, 3), (0, 3), (4, 4)]  # out of order, one resend, one overlap
    accepted_total = 0
    for first, count in order:
        (event,) = state.handle_message(frames(header, first, count), 1.0)
        assert isinstance(event, FramesAccepted)
        accepted_total += int(event.accepted.sum())
    assert accepted_total == 10
    report = closed_report(state.handle_message(EndHeader(scan="s1", sent=17), 2.0)).report
    assert report.complete
    assert report.duplicate == 7  # 3 from the resend of 0..2, 4 from the overlap 4..7
    assert report.received["projections"] == 6


def test_missing_frames_are_listed_per_key_and_as_ranges() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, 3), 1.0)  # darks 0,1 and flat 2
    state.handle_message(frames(header, 5, 2), 1.0)  # projections 5, 6
    report = closed_report(state.handle_message(EndHeader(scan="s1", sent=10), 2.0)).report
    assert report.status == "incomplete"
    assert report.missing == {"projections": 4, "flats": 1, "darks": 0}
    assert report.missing_ranges == [[3, 5], [7, 10]]


def test_out_of_range_frames_are_counted() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    (event,) = state.handle_message(frames(header, 8, 4), 1.0)  # 8, 9 valid; 10, 11 not
    assert isinstance(event, FramesAccepted)
    assert event.accepted.tolist() == [True, True, False, False]
    report = closed_report(state.handle_message(AbortHeader(scan="s1"), 2.0)).report
    assert report.out_of_range == 2
    assert report.status == "aborted"


def test_more_frames_of_a_key_than_announced_are_rejected() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    (event,) = state.handle_message(frames(header, 0, 4, keys=[2, 2, 2, 1]), 1.0)
    assert isinstance(event, FramesAccepted)
    assert event.accepted.tolist() == [True, True, False, True]
    report = closed_report(state.shutdown()).report
    assert report.rejected["key_count_exceeded"] == {"messages": 1, "frames": 1}
    assert report.received["darks"] == 2


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"dtype": "float32"}, "dtype_mismatch"), ({"shape": (ROWS, COLS + 1)}, "shape_mismatch")],
)
def test_frames_that_do_not_fit_the_scan_are_rejected(kwargs: dict, reason: str) -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    assert state.handle_message(frames(header, 0, 2, **kwargs), 1.0) == []
    report = closed_report(state.shutdown()).report
    assert report.rejected == {reason: {"messages": 1, "frames": 2}}
    assert report.received == {"projections": 0, "flats": 0, "darks": 0}


def test_idle_timeout_closes_the_scan_as_incomplete() -> None:
    state = IngestState(idle_timeout_s=2.0)
    header = start()
    state.handle_message(header, 10.0)
    state.handle_message(frames(header, 0, 5), 11.0)
    assert state.handle_tick(12.9) == []
    report = closed_report(state.handle_tick(13.1)).report
    assert report.status == "incomplete"
    assert report.close_reason.startswith("source_timeout")
    assert report.missing["projections"] == 5


def test_new_scan_before_end_supersedes_the_open_one() -> None:
    state = IngestState(idle_timeout_s=5)
    first, second = start("s1"), start("s2")
    state.handle_message(first, 0.0)
    state.handle_message(frames(first, 0, 10), 1.0)
    events = state.handle_message(second, 2.0)
    assert isinstance(events[0], ScanClosed) and isinstance(events[1], ScanOpened)
    report = events[0].report
    assert report.status == "complete"  # all frames were in, even without `end`
    assert "superseded" in report.close_reason
    # late frames of the first scan are rejected against the second, by name
    state.handle_message(frames(first, 0, 2), 3.0)
    report2 = closed_report(state.shutdown()).report
    assert report2.rejected == {"scan_closed": {"messages": 1, "frames": 2}}


def test_restarted_source_resending_is_counted_as_restart_and_duplicates() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, 6), 1.0)
    assert state.handle_message(header.model_copy(update={"t": 99.0}), 2.0) == []
    state.handle_message(frames(header, 0, 10), 3.0)
    report = closed_report(state.handle_message(EndHeader(scan="s1", sent=10), 4.0)).report
    assert report.complete and report.restarts == 1 and report.duplicate == 6


def test_conflicting_start_for_the_same_scan_is_rejected() -> None:
    state = IngestState(idle_timeout_s=5)
    state.handle_message(start(), 0.0)
    assert state.handle_message(start(projections=7), 1.0) == []
    report = closed_report(state.shutdown()).report
    assert report.rejected == {"start_mismatch": {"messages": 1, "frames": 0}}


def test_messages_without_an_open_scan_are_kept_between_scans() -> None:
    state = IngestState(idle_timeout_s=5)
    lone = frames(start("ghost"), 0, 3)
    state.handle_message(lone, 0.0)
    state.handle_message(EndHeader(scan="ghost", sent=3), 0.0)
    state.handle_rejected(ProtocolError("malformed_header", "x"), 0.0)
    assert state.between_scans.as_dict() == {
        "malformed_header": {"messages": 1, "frames": 0},
        "unknown_scan": {"messages": 2, "frames": 3},
    }


def test_rejections_during_a_scan_go_to_its_report() -> None:
    state = IngestState(idle_timeout_s=5)
    state.handle_message(start(), 0.0)
    state.handle_rejected(ProtocolError("payload_size_mismatch", "x"), 1.0, frames=4)
    report = closed_report(state.shutdown()).report
    assert report.rejected == {"payload_size_mismatch": {"messages": 1, "frames": 4}}
    assert report.close_reason == "service_stopped" and report.status == "incomplete"

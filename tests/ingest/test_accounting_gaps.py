"""Accounting gaps found by an outside tester (issue 13.4), each closed and tested.

Sans-IO where the rule lives in the state machine (injected clock: times are arguments),
over a socket where the claimed frame count comes from the service.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import numpy as np

from streamer.errors import ProtocolError
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import IngestState, ScanClosed
from streamer.wire.protocol import EndHeader, Limits, frames_claimed
from tests.ingest.test_state import frames, keys_for, start

JOIN_S = 30.0


def closed(events: list[Any]) -> ScanClosed:
    (event,) = [e for e in events if isinstance(e, ScanClosed)]
    return event


def _header(**fields: Any) -> bytes:
    base = {"v": 1, "type": "frames", "scan": "s1", "first": 0, "count": 3,
            "keys": [0, 0, 0], "angles": [0.0, 1.0, 2.0], "dtype": "uint16",
            "shape": [3, 4]}
    base.update(fields)
    return msgpack.packb(base)


def test_rejected_messages_count_the_frames_their_header_claimed() -> None:
    limits = Limits(max_frame_bytes=1024)
    float64 = [_header(dtype="float64"), b"\0" * 3 * 12 * 8]
    bogus_key = [_header(keys=[0, 7, 0]), b"\0" * 3 * 12 * 2]
    too_large = [_header(shape=[1000, 1000]), b""]
    assert [frames_claimed(parts, limits) for parts in (float64, bogus_key, too_large)] == [
        3, 3, 3]
    # a count that is not believable, or a header that is not a frames map: 0
    assert frames_claimed([_header(count=10**9)], limits) == 0
    assert frames_claimed([_header(count=True)], limits) == 0
    assert frames_claimed([msgpack.packb({"type": "end"})], limits) == 0
    assert frames_claimed([b"\xc1"], limits) == 0


def test_received_plus_duplicate_plus_rejected_equals_sent_over_a_socket(
        loopback_pair: Any) -> None:
    push, pull = loopback_pair()
    header = start(darks=1, flats=1, projections=4)
    service = IngestService(pull, IngestSettings(limits=Limits(max_frame_bytes=1024)))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 1})
    thread.start()
    push.send(msgpack.packb(header.model_dump(mode="json", exclude_none=True)))
    sent = 0
    good = frames(header, 0, 2)
    push.send_multipart([msgpack.packb(good.header.model_dump(mode="json", exclude_none=True)),
                         good.data.tobytes()])
    sent += 2
    for bad in ([_header(first=2, count=2, keys=[0, 0], angles=[0.0, 1.0], dtype="float64"),
                 b"\0" * 2 * 12 * 8],
                [_header(first=2, count=2, keys=[0, 9], angles=[0.0, 1.0]), b"\0" * 48],
                [_header(first=4, count=2, keys=[0, 0], angles=[0.0, 1.0], shape=[999, 999]),
                 b"\0" * 8]):
        push.send_multipart(bad)
        sent += 2
    push.send(msgpack.packb({"v": 1, "type": "end", "scan": "s1", "sent": sent}))
    thread.join(JOIN_S)
    assert not thread.is_alive()
    (report,) = service.reports
    assert set(report.rejected) == {"invalid_field", "frame_too_large"}
    received = sum(report.received.values())
    assert received + report.duplicate + report.total_rejected_frames == sent == 8
    assert not report.flags  # sent agrees with what arrived (rejected included)


def test_an_end_whose_sent_disagrees_is_flagged_not_complete() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, header.frames), 1.0)
    report = closed(state.handle_message(EndHeader(scan="s1", sent=3), 2.0)).report
    assert report.total_missing == 0  # every frame is here …
    assert report.status == "incomplete" and not report.complete  # … but the end lies
    assert report.flags and "says it sent 3 frames" in report.flags[0]
    assert report.as_dict()["flags"] == list(report.flags)


def test_an_honest_end_after_a_restart_is_complete() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, 4), 1.0)
    state.handle_message(header, 2.0)  # the source restarts and sends everything again
    state.handle_message(frames(header, 0, header.frames), 3.0)
    report = closed(state.handle_message(EndHeader(scan="s1", sent=header.frames),
                                         4.0)).report
    assert report.complete and report.restarts == 1 and not report.flags


def test_garbage_from_another_peer_does_not_keep_a_dead_scan_open() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, 3), 1.0)  # then the source dies
    noise = ProtocolError("malformed_header", "header: not msgpack")
    other = start(scan="other-peer")
    for now in np.arange(1.5, 6.0, 0.5):  # noise every 0.5 s, from t = 1.5 s
        assert state.handle_rejected(noise, float(now)) == []
        # frames of a scan that is not open are refused, and do not count either
        assert state.handle_message(frames(other, 0, 1), float(now)) == []
        assert state.handle_tick(float(now)) == []  # < 5 s since the last valid message
    event = closed(state.handle_tick(6.0))  # 5 s after t = 1 s: closed despite the noise
    assert event.report.close_reason.startswith("source_timeout")
    assert event.report.rejected["malformed_header"]["messages"] == 9


def test_only_valid_messages_of_the_open_scan_keep_it_alive() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, 3), 4.0)  # a valid message at t = 4 s
    assert state.handle_tick(8.9) == []
    assert closed(state.handle_tick(9.0)).report.status == "incomplete"


def _identity_per_key(report: Any) -> None:
    """Per key: expected = received - mislabelled by label + by layout + missing."""
    odd = report.mislabelled or {"by_layout": {}, "by_label": {}}
    for key, expected in report.expected.items():
        assert expected == (report.received[key] - odd["by_label"].get(key, 0)
                            + odd["by_layout"].get(key, 0) + report.missing[key]), key


def _missing_by_layout(report: Any, keys: list[int]) -> dict[str, int]:
    """The keys of the indices in ``missing_ranges``, read from the layout ``keys``."""
    names = {0: "projections", 1: "flats", 2: "darks"}
    counts = dict.fromkeys(names.values(), 0)
    for first, stop in report.missing_ranges:
        for index in range(first, stop):
            counts[names[keys[index]]] += 1
    return counts


def test_a_mislabelled_key_keeps_per_key_missing_in_line_with_missing_ranges() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start(darks=1, flats=1, projections=3)  # keys: dark, flat, 3 projections
    state.handle_message(header, 0.0)
    keys = keys_for(header)
    # frame 2 (a projection) is labelled a flat and taken as the flat; the real flat
    # (frame 1) then exceeds the announced flat count and is refused
    state.handle_message(frames(header, 2, 1, keys=[1]), 1.0)
    state.handle_message(frames(header, 0, 2, keys=keys[:2]), 2.0)
    state.handle_message(frames(header, 3, 2, keys=keys[3:]), 3.0)
    report = closed(state.handle_message(EndHeader(scan="s1", sent=5), 4.0)).report
    assert report.missing_ranges == [[1, 2]]  # the index never held is the flat's
    assert report.missing == {"projections": 0, "flats": 1, "darks": 0}
    assert report.missing == _missing_by_layout(report, keys)
    assert report.received == {"projections": 2, "flats": 1, "darks": 1}
    # the mislabelled frame under its own reason: a projection's index, labelled a flat
    assert report.mislabelled == {
        "by_layout": {"projections": 1, "flats": 0, "darks": 0},
        "by_label": {"projections": 0, "flats": 1, "darks": 0}}
    _identity_per_key(report)
    assert report.rejected["key_count_exceeded"]["frames"] == 1
    assert any("mislabelled" in flag for flag in report.flags)
    assert report.as_dict()["mislabelled"] == report.mislabelled
    assert not report.complete


def test_missing_frames_without_a_mislabel_report_no_mislabelled_frames() -> None:
    state = IngestState(idle_timeout_s=5)
    header = start(darks=2, flats=2, projections=4)
    state.handle_message(header, 0.0)
    keys = keys_for(header)
    state.handle_message(frames(header, 0, 3, keys=keys[:3]), 1.0)  # 3 (a flat) and
    state.handle_message(frames(header, 5, 3, keys=keys[5:]), 2.0)  # 4 (a projection) lost
    report = closed(state.handle_message(EndHeader(scan="s1", sent=6), 3.0)).report
    assert report.missing_ranges == [[3, 5]]
    assert report.missing == {"projections": 1, "flats": 1, "darks": 0}
    assert report.missing == _missing_by_layout(report, keys)
    assert report.mislabelled == {} and not report.flags
    _identity_per_key(report)


def test_frames_in_another_order_than_the_layout_are_not_mislabelled_when_all_arrive() -> None:
    """Flats after the projections (a legitimate order): every frame held, complete."""
    state = IngestState(idle_timeout_s=5)
    header = start(darks=1, flats=2, projections=3)
    state.handle_message(header, 0.0)
    state.handle_message(frames(header, 0, 6, keys=[2, 1, 0, 0, 0, 1]), 1.0)
    report = closed(state.handle_message(EndHeader(scan="s1", sent=6), 2.0)).report
    assert report.complete and report.mislabelled == {} and not report.flags
    assert report.missing == {"projections": 0, "flats": 0, "darks": 0}


def test_the_idle_timer_does_not_run_while_the_service_holds_the_source_back() -> None:
    """While downstream is behind (store full: the service does not read), the source's
    silence is the service's doing: the scan stays open; the timer restarts when reading
    resumes."""
    state = IngestState(idle_timeout_s=5)
    header = start()
    state.handle_message(header, 0.0)
    for now in (3.0, 6.0, 9.0):  # 9 s without a message, all of it held back
        state.paused(now)
        assert state.handle_tick(now) == []
    assert state.handle_tick(13.9) == []  # reading again since 9 s
    assert closed(state.handle_tick(14.0)).report.close_reason.startswith("source_timeout")

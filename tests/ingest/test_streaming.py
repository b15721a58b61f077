"""Ingest over real ZeroMQ sockets on loopback: every way a stream can go wrong.

Synchronisation is by events and joins with timeouts, never by sleeping; the only timer
in play is the ingest idle timeout, which is the feature under test where it appears.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from streamer.ingest.accounting import ScanReport
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import FramesAccepted
from streamer.ingest.store import FrameStore
from streamer.sources.memory import ArrayScan
from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.wire.protocol import (
    EndHeader,
    FramesHeader,
    Limits,
    StartHeader,
    encode_frames,
    encode_header,
)
from streamer.wire.transport import Endpoint, bound_address, open_socket

JOIN_S = 30.0


def make_scan(projections: int = 40, rows: int = 8, cols: int = 16, seed: int = 1) -> ArrayScan:
    rng = np.random.default_rng(seed)
    keys = [2] * 3 + [1] * 4 + [0] * projections
    frames = rng.integers(0, 60000, size=(len(keys), rows, cols), dtype=np.uint16)
    angles = [0.0] * 7 + list(np.linspace(0, 180, projections, endpoint=False))
    return ArrayScan(frames, keys, angles)


class Collector:
    """A drain that copies every held frame out of the store (as downstream would)."""

    def __init__(self) -> None:
        self.frames: dict[int, np.ndarray] = {}
        self.hold = threading.Event()  # while set, take nothing (downstream stalled)
        self.store_full = threading.Event()

    def __call__(self, store: FrameStore) -> None:
        if store.full:
            self.store_full.set()
        if self.hold.is_set():
            return
        for frame in store.take():
            assert frame.index not in self.frames
            self.frames[frame.index] = frame.data.copy()


@contextmanager
def running_ingest(
    pull: zmq.Socket[Any], settings: IngestSettings, *, scans: int = 1, drain: Any = None
) -> Iterator[IngestService]:
    service = IngestService(pull, settings, drain=drain)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, kwargs={"max_scans": scans, "stop": stop})
    thread.start()
    try:
        yield service
    finally:
        thread.join(JOIN_S)
        stop.set()
        thread.join(JOIN_S)
        assert not thread.is_alive()


def only_report(service: IngestService) -> ScanReport:
    assert len(service.reports) == 1, service.reports
    return service.reports[0]


@pytest.mark.parametrize("order", ["sequential", "shuffle", "interleave"])
def test_scan_arrives_complete_and_byte_exact_in_any_order(loopback_pair, order: str) -> None:
    push, pull = loopback_pair()
    scan = make_scan()
    collector = Collector()
    with running_ingest(pull, IngestSettings(), drain=collector) as service:
        summary = send_scan(push, scan, SendOptions(block=5, order=order, seed=3))  # type: ignore[arg-type]
    report = only_report(service)
    assert report.complete and report.close_reason == "end"
    assert report.sent_by_source == summary.frames_sent == scan.layout.frames
    assert report.received == {"projections": 40, "flats": 4, "darks": 3}
    assert report.duplicate == report.out_of_range == 0 and report.rejected == {}
    assert sorted(collector.frames) == list(range(scan.layout.frames))
    for index, data in collector.frames.items():
        np.testing.assert_array_equal(data, scan.read(index, index + 1)[0])


def test_two_scans_back_to_back_on_one_running_ingest(loopback_pair) -> None:
    push, pull = loopback_pair()
    with running_ingest(pull, IngestSettings(), scans=2) as service:
        send_scan(push, make_scan(seed=1), SendOptions(scan_id="first"))
        send_scan(push, make_scan(projections=10, seed=2), SendOptions(scan_id="second"))
    assert [r.scan for r in service.reports] == ["first", "second"]
    assert all(r.complete for r in service.reports)
    assert service.reports[1].received["projections"] == 10


def test_resent_scan_counts_duplicates_once(loopback_pair) -> None:
    push, pull = loopback_pair()
    scan = make_scan()
    with running_ingest(pull, IngestSettings()) as service:
        header = start_header(scan.layout, "again")
        push.send(encode_header(header))
        half = scan.read(0, 20)
        push.send_multipart(encode_frames(_frames_header("again", 0, scan, 20), half))
        # the source restarts and resends everything from the beginning
        send_scan(push, scan, SendOptions(scan_id="again", block=7))
    report = only_report(service)
    assert report.complete and report.restarts == 1 and report.duplicate == 20


def _frames_header(
    scan_id: str, first: int, scan: ArrayScan, count: int, **kw: Any
) -> FramesHeader:
    layout = scan.layout
    fields: dict[str, Any] = {
        "scan": scan_id,
        "first": first,
        "count": count,
        "keys": layout.image_keys[first : first + count].tolist(),
        "angles": layout.angles_deg[first : first + count].tolist(),
        "dtype": "uint16",
        "shape": (layout.rows, layout.cols),
    }
    fields.update(kw)
    return FramesHeader(**fields)


def test_bad_messages_are_rejected_with_reasons_and_good_ones_still_count(loopback_pair) -> None:
    push, pull = loopback_pair()
    scan = make_scan(projections=10)
    layout = scan.layout
    with running_ingest(pull, IngestSettings()) as service:
        push.send(encode_header(start_header(layout, "bad")))
        good = scan.read(0, 5)
        header = _frames_header("bad", 0, scan, 5)
        parts = encode_frames(header, good)
        push.send(parts[0])  # truncated multipart: header without payload
        push.send_multipart([parts[0], bytes(parts[1])[:-1]])  # one byte short
        push.send_multipart([parts[0], bytes(parts[1]) + b"\0\0"])  # too long
        wrong_dtype = _frames_header("bad", 5, scan, 2, dtype="float32")
        push.send_multipart(encode_frames(wrong_dtype, np.zeros((2, 8, 16), np.float32)))
        push.send_multipart([b"\xc1garbage", b"x"])  # not msgpack
        push.send(msgpack.packb({"v": 2, "type": "start", "scan": "bad"}))
        push.send_multipart(parts)  # finally the good block
        for first in range(5, layout.frames, 4):
            count = min(4, layout.frames - first)
            push.send_multipart(
                encode_frames(
                    _frames_header("bad", first, scan, count), scan.read(first, first + count)
                )
            )
        push.send(encode_header(EndHeader(scan="bad", sent=layout.frames)))
    report = only_report(service)
    assert report.complete
    assert report.rejected == {
        "dtype_mismatch": {"messages": 1, "frames": 2},
        "malformed_header": {"messages": 1, "frames": 0},
        "missing_payload": {"messages": 1, "frames": 5},
        "payload_size_mismatch": {"messages": 2, "frames": 10},
        "unsupported_version": {"messages": 1, "frames": 0},
    }


def test_oversized_message_is_refused_before_buffering_and_reported_missing(context) -> None:
    """libzmq's MAXMSGSIZE drops a peer that sends a part over the limit before the part
    is buffered; what was in flight on that connection is lost with it, and ingest must
    report exactly that as missing (never silently), then serve the reconnected source."""
    limit = 4096
    pull = open_socket(
        context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16,
        max_message_bytes=limit,
    )
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 10_000)
    # The monitor is attached before connecting, so no connection event can be missed.
    monitor = push.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    push.connect(bound_address(pull))
    scan = make_scan(projections=10, rows=8, cols=16)  # 256-byte frames
    big = np.zeros((1, 64, 64), np.uint16)  # an 8 KiB part > MAXMSGSIZE
    settings = IngestSettings(limits=Limits(max_message_bytes=limit), idle_timeout_s=0.5)
    try:
        _wait_for_event(monitor, zmq.EVENT_CONNECTED)
        with running_ingest(pull, settings, scans=2) as service:
            push.send(encode_header(start_header(scan.layout, "big")))
            header = _frames_header("big", 0, scan, 1, shape=(64, 64))
            push.send_multipart(encode_frames(header, big))
            _wait_for_event(monitor, zmq.EVENT_DISCONNECTED)
            _wait_for_event(monitor, zmq.EVENT_CONNECTED)  # the PUSH reconnects by itself
            send_scan(push, scan, SendOptions(scan_id="after", block=3))
    finally:
        push.disable_monitor()
        monitor.close(linger=0)
        push.close(linger=0)
        pull.close(linger=0)
    big_report, after = service.reports
    assert big_report.scan == "big" and big_report.status == "incomplete"
    assert big_report.close_reason.startswith(("source_timeout", "superseded"))
    assert big_report.missing["projections"] == 10
    assert big_report.rejected == {}  # the oversized part never reached the decoder
    assert after.complete and after.rejected == {}


def _wait_for_event(monitor: zmq.Socket[Any], wanted: int) -> None:
    from zmq.utils.monitor import recv_monitor_message

    poller = zmq.Poller()
    poller.register(monitor, zmq.POLLIN)
    while poller.poll(JOIN_S * 1000):
        if recv_monitor_message(monitor)["event"] == wanted:
            return
    raise AssertionError(f"no socket event {wanted} within {JOIN_S} s")


def test_backpressure_slows_the_source_and_loses_nothing(loopback_pair) -> None:
    push, pull = loopback_pair(hwm=2)
    scan = make_scan(projections=400, rows=64, cols=256)  # 32 KiB frames, 13 MB in all
    collector = Collector()
    collector.hold.set()  # downstream stalled
    settings = IngestSettings(store_bytes=256 * 1024, poll_ms=20)
    sent = threading.Event()

    def send() -> None:
        send_scan(push, scan, SendOptions(block=4, scan_id="slow"))
        sent.set()

    with running_ingest(pull, settings, drain=collector) as service:
        sender = threading.Thread(target=send)
        sender.start()
        assert collector.store_full.wait(JOIN_S)
        # The store is full and ingest stopped reading; 13 MB cannot fit in the
        # queues (2-message HWMs plus socket buffers), so the sender must be waiting.
        assert not sent.is_set()
        assert service.store.held_bytes <= settings.store_bytes + 4 * 32 * 1024
        collector.hold.clear()
        sender.join(JOIN_S)
        assert sent.is_set()
    report = only_report(service)
    assert report.complete and report.rejected == {} and report.duplicate == 0
    assert len(collector.frames) == scan.layout.frames


def test_source_killed_mid_scan_is_closed_incomplete_by_idle_timeout(
    context, python: str, cli_env: dict[str, str], tmp_path
) -> None:
    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=4)
    address = bound_address(pull)
    got_frames = threading.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, FramesAccepted):
            got_frames.set()

    service = IngestService(pull, IngestSettings(idle_timeout_s=0.5), on_event=on_event)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 1, "stop": stop})
    thread.start()
    source = subprocess.Popen(
        [
            python,
            "-m",
            "streamer.cli",
            "simulate",
            "--connect",
            address,
            "--projections",
            "2000",
            "--rows",
            "4",
            "--cols",
            "32",
            "--rate",
            "200",
            "--scan-id",
            "killed",
        ],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert got_frames.wait(JOIN_S)
        source.kill()
        source.wait(JOIN_S)
        thread.join(JOIN_S)
    finally:
        source.kill()
        stop.set()
        thread.join(JOIN_S)
        pull.close()
    report = only_report(service)
    assert report.scan == "killed"
    assert report.status == "incomplete"
    assert report.close_reason.startswith("source_timeout")
    assert report.missing["projections"] > 0
    assert report.missing_ranges, "missing frame indices must be listed"
    assert isinstance(StartHeader.model_validate(report.start), StartHeader)


def test_a_long_running_service_keeps_only_the_newest_reports(loopback_pair,
                                                              monkeypatch) -> None:
    """Months of scans must not grow memory: only the newest reports are kept, every
    one still counted and handed to on_report."""
    import streamer.ingest.service as service_module

    monkeypatch.setattr(service_module, "MAX_KEPT_REPORTS", 2)
    push, pull = loopback_pair()
    handed: list[str] = []
    service = IngestService(pull, IngestSettings(), on_report=lambda r: handed.append(r.scan))
    stop = threading.Event()
    returned: list[Any] = []
    thread = threading.Thread(
        target=lambda: returned.extend(service.run(max_scans=3, stop=stop)))
    thread.start()
    for number in range(3):
        send_scan(push, make_scan(projections=4), SendOptions(scan_id=f"s{number}"))
    thread.join(JOIN_S)
    stop.set()
    assert not thread.is_alive()
    assert handed == ["s0", "s1", "s2"] and service.scans_reported == 3
    assert [r.scan for r in service.reports] == ["s1", "s2"]
    assert [r.scan for r in returned] == ["s1", "s2"]  # what is still kept

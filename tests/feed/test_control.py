"""The feed's control socket: every request validated, a token where one is required."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from stages.spec import Pattern
from streamer.errors import ConfigError, TransportError
from streamer.live.client import Control, FeedRequestError, parse_reply
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.live.messages import MAX_SWEEP_CENTERS
from streamer.pipeline.executor import ProcessedBlock
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig

TOKEN = "correct-horse-battery"


@dataclass
class Target:
    """Stands in for the scan's ScanProcessor: takes the CoR a viewer sets."""

    center_override: float | None = None


@pytest.fixture
def feed() -> Iterator[LiveFeed]:
    with LiveFeed(FeedSettings(counters_interval_s=0.1)) as live:
        yield live


def raw_request(address: str, parts: list[bytes]) -> dict[str, Any]:
    """Send raw bytes on a REQ socket; the reply as a map (an error reply raises)."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    try:
        socket.send_multipart(parts)
        assert socket.poll(10_000), "no reply"
        reply = msgpack.unpackb(socket.recv())
    finally:
        socket.close(linger=0)
    assert isinstance(reply, dict)
    return reply


def open_scan(feed: LiveFeed, target: Target, *, cols: int = 64, projections: int = 32
              ) -> Any:
    """Open a scan on the feed and hand it a block of corrected projections."""
    scan = SimulatedScan(SimulationConfig(rows=4, cols=cols, projections=projections))
    start = start_header(scan.layout, "control-scan")
    feed.scan_opened(start, target=target)
    layout = scan.layout
    indices = np.flatnonzero(layout.image_keys == 0)
    data = np.stack([scan.attenuation(i, i + 1)[0] for i in indices]).astype(np.float32)
    feed.projections(ProcessedBlock(Pattern.PROJECTION, indices.astype(np.int64),
                                    layout.angles_deg[indices], data, True))
    return start


@pytest.mark.parametrize(("parts", "reason"), [
    ([b"\xc1"], "malformed_header"),  # not msgpack
    ([msgpack.packb([1, 2])], "malformed_header"),
    ([msgpack.packb({"v": 2, "type": "state"})], "unsupported_version"),
    ([msgpack.packb({"v": True, "type": "state"})], "unsupported_version"),
    ([msgpack.packb({"v": 1, "type": "reboot"})], "unknown_type"),
    ([msgpack.packb({"v": 1, "type": "state", "extra": 1})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "slice", "index": "3"})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "slice", "index": 1.0})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "set_center", "value": math.nan})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "set_center", "value": math.inf})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "cor_sweep", "half_width": 0})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "cor_sweep", "half_width": -1})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "cor_sweep", "step": 0.01})], "invalid_field"),
    ([msgpack.packb({"v": 1, "type": "cor_sweep", "half_width": 21, "step": 0.5})],
     "invalid_field"),  # 85 centres
    ([msgpack.packb({"v": 1, "type": "state"}), b"more"], "wrong_part_count"),
])
def test_malformed_requests_get_an_error_reply(feed: LiveFeed, parts: list[bytes],
                                               reason: str) -> None:
    reply = raw_request(str(feed.control_address), parts)
    assert reply["type"] == "error" and reply["reason"] == reason, reply
    # The socket keeps serving.
    assert raw_request(str(feed.control_address),
                       [msgpack.packb({"v": 1, "type": "state"})])["type"] == "ok"


def test_sweeps_are_bounded_to_41_centres(feed: LiveFeed) -> None:
    open_scan(feed, Target())
    with Control(str(feed.control_address)) as control:
        reply = control.cor_sweep(center=31.5, half_width=5.0, step=0.25)
        assert len(reply["centers"]) == MAX_SWEEP_CENTERS == 41
        assert reply["centers"][0] == 26.5 and reply["centers"][-1] == 36.5
        with pytest.raises(FeedRequestError) as refused:
            control.cor_sweep(center=31.5, half_width=5.0, step=0.2)  # 51 centres
        assert refused.value.reason == "invalid_field" and "at most 41" in str(refused.value)


def test_sweep_and_center_values_must_lie_on_the_detector(feed: LiveFeed) -> None:
    target = Target()
    with Control(str(feed.control_address)) as control:
        with pytest.raises(FeedRequestError) as no_data:
            control.cor_sweep()
        assert no_data.value.reason == "no_data"
        with pytest.raises(FeedRequestError) as no_scan:
            control.set_center(30.0)
        assert no_scan.value.reason == "no_scan"
        open_scan(feed, target, cols=64)
        for kwargs in ({"center": 2.0}, {"center": 61.0}, {"row": 0}):
            with pytest.raises(FeedRequestError) as refused:
                control.cor_sweep(**kwargs)
            assert refused.value.reason == "invalid_field", kwargs
        for value in (-0.5, 63.5, 1e9):
            with pytest.raises(FeedRequestError) as refused:
                control.set_center(value)
            assert refused.value.reason == "invalid_field"
        with pytest.raises(FeedRequestError) as other:
            control.set_center(30.0, scan="another-scan")
        assert other.value.reason == "invalid_field"
        assert target.center_override is None  # nothing refused reached the pipeline
        reply = control.set_center(30.25, scan="control-scan")
        assert reply["center"] == 30.25 and target.center_override == 30.25
        state = control.state()
        assert state["center"] == 30.25 and state["center_method"] == "user (viewer)"
        # Once the reconstruction starts, the CoR can no longer change.
        feed.scan_closing()
        with pytest.raises(FeedRequestError) as late:
            control.set_center(31.0)
        assert late.value.reason == "too_late"
        assert target.center_override == 30.25


def test_a_token_is_required_when_the_feed_has_one() -> None:
    settings = FeedSettings(token=TOKEN)
    with LiveFeed(settings) as feed:
        address = str(feed.control_address)
        for token in (None, "wrong-token-123"):
            with Control(address, token=token) as control, \
                    pytest.raises(FeedRequestError) as refused:
                control.state()
            assert refused.value.reason == "unauthorised"
        with Control(address, token=TOKEN) as control:
            assert control.state()["type"] == "ok"


def test_off_host_control_needs_a_token_and_allow_remote() -> None:
    with pytest.raises(ConfigError, match="need a token"):
        FeedSettings(control="tcp://0.0.0.0:*")
    with pytest.raises(ConfigError, match="8 to 256"):
        FeedSettings(token="short")
    # A token alone does not allow binding a network interface: --feed-allow-remote does.
    with pytest.raises(TransportError, match="non-loopback"):
        LiveFeed(FeedSettings(control="tcp://0.0.0.0:*", token=TOKEN))
    with pytest.raises(TransportError, match="non-loopback"):
        LiveFeed(FeedSettings(address="tcp://0.0.0.0:*"))


def test_oversized_requests_are_dropped_and_the_socket_keeps_serving(feed: LiveFeed) -> None:
    address = str(feed.control_address)
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    try:
        socket.send(msgpack.packb({"v": 1, "type": "state", "token": "x" * 10_000}))
        # MAXMSGSIZE: the connection is dropped before the request is buffered; no reply.
        assert not socket.poll(500)
    finally:
        socket.close(linger=0)
    with Control(address) as control:
        assert control.state()["type"] == "ok"


def test_replies_are_validated_by_the_client() -> None:
    with pytest.raises(FeedRequestError) as refused:
        parse_reply([msgpack.packb({"v": 1, "type": "error", "reason": "no_scan",
                                    "message": "set_center: no scan is open"})])
    assert refused.value.reason == "no_scan"
    for bad in ([msgpack.packb({"v": 1, "type": "maybe"})], [msgpack.packb([1])],
                [b"a", b"b", b"c"]):
        with pytest.raises(Exception, match=r"reply|header|expected"):
            parse_reply(bad)

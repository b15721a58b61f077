"""The feed relay between ranks, stepped by hand in one thread (no sockets, no sleeps):
a lagging rank 0 makes the other ranks skip and count, never wait; the viewer's CoR
decision reaches every rank; rank 0's figures take the other ranks' last frame."""

from __future__ import annotations

import msgpack
import numpy as np

from stages.spec import Pattern
from streamer.exchange.links import MemoryNetwork
from streamer.ingest.state import FramesAccepted
from streamer.live.feed import FeedSettings
from streamer.live.relay import TAG_ROWS, FeedRelay
from streamer.pipeline.executor import ProcessedBlock
from streamer.run.output import ScanOutput
from streamer.wire.protocol import FramesHeader, FramesMessage, StartHeader

START = StartHeader(scan="relay", rows=8, cols=16, dtype="uint16", frames=24, projections=20,
                    flats=2, darks=2, normalisation="flat_dark")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def accepted(first: int, count: int, key: int = 0) -> FramesAccepted:
    header = FramesHeader(scan="relay", first=first, count=count, keys=[key] * count,
                          angles=[0.0] * count, dtype="uint16", shape=(8, 16))
    message = FramesMessage(header, np.zeros((count, 8, 16), np.uint16))
    return FramesAccepted(START, message, np.ones(count, dtype=bool))


def block(first: int, count: int) -> ProcessedBlock:
    return ProcessedBlock(Pattern.PROJECTION, np.arange(first, first + count),
                          np.linspace(0, 90, count), np.ones((count, 8, 16), np.float32), True)


def test_a_lagging_rank_0_makes_the_sender_skip_and_count_never_wait() -> None:
    network = MemoryNetwork(2)
    settings = FeedSettings(preview_rows=(2, 5))
    hub = FeedRelay(network.link(0), None)  # rank 0 without a feed: it only takes and acks
    sender = FeedRelay(network.link(1), settings)
    sender.scan_opened(1, START)
    hub.scan_opened(1, START)
    sender.projections(block(0, 4))
    one_message = sender.in_flight_bytes  # 4 projections × 2 preview rows × 16 columns …
    assert one_message > 4 * 2 * 16 * 4
    sender.max_in_flight_bytes = int(3.5 * one_message)
    for first in range(4, 20, 4):  # rank 0 serves nothing meanwhile
        sender.projections(block(first, 4))
    scan = sender._scan
    assert scan is not None
    assert scan.dropped_rows == 8  # two blocks skipped, counted; three in flight
    assert sender.in_flight_bytes == 3 * one_message <= sender.max_in_flight_bytes
    hub.serve()  # rank 0 takes them and acknowledges
    sender.serve()
    assert sender.in_flight_bytes == 0
    sender.projections(block(0, 4))  # room again
    assert scan.dropped_rows == 8 and scan.relay.messages_sent == 4


def test_the_viewer_cor_and_the_last_frame_reach_every_rank() -> None:
    network = MemoryNetwork(3)
    clock = Clock()
    relays = [FeedRelay(network.link(rank), None, clock=clock) for rank in range(3)]
    for relay in relays:
        relay.scan_opened(7, START)
    clock.now = 101.0
    relays[0].frames_accepted(accepted(0, 4, key=2))
    clock.now = 110.0
    relays[2].frames_accepted(accepted(4, 10))  # the last frame: on rank 2, at 110
    clock.now = 105.0
    relays[1].frames_accepted(accepted(14, 10))
    relays[0]._target.center_override = 7.25  # as the feed's set_center stores it
    relays[0].scan_closing(7)
    assert [relay.viewer_center(7) for relay in relays] == [7.25, 7.25, 7.25]
    for relay in relays[1:]:
        relay.part_done(7, None)
    relays[0].part_done(7, None)
    clock.now = 125.0
    document: dict[str, object] = {}
    relays[0].finish_master(7, document)
    latency = document["latency"]
    assert isinstance(latency, dict) and latency["last_frame_to_volume_s"] == 15.0
    output = relays[0].scan_closed(7, ScanOutput("relay", None, 0, None, True))
    assert output.figures["latency"] == latency
    assert set(output.figures["transfers"]["per_rank"]) == {"0", "1", "2"}


def test_a_malformed_relay_message_is_counted_and_refused() -> None:
    network = MemoryNetwork(2)
    lines: list[str] = []
    hub = FeedRelay(network.link(0), None, log=lines.append)
    hub.scan_opened(1, START)
    relay_link = network.link(1)  # the relay's link: the base context here, as rank 0's
    relay_link.send(0, TAG_ROWS, msgpack.packb({"serial": 1, "indices": [0], "angles": [0.0],
                                                "received_at": [1.0], "shape": [1, 2, 16],
                                                "data": b"short"}))
    relay_link.send(0, TAG_ROWS, b"\xc1not msgpack")
    hub.serve()
    assert hub.rejected_messages == 2
    assert any("expected 128 bytes of float32" in line for line in lines)

"""The Python client: typed messages, and bad headers refused before anything is allocated."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from streamer.errors import ProtocolError
from streamer.live.client import (
    CorSweep,
    Counters,
    Cuts,
    FeedTimeoutError,
    MessageQueue,
    Preview,
    ScanEnd,
    ScanStart,
    Slice,
    Subscription,
    decode_message,
)
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.live.messages import (
    CorSweepHeader,
    CountersHeader,
    Counts,
    CutsHeader,
    FeedLimits,
    HelloHeader,
    ImageSpec,
    PreviewHeader,
    ScanEndHeader,
    ScanStartHeader,
    SliceHeader,
    encode,
)
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.feed.test_feed import process_scan

REPO = Path(__file__).resolve().parents[2]
HOW_TO = REPO / "docs" / "how-to" / "watch-live.md"


def spec(name: str, shape: tuple[int, int]) -> ImageSpec:
    return ImageSpec(name=name, shape=shape, window=(0.0, 1.0))


def images(*shapes: tuple[int, int], dtype: str = "float32") -> list[Any]:
    rng = np.random.default_rng(0)
    return [rng.random(shape).astype(dtype) if dtype == "float32"
            else rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]


def preview_header(**changes: Any) -> PreviewHeader:
    fields: dict[str, Any] = {
        "seq": 7, "t": 1.5, "scan": "s1", "dtype": "float32",
        "images": [spec("row 2", (4, 4)), spec("row 4", (4, 4))], "rows": [2, 4],
        "projections": 10, "expected": 90, "center": 3.5, "binning": 1,
    }
    return PreviewHeader(**{**fields, **changes})


EXAMPLES: list[tuple[Any, list[Any], type]] = [
    (ScanStartHeader(scan="s1", rows=8, cols=16, projections=90, flats=2, darks=1,
                     preview_rows=[2, 4, 6], binning=1, preview_size=16, center=7.5),
     [], ScanStart),
    (CountersHeader(scan="s1", state="open", expected=Counts(projections=90),
                    received=Counts(projections=12)), [], Counters),
    (preview_header(), images((4, 4), (4, 4)), Preview),
    (SliceHeader(scan="s1", dtype="uint8", images=[spec("slice 3", (5, 6))], index=3,
                 band=(0, 4), binning=2), images((5, 6), dtype="uint8"), Slice),
    (CutsHeader(scan="s1", dtype="float32", index=4, slice_stride=1, binning=1,
                images=[spec("xy", (6, 6)), spec("xz", (8, 6)), spec("yz", (8, 6))]),
     images((6, 6), (8, 6), (8, 6)), Cuts),
    (ScanEndHeader(scan="s1", status="incomplete", complete=False,
                   expected=Counts(projections=90), received=Counts(projections=80),
                   missing=Counts(projections=10), output="/tmp/s1.h5"), [], ScanEnd),
    (CorSweepHeader(scan="s1", dtype="float32", sweep=2, row=4, centers=[3.0, 3.5],
                    angles_used=90, binning=1, images=[spec("c", (3, 3)), spec("d", (3, 3))]),
     images((3, 3), (3, 3)), CorSweep),
]


@pytest.mark.parametrize(("header", "arrays", "kind"), EXAMPLES)
def test_every_message_decodes_to_its_type(header: Any, arrays: list[Any], kind: type
                                           ) -> None:
    message = decode_message(encode(header, arrays))
    assert type(message) is kind
    assert message.header == header
    decoded = getattr(message, "images", ())
    assert len(decoded) == len(arrays)
    for got, sent in zip(decoded, arrays, strict=True):
        np.testing.assert_array_equal(got, sent)
        assert got.dtype == sent.dtype and not got.flags.writeable  # a view of the buffer


def packed(**fields: Any) -> bytes:
    return msgpack.packb({**preview_header().model_dump(mode="python"), **fields})


PAYLOAD = b"\0" * (2 * 16 * 4)


@pytest.mark.parametrize(("parts", "reason"), [
    ([], "wrong_part_count"),
    ([b"\0" * 70_000, PAYLOAD], "header_too_large"),
    ([b"\xc1", PAYLOAD], "malformed_header"),
    ([msgpack.packb([1, 2]), PAYLOAD], "malformed_header"),
    ([msgpack.packb({"v": 1, "type": "counters", 1: 2})], "malformed_header"),  # int key
    ([msgpack.packb(msgpack.ExtType(1, b"x")), PAYLOAD], "malformed_header"),
    ([packed(v=2), PAYLOAD], "unsupported_version"),
    ([packed(v=1.0), PAYLOAD], "unsupported_version"),
    ([packed(type="frames"), PAYLOAD], "unknown_type"),
    ([packed(extra=1), PAYLOAD], "invalid_field"),
    ([packed(projections="10"), PAYLOAD], "invalid_field"),  # strict: no coercion
    ([packed(projections=True), PAYLOAD], "invalid_field"),
    ([packed(center=float("nan")), PAYLOAD], "invalid_field"),
    ([packed(rows=[2]), PAYLOAD], "invalid_field"),  # one image per row
    ([packed(dtype="float64"), PAYLOAD], "invalid_field"),
    ([packed(images=[{"name": "r", "shape": [0, 4], "window": [0, 1]}] * 2), PAYLOAD],
     "invalid_field"),
    ([packed(images=[{"name": "r", "shape": [4, 4], "window": [0, 1], "x": 1}] * 2),
      PAYLOAD], "invalid_field"),
    # A header that claims 2 x 8192² pixels is refused before the payload is looked at.
    ([packed(images=[{"name": "r", "shape": [8192, 8192], "window": [0, 1]}] * 2)],
     "message_too_large"),
    ([packed()], "wrong_part_count"),
    ([packed(), PAYLOAD, b""], "wrong_part_count"),
    ([packed(), PAYLOAD[:-1]], "payload_size_mismatch"),
    ([packed(), PAYLOAD + b"\0"], "payload_size_mismatch"),
    ([encode(EXAMPLES[1][0])[0], b"unexpected"], "wrong_part_count"),
    ([msgpack.packb({**EXAMPLES[4][0].model_dump(mode="python"),
                     "images": [spec("xz", (8, 6)).model_dump(mode="python")] * 3}),
      b"\0" * 3 * 48 * 4], "invalid_field"),  # cuts must be xy, xz, yz
    ([msgpack.packb({**EXAMPLES[6][0].model_dump(mode="python"),
                     "centers": [float(c) for c in range(42)]}), b"\0" * 72], "invalid_field"),
])
def test_bad_messages_are_refused_with_a_reason(parts: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_message(parts, FeedLimits(max_pixels=64 * 1024**2))
    assert refused.value.reason == reason, refused.value


def test_limits_bound_what_a_header_may_claim() -> None:
    header = preview_header()
    parts = encode(header, images((4, 4), (4, 4)))
    assert decode_message(parts, FeedLimits(max_pixels=32)).header == header
    with pytest.raises(ProtocolError, match="32 pixels in all, the limit is 31"):
        decode_message(parts, FeedLimits(max_pixels=31))
    with pytest.raises(ValueError, match="positive integer"):
        FeedLimits(max_pixels=0)


def test_queue_counts_gaps_and_keeps_only_the_newest_preview() -> None:
    queue = MessageQueue(conflate=True)
    counters = EXAMPLES[1][0]
    arrays = tuple(images((4, 4), (4, 4)))
    queue.add(counters.model_copy(update={"seq": 0}), ())
    queue.add(preview_header(seq=1, projections=8), arrays)
    queue.add(preview_header(seq=2, projections=16), arrays)
    queue.add(counters.model_copy(update={"seq": 5}), ())  # 3 and 4 were lost
    queue.add(preview_header(seq=6, projections=24), arrays)
    got = [queue.pop() for _ in range(len(queue))]
    assert [type(m).__name__ for m in got] == ["Counters", "Counters", "Preview"]
    assert [m.header.seq for m in got] == [0, 5, 6]
    assert got[1].missed == 2 and queue.missed == 2
    assert queue.conflated == 2 and queue.received == 5
    assert queue.pop() is None
    plain = MessageQueue()
    plain.add(preview_header(seq=1), arrays)
    plain.add(preview_header(seq=2), arrays)
    assert len(plain) == 2 and plain.conflated == 0


def test_queue_takes_hellos_and_carries_their_gaps() -> None:
    queue = MessageQueue()
    counters = EXAMPLES[1][0]
    queue.add(counters.model_copy(update={"seq": 0}), ())
    queue.add(HelloHeader(seq=3), ())  # 1 and 2 lost
    queue.add(counters.model_copy(update={"seq": 5}), ())  # 4 lost
    got = [queue.pop() for _ in range(len(queue))]
    assert [m.header.seq for m in got] == [0, 5]  # the hello is not handed out
    assert got[1].missed == 3 and queue.missed == 3
    assert (queue.hellos, queue.received) == (1, 3)


def test_after_wait_connected_the_next_scan_start_is_seen() -> None:
    """wait_connected returns once the feed has the subscription (its hello came), so a
    scan opened right after is seen from its first message, every time."""
    with LiveFeed(FeedSettings(counters_interval_s=60.0)) as feed:
        for number in range(20):
            with Subscription(feed.address, timeout_s=20) as sub:
                sub.wait_connected()
                scan = SimulatedScan(SimulationConfig(rows=4, cols=32, projections=4))
                feed.scan_opened(start_header(scan.layout, f"seen-{number}"))
                # (The previous scan's last messages may come first: they were published
                # after this subscription began.)
                message = sub.receive()
                while not isinstance(message, ScanStart):
                    assert message.header.scan == f"seen-{number - 1}", (number, message)
                    message = sub.receive()
                assert message.header.scan == f"seen-{number}"
                assert sub.missed == 0


def how_to_example(marker: str) -> str:
    """The code block of docs/how-to/watch-live.md that follows ``marker``."""
    text = HOW_TO.read_text()
    after = text[text.index(marker):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_wait_connected_waits_the_subscriptions_timeout() -> None:
    address = f"tcp://127.0.0.1:{free_loopback_port()}"  # no feed there
    with Subscription(address, timeout_s=0.3) as sub, \
            pytest.raises(FeedTimeoutError, match=r"not connected within 0\.3 s"):
        sub.wait_connected()  # the subscription's timeout, not a fixed 5 s
    with Subscription(address, timeout_s=30) as sub, \
            pytest.raises(FeedTimeoutError, match=r"within 0\.2 s"):
        sub.wait_connected(timeout_s=0.2)  # an explicit one wins
    with Subscription(address) as sub, pytest.raises(ValueError, match="timeout_s"):
        sub.wait_connected(timeout_s=0)


def test_wait_connected_before_the_feed_exists() -> None:
    address = f"tcp://127.0.0.1:{free_loopback_port()}"
    outcome: list[BaseException | None] = []
    waiting = threading.Event()
    with Subscription(address, timeout_s=30) as sub:
        def wait() -> None:
            waiting.set()
            try:
                sub.wait_connected()
                outcome.append(None)
            except BaseException as error:  # reported below
                outcome.append(error)

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert waiting.wait(10)
        with LiveFeed(FeedSettings(address=address)) as feed:  # the feed comes later
            waiter.join(30)
            assert outcome == [None]
            scan = SimulatedScan(SimulationConfig(rows=4, cols=32, projections=8))
            process_scan(feed, scan, "late-feed", reconstruct=False)
            assert isinstance(sub.receive(), ScanStart)


def test_the_how_to_client_example_runs_against_a_feed(tmp_path: Path) -> None:
    script = tmp_path / "watch.py"
    script.write_text(how_to_example("<!-- example: python client -->"))
    scan = SimulatedScan(SimulationConfig(rows=4, cols=48, projections=60))
    address = f"tcp://127.0.0.1:{free_loopback_port()}"
    # The example is started before the feed (as a user may): it waits to connect.
    process = subprocess.Popen(
        [sys.executable, str(script), address], text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    try:
        with LiveFeed(FeedSettings(address=address, counters_interval_s=0.1)) as feed:
            assert process.stdout is not None
            first = process.stdout.readline()  # the example says when it is connected
            assert first.startswith("connected to "), (first, process.stderr.read())
            process_scan(feed, scan, "how-to")
            out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "scan how-to: 60 projections expected" in out
    assert "preview: 60/60 projections" in out
    assert "scan how-to complete: 60 projections, 0 missing" in out

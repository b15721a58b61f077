"""Fuzz the ingest with random and mutated multipart messages (hypothesis).

Invariants, whatever arrives:

* nothing but valid messages reaches the accounting; no exception escapes;
* every message is either accepted (start/frames/end/abort of a known scan) or counted
  under a reason (in the open scan's report or between scans);
* every frame of an accepted ``frames`` message ends in exactly one bucket;
* nothing is held that exceeds the configured limits.

The number of examples is bounded for CI; set ``TOMO_FUZZ_EXAMPLES`` for a long
campaign (e.g. ``TOMO_FUZZ_EXAMPLES=200000 pytest tests/ingest/test_ingest_fuzz.py``).
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import FramesAccepted
from streamer.wire.protocol import (
    EndHeader,
    FramesHeader,
    Limits,
    StartHeader,
    encode_frames,
    encode_header,
)

EXAMPLES = int(os.environ.get("TOMO_FUZZ_EXAMPLES", "300"))
LIMITS = Limits(max_header_bytes=4096, max_frame_bytes=4096, max_message_bytes=16384,
                max_frames_per_message=16, max_metadata_bytes=512)
ROWS, COLS = 4, 8
START = StartHeader(scan="fz", rows=ROWS, cols=COLS, dtype="uint16", frames=12,
                    projections=8, flats=2, darks=2, normalisation="flat_dark")
KEYS = [2, 2, 1, 1] + [0] * 8


def valid_frames(first: int, count: int) -> list[bytes]:
    header = FramesHeader(scan="fz", first=first, count=count,
                          keys=(KEYS + [0] * 32)[first:first + count],
                          angles=[float(i) for i in range(count)], dtype="uint16",
                          shape=(ROWS, COLS))
    data = np.arange(count * ROWS * COLS, dtype="<u2").reshape(count, ROWS, COLS)
    return [bytes(part) for part in encode_frames(header, data)]


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_message(draw: Any) -> list[bytes]:
    choice = draw(st.integers(0, 5))
    if choice == 0:  # random parts
        return draw(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
    if choice == 1:  # a valid header with one field replaced by anything
        header = msgpack.unpackb(valid_frames(draw(st.integers(0, 11)), 2)[0])
        field = draw(st.sampled_from(sorted(header)))
        header[field] = draw(msgpack_values)
        payload = valid_frames(0, 2)[1]
        return [msgpack.packb(header), payload]
    if choice == 2:  # a valid message with bytes flipped, cut or appended
        parts = valid_frames(draw(st.integers(0, 11)), draw(st.integers(1, 4)))
        index = draw(st.integers(0, len(parts) - 1))
        raw = bytearray(parts[index])
        if raw:
            position = draw(st.integers(0, len(raw) - 1))
            raw[position] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(raw)))
        parts[index] = bytes(raw[:cut]) + draw(st.binary(max_size=4))
        return parts
    if choice == 3:  # a random header map
        header = draw(st.dictionaries(st.sampled_from(
            ["v", "type", "scan", "first", "count", "keys", "angles", "dtype", "shape",
             "sent", "reason", "rows", "cols"]), msgpack_values, max_size=9))
        return [msgpack.packb(header), *draw(st.lists(st.binary(max_size=64), max_size=2))]
    if choice == 4:  # valid frames, maybe out of range or resent
        return valid_frames(draw(st.integers(0, 14)), draw(st.integers(1, 6)))
    return [encode_header(EndHeader(scan=draw(st.sampled_from(["fz", "other"])), sent=12))]


class _NoSocket:
    """handle_parts needs no socket; the service is driven directly."""


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_message(), min_size=1, max_size=12))
def test_every_message_is_accepted_or_counted_with_a_reason(messages: list[list[bytes]]) -> None:
    accepted_frames = 0
    frames_in_accepted_messages = 0

    def on_event(event: Any) -> None:
        nonlocal accepted_frames, frames_in_accepted_messages
        if isinstance(event, FramesAccepted):
            accepted_frames += int(event.accepted.sum())
            frames_in_accepted_messages += event.message.header.count
            assert event.message.data.nbytes <= LIMITS.max_message_bytes

    service = IngestService(_NoSocket(), IngestSettings(limits=LIMITS),  # type: ignore[arg-type]
                            on_event=on_event)
    service.handle_parts([encode_header(START)])
    for parts in messages:
        service.handle_parts(parts)
    for event in service.state.shutdown():
        service._dispatch(event)
    report = service.reports[-1]
    rejected_messages = sum(e["messages"] for e in report.rejected.values())
    rejected_messages += sum(service.state.between_scans.messages.values())
    assert rejected_messages <= len(messages)
    received = sum(report.received.values())
    assert received == accepted_frames <= START.frames
    # every frame of an accepted message is in exactly one bucket
    assert frames_in_accepted_messages == (
        accepted_frames + report.duplicate + report.out_of_range
        + report.rejected.get("key_count_exceeded", {}).get("frames", 0)
    )
    assert sum(report.missing.values()) == START.frames - received

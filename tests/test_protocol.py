"""Tests of the wire protocol, :mod:`streamer.wire.protocol`.

Round trips of every message type, one crafted message per rejection reason (checking the
``reason`` code and that the text names the field, what was expected and what came), strict
wire typing, the dtype allow-list, :class:`~streamer.wire.protocol.Limits`, the published JSON
schema, and property/fuzz tests that ``decode`` either returns a valid message or raises
:class:`~streamer.errors.ProtocolError`, never anything else, and never copies or
over-allocates a payload.

The fuzz tests are derandomized and bounded (250 examples each by default, a few seconds
in all) so CI is deterministic. For a long fuzz campaign raise the count with the
``TOMO_FUZZ_EXAMPLES`` environment variable and lift the per-test timeout, e.g.::

    TOMO_FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/test_protocol.py -k fuzz --timeout=0
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.errors import ProtocolError, StreamerError
from streamer.wire.protocol import (
    PROTOCOL_VERSION,
    WIRE_DTYPES,
    AbortHeader,
    EndHeader,
    FramesHeader,
    FramesMessage,
    Geometry,
    Limits,
    StartHeader,
    decode,
    decode_header,
    encode_frames,
    encode_header,
    json_schema,
    wire_dtype_name,
)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "reference" / "protocol.schema.json"
FUZZ_EXAMPLES = int(os.environ.get("TOMO_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SCAN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@+\-]*"
DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- helpers


def start_fields(**changes: Any) -> dict[str, Any]:
    """A valid ``start`` header as a plain dict (what a sender packs), with changes."""
    fields: dict[str, Any] = {
        "v": 1,
        "type": "start",
        "scan": "scan-0001",
        "rows": 4,
        "cols": 6,
        "dtype": "uint16",
        "frames": 10,
        "projections": 6,
        "flats": 2,
        "darks": 2,
        "normalisation": "flat_dark",
    }
    fields.update(changes)
    return fields


def frames_fields(**changes: Any) -> dict[str, Any]:
    """A valid ``frames`` header (2 frames of 3 x 4 uint16) as a dict, with changes."""
    fields: dict[str, Any] = {
        "v": 1,
        "type": "frames",
        "scan": "scan-0001",
        "first": 0,
        "count": 2,
        "keys": [0, 0],
        "angles": [0.0, 0.5],
        "dtype": "uint16",
        "shape": [3, 4],
    }
    fields.update(changes)
    return fields


def end_fields(**changes: Any) -> dict[str, Any]:
    return {"v": 1, "type": "end", "scan": "scan-0001", "sent": 10, **changes}


def abort_fields(**changes: Any) -> dict[str, Any]:
    return {"v": 1, "type": "abort", "scan": "scan-0001", "reason": "beam lost", **changes}


def pack(fields: Any) -> bytes:
    packed = msgpack.packb(fields)
    assert isinstance(packed, bytes)
    return packed


def pattern(size: int) -> bytes:
    """``size`` bytes of a recognisable pattern."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def frames_parts(payload_delta: int = 0, **changes: Any) -> list[bytes]:
    """``[header, payload]`` of a ``frames`` message with ``changes``.

    The payload is sized for the header (``payload_delta`` bytes off) when count, shape and
    dtype make sense, and is the 48 bytes of the unchanged header otherwise.
    """
    fields = frames_fields(**changes)
    count, shape, dtype = fields["count"], fields["shape"], fields["dtype"]
    size = 48
    if (
        type(count) is int and isinstance(shape, list) and len(shape) == 2
        and all(type(n) is int for n in shape) and dtype in WIRE_DTYPES
    ):
        size = count * shape[0] * shape[1] * WIRE_DTYPES[dtype].itemsize
    return [pack(fields), pattern(max(size + payload_delta, 0))]


def rejection(parts: list[Any], limits: Limits = DEFAULT_LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(parts, limits)
    return info.value


def payload_of(parts: list[Any]) -> npt.NDArray[np.uint8]:
    """The payload part as a byte array over the same memory (for shares_memory checks)."""
    part = parts[1]
    buffer = part.buffer if isinstance(part, zmq.Frame) else part
    return np.frombuffer(memoryview(buffer).cast("B"), dtype=np.uint8)


# --------------------------------------------------------------------------- round trips


def test_start_round_trip_keeps_every_field() -> None:
    header = StartHeader(
        scan="tooth-2024.03@bm05:1",
        rows=2160,
        cols=2560,
        dtype="uint16",
        frames=1861,
        projections=1801,
        flats=40,
        darks=20,
        normalisation="flat_dark",
        geometry=Geometry(
            scan_range_deg=180.0, cor_px=1279.5, pixel_size_um=0.65, distance_mm=35.0,
            energy_kev=20.0,
        ),
        source="replay:tooth.h5",
        metadata={"sample": "tooth", "exposure_ms": 12.5, "binning": 1, "continuous": True},
        t=1_700_000_000.25,
    )
    decoded = decode([encode_header(header)])
    assert decoded == header
    assert isinstance(decoded, StartHeader)
    # The metadata value types survive: True stays a bool, 1 stays an int.
    assert [type(value) for value in decoded.metadata.values()] == [str, float, int, bool]
    assert decoded.expected() == {"projections": 1801, "flats": 40, "darks": 20}
    assert decoded.frame_bytes == 2160 * 2560 * 2


def test_minimal_start_gets_the_defaults() -> None:
    decoded = decode([pack(start_fields(normalisation="air", flats=0, darks=0, projections=10))])
    assert isinstance(decoded, StartHeader)
    assert decoded.geometry == Geometry()
    assert decoded.metadata == {}
    assert decoded.source == ""
    assert decoded.t is None


@pytest.mark.parametrize(
    "header",
    [
        EndHeader(scan="s", sent=0),
        EndHeader(scan="scan-0001", sent=1861, t=12.5),
        AbortHeader(scan="scan-0001"),
        AbortHeader(scan="scan-0001", reason="beam lost: ring current 0 mA", t=3.0),
    ],
    ids=["end-minimal", "end", "abort-minimal", "abort"],
)
def test_end_and_abort_round_trip(header: EndHeader | AbortHeader) -> None:
    assert decode([encode_header(header)]) == header
    assert decode_header(encode_header(header)) == header


@pytest.mark.parametrize("dtype_name", sorted(WIRE_DTYPES))
def test_frames_round_trip_views_the_payload(dtype_name: str) -> None:
    rng = np.random.default_rng(7)
    dtype = WIRE_DTYPES[dtype_name]
    data = (rng.random((3, 5, 7)) * 200).astype(dtype)
    header = FramesHeader(
        scan="scan-0001", first=40, count=3, keys=[1, 0, 2], angles=[0, 0.12, 359.88],
        dtype=dtype_name, shape=(5, 7), t=5.0,
    )
    parts = encode_frames(header, data)
    wire = [bytes(parts[0]), bytes(parts[1])]  # what a receiver gets: immutable bytes
    message = decode(wire)
    assert isinstance(message, FramesMessage)
    assert message.header == header
    assert message.header.angles == [0.0, 0.12, 359.88]
    assert message.data.dtype == dtype
    assert message.data.shape == (3, 5, 7)
    np.testing.assert_array_equal(message.data, data)
    # A view of the received buffer, not a copy, and read-only.
    assert np.shares_memory(message.data, payload_of(wire))
    assert message.data.base is not None
    assert not message.data.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        message.data[0, 0, 0] = 1


def test_decoding_encoded_parts_views_the_senders_array() -> None:
    data = np.arange(2 * 3 * 4, dtype="<u2").reshape(2, 3, 4)
    header = FramesHeader.model_validate(frames_fields())
    parts = encode_frames(header, data)
    assert isinstance(parts[1], memoryview)
    message = decode(parts)
    assert isinstance(message, FramesMessage)
    assert np.shares_memory(message.data, data)  # zero-copy end to end
    assert not message.data.flags.writeable  # even though ``data`` itself is writable


def test_writable_payload_is_still_viewed_read_only() -> None:
    header, payload = frames_parts()
    buffer = bytearray(payload)
    message = decode([header, buffer])
    assert isinstance(message, FramesMessage)
    assert np.shares_memory(message.data, np.frombuffer(buffer, dtype=np.uint8))
    assert not message.data.flags.writeable


def test_zmq_frames_are_viewed_in_place() -> None:
    header, payload = frames_parts()
    parts = [zmq.Frame(header), zmq.Frame(payload)]
    message = decode(parts)
    assert isinstance(message, FramesMessage)
    assert np.shares_memory(message.data, payload_of(parts))
    assert message.data.tobytes() == payload


def test_received_multipart_is_decoded_without_a_copy(context: zmq.Context[Any]) -> None:
    # A payload above zmq.COPY_THRESHOLD travels zero-copy through inproc PUSH/PULL.
    count, rows, cols = 4, 128, 256
    data = np.random.default_rng(3).integers(0, 4096, (count, rows, cols), dtype=np.uint16)
    header = FramesHeader.model_validate(
        frames_fields(count=count, keys=[0] * count, angles=[0.0] * count, shape=[rows, cols])
    )
    push = context.socket(zmq.PUSH)
    pull = context.socket(zmq.PULL)
    try:
        push.bind("inproc://test-protocol")
        pull.connect("inproc://test-protocol")
        push.send_multipart(encode_frames(header, data), copy=False)
        assert pull.poll(5000), "no message arrived within 5 s"
        parts = pull.recv_multipart(copy=False)
        message = decode(parts)
        assert isinstance(message, FramesMessage)
        np.testing.assert_array_equal(message.data, data)
        assert np.shares_memory(message.data, payload_of(parts))
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def test_decode_allocates_nothing_in_proportion_to_the_payload() -> None:
    count, rows, cols = 16, 512, 1024  # 16 MiB of uint16
    fields = frames_fields(count=count, keys=[0] * count, angles=[0.0] * count, shape=[rows, cols])
    parts = [pack(fields), bytes(count * rows * cols * 2)]
    tracemalloc.start()
    try:
        message = decode(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(message, FramesMessage)
    assert message.data.nbytes == len(parts[1])
    # numpy reports its data allocations to tracemalloc: a copy would show as 16 MiB. The
    # header models, the view and pydantic's bookkeeping stay far below 1 MiB.
    assert peak < 1024**2, f"decode allocated {peak} bytes for a {len(parts[1])} byte payload"


def test_angles_may_be_sent_as_integers() -> None:
    message = decode(frames_parts(angles=[0, 180]))
    assert isinstance(message, FramesMessage)
    assert message.header.angles == [0.0, 180.0]
    assert all(type(angle) is float for angle in message.header.angles)


def test_explicit_nil_time_is_accepted() -> None:
    assert decode([pack(end_fields(t=None))]) == EndHeader(scan="scan-0001", sent=10)


def test_headers_built_in_python_stay_lax() -> None:
    # Senders build headers from NumPy values; only the wire is strict.
    header = FramesHeader(
        scan="s", first=np.int64(3), count=np.int64(1), keys=[np.int8(2)],
        angles=[np.float32(1.5)], dtype="uint8", shape=(np.int64(2), 2),
    )
    assert (header.first, header.count, header.keys, header.shape) == (3, 1, [2], (2, 2))
    assert decode_header(encode_header(header)) == header


# --------------------------------------------------------------------------- rejections

LONG_SCAN = "s" * 129
NESTED: Any = 1  # 1000 levels deep: a plain repr() of it raises RecursionError
for _ in range(1000):
    NESTED = [NESTED]


def _case(
    case_id: str,
    parts: list[Any],
    reason: str,
    *fragments: str,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    return pytest.param(parts, limits, reason, fragments, id=case_id)


REJECTIONS = [
    # header_too_large: checked on the raw size, before unpacking
    _case("header-too-large", [pack(end_fields())], "header_too_large",
          "header", "at most 16 bytes", f"got {len(pack(end_fields()))}",
          limits=Limits(max_header_bytes=16)),
    # malformed_header
    _case("garbage", [b"\xc1\xff\x00"], "malformed_header", "header", "msgpack", "3 bytes"),
    _case("empty-header", [b""], "malformed_header", "header", "msgpack", "0 bytes"),
    _case("truncated", [pack(end_fields())[:-3]], "malformed_header", "header", "incomplete"),
    _case("trailing-bytes", [pack(end_fields()) + b"\x00"], "malformed_header",
          "header", "msgpack"),
    _case("list-not-map", [pack([1, "start"])], "malformed_header",
          "header", "expected a msgpack map", "got list"),
    _case("string-not-map", [pack("start")], "malformed_header", "expected a msgpack map",
          "got str"),
    _case("ext-type", [pack({**end_fields(), "x": msgpack.ExtType(5, b"\x01")})],
          "malformed_header", "header", "extension types are not allowed", "ext type 5"),
    _case("int-map-key", [pack({1: 2, **end_fields()})], "malformed_header",
          "header", "map key"),
    _case("too-deep", [b"\x81\xa1v" + b"\x91" * 2000 + b"\x01"], "malformed_header",
          "header", "StackError"),
    # unsupported_version
    _case("v2", [pack(end_fields(v=2))], "unsupported_version",
          "header.v", "expected protocol version 1", "got 2"),
    _case("v-missing", [pack({k: v for k, v in end_fields().items() if k != "v"})],
          "unsupported_version", "header.v", "version 1", "got None"),
    _case("v-true", [pack(end_fields(v=True))], "unsupported_version", "header.v", "got True"),
    _case("v-float", [pack(end_fields(v=1.0))], "unsupported_version", "header.v", "got 1.0"),
    _case("v-string", [pack(end_fields(v="1"))], "unsupported_version", "header.v",
          "got '1'"),
    _case("v-deeply-nested", [pack(end_fields(v=NESTED))], "unsupported_version", "header.v",
          "got [[[[...]]]]"),
    # unknown_type
    _case("type-stop", [pack(end_fields(type="stop"))], "unknown_type",
          "header.type", "start|frames|end|abort", "got 'stop'"),
    _case("type-missing", [pack({k: v for k, v in end_fields().items() if k != "type"})],
          "unknown_type", "header.type", "got None"),
    _case("type-int", [pack(end_fields(type=1))], "unknown_type", "header.type", "got 1"),
    _case("type-bytes", [pack(end_fields(type=b"end"))], "unknown_type", "header.type",
          "got b'end'"),
    # invalid_field: values out of range or not allowed
    _case("dtype-int8", frames_parts(dtype="int8"), "invalid_field",
          "frames.dtype", "'uint8', 'uint16', 'uint32' or 'float32'", "got 'int8'"),
    _case("rows-0", [pack(start_fields(rows=0))], "invalid_field",
          "start.rows", "greater than or equal to 1", "got 0"),
    _case("cols-too-big", [pack(start_fields(cols=65537))], "invalid_field",
          "start.cols", "less than or equal to 65536", "got 65537"),
    _case("shape-0", frames_parts(shape=[0, 4]), "invalid_field",
          "frames.shape.0", "greater than or equal to 1", "got 0"),
    _case("shape-3d", frames_parts(shape=[1, 3, 4]), "invalid_field", "frames.shape",
          "got"),
    _case("count-0", frames_parts(count=0, keys=[], angles=[]), "invalid_field",
          "frames.count", "greater than or equal to 1", "got 0"),
    _case("keys-short", frames_parts(keys=[0]), "invalid_field",
          "frames:", "keys has 1 entries", "expected count = 2"),
    _case("angles-long", frames_parts(angles=[0.0, 1.0, 2.0]), "invalid_field",
          "frames:", "angles has 3 entries", "expected count = 2"),
    _case("angle-nan", frames_parts(angles=[0.0, math.nan]), "invalid_field",
          "frames.angles.1", "finite", "got nan"),
    _case("angle-inf", frames_parts(angles=[math.inf, 0.0]), "invalid_field",
          "frames.angles.0", "finite", "got inf"),
    _case("angle-minus-inf", frames_parts(angles=[-math.inf, 0.0]), "invalid_field",
          "frames.angles.0", "finite", "got -inf"),
    _case("image-key-3", frames_parts(keys=[0, 3]), "invalid_field",
          "frames.keys.1", "less than or equal to 2", "got 3"),
    _case("image-key-negative", frames_parts(keys=[-1, 0]), "invalid_field",
          "frames.keys.0", "greater than or equal to 0", "got -1"),
    _case("first-negative", frames_parts(first=-1), "invalid_field",
          "frames.first", "greater than or equal to 0", "got -1"),
    _case("first-too-big", frames_parts(first=10_000_001), "invalid_field",
          "frames.first", "less than or equal to 10000000", "got 10000001"),
    _case("scan-spaces", [pack(end_fields(scan="my scan"))], "invalid_field",
          "end.scan", "pattern", "got 'my scan'"),
    _case("scan-empty", [pack(end_fields(scan=""))], "invalid_field",
          "end.scan", "at least 1 character", "got ''"),
    _case("scan-too-long", [pack(end_fields(scan=LONG_SCAN))], "invalid_field",
          "end.scan", "at most 128 characters", "got 'sss"),
    _case("scan-newline", [pack(end_fields(scan="scan\n"))], "invalid_field",
          "end.scan", "pattern", "got 'scan\\n'"),
    _case("scan-leading-dot", [pack(end_fields(scan=".hidden"))], "invalid_field",
          "end.scan", "pattern"),
    _case("extra-field", frames_parts(colour="red"), "invalid_field",
          "frames.colour", "Extra inputs are not permitted", "got 'red'"),
    _case("counts-do-not-add-up", [pack(start_fields(frames=11))], "invalid_field",
          "start:", "frames must equal projections + flats + darks = 10", "got 11"),
    _case("flat-dark-without-flats", [pack(start_fields(frames=8, flats=0))], "invalid_field",
          "start:", "'flat_dark' needs flats > 0", "got flats = 0"),
    _case("normalisation-unknown", [pack(start_fields(normalisation="log"))], "invalid_field",
          "start.normalisation", "'flat_dark', 'air' or 'none'", "got 'log'"),
    _case("metadata-value-too-long", [pack(start_fields(metadata={"note": "x" * 1025}))],
          "invalid_field", "start.metadata", "'note'", "1025 characters", "at most 1024"),
    _case("metadata-too-many-entries",
          [pack(start_fields(metadata={f"k{i}": i for i in range(257)}))], "invalid_field",
          "start.metadata", "at most 256 items", "got 257 items {"),
    _case("metadata-value-list", [pack(start_fields(metadata={"roi": [1, 2]}))],
          "invalid_field", "start.metadata.roi", "string, integer, number or boolean",
          "got [1, 2]"),
    _case("metadata-value-nil", [pack(start_fields(metadata={"x": None}))], "invalid_field",
          "start.metadata.x", "string, integer, number or boolean", "got None"),
    _case("metadata-value-nan", [pack(start_fields(metadata={"x": math.nan}))],
          "invalid_field", "start.metadata", "'x'", "finite", "nan"),
    _case("metadata-key-empty", [pack(start_fields(metadata={"": 1}))], "invalid_field",
          "start.metadata", "at least 1 character", "got ''"),
    _case("metadata-key-bytes", [pack(start_fields(metadata={b"k": 1}))], "invalid_field",
          "start.metadata", "valid string", "got b'k'"),
    _case("geometry-unknown-field", [pack(start_fields(geometry={"tilt_deg": 1.0}))],
          "invalid_field", "start.geometry.tilt_deg", "Extra inputs", "got 1.0"),
    _case("geometry-range-0", [pack(start_fields(geometry={"scan_range_deg": 0}))],
          "invalid_field", "start.geometry.scan_range_deg", "greater than 0", "got 0"),
    _case("geometry-nil", [pack(start_fields(geometry=None))], "invalid_field",
          "start.geometry", "dictionary", "got None"),
    _case("source-too-long", [pack(start_fields(source="x" * 1025))], "invalid_field",
          "start.source", "at most 1024 characters", "got 'xxx"),
    _case("end-sent-missing", [pack({"v": 1, "type": "end", "scan": "s"})], "invalid_field",
          "end.sent", "required field is missing"),
    _case("end-sent-negative", [pack(end_fields(sent=-1))], "invalid_field",
          "end.sent", "greater than or equal to 0", "got -1"),
    _case("time-nan", [pack(end_fields(t=math.nan))], "invalid_field", "end.t", "finite",
          "got nan"),
    _case("nested-value", [pack(end_fields(scan=NESTED))], "invalid_field", "end.scan",
          "valid string", "got [[[[...]]]]"),
    # invalid_field: strict wire types, no coercion
    _case("first-fraction", frames_parts(first=1.5), "invalid_field",
          "frames.first", "valid integer", "got 1.5"),
    _case("first-float", frames_parts(first=1.0), "invalid_field",
          "frames.first", "valid integer", "got 1.0"),
    _case("first-string", frames_parts(first="1"), "invalid_field",
          "frames.first", "valid integer", "got '1'"),
    _case("first-bool", frames_parts(first=True), "invalid_field",
          "frames.first", "valid integer", "got True"),
    _case("count-bool", frames_parts(count=True, keys=[0], angles=[0.0]), "invalid_field",
          "frames.count", "valid integer", "got True"),
    _case("key-bool", frames_parts(keys=[True, 0]), "invalid_field",
          "frames.keys.0", "valid integer", "got True"),
    _case("key-float", frames_parts(keys=[0, 1.0]), "invalid_field",
          "frames.keys.1", "valid integer", "got 1.0"),
    _case("shape-float", frames_parts(shape=[3.0, 4]), "invalid_field",
          "frames.shape.0", "valid integer", "got 3.0"),
    _case("shape-map", frames_parts(shape={"rows": 3}), "invalid_field",
          "frames.shape", "valid tuple", "got {'rows': 3}"),
    _case("angle-string", frames_parts(angles=["0", 0.5]), "invalid_field",
          "frames.angles.0", "valid number", "got '0'"),
    _case("angle-bool", frames_parts(angles=[0.0, False]), "invalid_field",
          "frames.angles.1", "valid number", "got False"),
    _case("keys-bytes", frames_parts(keys=b"\x00\x00"), "invalid_field",
          "frames.keys", "valid list", "got b'\\x00\\x00'"),
    _case("scan-bytes", [pack(end_fields(scan=b"scan-0001"))], "invalid_field",
          "end.scan", "valid string", "got b'scan-0001'"),
    _case("dtype-bytes", frames_parts(dtype=b"uint16"), "invalid_field",
          "frames.dtype", "'uint16'", "got b'uint16'"),
    _case("rows-string", [pack(start_fields(rows="4"))], "invalid_field",
          "start.rows", "valid integer", "got '4'"),
    _case("sent-bool", [pack(end_fields(sent=True))], "invalid_field",
          "end.sent", "valid integer", "got True"),
    _case("time-string", [pack(end_fields(t="1.5"))], "invalid_field",
          "end.t", "valid number", "got '1.5'"),
    _case("cor-string", [pack(start_fields(geometry={"cor_px": "12.5"}))], "invalid_field",
          "start.geometry.cor_px", "valid number", "got '12.5'"),
    _case("reason-int", [pack(abort_fields(reason=5))], "invalid_field",
          "abort.reason", "valid string", "got 5"),
    _case("timestamp-ext", [pack(end_fields(sent=msgpack.Timestamp(1, 0)))], "invalid_field",
          "end.sent", "valid integer", "Timestamp"),
    # metadata_too_large
    _case("metadata-too-large", [pack(start_fields(metadata={"note": "x" * 100}))],
          "metadata_too_large", "start.metadata", "at most 64 bytes packed", "got 108",
          limits=Limits(max_metadata_bytes=64)),
    # frame_too_large: a 3 x 4 uint16 frame is 24 bytes
    _case("start-frame-too-large", [pack(start_fields())], "frame_too_large",
          "start", "4x6 uint16 frame is 48 bytes", "limit is 47",
          limits=Limits(max_frame_bytes=47)),
    _case("frames-frame-too-large", frames_parts(), "frame_too_large",
          "frames.shape", "3x4 uint16 frame is 24 bytes", "limit is 23",
          limits=Limits(max_frame_bytes=23)),
    _case("huge-shape", [pack(frames_fields(shape=[65536, 65536], dtype="float32")), b""],
          "frame_too_large",
          "frames.shape", "65536x65536 float32 frame is 17179869184 bytes"),
    # message_too_large
    _case("too-many-frames", frames_parts(), "message_too_large",
          "frames.count", "at most 1 frames per message", "got 2",
          limits=Limits(max_frames_per_message=1)),
    _case("payload-over-limit", frames_parts(), "message_too_large",
          "frames", "2 frames of 24 bytes", "message limit of 47 bytes",
          limits=Limits(max_message_bytes=47)),
    # missing_payload and wrong_part_count
    _case("frames-without-payload", frames_parts()[:1], "missing_payload",
          "frames", "expected 2 parts [header, payload]", "got 1"),
    _case("frames-three-parts", [*frames_parts(), b""], "wrong_part_count",
          "frames", "expected 2 parts [header, payload]", "got 3"),
    _case("start-two-parts", [pack(start_fields()), b"\x00"], "wrong_part_count",
          "start", "expected 1 part (header only)", "got 2"),
    _case("end-two-parts", [pack(end_fields()), b""], "wrong_part_count",
          "end", "expected 1 part", "got 2"),
    _case("no-parts", [], "wrong_part_count", "message", "expected 1 or 2 parts", "got 0"),
    # payload_size_mismatch: 2 x 3 x 4 x 2 = 48 bytes expected
    _case("payload-one-byte-short", frames_parts(payload_delta=-1), "payload_size_mismatch",
          "frames.payload", "expected 2x3x4x2 = 48 bytes", "got 47"),
    _case("payload-one-byte-long", frames_parts(payload_delta=1), "payload_size_mismatch",
          "frames.payload", "expected 2x3x4x2 = 48 bytes", "got 49"),
    _case("payload-empty", [frames_parts()[0], b""], "payload_size_mismatch",
          "frames.payload", "48 bytes", "got 0"),
]


@pytest.mark.parametrize(("parts", "limits", "reason", "fragments"), REJECTIONS)
def test_rejection_names_reason_field_expected_and_got(
    parts: list[Any], limits: Limits, reason: str, fragments: tuple[str, ...]
) -> None:
    error = rejection(parts, limits)
    assert error.reason == reason
    assert isinstance(error, StreamerError)
    text = str(error)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert len(text) < 2000, "messages stay readable"


def test_every_reason_code_has_a_crafted_rejection() -> None:
    covered = {param.values[2] for param in REJECTIONS}
    assert covered == {
        "header_too_large", "malformed_header", "unsupported_version", "unknown_type",
        "invalid_field", "metadata_too_large", "frame_too_large", "message_too_large",
        "missing_payload", "wrong_part_count", "payload_size_mismatch",
    }


def test_several_bad_fields_are_reported_together() -> None:
    text = str(rejection(frames_parts(first=-1, dtype="int8")))
    assert "frames.first" in text
    assert "frames.dtype" in text


def test_header_size_is_checked_before_unpacking() -> None:
    # 1 MiB of garbage is refused on its size, not parsed.
    error = rejection([b"\xc1" * 1024**2])
    assert error.reason == "header_too_large"


def test_size_limits_are_checked_before_the_payload() -> None:
    # A frames header claiming a 16 GiB frame with no payload behind it is refused for its
    # size, so nothing is ever sized from its claim.
    error = rejection([pack(frames_fields(shape=[65536, 65536], dtype="float32"))])
    assert error.reason == "frame_too_large"


def test_decode_header_accepts_memoryview() -> None:
    raw = pack(end_fields())
    assert decode_header(memoryview(raw)) == EndHeader(scan="scan-0001", sent=10)


def test_a_part_that_is_not_a_buffer_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match=r"message part: expected bytes or zmq.Frame, got str"):
        decode(["not bytes"])


# --------------------------------------------------------------------------- dtypes, limits


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (np.uint8, "uint8"), ("|u1", "uint8"), (">u1", "uint8"),  # no byte order for 1 byte
        (np.uint16, "uint16"), ("<u2", "uint16"), ("uint16", "uint16"),
        (np.uint32, "uint32"), ("<u4", "uint32"),
        (np.float32, "float32"), ("<f4", "float32"), ("float32", "float32"),
    ],
)
def test_wire_dtype_name_of_allowed_dtypes(dtype: npt.DTypeLike, name: str) -> None:
    if sys.byteorder == "big" and np.dtype(dtype).itemsize > 1 and np.dtype(dtype).isnative:
        pytest.skip("native multi-byte dtypes are big-endian on this host")
    assert wire_dtype_name(dtype) == name


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "uint64", "float16", "float64",
                                   "complex64", "bool", np.dtype([("a", "u1")])])
def test_wire_dtype_name_refuses_other_dtypes(dtype: npt.DTypeLike) -> None:
    with pytest.raises(ProtocolError) as info:
        wire_dtype_name(dtype)
    assert info.value.reason == "invalid_field"
    assert "dtype: expected one of uint8|uint16|uint32|float32 (little-endian)" in str(info.value)
    assert f"got {np.dtype(dtype).name}" in str(info.value)


@pytest.mark.parametrize("dtype", [">u2", ">u4", ">f4"])
def test_big_endian_dtypes_are_refused_with_the_fix(dtype: str) -> None:
    # Documented choice: big-endian data is refused, never silently byte-swapped; the message
    # says how to convert.
    with pytest.raises(ProtocolError) as info:
        wire_dtype_name(dtype)
    text = str(info.value)
    assert f"big-endian {np.dtype(dtype).name} '{dtype}'" in text
    assert f".astype('<{dtype[1:]}')" in text


def test_encode_frames_refuses_big_endian_and_bad_arrays() -> None:
    header = FramesHeader.model_validate(frames_fields())
    good = np.zeros((2, 3, 4), dtype="<u2")
    with pytest.raises(ProtocolError, match=r"data: expected dtype uint16, got >u2"):
        encode_frames(header, good.astype(">u2"))
    with pytest.raises(ProtocolError,
                       match=r"data: expected shape \(2, 3, 4\), got \(2, 4, 3\)"):
        encode_frames(header, np.zeros((2, 4, 3), dtype="<u2"))
    with pytest.raises(ProtocolError, match="C-contiguous"):
        encode_frames(header, np.zeros((2, 4, 3), dtype="<u2").transpose(0, 2, 1))


@pytest.mark.parametrize(
    "name",
    ["max_header_bytes", "max_frame_bytes", "max_message_bytes", "max_frames_per_message",
     "max_metadata_bytes"],
)
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1024", None])
def test_limits_refuse_non_positive_integers(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Limits\.{name}: expected a positive integer, got "):
        Limits(**{name: value})


def test_default_limits() -> None:
    limits = Limits()
    assert limits.max_header_bytes == 256 * 1024
    assert limits.max_frame_bytes == 256 * 1024**2
    assert limits.max_message_bytes == 1024**3
    assert limits.max_frames_per_message == 4096
    assert limits.max_metadata_bytes == 64 * 1024


def test_limits_at_exactly_the_size_accept() -> None:
    parts = frames_parts()  # header of some size, 2 frames of 24 bytes, 48 bytes payload
    exact = Limits(
        max_header_bytes=len(parts[0]), max_frame_bytes=24, max_message_bytes=48,
        max_frames_per_message=2,
    )
    assert isinstance(decode(parts, exact), FramesMessage)


# --------------------------------------------------------------------------- docs


def test_docs_worked_example_sends_a_valid_complete_scan(context: zmq.Context[Any]) -> None:
    # The sender in docs/reference/protocol.md (pyzmq + msgpack only) must produce a scan
    # that this module accepts in full. It runs as written except for its address: here the
    # receiver binds a random loopback port and the example connects to it.
    text = (SCHEMA_PATH.parent / "protocol.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert 'ADDRESS = "tcp://127.0.0.1:5555"' in code and "push.bind(ADDRESS)" in code
    pull = context.socket(zmq.PULL)
    messages: list[Any] = []
    errors: list[BaseException] = []
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        code = code.replace('"tcp://127.0.0.1:5555"', f'"tcp://127.0.0.1:{port}"')
        code = code.replace("push.bind(ADDRESS)", "push.connect(ADDRESS)")

        def send() -> None:
            try:
                exec(compile(code, "send_scan.py", "exec"), {"__name__": "__main__"})
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while not messages or not isinstance(messages[-1], EndHeader):
            assert pull.poll(10_000), "the example stopped sending"
            messages.append(decode(pull.recv_multipart(copy=False)))
        sender.join(10)
        assert not errors, errors
    finally:
        pull.close(linger=0)
    start, *blocks, end = messages
    assert isinstance(start, StartHeader) and isinstance(end, EndHeader)
    assert all(isinstance(block, FramesMessage) for block in blocks)
    indices = [i for block in blocks for i in range(block.header.first,
                                                    block.header.first + block.header.count)]
    assert indices == list(range(start.frames)) and end.sent == start.frames
    keys = [key for block in blocks for key in block.header.keys]
    assert [keys.count(key) for key in (0, 1, 2)] == [
        start.projections, start.flats, start.darks
    ]


# --------------------------------------------------------------------------- schema


def test_published_json_schema_is_current() -> None:
    current = json.loads(json.dumps(json_schema(), sort_keys=True))
    published = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert published == current, (
        f"{SCHEMA_PATH} is stale. Did you forget to run "
        "`python -m streamer.wire.protocol > docs/reference/protocol.schema.json`?"
    )


def test_schema_requires_version_and_type() -> None:
    schema = json_schema()
    assert schema["protocol_version"] == PROTOCOL_VERSION
    assert set(schema["messages"]) == {"start", "frames", "end", "abort"}
    for message in schema["messages"].values():
        assert message["required"][:2] == ["v", "type"]
        assert message["additionalProperties"] is False


# --------------------------------------------------------------------------- fuzzing

#: Any value msgpack can carry (ints over the whole int64/uint64 range, NaN and infinities,
#: bytes, nested arrays and maps), plus extension types.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, 2, 3, -1, 65536, 65537, 10_000_000, 10_000_001, 2**31, 2**63 - 1,
                       2**64 - 1, -(2**63)])
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
extension_values = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)) | (
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1))
)
#: Values that many fields would accept, so that some mutated headers stay valid.
plausible_values = (
    st.integers(0, 3)
    | st.floats(-1.0, 400.0)
    | st.sampled_from(["uint8", "float32", "air", "none", "s-1", {}])
    | st.lists(st.integers(1, 4), min_size=2, max_size=2)
)
#: Mostly any msgpack value, plausible ones one time in five, extension types (refused
#: outright) one time in ten.
wild_values = st.integers(0, 9).flatmap(
    lambda pick: {9: extension_values, 8: plausible_values, 7: plausible_values}.get(
        pick, msgpack_values
    )
)
FIELD_NAMES = sorted(
    {name for model in (StartHeader, FramesHeader, EndHeader, AbortHeader)
     for name in model.model_fields}
    | set(Geometry.model_fields)
)
small_sizes = st.integers(min_value=1, max_value=6)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-720, 720)
scan_ids = st.from_regex(re.compile(SCAN_ID_PATTERN), fullmatch=True).filter(
    lambda text: len(text) <= 128
)
optional_time = st.none() | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(min_value=1, max_value=4))
    fields: dict[str, Any] = {
        "v": 1,
        "type": "frames",
        "scan": draw(scan_ids),
        "first": draw(st.integers(min_value=0, max_value=10_000_000)),
        "count": count,
        "keys": draw(st.lists(st.sampled_from([0, 1, 2]), min_size=count, max_size=count)),
        "angles": draw(st.lists(finite, min_size=count, max_size=count)),
        "dtype": draw(st.sampled_from(sorted(WIRE_DTYPES))),
        "shape": [draw(small_sizes), draw(small_sizes)],
    }
    if (t := draw(optional_time)) is not None:
        fields["t"] = t
    return fields


@st.composite
def valid_start(draw: st.DrawFn) -> dict[str, Any]:
    projections, flats, darks = (draw(st.integers(0, 50)) for _ in range(3))
    normalisations = ["flat_dark", "air", "none"] if flats else ["air", "none"]
    geometry = draw(st.fixed_dictionaries({}, optional={
        "scan_range_deg": st.floats(min_value=1e-3, max_value=720),
        "cor_px": finite,
        "pixel_size_um": st.floats(min_value=1e-3, max_value=1e3),
    }))
    metadata_values = (st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1)
                       | st.floats(allow_nan=False, allow_infinity=False) | st.booleans())
    return {
        "v": 1,
        "type": "start",
        "scan": draw(scan_ids),
        "rows": draw(small_sizes),
        "cols": draw(small_sizes),
        "dtype": draw(st.sampled_from(sorted(WIRE_DTYPES))),
        "frames": projections + flats + darks,
        "projections": projections,
        "flats": flats,
        "darks": darks,
        "normalisation": draw(st.sampled_from(normalisations)),
        "geometry": geometry,
        "source": draw(st.text(max_size=20)),
        "metadata": draw(st.dictionaries(st.text(min_size=1, max_size=10), metadata_values,
                                         max_size=4)),
    }


@st.composite
def valid_end_or_abort(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"v": 1, "type": "end", "scan": draw(scan_ids), "sent": draw(st.integers(0, 10**7))}
    return {"v": 1, "type": "abort", "scan": draw(scan_ids), "reason": draw(st.text(max_size=30))}


valid_headers = valid_frames() | valid_start() | valid_end_or_abort()
#: Maps that get past the version and type checks, with random values for any field.
typed_maps = st.fixed_dictionaries(
    {"v": st.just(1), "type": st.sampled_from(["start", "frames", "end", "abort"])},
    optional=dict.fromkeys(set(FIELD_NAMES) - {"v", "type"}, msgpack_values),
)


def payload_size(fields: dict[str, Any]) -> int:
    """Bytes of payload a valid ``frames`` header asks for (0 for other types)."""
    if fields["type"] != "frames":
        return 0
    rows, cols = fields["shape"]
    return int(fields["count"] * rows * cols * WIRE_DTYPES[fields["dtype"]].itemsize)


def parts_for(fields: dict[str, Any], header: bytes, payload_delta: int = 0) -> list[bytes]:
    if fields.get("type") != "frames":
        return [header]
    return [header, pattern(max(payload_size(fields) + payload_delta, 0))]


def decode_or_reject(parts: list[Any], limits: Limits = DEFAULT_LIMITS) -> Any:
    """``decode``; a ProtocolError gives None, any other exception fails the test."""
    try:
        message = decode(parts, limits)
    except ProtocolError as error:
        assert error.reason in {
            "header_too_large", "malformed_header", "unsupported_version", "unknown_type",
            "invalid_field", "metadata_too_large", "frame_too_large", "message_too_large",
            "missing_payload", "wrong_part_count", "payload_size_mismatch",
        }, error.reason
        assert str(error)
        return None
    check_valid(message, parts, limits)
    return message


def check_valid(message: Any, parts: list[Any], limits: Limits) -> None:
    """Everything an accepted message promises its consumers."""
    header = message.header if isinstance(message, FramesMessage) else message
    assert isinstance(header, StartHeader | FramesHeader | EndHeader | AbortHeader)
    assert type(header.v) is int and header.v == PROTOCOL_VERSION
    assert re.fullmatch(SCAN_ID_PATTERN, header.scan) and len(header.scan) <= 128
    assert header.t is None or (type(header.t) is float and math.isfinite(header.t))
    assert len(parts[0]) <= limits.max_header_bytes
    if isinstance(message, FramesMessage):
        frames = message.header
        assert len(parts) == 2
        assert type(frames.first) is int and 0 <= frames.first <= 10_000_000
        assert type(frames.count) is int and 1 <= frames.count <= limits.max_frames_per_message
        assert len(frames.keys) == len(frames.angles) == frames.count
        assert all(type(key) is int and key in (0, 1, 2) for key in frames.keys)
        assert all(type(angle) is float and math.isfinite(angle) for angle in frames.angles)
        assert all(type(size) is int and 1 <= size <= 65536 for size in frames.shape)
        # The allocation bound: what the consumer holds is exactly the payload, within the
        # limits, viewed in place (no copy) and read-only.
        payload = payload_of(parts)
        data = message.data
        assert data.shape == (frames.count, *frames.shape)
        assert data.dtype == WIRE_DTYPES[frames.dtype]
        assert data.nbytes == payload.nbytes == frames.payload_bytes
        assert data.nbytes <= limits.max_message_bytes
        assert frames.frame_bytes <= limits.max_frame_bytes
        assert np.shares_memory(data, payload)
        assert not data.flags.writeable
    else:
        assert len(parts) == 1
        if isinstance(header, StartHeader):
            assert header.frames == header.projections + header.flats + header.darks
            assert header.frame_bytes <= limits.max_frame_bytes
            assert len(msgpack.packb(header.metadata)) <= limits.max_metadata_bytes
            assert header.normalisation != "flat_dark" or header.flats > 0
            for key, value in header.metadata.items():
                assert type(key) is str and 1 <= len(key) <= 128
                assert type(value) in (str, int, float, bool)
    # An accepted header re-encodes to one that decodes to the same header (the re-encoded
    # header may be a little larger: an angle sent as int 0 comes back as float 0.0).
    assert decode_header(encode_header(header)) == header


@FUZZ
@given(fields=valid_headers)
def test_fuzz_valid_headers_are_accepted_as_sent(fields: dict[str, Any]) -> None:
    message = decode_or_reject(parts_for(fields, pack(fields)))
    assert message is not None, "a valid header was refused"
    header = message.header if isinstance(message, FramesMessage) else message
    expected = dict(fields)
    if "shape" in expected:
        expected["shape"] = tuple(expected["shape"])
    assert header.model_dump(exclude_none=True) == expected  # ints compare equal to floats


@FUZZ
@given(
    header=st.binary(max_size=300)
    | msgpack_values.map(pack)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), msgpack_values,
                      max_size=12).map(pack)
    | typed_maps.map(pack),
    payloads=st.lists(st.binary(max_size=200), max_size=3),
)
def test_fuzz_random_messages_decode_or_raise_protocol_error(
    header: bytes, payloads: list[bytes]
) -> None:
    decode_or_reject([header, *payloads])


@FUZZ
@given(
    fields=valid_headers,
    mutations=st.lists(
        st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                  st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1, max_size=4,
    ),
    payload_delta=st.sampled_from([0, 0, 0, -1, 1]),
)
def test_fuzz_byte_mutations_of_valid_headers(
    fields: dict[str, Any], mutations: list[tuple[str, int, int]], payload_delta: int
) -> None:
    header = bytearray(pack(fields))
    for operation, position, byte in mutations:
        at = position % (len(header) + 1)
        if operation == "flip" and header:
            header[at % len(header)] ^= byte or 0xFF
        elif operation == "truncate":
            del header[at:]
        elif operation == "insert":
            header.insert(at, byte)
        elif operation == "delete" and header:
            del header[at % len(header)]
    decode_or_reject(parts_for(fields, bytes(header), payload_delta))


@FUZZ
@given(fields=valid_headers, data=st.data(), payload_delta=st.sampled_from([0, 0, 0, -1, 1]))
def test_fuzz_structured_mutations_of_valid_headers(
    fields: dict[str, Any], data: st.DataObject, payload_delta: int
) -> None:
    mutated = dict(fields)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        operation = data.draw(st.sampled_from(["replace", "replace", "item", "drop", "add"]))
        name = data.draw(st.sampled_from(sorted(mutated) or ["v"]), label="field")
        if operation == "replace":
            mutated[name] = data.draw(wild_values, label="value")
        elif operation == "item" and isinstance(mutated.get(name), list | dict):
            container = mutated[name]
            value = data.draw(wild_values, label="item")
            if isinstance(container, list):
                index = data.draw(st.integers(0, len(container)), label="index")
                mutated[name] = [*container[:index], value, *container[index + 1:]]
            else:
                key = data.draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), label="key")
                mutated[name] = {**container, key: value}
        elif operation == "drop":
            mutated.pop(name, None)
        else:
            key = data.draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), label="key")
            mutated[key] = data.draw(wild_values, label="value")
    message = decode_or_reject(parts_for(fields, pack(mutated), payload_delta))
    if message is not None and payload_delta != 0:
        # The payload was sized for the original header: an accepted frames message has a
        # payload exactly as long as its (possibly mutated) header says.
        assert not isinstance(message, FramesMessage) or (
            message.data.nbytes == payload_size(fields) + payload_delta
        )


@FUZZ
@given(fields=valid_frames(), data=st.data(), as_frame=st.booleans())
def test_fuzz_accepted_frames_stay_within_limits_and_uncopied(
    fields: dict[str, Any], data: st.DataObject, as_frame: bool
) -> None:
    header = pack(fields)
    rows, cols = fields["shape"]
    frame_bytes = rows * cols * WIRE_DTYPES[fields["dtype"]].itemsize
    # Each limit lands near what the message needs, so both sides of every bound are hit.
    near = st.integers(min_value=-3, max_value=3)
    limits = Limits(
        max_header_bytes=max(1, len(header) + data.draw(near, label="header slack")),
        max_frame_bytes=max(1, frame_bytes + data.draw(near, label="frame slack")),
        max_message_bytes=max(1, payload_size(fields) + data.draw(near, label="message slack")),
        max_frames_per_message=max(1, fields["count"] + data.draw(near, label="count slack")),
    )
    parts: list[Any] = parts_for(fields, header)
    if as_frame:
        parts = [zmq.Frame(part) for part in parts]
    message = decode_or_reject(parts, limits)
    fits = (
        len(header) <= limits.max_header_bytes
        and fields["count"] <= limits.max_frames_per_message
        and frame_bytes <= limits.max_frame_bytes
        and payload_size(fields) <= limits.max_message_bytes
    )
    # A valid message is accepted exactly when it fits the limits.
    assert (message is not None) == fits

"""The wire protocol: ``[msgpack header, raw payload]`` ZeroMQ multipart messages.

A scan is a document stream ``start → frames … → end`` (or ``abort``). The header is a
msgpack map with a protocol version ``v``, a message ``type`` and the ``scan`` id; ``frames``
messages carry a block of ``count`` frames whose pixels travel as one raw, C-ordered,
little-endian payload part. Pixels never go through msgpack.

Every field is validated, and the payload length is checked against
``count × rows × cols × itemsize``, *before* anything is allocated for the frames; the
payload is then viewed in place (``np.frombuffer``), never copied. Limits on header,
frame, message and metadata sizes come from :class:`Limits`. A rejected message raises
:class:`~streamer.errors.ProtocolError` whose ``reason`` is the accounting key and whose
text names the field, what was expected and what came.

The field-by-field reference is ``docs/reference/protocol.md``; the JSON schema of the
headers is ``docs/reference/protocol.schema.json`` (regenerate with
``python -m streamer.wire.protocol``; a test fails when it is stale).
"""

from __future__ import annotations

import json
import math
import reprlib
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgpack
import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    ValidationError,
    field_validator,
    model_validator,
)

from streamer.errors import ProtocolError

PROTOCOL_VERSION: Final = 1

#: Allowed pixel types on the wire and their little-endian NumPy dtypes.
WIRE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "uint8": np.dtype("|u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "float32": np.dtype("<f4"),
}

#: NeXus ``image_key`` values.
IMAGE_KEY_PROJECTION: Final = 0
IMAGE_KEY_FLAT: Final = 1
IMAGE_KEY_DARK: Final = 2
IMAGE_KEY_NAMES: Final[dict[int, str]] = {0: "projections", 1: "flats", 2: "darks"}

WireDtype = Literal["uint8", "uint16", "uint32", "float32"]
Normalisation = Literal["flat_dark", "air", "none"]


def _one_union_error(source: Any, handler: Any) -> Any:
    # One error for a bad metadata value instead of one per union member.
    schema = handler(source)
    schema["custom_error_type"] = "metadata_value"
    schema["custom_error_message"] = "Input should be a string, integer, number or boolean"
    return schema


MetadataValue = Annotated[str | int | float | bool, GetPydanticSchema(_one_union_error)]

#: A scan id: 1-128 characters, a letter or digit first, then letters, digits and ``._:@+-``.
SCAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*$"
ScanId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=SCAN_ID_PATTERN)
]
DetectorSize = Annotated[int, Field(ge=1, le=65536)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: An int range rather than ``Literal[0, 1, 2]``: pydantic matches literals by equality,
#: so a Literal would accept ``True`` and ``1.0`` as image keys even in strict mode.
ImageKey = Annotated[int, Field(ge=0, le=2)]
MAX_METADATA_ENTRIES: Final = 256
MAX_TEXT: Final = 1024


@dataclass(frozen=True)
class Limits:
    """Size limits applied to every incoming message before anything is allocated.

    Parameters
    ----------
    max_header_bytes : int
        Largest msgpack header accepted.
    max_frame_bytes : int
        Largest single frame (``rows × cols × itemsize``).
    max_message_bytes : int
        Largest payload of one ``frames`` message (all its frames together).
    max_frames_per_message : int
        Largest ``count`` in one ``frames`` message.
    max_metadata_bytes : int
        Largest packed ``metadata`` map in a ``start`` message.
    """

    max_header_bytes: int = 256 * 1024
    max_frame_bytes: int = 256 * 1024**2
    max_message_bytes: int = 1024**3
    max_frames_per_message: int = 4096
    max_metadata_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_frame_bytes", "max_message_bytes",
                     "max_frames_per_message", "max_metadata_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name}: expected a positive integer, got {value!r}")


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    v: Literal[1] = PROTOCOL_VERSION
    scan: ScanId
    #: Sender's wall clock (Unix seconds) when the message was sent: for latency figures.
    t: FiniteFloat | None = None


class Geometry(BaseModel):
    """Optional acquisition geometry carried by ``start``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Total rotation covered by the projections, degrees (180 or 360 for the usual scans).
    scan_range_deg: PositiveFloat | None = None
    #: Centre of rotation: 0-based detector column of the axis ((cols-1)/2 is the middle).
    cor_px: FiniteFloat | None = None
    pixel_size_um: PositiveFloat | None = None
    distance_mm: PositiveFloat | None = None
    energy_kev: PositiveFloat | None = None


class StartHeader(_Header):
    """``start``: opens a scan and announces everything needed to receive it."""

    type: Literal["start"] = "start"
    rows: DetectorSize
    cols: DetectorSize
    dtype: WireDtype
    #: Number of frames the scan will send; frame indices are ``0 … frames-1``.
    frames: Annotated[int, Field(ge=0, le=10_000_000)]
    projections: Annotated[int, Field(ge=0, le=10_000_000)]
    flats: Annotated[int, Field(ge=0, le=10_000_000)]
    darks: Annotated[int, Field(ge=0, le=10_000_000)]
    #: How the receiver should normalise: ``flat_dark`` (references in the stream), ``air``
    #: (no references: use the air columns at the detector edges), ``none`` (payload is
    #: already -log attenuation).
    normalisation: Normalisation
    geometry: Geometry = Geometry()
    #: Who sent the scan, e.g. ``simulate`` or ``replay:tooth.h5``.
    source: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    metadata: dict[Annotated[str, Field(min_length=1, max_length=128)], MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ENTRIES
    )

    @field_validator("metadata")
    @classmethod
    def _bounded_values(cls, value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        for key, item in value.items():
            if isinstance(item, str) and len(item) > MAX_TEXT:
                raise ValueError(f"metadata[{key!r}] is {len(item)} characters, at most {MAX_TEXT}")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"metadata[{key!r}] must be finite, got {item!r}")
        return value

    @model_validator(mode="after")
    def _counts_add_up(self) -> StartHeader:
        total = self.projections + self.flats + self.darks
        if total != self.frames:
            raise ValueError(
                f"frames must equal projections + flats + darks = {total}, got {self.frames}"
            )
        if self.normalisation == "flat_dark" and self.flats == 0:
            raise ValueError("normalisation 'flat_dark' needs flats > 0, got flats = 0")
        return self

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        return WIRE_DTYPES[self.dtype]

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.wire_dtype.itemsize

    def expected(self) -> dict[str, int]:
        """Expected frame counts keyed by ``projections``, ``flats``, ``darks``."""
        return {"projections": self.projections, "flats": self.flats, "darks": self.darks}


class FramesHeader(_Header):
    """``frames``: a block of ``count`` frames with consecutive indices from ``first``."""

    type: Literal["frames"] = "frames"
    first: Annotated[int, Field(ge=0, le=10_000_000)]
    count: Annotated[int, Field(ge=1)]
    #: Per-frame NeXus image_key: 0 projection, 1 flat, 2 dark.
    keys: list[ImageKey]
    #: Per-frame rotation angle, degrees.
    angles: list[FiniteFloat]
    dtype: WireDtype
    #: Frame shape ``[rows, cols]``; the payload holds ``count`` such frames.
    shape: tuple[DetectorSize, DetectorSize]

    @field_validator("shape", mode="before")
    @classmethod
    def _shape_from_array(cls, value: Any) -> Any:
        # msgpack has no tuple: the shape arrives as a 2-element array (a list), which strict
        # validation would refuse for a tuple field. The items stay strictly validated.
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _per_frame_lists_match_count(self) -> FramesHeader:
        if len(self.keys) != self.count:
            raise ValueError(f"keys has {len(self.keys)} entries, expected count = {self.count}")
        if len(self.angles) != self.count:
            raise ValueError(
                f"angles has {len(self.angles)} entries, expected count = {self.count}"
            )
        return self

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        return WIRE_DTYPES[self.dtype]

    @property
    def frame_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.wire_dtype.itemsize

    @property
    def payload_bytes(self) -> int:
        return self.count * self.frame_bytes


class EndHeader(_Header):
    """``end``: the source has sent everything; ``sent`` frames went out for this scan."""

    type: Literal["end"] = "end"
    sent: Annotated[int, Field(ge=0)]


class AbortHeader(_Header):
    """``abort``: the source gave up on the scan; ``reason`` says why."""

    type: Literal["abort"] = "abort"
    reason: Annotated[str, Field(max_length=MAX_TEXT)] = ""


Header = StartHeader | FramesHeader | EndHeader | AbortHeader
_MODELS: Final[dict[str, type[_Header]]] = {
    "start": StartHeader,
    "frames": FramesHeader,
    "end": EndHeader,
    "abort": AbortHeader,
}


@dataclass(frozen=True)
class FramesMessage:
    """A decoded ``frames`` message: its header and a read-only view of its pixels.

    ``data`` is an ``ndarray of shape (count, rows, cols)`` that *views* the received
    payload buffer (no copy); keep the message alive as long as the view is used.
    """

    header: FramesHeader
    data: npt.NDArray[Any]


Message = StartHeader | FramesMessage | EndHeader | AbortHeader


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def _short(value: object, limit: int = 80) -> str:
    # reprlib bounds the depth: a plain repr of a deeply nested msgpack array (msgpack
    # allows ~1000 levels) raised RecursionError instead of ProtocolError.
    text = _REPR.repr(value)
    if isinstance(value, list | dict) and len(value) > _REPR.maxlist:
        text = f"{len(value)} items {text}"  # the count is cut off from a long container
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension types are not allowed (got ext type {code})")


def _unpack_header(raw: bytes | memoryview, limits: Limits) -> dict[str, Any]:
    size = len(raw)
    if size > limits.max_header_bytes:
        raise ProtocolError(
            "header_too_large",
            f"header: expected at most {limits.max_header_bytes} bytes, got {size}",
        )
    try:
        # Every msgpack container costs at least one byte, so a bounded header cannot
        # expand into an unbounded allocation; extension types are refused outright.
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except Exception as exc:  # msgpack raises several unrelated exception types
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ProtocolError(
            "malformed_header",
            f"header: expected one msgpack map, got {size} bytes that do not unpack ({detail})",
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            "malformed_header", f"header: expected a msgpack map, got {type(obj).__name__}"
        )
    return obj


def decode_header(raw: bytes | memoryview, limits: Limits = Limits()) -> Header:
    """Validate and decode one header part.

    Raises
    ------
    ProtocolError
        With ``reason`` one of ``header_too_large``, ``malformed_header``,
        ``unsupported_version``, ``unknown_type``, ``invalid_field``, ``frame_too_large``,
        ``message_too_large``, ``metadata_too_large``.
    """
    obj = _unpack_header(raw, limits)
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # refuses True and 1.0
        raise ProtocolError(
            "unsupported_version",
            f"header.v: expected protocol version {PROTOCOL_VERSION}, got {_short(version)}",
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _MODELS:
        raise ProtocolError(
            "unknown_type",
            f"header.type: expected one of {'|'.join(_MODELS)}, got {_short(kind)}",
        )
    try:
        # Strict on the wire: no "1" -> 1, 1.0 -> 1, True -> 1 or b"x" -> "x" coercion (floats
        # still take ints, so an angle may be sent as 0). Headers built in Python stay lax.
        header = _MODELS[kind].model_validate(obj, strict=True)
    except ValidationError as exc:
        raise ProtocolError("invalid_field", _describe(kind, exc)) from None
    _check_sizes(header, limits)
    return header  # type: ignore[return-value]


def _describe(kind: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":  # its input is the whole header: not worth printing
            problems.append(f"{kind}.{where}: required field is missing")
        elif where:
            problems.append(f"{kind}.{where}: {error['msg']}, got {_short(error.get('input'))}")
        else:  # a whole-model check: its message names the fields itself
            problems.append(f"{kind}: {error['msg']}")
    return "; ".join(problems)


def _check_sizes(header: _Header, limits: Limits) -> None:
    if isinstance(header, FramesHeader):
        frame_bytes = header.frame_bytes  # once: this runs for every message
        if header.count > limits.max_frames_per_message:
            raise ProtocolError(
                "message_too_large",
                f"frames.count: expected at most {limits.max_frames_per_message} frames per "
                f"message, got {header.count}",
            )
        if frame_bytes > limits.max_frame_bytes:
            raise ProtocolError(
                "frame_too_large",
                f"frames.shape: a {header.shape[0]}x{header.shape[1]} {header.dtype} frame is "
                f"{frame_bytes} bytes, the limit is {limits.max_frame_bytes}",
            )
        if header.count * frame_bytes > limits.max_message_bytes:
            raise ProtocolError(
                "message_too_large",
                f"frames: {header.count} frames of {frame_bytes} bytes exceed the "
                f"message limit of {limits.max_message_bytes} bytes",
            )
    elif isinstance(header, StartHeader):
        frame_bytes = header.frame_bytes
        if frame_bytes > limits.max_frame_bytes:
            raise ProtocolError(
                "frame_too_large",
                f"start: a {header.rows}x{header.cols} {header.dtype} frame is {frame_bytes} "
                f"bytes, the limit is {limits.max_frame_bytes}",
            )
        packed = len(msgpack.packb(header.metadata))
        if packed > limits.max_metadata_bytes:
            raise ProtocolError(
                "metadata_too_large",
                f"start.metadata: expected at most {limits.max_metadata_bytes} bytes packed, "
                f"got {packed}",
            )


def decode(parts: list[Any], limits: Limits = Limits()) -> Message:
    """Decode one multipart message (a list of ``bytes`` or ``zmq.Frame``).

    The payload of a ``frames`` message is checked against the header (length equal to
    ``count × rows × cols × itemsize``) and then viewed without a copy.
    """
    if not parts:
        raise ProtocolError("wrong_part_count", "message: expected 1 or 2 parts, got 0")
    header = decode_header(_buffer(parts[0]), limits)
    if isinstance(header, FramesHeader):
        if len(parts) != 2:
            reason = "missing_payload" if len(parts) == 1 else "wrong_part_count"
            raise ProtocolError(
                reason, f"frames: expected 2 parts [header, payload], got {len(parts)}"
            )
        payload = _buffer(parts[1])
        dtype = header.wire_dtype
        rows, cols = header.shape
        expected = header.count * rows * cols * dtype.itemsize
        if payload.nbytes != expected:
            raise ProtocolError(
                "payload_size_mismatch",
                f"frames.payload: expected {header.count}x{rows}x{cols}"
                f"x{dtype.itemsize} = {expected} bytes, got {payload.nbytes}",
            )
        data = np.frombuffer(payload, dtype=dtype).reshape(header.count, rows, cols)
        data.flags.writeable = False  # also when the part was a writable bytearray
        return FramesMessage(header=header, data=data)
    if len(parts) != 1:
        raise ProtocolError(
            "wrong_part_count", f"{header.type}: expected 1 part (header only), got {len(parts)}"
        )
    return header


def frames_claimed(parts: list[Any], limits: Limits = Limits()) -> int:
    """How many frames a rejected message said it carried, for the accounting: the
    ``count`` of a header that unpacks to a ``frames`` map, whatever else was wrong with it
    (a float64 dtype, a bogus ``image_key``, a frame over the size limit, a payload of the
    wrong size). 0 when the header does not unpack or its ``count`` is not an integer in
    ``1 … max_frames_per_message`` (an absurd claim is not believed)."""
    if not parts:
        return 0
    try:
        obj = _unpack_header(_buffer(parts[0]), limits)
    except (ProtocolError, TypeError):
        return 0
    count = obj.get("count")
    if obj.get("type") != "frames" or type(count) is not int:
        return 0
    return count if 1 <= count <= limits.max_frames_per_message else 0


def _buffer(part: Any) -> memoryview:
    if isinstance(part, bytes | bytearray | memoryview):
        view = memoryview(part)
    else:
        buffer = getattr(part, "buffer", None)  # zmq.Frame received with copy=False
        if buffer is None:
            raise TypeError(
                f"message part: expected bytes or zmq.Frame, got {type(part).__name__}"
            )
        view = memoryview(buffer)
    # A flat byte view (no copy), so that len() counts bytes even for a typed or
    # multi-dimensional memoryview such as ndarray.data.
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def encode_header(header: _Header) -> bytes:
    """Pack a header model as msgpack (``None`` fields are left out)."""
    return msgpack.packb(header.model_dump(mode="python", exclude_none=True))


def encode_frames(header: FramesHeader, data: npt.NDArray[Any]) -> list[Any]:
    """Build the two parts of a ``frames`` message; the payload is ``data``'s own buffer.

    ``data`` must be C-contiguous with shape ``(count, rows, cols)`` and the header's dtype.
    """
    expected_shape = (header.count, *header.shape)
    if data.shape != expected_shape:
        raise ProtocolError("bad_frames", f"data: expected shape {expected_shape}, "
                            f"got {data.shape}")
    if data.dtype != header.wire_dtype:
        raise ProtocolError("bad_frames", f"data: expected dtype {header.wire_dtype}, "
                            f"got {data.dtype}")
    if not data.flags.c_contiguous:
        raise ProtocolError("bad_frames", "data: expected a C-contiguous array")
    return [encode_header(header), data.data.cast("B")]


def wire_dtype_name(dtype: npt.DTypeLike) -> str:
    """Return the protocol name of ``dtype`` or raise naming the allowed ones."""
    resolved = np.dtype(dtype)
    for name, wire in WIRE_DTYPES.items():
        if resolved == wire:  # byte order included: big-endian data is refused, not swapped
            return name
    got = resolved.name
    if resolved.str.startswith(">"):  # also a native dtype on a big-endian host
        got = f"big-endian {got} {resolved.str!r} (convert with .astype('<{resolved.str[1:]}'))"
    raise ProtocolError(
        "invalid_field",
        f"dtype: expected one of {'|'.join(WIRE_DTYPES)} (little-endian), got {got}",
    )


def json_schema() -> dict[str, Any]:
    """JSON schema of every header type, as published in docs/reference."""
    messages = {}
    for name, model in _MODELS.items():
        schema = model.model_json_schema()
        # ``v`` and ``type`` have defaults for building headers in Python, but a header on the
        # wire without them is refused (unsupported_version, unknown_type): publish as required.
        schema["required"] = ["v", "type", *schema.get("required", [])]
        messages[name] = schema
    return {
        "title": "tomo-streamer wire protocol headers",
        "protocol_version": PROTOCOL_VERSION,
        "messages": messages,
    }


def main() -> None:
    """Write the JSON schema to stdout: ``python -m streamer.wire.protocol > schema.json``."""
    json.dump(json_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

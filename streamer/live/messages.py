"""The live feed's messages: ``[msgpack header, raw image bytes]``, validated before use.

The live feed (:mod:`streamer.live.feed`) publishes a scan's progress on a ZeroMQ PUB socket and
answers requests on a control socket (REP). This module is the one place where those
messages are defined, encoded and decoded, shared by the publisher, the Python client
(:mod:`streamer.live.client`) and the web viewer (:mod:`streamer.live.viewer`):

* every header is a msgpack map with the feed version ``v``, a ``type``, a per-publisher
  sequence number ``seq`` (a subscriber finds the messages it lost from the gaps), the
  send time ``t`` and the ``scan`` id;
* images never go through msgpack: a message with images has a second part holding them
  one after the other, C-ordered little-endian ``float32`` or ``uint8``; the header lists
  each image's name, shape and display window;
* decoding follows the wire protocol's rules (:mod:`streamer.wire.protocol`): the header size is
  bounded before unpacking, extension types are refused, the fields are validated strictly
  (pydantic), sizes are checked against :class:`FeedLimits`, and the payload length must
  equal what the header announces before any array is made (a view, never a copy).

Field-by-field reference: ``docs/reference/protocol.md``, section "Live feed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgpack
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamer.errors import ProtocolError
from streamer.wire.protocol import ScanId

FEED_VERSION: Final = 1
#: The most CoR values one sweep may ask for (±5 px in 0.25 px steps).
MAX_SWEEP_CENTERS: Final = 41
#: The most images one message may carry (preview rows, sweep centres, cuts).
MAX_IMAGES: Final = 64
MAX_EDGE: Final = 8192
MAX_TEXT: Final = 1024

ImageDtype = Literal["float32", "uint8"]
IMAGE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "float32": np.dtype("<f4"),
    "uint8": np.dtype("|u1"),
}

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=10_000_000_000)]
Edge = Annotated[int, Field(ge=1, le=MAX_EDGE)]
DetectorIndex = Annotated[int, Field(ge=0, le=65535)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


@dataclass(frozen=True)
class FeedLimits:
    """Bounds applied to every feed message before anything is allocated for it.

    Parameters
    ----------
    max_header_bytes : int
        Largest msgpack header accepted.
    max_pixels : int
        Most pixels in one message, all images together (64 Mi: 256 MiB of float32).
    """

    max_header_bytes: int = 64 * 1024
    max_pixels: int = 64 * 1024**2

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FeedLimits.{name}: expected a positive integer, got {value!r}")

    @property
    def max_message_bytes(self) -> int:
        """Largest multipart message (header + payload): for the socket's ``MAXMSGSIZE``."""
        return self.max_header_bytes + 4 * self.max_pixels


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Counts(_Model):
    """Frames per image key."""

    projections: Count = 0
    flats: Count = 0
    darks: Count = 0

    @property
    def total(self) -> int:
        return self.projections + self.flats + self.darks


class Rates(_Model):
    """Frames per second over the last counters interval."""

    received_fps: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    processed_fps: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    previewed_fps: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class Dropped(_Model):
    """What the feed itself dropped (never the pipeline's data: only its own copies)."""

    #: Projections whose preview rows did not fit the feed's memory budget.
    preview_rows: Count = 0
    #: Final slices that did not fit the feed's memory budget.
    slices: Count = 0
    #: Preview versions replaced by a newer one before they were sent (latest wins).
    previews: Count = 0
    #: Messages the PUB socket refused (it never blocks; normally 0).
    messages: Count = 0


class ImageSpec(_Model):
    """One image of a message's payload."""

    name: Annotated[str, Field(max_length=64)]
    shape: tuple[Edge, Edge]
    #: Display window ``[low, high]``: for ``uint8`` the window the values were mapped
    #: from (0 → low, 255 → high); for ``float32`` a suggestion (0.5th and 99.5th
    #: percentiles).
    window: tuple[FiniteFloat, FiniteFloat]

    @field_validator("shape", "window", mode="before")
    @classmethod
    def _tuple_from_array(cls, value: Any) -> Any:
        # msgpack has no tuple: a pair arrives as a list; the items stay strictly validated.
        return tuple(value) if isinstance(value, list) else value

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]


class _FeedHeader(_Model):
    v: Literal[1] = FEED_VERSION
    #: Per-publisher message number (0 in control replies): a gap means lost messages.
    seq: Count = 0
    #: Publisher's wall clock when the message was sent (Unix seconds).
    t: FiniteFloat = 0.0
    scan: ScanId | None = None


class ScanStartHeader(_FeedHeader):
    """``scan_start``: a scan opened; what its previews will look like."""

    type: Literal["scan_start"] = "scan_start"
    rows: Annotated[int, Field(ge=1, le=65536)]
    cols: Annotated[int, Field(ge=1, le=65536)]
    projections: Count
    flats: Count
    darks: Count
    #: Detector rows reconstructed in the preview.
    preview_rows: Annotated[list[DetectorIndex], Field(min_length=1, max_length=16)]
    #: Detector columns averaged into one preview pixel.
    binning: Annotated[int, Field(ge=1, le=4096)]
    #: Edge of the square preview images, pixels.
    preview_size: Edge
    #: CoR the preview uses, 0-based detector column, and how it was decided
    #: (``pipeline``, ``scan start``, or ``detector middle`` until the scan's CoR is known).
    center: FiniteFloat
    center_method: Text | None = None
    source: Text = ""
    #: How far the previewed projections are corrected (``after normalize``; ``as
    #: received``), and the projection steps they have not been through, which the
    #: reconstruction applies (R ranks run a halo step and those after it on their
    #: bands: :mod:`streamer.live.preview_stage`). ``None``: not said (an older feed).
    preview_stage: Text | None = None
    preview_not_applied: Annotated[list[Text], Field(max_length=256)] = []


class CountersHeader(_FeedHeader):
    """``counters``: the accounting of the open (or last) scan, about once a second."""

    type: Literal["counters"] = "counters"
    state: Literal["open", "reconstructing", "closed"]
    expected: Counts
    received: Counts
    duplicate: Count = 0
    out_of_range: Count = 0
    #: Frames rejected so far (by reason in the run report).
    rejected: Count = 0
    #: Frames never received: known when the scan has closed, ``None`` before.
    missing: Counts | None = None
    #: Projections corrected by the pipeline.
    processed: Count = 0
    #: Projections back-projected into the preview.
    previewed: Count = 0
    elapsed_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    rates: Rates = Rates()
    dropped: Dropped = Dropped()
    #: CoR the preview uses (or the reconstruction used, once closed).
    center: FiniteFloat | None = None
    center_method: Text | None = None
    complete: bool | None = None


class _ImagesHeader(_FeedHeader):
    dtype: ImageDtype
    images: Annotated[list[ImageSpec], Field(min_length=1, max_length=MAX_IMAGES)]

    @property
    def image_dtype(self) -> np.dtype[Any]:
        return IMAGE_DTYPES[self.dtype]

    @property
    def payload_bytes(self) -> int:
        return sum(spec.pixels for spec in self.images) * self.image_dtype.itemsize


class PreviewHeader(_ImagesHeader):
    """``preview``: the preview slices so far, one image per preview row."""

    type: Literal["preview"] = "preview"
    rows: Annotated[list[DetectorIndex], Field(min_length=1, max_length=16)]
    #: Projections back-projected into these images, of ``expected``.
    projections: Count
    expected: Count
    center: FiniteFloat
    #: How ``center`` was decided: ``pipeline``, ``scan start``, ``detector middle``
    #: (until the scan's CoR is known), the finder (``vo`` …) or ``user (viewer)``.
    center_method: Text | None = None
    binning: Annotated[int, Field(ge=1, le=4096)]
    #: Frame index of the newest projection in the preview, and when the pipeline handed
    #: it to the feed (Unix seconds): for latency figures.
    newest_frame: Count | None = None
    newest_at: FiniteFloat | None = None
    #: As ``scan_start``'s ``preview_stage`` and ``preview_not_applied``: what the
    #: back-projected frames have been through (a viewer that joins late learns it here).
    stage: Text | None = None
    not_applied: Annotated[list[Text], Field(max_length=256)] = []

    @model_validator(mode="after")
    def _one_image_per_row(self) -> PreviewHeader:
        if len(self.images) != len(self.rows):
            raise ValueError(f"images has {len(self.images)} entries, expected one per row "
                             f"({len(self.rows)})")
        return self


class SliceHeader(_ImagesHeader):
    """``slice``: one final (reconstructed) slice, binned like the preview."""

    type: Literal["slice"] = "slice"
    #: Slice index = detector row of the scan.
    index: DetectorIndex
    #: The band of slices just finished ``[first, last)`` (a published slice) or the
    #: slices the feed holds (a ``slice`` control reply).
    band: tuple[DetectorIndex, Annotated[int, Field(ge=1, le=65536)]]
    binning: Annotated[int, Field(ge=1, le=4096)]
    #: The CoR the slice was reconstructed at, and how it was decided.
    center: FiniteFloat | None = None
    center_method: Text | None = None

    @field_validator("band", mode="before")
    @classmethod
    def _band_from_array(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class CutsHeader(_ImagesHeader):
    """``cuts``: three orthogonal cuts through the middle of the finished volume."""

    type: Literal["cuts"] = "cuts"
    #: Slice index of the ``xy`` cut.
    index: DetectorIndex
    #: The ``xz`` and ``yz`` cuts hold every ``slice_stride``-th slice.
    slice_stride: Annotated[int, Field(ge=1, le=65536)]
    binning: Annotated[int, Field(ge=1, le=4096)]

    @model_validator(mode="after")
    def _three_cuts(self) -> CutsHeader:
        if [spec.name for spec in self.images] != ["xy", "xz", "yz"]:
            raise ValueError("images: expected the cuts 'xy', 'xz', 'yz' in this order, got "
                             f"{[spec.name for spec in self.images]}")
        return self


class LatencySpread(_Model):
    """p50/p95/max of a set of latencies (seconds) and how many there were."""

    count: Count
    p50_s: FiniteFloat | None = None
    p95_s: FiniteFloat | None = None
    max_s: FiniteFloat | None = None


class ScanLatency(_Model):
    """A scan's latency figures (as in the run report's ``latency``)."""

    frame_to_preview: LatencySpread
    last_frame_to_volume_s: FiniteFloat | None = None
    reconstruction: Literal["streaming", "at close"]


class ScanEndHeader(_FeedHeader):
    """``scan_end``: the scan closed and its volume is written (or could not be)."""

    type: Literal["scan_end"] = "scan_end"
    status: Literal["complete", "incomplete", "aborted"]
    complete: bool
    close_reason: Text = ""
    expected: Counts
    received: Counts
    missing: Counts
    duplicate: Count = 0
    rejected: Count = 0
    center: FiniteFloat | None = None
    center_method: Text | None = None
    #: Where the volume was written, if it was.
    output: Text | None = None
    error: Text | None = None
    #: frame received → preview published, last frame → volume complete (seconds).
    latency: ScanLatency | None = None
    #: A pipeline with a kernel across frames: projections corrected before all their
    #: neighbours had arrived (a frame lost or late), summed over the ranks.
    corrected_without_neighbours: Count | None = None


class CorSweepHeader(_ImagesHeader):
    """``cor_sweep``: one preview row reconstructed at several CoR values."""

    type: Literal["cor_sweep"] = "cor_sweep"
    #: Number of the request this answers (from the control reply).
    sweep: Count
    row: DetectorIndex
    centers: Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_SWEEP_CENTERS)]
    #: Projections used (a sweep over many projections uses every k-th one).
    angles_used: Count
    binning: Annotated[int, Field(ge=1, le=4096)]

    @model_validator(mode="after")
    def _one_image_per_center(self) -> CorSweepHeader:
        if len(self.images) != len(self.centers):
            raise ValueError(f"images has {len(self.images)} entries, expected one per centre "
                             f"({len(self.centers)})")
        return self


class HelloHeader(_FeedHeader):
    """``hello``: published when a subscriber joins, so that it knows its subscription is
    active (every later message reaches it); clients take it and hand out nothing."""

    type: Literal["hello"] = "hello"


FeedHeader = (ScanStartHeader | CountersHeader | PreviewHeader | SliceHeader | CutsHeader
              | ScanEndHeader | CorSweepHeader | HelloHeader)
HEADER_MODELS: Final[dict[str, type[_FeedHeader]]] = {
    "hello": HelloHeader,
    "scan_start": ScanStartHeader,
    "counters": CountersHeader,
    "preview": PreviewHeader,
    "slice": SliceHeader,
    "cuts": CutsHeader,
    "scan_end": ScanEndHeader,
    "cor_sweep": CorSweepHeader,
}


# --- control requests ------------------------------------------------------------------


class _Request(_Model):
    v: Literal[1] = FEED_VERSION
    #: Required when the feed was given a token (always when control is bound off-host).
    token: Annotated[str, Field(max_length=256)] | None = None


class CorSweepRequest(_Request):
    """Reconstruct one preview row at ``center ± half_width`` in ``step`` px steps."""

    type: Literal["cor_sweep"] = "cor_sweep"
    #: Middle of the sweep, 0-based detector column; ``None``: the preview's CoR.
    center: FiniteFloat | None = None
    half_width: Annotated[float, Field(gt=0, le=50, allow_inf_nan=False)] = 5.0
    step: Annotated[float, Field(ge=0.05, le=50, allow_inf_nan=False)] = 0.5
    #: Detector row (one of the preview rows); ``None``: the middle preview row.
    row: DetectorIndex | None = None

    @model_validator(mode="after")
    def _bounded(self) -> CorSweepRequest:
        count = sweep_count(self.half_width, self.step)
        if count > MAX_SWEEP_CENTERS:
            raise ValueError(
                f"half_width {self.half_width} in steps of {self.step} gives {count} centres, "
                f"at most {MAX_SWEEP_CENTERS}"
            )
        return self

    def centers(self, middle: float) -> list[float]:
        """The CoR values of the sweep around ``middle`` (symmetric, ``middle`` included)."""
        half = (sweep_count(self.half_width, self.step) - 1) // 2
        return [middle + self.step * i for i in range(-half, half + 1)]


class SetCenterRequest(_Request):
    """Use ``value`` as the CoR of the running scan (its reconstruction and preview)."""

    type: Literal["set_center"] = "set_center"
    value: FiniteFloat
    #: If given, the request applies only to this scan.
    scan: ScanId | None = None


class SliceRequest(_Request):
    """Send back final slice ``index`` (the nearest one the feed holds)."""

    type: Literal["slice"] = "slice"
    index: DetectorIndex


class StateRequest(_Request):
    """Send back the scan's ``scan_start`` and latest ``counters`` (for late joiners)."""

    type: Literal["state"] = "state"


class CutsRequest(_Request):
    """Send back the last scan's cuts (for a subscriber that missed the ``cuts``)."""

    type: Literal["cuts"] = "cuts"


ControlRequest = (CorSweepRequest | SetCenterRequest | SliceRequest | StateRequest
                  | CutsRequest)
REQUEST_MODELS: Final[dict[str, type[_Request]]] = {
    "cor_sweep": CorSweepRequest,
    "set_center": SetCenterRequest,
    "slice": SliceRequest,
    "state": StateRequest,
    "cuts": CutsRequest,
}
MAX_REQUEST_BYTES: Final = 4096


def sweep_count(half_width: float, step: float) -> int:
    """Number of centres of a sweep: ``2·floor(half_width/step) + 1``."""
    return 2 * math.floor(half_width / step + 1e-9) + 1


# --- encoding ----------------------------------------------------------------------------


def encode(header: _FeedHeader, images: list[npt.NDArray[Any]] | None = None) -> list[Any]:
    """The parts of one message: the header, then the images' bytes if there are any.

    ``images`` must match the header's ``images`` (shapes) and ``dtype``; they are
    concatenated into one payload part (a copy: they are small, at most a few MiB).
    """
    head = msgpack.packb(header.model_dump(mode="python", exclude_none=True))
    if not isinstance(header, _ImagesHeader):
        if images:
            kind = getattr(header, "type", "?")
            raise ValueError(f"{kind}: carries no images, got {len(images)}")
        return [head]
    arrays = images or []
    if len(arrays) != len(header.images):
        raise ValueError(f"images: expected {len(header.images)}, got {len(arrays)}")
    for spec, array in zip(header.images, arrays, strict=True):
        if array.shape != spec.shape or array.dtype != header.image_dtype:
            raise ValueError(f"image {spec.name!r}: expected {spec.shape} {header.dtype}, got "
                             f"{array.shape} {array.dtype}")
    payload = b"".join(np.ascontiguousarray(array).tobytes() for array in arrays)
    return [head, payload]


def pack_request(request: _Request) -> bytes:
    """One control request, msgpack-encoded."""
    return msgpack.packb(request.model_dump(mode="python", exclude_none=True))


# --- decoding ----------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension types are not allowed (got ext type {code})")


def unpack_map(raw: bytes | memoryview, max_bytes: int, what: str) -> dict[str, Any]:
    """Unpack one bounded msgpack map (no extension types) or raise ``ProtocolError``."""
    size = len(raw)
    if size > max_bytes:
        raise ProtocolError("header_too_large",
                            f"{what}: expected at most {max_bytes} bytes, got {size}")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(
            "malformed_header",
            f"{what}: expected one msgpack map, got {size} bytes that do not unpack "
            f"({type(exc).__name__})",
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed_header",
                            f"{what}: expected a msgpack map, got {type(obj).__name__}")
    return obj


def _validated(obj: dict[str, Any], models: dict[str, type[_Model]], what: str) -> Any:
    version = obj.get("v")
    if type(version) is not int or version != FEED_VERSION:
        raise ProtocolError("unsupported_version",
                            f"{what}.v: expected feed version {FEED_VERSION}, got {version!r:.40}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in models:
        raise ProtocolError("unknown_type",
                            f"{what}.type: expected one of {'|'.join(models)}, got {kind!r:.40}")
    try:
        return models[kind].model_validate(obj, strict=True)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            problems.append(f"{kind}.{where}: {error['msg']}" if where
                            else f"{kind}: {error['msg']}")
        raise ProtocolError("invalid_field", "; ".join(problems)) from None


def decode_header(raw: bytes | memoryview, limits: FeedLimits = FeedLimits()) -> FeedHeader:
    """Validate one feed header part (version, type, every field, size limits)."""
    obj = unpack_map(raw, limits.max_header_bytes, "header")
    header: FeedHeader = _validated(obj, HEADER_MODELS, "header")  # type: ignore[arg-type]
    if isinstance(header, _ImagesHeader):
        pixels = sum(spec.pixels for spec in header.images)
        if pixels > limits.max_pixels:
            raise ProtocolError(
                "message_too_large",
                f"{header.type}.images: {pixels} pixels in all, the limit is {limits.max_pixels}",
            )
    return header


def decode_images(
    header: FeedHeader, parts: list[Any]
) -> tuple[npt.NDArray[Any], ...]:
    """The images of a validated header, viewed in place (read-only) in its payload part."""
    if not isinstance(header, _ImagesHeader):
        if len(parts) != 1:
            raise ProtocolError("wrong_part_count",
                                f"{header.type}: expected 1 part (header only), got {len(parts)}")
        return ()
    if len(parts) != 2:
        raise ProtocolError("wrong_part_count",
                            f"{header.type}: expected 2 parts [header, images], got {len(parts)}")
    payload = as_bytes_view(parts[1])
    expected = header.payload_bytes
    if payload.nbytes != expected:
        raise ProtocolError(
            "payload_size_mismatch",
            f"{header.type}.payload: expected {expected} bytes for "
            f"{[list(s.shape) for s in header.images]} {header.dtype}, got {payload.nbytes}",
        )
    flat = np.frombuffer(payload, dtype=header.image_dtype)
    flat.flags.writeable = False
    images = []
    offset = 0
    for spec in header.images:
        images.append(flat[offset:offset + spec.pixels].reshape(spec.shape))
        offset += spec.pixels
    return tuple(images)


def decode_request(raw: bytes | memoryview) -> ControlRequest:
    """Validate one control request (at most :data:`MAX_REQUEST_BYTES`)."""
    obj = unpack_map(raw, MAX_REQUEST_BYTES, "request")
    request: ControlRequest = _validated(obj, REQUEST_MODELS, "request")  # type: ignore[arg-type]
    return request


def as_bytes_view(part: Any) -> memoryview:
    """A flat byte view of a message part (``bytes`` or a ``zmq.Frame``), no copy."""
    if isinstance(part, bytes | bytearray | memoryview):
        view = memoryview(part)
    else:
        buffer = getattr(part, "buffer", None)
        if buffer is None:
            raise TypeError(f"message part: expected bytes or zmq.Frame, got {type(part).__name__}")
        view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")

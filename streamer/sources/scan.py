"""What every source streams from: a scan layout and a reader of frames by index.

Stored-scan loaders (``streamer.sources.formats``) and the simulator both implement
:class:`FrameReader`, so the sender, the recorder and the tests treat them alike. Frame
indices are *stream order*: darks and flats kept in separate datasets or files are put
before the projections (as a detector sends them), interleaved NeXus files keep their
file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamer.errors import ScanFormatError
from streamer.wire.protocol import (
    IMAGE_KEY_DARK,
    IMAGE_KEY_FLAT,
    IMAGE_KEY_PROJECTION,
    WIRE_DTYPES,
    Geometry,
    MetadataValue,
    Normalisation,
    wire_dtype_name,
)


@dataclass(frozen=True)
class ScanLayout:
    """Everything a receiver needs to know about a scan before its frames arrive.

    Parameters
    ----------
    rows, cols : int
        Frame shape after any row crop.
    dtype : numpy.dtype
        Pixel type; one of the wire dtypes (``uint8|uint16|uint32|float32``).
    image_keys : ndarray of shape (frames,), int8
        NeXus image_key per frame in stream order (0 projection, 1 flat, 2 dark).
    angles_deg : ndarray of shape (frames,), float64
        Rotation angle per frame, degrees (references carry the angle the file gives, or 0).
    normalisation : {'flat_dark', 'air', 'none'}
        See :class:`streamer.wire.protocol.StartHeader`.
    geometry : Geometry
        Optional geometry (scan range, CoR, pixel size …).
    source : str
        Human-readable origin, e.g. ``replay:tooth.h5``.
    metadata : dict
        Small scalar metadata forwarded in ``start``.
    """

    rows: int
    cols: int
    dtype: np.dtype[Any]
    image_keys: npt.NDArray[np.int8]
    angles_deg: npt.NDArray[np.float64]
    normalisation: Normalisation
    geometry: Geometry = field(default_factory=Geometry)
    source: str = ""
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ScanFormatError(f"scan: expected rows, cols >= 1, got {self.rows}x{self.cols}")
        wire_dtype_name(self.dtype)  # raises with the allow-list if not a wire dtype
        keys = np.asarray(self.image_keys)
        angles = np.asarray(self.angles_deg)
        if keys.ndim != 1 or angles.shape != keys.shape:
            raise ScanFormatError(
                f"scan: image_keys and angles must be 1-D of equal length, got "
                f"{keys.shape} and {angles.shape}"
            )
        bad = ~np.isin(keys, (IMAGE_KEY_PROJECTION, IMAGE_KEY_FLAT, IMAGE_KEY_DARK))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ScanFormatError(
                f"scan: image_key must be 0, 1 or 2, got {int(keys[first])} at frame {first}"
            )
        if not np.all(np.isfinite(angles)):
            first = int(np.flatnonzero(~np.isfinite(angles))[0])
            raise ScanFormatError(f"scan: angle of frame {first} is not finite ({angles[first]})")
        if self.normalisation == "flat_dark" and self.flats == 0:
            raise ScanFormatError("scan: normalisation 'flat_dark' needs flat frames, found none")

    @property
    def frames(self) -> int:
        return int(self.image_keys.shape[0])

    @property
    def projections(self) -> int:
        return int(np.count_nonzero(self.image_keys == IMAGE_KEY_PROJECTION))

    @property
    def flats(self) -> int:
        return int(np.count_nonzero(self.image_keys == IMAGE_KEY_FLAT))

    @property
    def darks(self) -> int:
        return int(np.count_nonzero(self.image_keys == IMAGE_KEY_DARK))

    @property
    def dtype_name(self) -> str:
        return wire_dtype_name(self.dtype)

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.dtype.itemsize


class FrameReader(Protocol):
    """A scan that can be read in blocks of consecutive frames (stream order)."""

    @property
    def layout(self) -> ScanLayout: ...

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Frames ``start … stop-1`` as a C-contiguous ``ndarray of shape (stop-start,
        rows, cols)`` of ``layout.dtype`` (little-endian)."""
        ...

    def close(self) -> None: ...


def check_block(layout: ScanLayout, start: int, stop: int) -> None:
    """Raise ``ScanFormatError`` unless ``0 <= start < stop <= layout.frames``."""
    if not 0 <= start < stop <= layout.frames:
        raise ScanFormatError(
            f"read: expected 0 <= start < stop <= {layout.frames}, got start={start}, stop={stop}"
        )


def as_wire_array(data: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Return ``data`` as a C-contiguous little-endian array of the wire ``dtype``."""
    target = WIRE_DTYPES[wire_dtype_name(dtype)]
    return np.ascontiguousarray(data, dtype=target)

"""Stream NumPy arrays already in memory (from a notebook, a test, another program)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import ScanFormatError
from streamer.sources.scan import ScanLayout, as_wire_array, check_block
from streamer.wire.protocol import Geometry, MetadataValue, Normalisation


class ArrayScan:
    """A :class:`~streamer.sources.scan.FrameReader` over an in-memory stack.

    Parameters
    ----------
    frames : ndarray of shape (frames, rows, cols)
        Pixels in stream order, of a wire dtype (``uint8|uint16|uint32|float32``).
    image_keys : array_like of shape (frames,)
        0 projection, 1 flat, 2 dark.
    angles_deg : array_like of shape (frames,)
        Rotation angle per frame, degrees.
    normalisation : {'flat_dark', 'air', 'none'}, optional
        Default: ``flat_dark`` when there are flats, else ``air``.
    """

    def __init__(
        self,
        frames: npt.NDArray[Any],
        image_keys: npt.ArrayLike,
        angles_deg: npt.ArrayLike,
        *,
        normalisation: Normalisation | None = None,
        geometry: Geometry | None = None,
        source: str = "memory",
        metadata: dict[str, MetadataValue] | None = None,
    ) -> None:
        if frames.ndim != 3:
            raise ScanFormatError(
                f"frames: expected a 3-D (frames, rows, cols) array, got {frames.shape}"
            )
        keys = np.asarray(image_keys, dtype=np.int8)
        if normalisation is None:
            normalisation = "flat_dark" if np.any(keys == 1) else "air"
        self._layout = ScanLayout(
            rows=frames.shape[1],
            cols=frames.shape[2],
            dtype=frames.dtype,
            image_keys=keys,
            angles_deg=np.asarray(angles_deg, dtype=np.float64),
            normalisation=normalisation,
            geometry=geometry or Geometry(),
            source=source,
            metadata=dict(metadata or {}),
        )
        if keys.shape[0] != frames.shape[0]:
            raise ScanFormatError(
                f"image_keys: expected {frames.shape[0]} entries (one per frame), "
                f"got {keys.shape[0]}"
            )
        self._frames = as_wire_array(frames, self._layout.dtype)

    @property
    def layout(self) -> ScanLayout:
        return self._layout

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        check_block(self._layout, start, stop)
        return self._frames[start:stop]

    def close(self) -> None:
        """Nothing to release (the arrays belong to the caller)."""

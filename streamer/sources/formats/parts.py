"""A run of stream frames from one segment, with their image_keys and angles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.sources.formats.angles import Float64Array
from streamer.sources.formats.segments import Segment


@dataclass(frozen=True)
class Part:
    """Consecutive stream frames read from one segment.

    Attributes
    ----------
    segment : Segment
        Where the frames are stored.
    keys : ndarray of int8, shape (segment.count,)
        image_key of each frame.
    angles : ndarray of float64 or None
        Angle of each frame in degrees, or None when the file gives none.
    angles_from : str
        Where the angles came from (``file:dataset``), for messages.
    """

    segment: Segment
    keys: npt.NDArray[np.int8]
    angles: Float64Array | None = None
    angles_from: str = ""


def keys_like(count: int, key: int) -> npt.NDArray[np.int8]:
    """``count`` frames of one image_key."""
    return np.full(count, key, dtype=np.int8)

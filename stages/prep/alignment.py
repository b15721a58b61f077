"""TomoPy's ``tomopy.prep.alignment.shift_images``: each projection moved by its own
``(sx, sy)``.

TomoPy warps projection ``m`` with scikit-image's ``SimilarityTransform(translation=(sy[m],
sx[m]))`` as the inverse map, order 5, constant 0 outside, output clipped to the
projection's range (widened to 0): output ``[r, c]`` = input ``[r + sx[m], c + sy[m]]``
(the image moves up by ``sx`` rows and left by ``sy`` columns; TomoPy's names). Its
``scale`` round trip (divide by the block's largest magnitude, multiply back) changes
nothing but rounding. Here: ``scipy.ndimage.shift`` by ``(-sx, -sy)`` with the same
quintic spline (prefiltered), ``grid-constant`` 0 (what scikit-image passes to SciPy for
``constant``) and the same clip.

``m`` is the frame's number among the scan's projections (darks and flats not counted),
so the lists are indexed as TomoPy indexes its array, whatever the blocks; a projection
beyond the lists is an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from stages.backends.xp import array_module, ndimage_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "shift_images"]


class ShiftImagesParams(StageParams):
    """``tomopy.prep.alignment.shift_images`` (template: ``sx``, ``sy`` required)."""

    sx: tuple[float, ...] = Field(min_length=1, description="row shift per projection")
    sy: tuple[float, ...] = Field(min_length=1, description="column shift per projection")

    @model_validator(mode="after")
    def _same_length(self) -> ShiftImagesParams:
        if len(self.sx) != len(self.sy):
            raise ValueError(f"sy: expected one value per projection as sx ({len(self.sx)}), "
                             f"got {len(self.sy)}")
        if not all(np.isfinite(self.sx)) or not all(np.isfinite(self.sy)):
            raise ValueError("sx, sy: expected finite shifts, got NaN or inf")
        return self


def shift_images(block: npt.NDArray[Any], *, sx: tuple[float, ...], sy: tuple[float, ...],
                 projection_indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Shift each projection of ``(angles, rows, cols)`` by its ``(sx, sy)`` (module notes).

    Raises
    ------
    StageError
        If a frame's projection number has no shift in the lists.
    """
    stage = "shift_images"
    data = float_block(block, stage)
    numbers = np.asarray(projection_indices, dtype=np.int64)
    if numbers.shape != (data.shape[0],):
        raise StageError(f"stage {stage!r}: expected one projection number per frame "
                         f"({data.shape[0]}), got {numbers.shape}")
    if numbers.size and (numbers.min() < 0 or numbers.max() >= len(sx)):
        raise StageError(f"stage {stage!r}: sx, sy: expected a shift for every projection, "
                         f"got {len(sx)} for projection number {int(numbers.max())}")
    xp = array_module(data)
    ndimage = ndimage_module(xp)
    out: npt.NDArray[np.float32] = xp.empty_like(data)
    for i, m in enumerate(numbers.tolist()):
        frame = data[i]
        moved = ndimage.shift(frame.astype(xp.float64), (-sx[m], -sy[m]), order=5,
                              mode="grid-constant", cval=0.0, prefilter=True)
        low, high = min(float(frame.min()), 0.0), max(float(frame.max()), 0.0)
        out[i] = xp.clip(moved, low, high)
    return out


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="shift_images", fn=shift_images, pattern=Pattern.PROJECTION,
        angle_local=True,  # each frame by its own shift
        needs_projection_indices=True,
        params=ShiftImagesParams,
        memory=scaled_memory(3.0),  # input, float32 copy, output (+ one float64 frame)
        summary="shift each projection by its own (sx, sy), quintic spline (TomoPy)",
        aliases=("tomopy.prep.alignment.shift_images",), device=True,
    ),
)

"""TomoPy's ``tomopy.prep.normalize.normalize_roi``: each projection divided by the mean
of a window of itself.

``roi: [top, left, bottom, right]`` selects ``frame[top:bottom, left:right]`` (TomoPy's
``proj[roi[0]:roi[2], roi[1]:roi[3]]``; its docstring's "corner" names do not match its
code, the code is followed). A frame whose window mean is 0 is left as it is, as in
TomoPy, but never silently: its pixel values are counted in the scan's repair counts
(``roi_mean_zero``), so the run's report and warning show them. A window outside the
frame or empty (TomoPy: a NaN mean, then a frame of NaN) is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.prep.repair import RepairCounts
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["ROI_MEAN_ZERO", "SPECS", "normalize_roi"]

#: Repair-count key: pixel values of frames left unnormalised (window mean 0).
ROI_MEAN_ZERO = "roi_mean_zero"


class NormalizeRoiParams(StageParams):
    """``tomopy.prep.normalize.normalize_roi`` (template: ``roi: [0, 0, 10, 10]``)."""

    roi: tuple[int, int, int, int] = Field(
        default=(0, 0, 10, 10), description="[top, left, bottom, right] of the window")

    @field_validator("roi")
    @classmethod
    def _ordered(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        top, left, bottom, right = value
        if not (0 <= top < bottom and 0 <= left < right):
            raise ValueError(f"expected 0 <= top < bottom and 0 <= left < right, got "
                             f"{list(value)}")
        return value


def normalize_roi(block: npt.NDArray[Any], *, roi: tuple[int, int, int, int] = (0, 0, 10, 10),
                  repairs: RepairCounts | None = None) -> npt.NDArray[np.float32]:
    """Divide each frame of a projection block by the mean of its ``roi`` window.

    Raises
    ------
    StageError
        If the window is empty or reaches outside the frame.
    """
    stage = "normalize_roi"
    data = float_block(block, stage)
    top, left, bottom, right = (int(v) for v in roi)
    rows, cols = data.shape[1:]
    if not (0 <= top < bottom <= rows and 0 <= left < right <= cols):
        raise StageError(f"stage {stage!r}: roi: expected a window inside the {rows}×{cols} "
                         f"frame (0 <= top < bottom <= {rows}, 0 <= left < right <= {cols}), "
                         f"got {[top, left, bottom, right]}")
    xp = array_module(data)
    means = data[:, top:bottom, left:right].mean(axis=(1, 2), dtype=xp.float32)
    zero = means == 0
    divisor = xp.where(zero, 1.0, means).astype(xp.float32)
    result: npt.NDArray[np.float32] = (data / divisor[:, None, None]).astype(xp.float32)
    if repairs is not None:
        repairs.add(ROI_MEAN_ZERO, int(zero.sum()) * rows * cols)
    return result


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="normalize_roi", fn=normalize_roi, pattern=Pattern.PROJECTION,
        angle_local=True,  # each frame by its own window
        params=NormalizeRoiParams, counts_repairs=True, device=True,
        memory=scaled_memory(3.0),  # input, float32 copy, result
        summary="divide each projection by the mean of a window of itself (TomoPy); "
        "frames with a zero mean are counted",
        aliases=("tomopy.prep.normalize.normalize_roi",),
    ),
)

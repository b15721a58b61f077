"""httomolib(gpu)'s ``misc.blend.seam_blend_stitched_data``: blend the seam of projections
stitched from two cameras.

The frames hold the left camera's ``seam_index`` columns followed by the right camera's,
which repeat ``overlap`` columns of the left one. The output drops the repeat: columns
before ``seam_index - overlap`` are the left image's, columns from ``seam_index`` on are
the right image's after its repeated part, and the ``overlap`` columns in between are the
linear blend ``left · (1 - w) + right · w`` with ``w = linspace(0, 1, overlap)``
(httomolibgpu's ramp). ``shift_seam_index`` moves the seam for a cropped detector
(HTTomo sets it from its ``preview``; here the user gives it). The output is ``overlap``
columns narrower, so a CoR given by hand is in the narrower frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec
from streamer.errors import StageError

__all__ = ["SPECS", "seam_blend_stitched_data"]


class SeamBlendParams(StageParams):
    """``seam_blend_stitched_data`` (template: ``overlap`` required, ``seam_index: 2560``)."""

    overlap: int = Field(ge=1, description="columns repeated by the right camera")
    seam_index: int = Field(default=2560, ge=1, description="width of the left camera")
    shift_seam_index: int | None = Field(default=None,
                                         description="columns cropped before the seam")


def seam_blend_stitched_data(
    block: npt.NDArray[Any], *, overlap: int, seam_index: int = 2560,
    shift_seam_index: int | None = None,
) -> npt.NDArray[np.float32]:
    """Blend the seam of a projection block ``(angles, rows, cols)`` (module notes).

    Raises
    ------
    StageError
        If the seam and its overlap do not lie inside the frame.
    """
    stage = "seam_blend_stitched_data"
    data = float_block(block, stage)
    cols = data.shape[2]
    seam = seam_index - (shift_seam_index or 0)
    if overlap < 1 or not (overlap <= seam and seam + overlap <= cols):
        raise StageError(f"stage {stage!r}: expected overlap <= seam and seam + overlap <= "
                         f"{cols} columns, got seam {seam} (seam_index {seam_index} - "
                         f"shift_seam_index {shift_seam_index or 0}) and overlap {overlap}")
    xp = array_module(data)
    ramp = xp.asarray(np.linspace(0.0, 1.0, overlap), dtype=xp.float32)
    out: npt.NDArray[np.float32] = xp.empty((*data.shape[:2], cols - overlap), xp.float32)
    out[:, :, : seam - overlap] = data[:, :, : seam - overlap]
    out[:, :, seam:] = data[:, :, seam + overlap:]
    out[:, :, seam - overlap: seam] = (data[:, :, seam - overlap: seam] * ramp[::-1]
                                       + data[:, :, seam: seam + overlap] * ramp)
    return out


def _memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Input, float32 copy, output (a little narrower) and the blended band."""
    return int(3 * np.prod(shape) * max(4, np.dtype(dtype).itemsize))


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="seam_blend_stitched_data", fn=seam_blend_stitched_data,
        pattern=Pattern.PROJECTION, angle_local=True,  # within each frame
        params=SeamBlendParams, memory=_memory, device=True,
        summary="blend the seam of two-camera stitched projections (httomolib/httomolibgpu)",
        aliases=("httomolib.misc.blend.seam_blend_stitched_data",
                 "httomolibgpu.misc.blend.seam_blend_stitched_data"),
    ),
)

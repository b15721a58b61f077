"""TomoPy's remaining ``tomopy.misc.corr`` filters, in its names, parameters and semantics.

* ``median_filter3d_tomopy`` (``tomopy.misc.corr.median_filter3d``): the ``size³``
  median of every voxel (``size`` below 3 is 3, an even ``size`` rounds down to the odd
  one below, as TomoPy's ``(max(size, 3) - 1) // 2`` half-width does); a neighbour
  outside the block is replaced by the voxel's own coordinate along that axis (the rule
  of TomoPy's C kernel ``median_filt3d.c``, the same as httomolibgpu's).
* ``remove_outlier3d_tomopy`` (``tomopy.misc.corr.remove_outlier3d``): the same median;
  a voxel whose distance to it is ``>= dif`` **in either direction** is replaced (the C
  kernel compares ``fabsf``); ``dif: 0`` is the plain median, as in TomoPy.
* ``remove_outlier1d`` (``tomopy.misc.corr.remove_outlier1d``): a 1-D median of
  ``size`` along one axis (``mirror`` boundary); only *bright* outliers (``value -
  median >= dif``) are replaced. Runs on sinogram blocks, where a whole sinogram is at
  hand: HTTomo's axis numbering (``0`` angles, ``1`` detector rows, ``2`` columns) is
  mapped onto our ``(rows, angles, cols)`` layout; ``axis: auto`` is ``0`` (along the
  angles: the temporal dezinger), ``1`` is refused (a sinogram block holds a few rows).
* ``median_filter_nonfinite`` (``tomopy.misc.corr.median_filter_nonfinite``): every NaN
  or ±inf pixel of a projection becomes the median of the finite values in the
  ``size × size`` window around it (clipped at the frame's edges); a window with no
  finite value is an error, as in TomoPy. Replaced values are counted in the scan's
  repair counts (``nonfinite_median``).
* ``sobel_filter`` (``tomopy.misc.corr.sobel_filter``): ``scipy.ndimage.sobel`` of each
  slice perpendicular to ``axis`` (the derivative along the slice's last axis, smoothed
  along the other; ``reflect`` boundary). Only ``axis`` 0 (each frame, HTTomo's
  ``auto``): other axes would cut slices across our projection blocks.

All return float32 (TomoPy keeps ``uint16`` input as ``uint16`` in the 3-D medians: the
values are the same, the type is not).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from stages.backends.xp import array_module, ndimage_module
from stages.checks import float_block
from stages.prep.httomo_prep import median3d
from stages.prep.repair import RepairCounts
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "median_filter3d_tomopy", "median_filter_nonfinite", "remove_outlier1d",
           "remove_outlier3d_tomopy", "sobel_filter"]

#: Repair-count key of :func:`median_filter_nonfinite`.
NONFINITE_MEDIAN = "nonfinite_median"


def tomopy_kernel(size: int) -> int:
    """The odd kernel edge TomoPy's C median uses for ``size``: ``2·((max(size, 3)-1)//2)+1``."""
    return 2 * ((max(int(size), 3) - 1) // 2) + 1


def _auto_zero(value: Any) -> Any:
    return 0 if value == "auto" else value


# ------------------------------------------------------------------ 3-D median and dezinger


class Median3dTomopyParams(StageParams):
    """``tomopy.misc.corr.median_filter3d`` (template: ``size: 3``)."""

    size: int = Field(default=3, ge=1, le=13, description="kernel edge (odd; < 3 is 3)")


def median_filter3d_tomopy(block: npt.NDArray[Any], *, size: int = 3
                           ) -> npt.NDArray[np.float32]:
    """The 3-D median of every voxel, TomoPy's kernel and edge rule (module notes)."""
    data = float_block(block, "median_filter3d_tomopy")
    return median3d(data, tomopy_kernel(size))


class Outlier3dTomopyParams(StageParams):
    """``tomopy.misc.corr.remove_outlier3d`` (template: ``dif`` required, ``size: 3``)."""

    dif: float = Field(ge=0, allow_inf_nan=False,
                       description="replace voxels at least this far from their median")
    size: int = Field(default=3, ge=1, le=13, description="kernel edge (odd; < 3 is 3)")


def remove_outlier3d_tomopy(block: npt.NDArray[Any], *, dif: float, size: int = 3
                            ) -> npt.NDArray[np.float32]:
    """Replace voxels whose distance to their 3-D median is ``>= dif`` (either sign)."""
    stage = "remove_outlier3d_tomopy"
    if not dif >= 0:
        raise StageError(f"stage {stage!r}: dif: expected >= 0, got {dif}")
    data = float_block(block, stage)
    median = median3d(data, tomopy_kernel(size))
    if dif == 0:
        return median  # TomoPy's C kernel: a zero threshold is the plain median
    xp = array_module(data)
    result: npt.NDArray[np.float32] = xp.where(
        xp.abs(data - median) >= np.float32(dif), median, data).astype(xp.float32)
    return result


# ----------------------------------------------------------------------- remove_outlier1d

#: HTTomo's axis of (angles, rows, cols) data → the same axis of our sinogram block.
_SINOGRAM_AXIS = {0: 1, 2: 2}


class Outlier1dParams(StageParams):
    """``tomopy.misc.corr.remove_outlier1d`` (template: ``dif`` required, ``size: 3``,
    ``axis: auto``). ``axis`` counts as HTTomo's data do: 0 angles, 2 columns."""

    dif: float = Field(allow_inf_nan=False,
                       description="replace values at least this far above the 1-D median")
    size: int = Field(default=3, ge=1, le=101, description="length of the 1-D median")
    axis: Literal[0, 2] = Field(default=0, description="0: along the angles, 2: along "
                                "the detector columns (auto: 0)")

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        if value == 1:
            raise ValueError("expected 0 (angles), 2 (columns) or auto, got 1: a median "
                             "along detector rows would cut across our sinogram blocks")
        return _auto_zero(value)


def remove_outlier1d(block: npt.NDArray[Any], *, dif: float, size: int = 3, axis: int = 0
                     ) -> npt.NDArray[np.float32]:
    """Replace bright outliers of a 1-D median along ``axis`` (module notes).

    Parameters
    ----------
    block : ndarray of shape (rows, angles, cols)
        A sinogram block; any unit.
    dif : float
        A value at least ``dif`` above its median is replaced by the median.
    size : int
        Length of the median window (``scipy.ndimage``'s ``mirror`` boundary).
    axis : {0, 2}
        HTTomo's axis of ``(angles, rows, cols)`` data: 0 along the angles, 2 along
        the detector columns.
    """
    stage = "remove_outlier1d"
    if axis not in _SINOGRAM_AXIS:
        raise StageError(f"stage {stage!r}: axis: expected 0 or 2, got {axis!r}")
    if size < 1:
        raise StageError(f"stage {stage!r}: size: expected >= 1, got {size}")
    data = float_block(block, stage)
    xp = array_module(data)
    window = [1, 1, 1]
    window[_SINOGRAM_AXIS[axis]] = size
    median = ndimage_module(xp).median_filter(data, size=tuple(window), mode="mirror")
    result: npt.NDArray[np.float32] = xp.where(data - median >= np.float32(dif), median,
                                               data).astype(xp.float32)
    return result


# ------------------------------------------------------------------- median_filter_nonfinite


class NonfiniteParams(StageParams):
    """``tomopy.misc.corr.median_filter_nonfinite`` (template: ``size: 3``,
    ``callback: null``; a callback is Python code and cannot come from a pipeline file)."""

    size: int = Field(default=3, ge=1, le=101, description="window edge (2·(size//2)+1)")
    callback: None = None


def median_filter_nonfinite(
    block: npt.NDArray[Any], *, size: int = 3, callback: None = None,
    repairs: RepairCounts | None = None,
) -> npt.NDArray[np.float32]:
    """Replace each NaN/±inf pixel by the median of the finite ones around it.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Projections; any unit.
    size : int
        The window is ``2·(size//2)+1`` pixels square around the pixel, clipped at the
        frame's edges (TomoPy's bounds), taken from the frame before any replacement.
    repairs : RepairCounts, optional
        The scan's counts; each replaced value is added under ``nonfinite_median``.

    Raises
    ------
    StageError
        If a window holds no finite value (TomoPy: "increase the kernel size").
    """
    stage = "median_filter_nonfinite"
    checked = float_block(block, stage)
    xp = array_module(checked)
    data: npt.NDArray[np.float32] = xp.array(checked, dtype=xp.float32, copy=True)
    bad = ~xp.isfinite(data)
    count = int(bad.sum())
    if count == 0:
        return data
    half = size // 2
    padded = xp.pad(xp.where(bad, np.float32(np.nan), data),
                    ((0, 0), (half, half), (half, half)), constant_values=np.nan)
    frame, row, col = xp.nonzero(bad)
    offsets = xp.arange(2 * half + 1)
    windows = padded[frame[:, None, None], row[:, None, None] + offsets[None, :, None],
                     col[:, None, None] + offsets[None, None, :]]
    empty = xp.isnan(windows).all(axis=(1, 2))
    if bool(empty.any()):
        where = (int(frame[empty][0]), int(row[empty][0]), int(col[empty][0]))
        raise StageError(f"stage {stage!r}: the {2 * half + 1}×{2 * half + 1} window around "
                         f"(frame, row, col) {where} holds no finite value: expected at "
                         f"least one; increase size (got {size})")
    data[bad] = xp.nanmedian(windows.reshape(count, -1), axis=1).astype(xp.float32)
    if repairs is not None:
        repairs.add(NONFINITE_MEDIAN, count)
    return data


# ----------------------------------------------------------------------------- sobel_filter


class SobelParams(StageParams):
    """``tomopy.misc.corr.sobel_filter`` (template: ``axis: auto``): each frame."""

    axis: Literal[0] = Field(default=0, description="0: each frame (auto)")

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        if value in (1, 2):
            raise ValueError(f"expected 0 or auto (each frame), got {value}: slices "
                             "across the angles would be cut by our projection blocks")
        return _auto_zero(value)


def sobel_filter(block: npt.NDArray[Any], *, axis: int = 0) -> npt.NDArray[np.float32]:
    """``scipy.ndimage.sobel`` of each frame along its columns (TomoPy's call)."""
    stage = "sobel_filter"
    if axis != 0:
        raise StageError(f"stage {stage!r}: axis: expected 0, got {axis!r}")
    data = float_block(block, stage)
    xp = array_module(data)
    ndimage = ndimage_module(xp)
    out: npt.NDArray[np.float32] = xp.empty_like(data)
    for i in range(data.shape[0]):
        ndimage.sobel(data[i], output=out[i])
    return out


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="median_filter3d_tomopy", fn=median_filter3d_tomopy, pattern=Pattern.ALL,
        angle_local=False,  # a 3-D median: neighbouring frames
        halo=lambda p: max(3, p.size) // 2,  # TomoPy makes a size below 3 a 3
        params=Median3dTomopyParams,
        # input, float32 copy, median, plus a slab of neighbours (<= 64 MiB)
        memory=scaled_memory(3.5), device=True,
        summary="3-D size³ median filter (TomoPy's kernel and edge rule)",
        aliases=("tomopy.misc.corr.median_filter3d",),
    ),
    StageSpec(
        name="remove_outlier3d_tomopy", fn=remove_outlier3d_tomopy, pattern=Pattern.ALL,
        angle_local=False,  # a 3-D median: neighbouring frames
        halo=lambda p: max(3, p.size) // 2,  # TomoPy makes a size below 3 a 3
        params=Outlier3dTomopyParams,
        # input, float32 copy, median, result, plus a slab of neighbours (<= 64 MiB)
        memory=scaled_memory(4.5), device=True,
        summary="replace voxels at least dif from their 3-D median, either sign (TomoPy)",
        aliases=("tomopy.misc.corr.remove_outlier3d",),
    ),
    StageSpec(
        name="remove_outlier1d", fn=remove_outlier1d, pattern=Pattern.SINOGRAM,
        angle_local=False,  # along the angles or the columns of whole sinograms
        params=Outlier1dParams,
        # input, float32 copy, median, comparison mask, result
        memory=scaled_memory(4.5), device=True,
        summary="replace bright outliers of a 1-D median along the angles or columns "
        "(TomoPy)",
        aliases=("tomopy.misc.corr.remove_outlier1d",),
    ),
    StageSpec(
        name="median_filter_nonfinite", fn=median_filter_nonfinite,
        pattern=Pattern.PROJECTION, angle_local=True,  # within each frame
        params=NonfiniteParams, counts_repairs=True,
        # input, float32 copy, mask, NaN-padded copy (the windows of bad pixels are few)
        memory=scaled_memory(3.5),
        summary="replace NaN/inf pixels by the median of the finite ones around them "
        "(TomoPy; counted as repairs)",
        aliases=("tomopy.misc.corr.median_filter_nonfinite",), device=True,
    ),
    StageSpec(
        name="sobel_filter", fn=sobel_filter, pattern=Pattern.PROJECTION,
        angle_local=True,  # each frame
        params=SobelParams, memory=scaled_memory(3.0), device=True,
        summary="Sobel derivative of each frame along its columns (TomoPy)",
        aliases=("tomopy.misc.corr.sobel_filter",),
    ),
)

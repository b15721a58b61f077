"""Smoothing filters: median and Gaussian on every 2-D slice of a block.

Both follow TomoPy's ``tomopy.misc.corr.median_filter`` / ``gaussian_filter``: the
filter is two-dimensional and runs on each slice perpendicular to ``axis`` (with
``axis=0`` on a projection block, on each frame), with ``scipy.ndimage``'s ``reflect``
boundary (``d c b a | a b c d | d c b a``). They reproduce TomoPy's test references
``median_filter_{0,1,2}.npy`` and ``gaussian_filter_{0,1,2}.npy`` (max abs difference
0 and 6e-8). They run in the array namespace of their input: ``cupyx.scipy.ndimage``
for a CuPy block.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AliasChoices, Field, field_validator

from stages.backends.xp import array_module, ndimage_module
from stages.checks import check_axis, float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

BoundaryMode = Literal["reflect", "nearest", "mirror", "wrap", "constant"]


class MedianFilterParams(StageParams):
    """Parameters of :func:`median_filter` (``kernel_size`` is accepted for ``size``)."""

    size: int = Field(
        3, ge=1, le=101, validation_alias=AliasChoices("size", "kernel_size"),
        description="edge of the square (or, with axis=None, cubic) window in pixels",
    )
    axis: Literal[0, 1, 2] | None = Field(
        0, description="filter each slice perpendicular to this axis; None: 3-D filter"
    )
    mode: BoundaryMode = Field("reflect", description="scipy.ndimage boundary mode")

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        """HTTomo's ``axis: auto`` is the slicing axis of a projection block: 0."""
        return 0 if value == "auto" else value


def median_filter(
    block: npt.NDArray[Any],
    *,
    size: int = 3,
    axis: int | None = 0,
    mode: BoundaryMode = "reflect",
) -> npt.NDArray[np.float32]:
    """Median-filter every 2-D slice of ``block`` perpendicular to ``axis``.

    Parameters
    ----------
    block : ndarray of shape (n0, n1, n2)
        Any 3-D real block (a projection block is ``(angles, rows, cols)``); any unit.
    size : int
        Edge of the ``size × size`` window in pixels (odd sizes centre the window).
    axis : {0, 1, 2} or None
        The slices ``block[i]`` (axis 0), ``block[:, i]`` (1) or ``block[:, :, i]`` (2)
        are filtered independently. ``None`` applies one ``size³`` median in 3-D, as
        ``httomolibgpu.misc.corr.median_filter`` does (set ``axis: null`` when using that
        alias to get its behaviour).
    mode : str
        Boundary handling of ``scipy.ndimage``; TomoPy uses the default ``reflect``.

    Returns
    -------
    ndarray of shape (n0, n1, n2), float32, C-contiguous
        Filtered block in the unit of the input.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array, or ``size`` or ``axis`` is out of range.
    """
    stage = "median_filter"
    data = float_block(block, stage)
    check_axis(axis, stage, allow_none=True)
    if size < 1:
        raise StageError(f"stage {stage!r}: size: expected an integer >= 1, got {size}")
    xp = array_module(data)
    ndimage = ndimage_module(xp)
    if axis is None:
        result: npt.NDArray[np.float32] = ndimage.median_filter(data, size=size, mode=mode)
        contiguous: npt.NDArray[np.float32] = xp.ascontiguousarray(result, dtype=xp.float32)
        return contiguous
    out: npt.NDArray[np.float32] = xp.empty_like(data)
    src = xp.moveaxis(data, axis, 0)
    dst = xp.moveaxis(out, axis, 0)
    for i in range(src.shape[0]):
        ndimage.median_filter(src[i], size=(size, size), mode=mode, output=dst[i])
    return out


class GaussianFilterParams(StageParams):
    """Parameters of :func:`gaussian_filter`."""

    sigma: float = Field(3.0, gt=0.0, description="standard deviation of the kernel, pixels")
    order: Literal[0, 1, 2, 3] = Field(
        0, description="0: smoothing; 1-3: convolve with that derivative of the Gaussian"
    )
    axis: Literal[0, 1, 2] = Field(0, description="filter each slice perpendicular to this axis")
    mode: BoundaryMode = Field("reflect", description="scipy.ndimage boundary mode")

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        """HTTomo's ``axis: auto`` is the slicing axis of a projection block: 0."""
        return 0 if value == "auto" else value


def gaussian_filter(
    block: npt.NDArray[Any],
    *,
    sigma: float = 3.0,
    order: int = 0,
    axis: int = 0,
    mode: BoundaryMode = "reflect",
) -> npt.NDArray[np.float32]:
    """Gaussian-filter every 2-D slice of ``block`` perpendicular to ``axis``.

    Parameters
    ----------
    block : ndarray of shape (n0, n1, n2)
        Any 3-D real block; any unit.
    sigma : float
        Standard deviation of the Gaussian in pixels, the same along both slice axes.
        The kernel is truncated at 4 sigma (``scipy.ndimage`` default).
    order : int
        Derivative order along both slice axes (0 smooths).
    axis : {0, 1, 2}
        The slices perpendicular to this axis are filtered independently.
    mode : str
        Boundary handling of ``scipy.ndimage``; TomoPy uses the default ``reflect``.

    Returns
    -------
    ndarray of shape (n0, n1, n2), float32, C-contiguous
        Filtered block in the unit of the input (per pixel^order for ``order > 0``).

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array, or ``sigma``, ``order`` or ``axis`` is
        out of range.
    """
    stage = "gaussian_filter"
    data = float_block(block, stage)
    check_axis(axis, stage, allow_none=False)
    if not sigma > 0:
        raise StageError(f"stage {stage!r}: sigma: expected a value > 0, got {sigma}")
    if order not in (0, 1, 2, 3):
        raise StageError(f"stage {stage!r}: order: expected one of 0|1|2|3, got {order!r}")
    xp = array_module(data)
    ndimage = ndimage_module(xp)
    out: npt.NDArray[np.float32] = xp.empty_like(data)
    src = xp.moveaxis(data, axis, 0)
    dst = xp.moveaxis(out, axis, 0)
    for i in range(src.shape[0]):
        ndimage.gaussian_filter(src[i], sigma=sigma, order=order, mode=mode, output=dst[i])
    return out


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="median_filter",
        angle_local=lambda p: p.axis == 0,  # each frame on its own
        halo=lambda p: 0 if p.axis == 0 else p.size // 2,  # axis 1, 2, None: across axis 0
        fn=median_filter,
        pattern=Pattern.PROJECTION,
        params=MedianFilterParams,
        # input + float32 copy (when the input is not float32) + output; the per-slice
        # scratch of scipy is one slice.
        memory=scaled_memory(3.0),
        device=True,
        summary="2-D median filter on each slice along an axis (3-D with axis=None)",
        # httomolibgpu's median_filter (3-D, dif) is median_filter3d, stages/prep/httomo_prep.py
        aliases=("tomopy.misc.corr.median_filter",),
    ),
    StageSpec(
        name="gaussian_filter",
        angle_local=lambda p: p.axis == 0,  # each frame on its own
        # scipy truncates the kernel at 4 sigma: radius int(4 sigma + 0.5)
        halo=lambda p: 0 if p.axis == 0 else int(4.0 * p.sigma + 0.5),
        fn=gaussian_filter,
        pattern=Pattern.PROJECTION,
        params=GaussianFilterParams,
        # input + float32 copy (when the input is not float32) + output; scipy's separable
        # pass needs one slice of scratch.
        memory=scaled_memory(3.0),
        device=True,
        summary="2-D Gaussian filter on each slice along an axis",
        aliases=("tomopy.misc.corr.gaussian_filter",),
    ),
)

"""Zinger (bright outlier) removal on projection blocks ``(angles, rows, cols)``.

* :func:`remove_outlier`: tomopy's ``remove_outlier``: a 2-D median over each slice
  perpendicular to ``axis`` (``axis=0``: within each projection frame).
* :func:`dezinger_temporal`: a median over neighbouring frames of the same pixel, for
  streams, where zingers hit one frame and the sample moves little between frames.

Both replace a pixel by the median when ``pixel - median >= dif`` (tomopy's test is
``>=``; we keep it so the stage matches tomopy exactly) and return C-contiguous float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import AliasChoices, Field, field_validator

from stages.backends.xp import array_module, ndimage_module
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError


def _check_block(stage: str, block: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    shape = getattr(block, "shape", None)
    if shape is None or len(shape) != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D projection block, got "
                         f"{shape if shape is not None else type(block).__name__}")
    xp = array_module(block)
    data: npt.NDArray[np.float32] = xp.ascontiguousarray(block, dtype=xp.float32)
    return data


def _replace_outliers(
    data: npt.NDArray[np.float32], median: npt.NDArray[np.float32], dif: float
) -> npt.NDArray[np.float32]:
    """Where ``data - median >= dif`` take the median, in place in ``median``'s buffer."""
    keep = ~((data - median) >= np.float32(dif))  # NaN input is kept, as tomopy
    array_module(data).copyto(median, data, where=keep)
    return median


# -------------------------------------------------------------------- remove_outlier


class RemoveOutlierParams(StageParams):
    """Parameters of :func:`remove_outlier` (httomolibgpu's ``kernel_size`` = ``size``)."""

    dif: float = Field(gt=0)
    size: int = Field(default=3, ge=1, validation_alias=AliasChoices("size", "kernel_size"))
    axis: int = Field(default=0, ge=0, le=2)

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        """HTTomo's ``axis: auto`` is the slicing axis of a projection block: 0."""
        return 0 if value == "auto" else value


def remove_outlier(
    block: npt.NDArray[Any], *, dif: float, size: int = 3, axis: int = 0
) -> npt.NDArray[np.float32]:
    """Replace bright outliers by the local 2-D median (tomopy ``remove_outlier``).

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Projections (counts or transmission; any real dtype).
    dif : float
        Threshold in the block's units: a pixel with ``pixel - median >= dif`` is
        replaced by ``median``.
    size : int
        Side of the square median window, in pixels (``>= 1``).
    axis : int
        The median is 2-D over each slice perpendicular to ``axis`` (0: each
        projection frame, 1: each sinogram, 2: each angle-row slice). Edges use
        scipy's default ``reflect`` mode, as tomopy.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous

    Notes
    -----
    Equals ``tomopy.misc.corr.remove_outlier(block, dif, size, axis)``.
    ``httomolibgpu.misc.corr.remove_outlier(data, kernel_size, dif)`` (a 3-D cube, both
    signs) is the stage ``remove_outlier3d`` (stages/prep/httomo_prep.py).
    """
    stage = "remove_outlier"
    data = _check_block(stage, block)
    if axis not in (0, 1, 2):
        raise StageError(f"stage {stage!r}: axis: expected 0, 1 or 2, got {axis}")
    if size < 1:
        raise StageError(f"stage {stage!r}: size: expected an integer >= 1, got {size}")
    footprint = [size, size, size]
    footprint[axis] = 1
    median = ndimage_module(array_module(data)).median_filter(data, size=footprint)
    return _replace_outliers(data, median, dif)


# ------------------------------------------------------------------ dezinger_temporal


class DezingerTemporalParams(StageParams):
    """Parameters of :func:`dezinger_temporal`."""

    dif: float = Field(gt=0)
    window: int = Field(default=3, ge=3)


def dezinger_temporal(
    block: npt.NDArray[Any], *, dif: float, window: int = 3
) -> npt.NDArray[np.float32]:
    """Replace pixels much brighter than the same pixel in neighbouring frames.

    For each pixel, ``median`` is the median of its values in the ``window`` frames
    centred on its own (along axis 0); where ``pixel - median >= dif`` the pixel is
    replaced by ``median``. A zinger lasts one frame, so it is far above the temporal
    median, while a feature of the sample moving by less than its own width between
    frames is present in most of the window and is left alone.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Consecutive projections (counts or transmission).
    dif : float
        Threshold in the block's units.
    window : int
        Odd number of frames in the median (``>= 3``).

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous

    Notes
    -----
    Block edges are mirrored about the edge frame (scipy ``mode="mirror"``:
    ``c b | a b c``), so an edge frame's window holds its inner neighbours twice and
    itself once: a zinger on the first or last frame is still found. (``"reflect"``
    would repeat the edge frame and hide it.) In a stream, blocks should overlap by
    ``window // 2`` frames for edge frames to see their true neighbours.
    """
    stage = "dezinger_temporal"
    data = _check_block(stage, block)
    if window < 3 or window % 2 == 0:
        raise StageError(f"stage {stage!r}: window: expected an odd integer >= 3, got {window}")
    if data.shape[0] < 2:
        return data.copy() if data is block else data
    median = ndimage_module(array_module(data)).median_filter(data, size=(window, 1, 1),
                                                             mode="mirror")
    return _replace_outliers(data, median, dif)


# ---------------------------------------------------------------------------- specs

SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="remove_outlier",
        angle_local=lambda p: p.axis == 0,  # the median of each frame
        halo=lambda p: 0 if p.axis == 0 else p.size // 2,  # a window across frames
        fn=remove_outlier,
        pattern=Pattern.PROJECTION,
        params=RemoveOutlierParams,
        # caller's block (1) + float32 copy when the input is not float32 (1) + median
        # output, reused as the result (1) + difference temporary (1) + mask (0.25).
        memory=scaled_memory(4.25),
        device=True,
        summary="replace bright outliers by the 2-D median of their frame (tomopy)",
        aliases=("tomopy.misc.corr.remove_outlier",),
    ),
    StageSpec(
        name="dezinger_temporal",
        angle_local=False,  # the same pixel in nearby frames
        halo=lambda p: p.window // 2,
        fn=dezinger_temporal,
        pattern=Pattern.PROJECTION,
        params=DezingerTemporalParams,
        # as remove_outlier: block, float32 copy, median/result, difference, mask.
        memory=scaled_memory(4.25),
        device=True,
        summary="replace pixels far above the median of the same pixel in nearby frames",
    ),
)

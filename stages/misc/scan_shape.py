"""Stages that change the shape of the scan: ``sino_360_to_180`` (an offset-axis 360°
scan folded into a 180° one) and ``average_projection_frames`` (fewer projections).

Both run on sinogram blocks ``(rows, angles, cols)`` (HTTomo's method database gives
them the ``sinogram`` pattern) and declare how they change the scan's
:class:`~stages.spec.Geometry`, so the stages after them get the new angles, the planner
the new shape and the reconstruction the new CoR.

``sino_360_to_180`` (httomolibgpu ``misc/morph.py``, Vo et al. 2021; tomopy's older
form under its own name): the first half of the angles is kept; the second half, mirrored
left-right, is put beside it on the ``side`` where the axis lies; the ``overlap`` columns
both halves see are blended with linear weights that sum to one. httomolibgpu's form
rounds the overlap to an even integer, pads the result with ``overlap // 2`` edge
columns on both sides (width ``2 · cols``) and takes a negative overlap as a gap filled
with edge values; tomopy's keeps the overlap as rounded (width ``2 · cols - overlap``)
and does not pad. In both, the axis of the stitched sinogram is its middle column
``(width - 1) / 2`` (the first half's axis and the mirrored half's axis, mapped into the
stitched width, average to it whatever the rounding), so that is the CoR the stages
after it get when the CoR came from a finder. HTTomo gives ``ncol`` (= ``width / 2``)
there through ``find_center_360``'s ``cor``, half a pixel from ours, as ToMoBAR counts
the centre from the pixel edge.

``average_projection_frames`` (httomolibgpu, added June 2026; angles as HTTomo's
``AverageFramesWrapper``): every ``projection_averaging_factor`` consecutive projections
become their mean, a remainder its own mean; the angles are averaged the same way.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module
from stages.spec import Geometry, Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "average_frames", "average_projection_frames", "fold_360_to_180",
           "sino_360_to_180", "sino_360_to_180_tomopy"]

Side = Literal["left", "right"]


class Sino360Params(StageParams):
    """httomolibgpu's ``sino_360_to_180``: ``overlap`` (columns; a float is rounded, then
    made even) and ``side`` (where the axis lies), usually ``find_center_360``'s side
    outputs by reference (``None`` until the finder has run)."""

    overlap: float | None = None
    side: Side | None = None


class Sino360TomopyParams(StageParams):
    """tomopy's ``sino_360_to_180``: ``overlap`` (columns, rounded) and ``rotation``."""

    overlap: float | None = None
    rotation: Side = "left"


def fold_360_to_180(
    sinograms: npt.NDArray[Any], overlap: float, side: Side, *, httomo: bool = True
) -> npt.NDArray[Any]:
    """Fold ``(rows, angles, cols)`` 360° sinograms into ``(rows, angles // 2, width)``
    180° ones (an odd last angle is dropped, as upstream).

    ``httomo``: httomolibgpu's form (even overlap, negative overlap as a gap, edge
    padding to ``width = 2 · cols``); else tomopy's (``width = 2 · cols - overlap``).
    """
    xp = array_module(sinograms)  # the block stays on its device; weights are uploaded
    rows, angles, cols = sinograms.shape
    ov = int(np.round(overlap))
    if httomo and ov % 2 != 0:
        ov += 1
    if abs(ov) >= cols - 1:
        raise StageError(f"stage 'sino_360_to_180': overlap: expected |overlap| < "
                         f"{cols - 1} (the detector width less one), got {overlap}")
    if ov < 0 and not httomo:
        raise StageError(f"stage 'sino_360_to_180' (tomopy): overlap: expected >= 0, got "
                         f"{overlap}")
    if angles < 2:
        raise StageError(f"stage 'sino_360_to_180': expected at least 2 angles, got {angles}")
    n = angles // 2
    first = sinograms[:, :n, :]
    second = sinograms[:, n : 2 * n, :]
    if ov <= 0:  # side by side; a gap of -ov columns takes the left part's edge value
        left, right = (second[:, :, ::-1], first) if side == "left" else (first,
                                                                           second[:, :, ::-1])
        gap = xp.repeat(left[:, :, -1:], -ov, axis=2)
        stitched: npt.NDArray[Any] = xp.ascontiguousarray(
            xp.concatenate((left, gap, right), axis=2), dtype=xp.float32)
        return stitched
    out = xp.empty((rows, n, 2 * cols - ov), dtype=xp.float32)
    if side == "left":
        weights = xp.asarray(np.linspace(0.0, 1.0, ov, dtype=np.float32))
        out[:, :, cols:] = first[:, :, ov:]
        out[:, :, : cols - ov] = second[:, :, ov:][:, :, ::-1]
        out[:, :, cols - ov : cols] = (weights * first[:, :, :ov]
                                       + (weights * second[:, :, :ov])[:, :, ::-1])
    else:
        weights = xp.asarray(np.linspace(1.0, 0.0, ov, dtype=np.float32))
        out[:, :, : cols - ov] = first[:, :, :-ov]
        out[:, :, cols :] = second[:, :, :-ov][:, :, ::-1]
        out[:, :, cols - ov : cols] = (weights * first[:, :, -ov:]
                                       + (weights * second[:, :, -ov:])[:, :, ::-1])
    if httomo and ov > 0:
        half = ov // 2
        out = xp.pad(out, ((0, 0), (0, 0), (half, half)), mode="edge")
    folded: npt.NDArray[Any] = xp.ascontiguousarray(out, dtype=xp.float32)
    return folded


def sino_360_to_180(block: npt.NDArray[Any], *, overlap: float | None = None,
                    side: Side | None = None) -> npt.NDArray[np.float32]:
    """httomolibgpu's ``sino_360_to_180`` on a sinogram block ``(rows, angles, cols)``."""
    if overlap is None or side is None:
        missing = "overlap" if overlap is None else "side"
        raise StageError(f"stage 'sino_360_to_180': {missing}: expected a value or a "
                         f"reference to find_center_360's side output, got none")
    return fold_360_to_180(block, overlap, side, httomo=True)


def sino_360_to_180_tomopy(block: npt.NDArray[Any], *, overlap: float | None = None,
                           rotation: Side = "left") -> npt.NDArray[np.float32]:
    """tomopy's ``sino_360_to_180`` on a sinogram block ``(rows, angles, cols)``."""
    if overlap is None:
        raise StageError("stage 'sino_360_to_180_tomopy': overlap: expected a value or a "
                         "reference to find_center_360's side output, got none")
    return fold_360_to_180(block, overlap, rotation, httomo=False)


def _folded_width(cols: int, overlap: float | None, httomo: bool) -> int:
    """The stitched width (the widest possible, ``2 · cols``, while the overlap is not
    known: the planner's case)."""
    if overlap is None:
        return 2 * cols
    ov = int(np.round(overlap))
    if httomo:
        ov += ov % 2
        return 2 * cols if ov > 0 else 2 * cols - ov
    return 2 * cols - ov


def _fold_geometry(before: Geometry, params: Any) -> Geometry:
    httomo = isinstance(params, Sino360Params)
    width = _folded_width(before.cols, params.overlap, httomo)
    half = before.angles_deg.size // 2
    return Geometry(before.angles_deg[:half], width, (width - 1) / 2)


class AverageFramesParams(StageParams):
    """httomolibgpu's ``average_projection_frames``."""

    projection_averaging_factor: int = Field(default=2, ge=1)


def average_frames(values: npt.NDArray[Any], factor: int, axis: int) -> npt.NDArray[Any]:
    """Means of every ``factor`` consecutive entries along ``axis`` (a remainder: its
    own mean), as upstream."""
    if factor == 1:
        return values
    xp = array_module(values)
    moved = xp.moveaxis(values, axis, 0)
    count = moved.shape[0]
    full, remainder = divmod(count, factor)
    parts = []
    if full:
        parts.append(moved[: full * factor].reshape(full, factor, *moved.shape[1:])
                     .mean(axis=1))
    if remainder:
        parts.append(moved[full * factor :].mean(axis=0, keepdims=True))
    averaged: npt.NDArray[Any] = xp.moveaxis(xp.concatenate(parts, axis=0), 0, axis)
    return averaged


def average_projection_frames(block: npt.NDArray[Any], *,
                              projection_averaging_factor: int = 2) -> npt.NDArray[np.float32]:
    """httomolibgpu's ``average_projection_frames`` on a sinogram block (angle axis 1)."""
    if block.shape[1] == 0:
        raise StageError("stage 'average_projection_frames': expected at least one "
                         "projection, got none")
    averaged = average_frames(block, projection_averaging_factor, axis=1)
    xp = array_module(averaged)
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(averaged, dtype=xp.float32)
    return result


def _average_geometry(before: Geometry, params: Any) -> Geometry:
    angles = average_frames(before.angles_deg, params.projection_averaging_factor, axis=0)
    return Geometry(np.asarray(angles, dtype=np.float64), before.cols, before.center)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="sino_360_to_180",
        fn=sino_360_to_180,
        pattern=Pattern.SINOGRAM,
        params=Sino360Params,
        memory=scaled_memory(3.0),  # input, the stitched output (as large) and its padding
        summary="Fold an offset-axis 360° scan into a 180° one (httomolibgpu): the mirrored "
        "second half beside the first, the overlap blended, edge-padded to twice the width; "
        "the CoR after it is the stitched middle.",
        geometry=_fold_geometry,
        aliases=("httomolibgpu.misc.morph.sino_360_to_180",),
        device=True,
    ),
    StageSpec(
        name="sino_360_to_180_tomopy",
        fn=sino_360_to_180_tomopy,
        pattern=Pattern.SINOGRAM,
        params=Sino360TomopyParams,
        memory=scaled_memory(3.0),
        summary="tomopy's 360° → 180° fold (overlap as rounded, no padding); the CoR after "
        "it is the stitched middle.",
        geometry=_fold_geometry,
        aliases=("tomopy.misc.morph.sino_360_to_180",),
        device=True,
    ),
    StageSpec(
        name="average_projection_frames",
        fn=average_projection_frames,
        pattern=Pattern.SINOGRAM,
        params=AverageFramesParams,
        memory=scaled_memory(2.0),
        summary="Average every projection_averaging_factor consecutive projections "
        "(httomolibgpu); the angles are averaged alike and the stages after it see the "
        "new count.",
        geometry=_average_geometry,
        aliases=("httomolibgpu.misc.morph.average_projection_frames",),
        device=True,
    ),
)

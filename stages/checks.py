"""Argument checks shared by stage functions (messages name the stage and argument)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.xp import array_module
from streamer.errors import StageError


def float_block(block: npt.NDArray[Any], stage: str) -> npt.NDArray[np.float32]:
    """Check that ``block`` is a real 3-D array and return it as C-contiguous float32
    (in the block's own array namespace: a device block stays on its device)."""
    if block.ndim != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D array, got shape {block.shape}")
    if block.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: block.dtype: expected an integer or real float type, "
            f"got {block.dtype.name!r}"
        )
    xp = array_module(block)
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(block, dtype=xp.float32)
    return result


def check_axis(axis: int | None, stage: str, *, allow_none: bool = False) -> None:
    """``axis`` must be 0, 1 or 2 (or ``None`` where a stage accepts a 3-D variant)."""
    allowed: tuple[int | None, ...] = (0, 1, 2, None) if allow_none else (0, 1, 2)
    if axis not in allowed:
        raise StageError(
            f"stage {stage!r}: axis: expected one of {'|'.join(map(str, allowed))}, got {axis!r}"
        )


def sinogram_inputs(
    stage: str, block: Any, angles_deg: Any, center: float | None, output_size: int | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The inputs every reconstructor checks: a non-empty real ``(rows, angles, cols)``
    block, one finite angle (degrees) per angle row, a finite ``center`` and
    ``output_size >= 1`` when given. Returns the block as C-contiguous float32 and the
    angles as float64."""
    shape = getattr(block, "shape", None)
    if shape is None or getattr(block, "dtype", None) is None or len(shape) != 3:
        raise StageError(
            f"stage {stage!r}: block: expected a 3-D sinogram block (rows, angles, cols), "
            f"got shape {shape}"
        )
    if block.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: block.dtype: expected an integer or real float type, "
            f"got {block.dtype.name!r}"
        )
    if 0 in block.shape:
        raise StageError(f"stage {stage!r}: block: expected a non-empty block, got {block.shape}")
    angles = np.asarray(angles_deg)
    if angles.ndim != 1 or angles.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: angles_deg: expected a 1-D array of real numbers, "
            f"got shape {angles.shape} of {angles.dtype.name!r}"
        )
    if angles.shape[0] != block.shape[1]:
        raise StageError(
            f"stage {stage!r}: angles_deg: expected {block.shape[1]} angles "
            f"(the block's angle axis), got {angles.shape[0]}"
        )
    angles = angles.astype(np.float64)
    if not np.isfinite(angles).all():
        raise StageError(f"stage {stage!r}: angles_deg: expected finite angles, got NaN or inf")
    if center is not None and not math.isfinite(center):
        raise StageError(f"stage {stage!r}: center: expected a finite column, got {center}")
    if output_size is not None and output_size < 1:
        raise StageError(f"stage {stage!r}: output_size: expected >= 1, got {output_size}")
    xp = array_module(block)  # the block stays on its device; the angles are host facts
    return xp.ascontiguousarray(block, dtype=xp.float32), angles

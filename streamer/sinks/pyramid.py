"""The resolution pyramid of a volume: how many levels, their shapes, and the 2× mean.

Level 0 is the volume as reconstructed, ``(slices, ny, nx)``. Level ``k + 1`` is level
``k`` averaged over blocks of 2 × 2 × 2 voxels (z, y and x), so each axis has
``ceil(n / 2)`` entries; at an odd edge the last block is shorter and is the mean of the
voxels it has (no padding value enters the mean). A level-``k`` slice ``i`` is therefore
made of level-0 slices ``[i·2^k, (i+1)·2^k)`` (clipped to the volume) and can be computed
as soon as those are written: the sinks write it then, so a reader sees coarse levels
fill in as the volume does. The rules here are pure NumPy (no I/O), shared by the
OME-Zarr writer and its tests.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamer.errors import SinkError

MIN_LEVELS: Final = 2
MAX_LEVELS: Final = 4
#: The coarsest level keeps at least this many pixels on the shorter in-plane side.
MIN_COARSE_SIDE: Final = 16


def level_count(slice_shape: tuple[int, int]) -> int:
    """How many levels a volume of slices ``slice_shape`` gets: one more per halving of
    the shorter in-plane side that keeps it at least :data:`MIN_COARSE_SIDE`, between
    :data:`MIN_LEVELS` and :data:`MAX_LEVELS` (64² → 3, 128² → 4, 2560² → 4, 16² → 2)."""
    side = min(slice_shape)
    halvings = 0
    while side // 2 >= MIN_COARSE_SIDE and halvings < MAX_LEVELS - 1:
        side //= 2
        halvings += 1
    return max(MIN_LEVELS, min(MAX_LEVELS, 1 + halvings))


def level_shape(shape: tuple[int, int, int], level: int) -> tuple[int, int, int]:
    """The shape of level ``level`` of a level-0 volume ``shape``: ``ceil(n / 2^level)``."""
    factor = 1 << level
    z, y, x = shape
    return -(-z // factor), -(-y // factor), -(-x // factor)


def children(parent: int, level_length: int) -> tuple[int, int]:
    """The slices ``[a, b)`` of a level (of ``level_length`` slices) that make slice
    ``parent`` of the next coarser level."""
    return 2 * parent, min(2 * parent + 2, level_length)


def level_zero_span(index: int, level: int, slices: int) -> tuple[int, int]:
    """The level-0 slices ``[a, b)`` (of ``slices``) that make slice ``index`` of
    ``level``."""
    factor = 1 << level
    return index * factor, min((index + 1) * factor, slices)


def downsample(block: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The 2 × 2 × 2 mean of ``block`` (z, y, x), in ``block``'s dtype.

    Sums are taken in float64 and divided by the number of voxels each output voxel
    covers (8 inside, fewer on an odd edge). Integer dtypes (quantised volumes) are
    rounded to the nearest integer; NaN (a voxel that holds no value) makes its block
    NaN, as any mean would. Works one output slice at a time, so the extra memory is one
    float64 slice, not a copy of the block.
    """
    if block.ndim != 3 or 0 in block.shape:
        raise SinkError(f"downsample: expected a non-empty (z, y, x) block, got shape "
                        f"{block.shape}")
    z, y, x = block.shape
    out_shape = level_shape((z, y, x), 1)
    result = np.empty(out_shape, dtype=block.dtype)
    counts = np.full(out_shape[1:], 4.0)
    if y % 2:
        counts[-1, :] /= 2
    if x % 2:
        counts[:, -1] /= 2
    for index in range(out_shape[0]):
        pair = block[2 * index:2 * index + 2]
        summed = pair.sum(axis=0, dtype=np.float64)
        if y % 2 or x % 2:
            summed = np.pad(summed, ((0, y % 2), (0, x % 2)))
        summed = summed.reshape(out_shape[1], 2, out_shape[2], 2).sum(axis=(1, 3))
        mean = summed / (counts * pair.shape[0])
        if np.issubdtype(block.dtype, np.integer):
            result[index] = np.rint(mean)
        else:
            result[index] = mean
    return result


__all__ = ["MAX_LEVELS", "MIN_COARSE_SIDE", "MIN_LEVELS", "children", "downsample",
           "level_count", "level_shape", "level_zero_span"]

"""TomoPy's 3-D stripe detection (Kazantsev et al. 2023): ``stripes_detect3d`` gives
weights, ``stripes_mask3d`` turns them into a mask. Ports of TomoPy's C
(``libtomo/prep/stripes_detect3d.c``), vectorised; axes as TomoPy's ``(angles, detY,
detX)``, which our sinogram blocks ``(rows, angles, cols)`` hold transposed: the steps
run in the sinogram section (HTTomo's pattern for them) and look across the block's rows.

``stripes_detect3d``: the gradient along the detector columns (``x[i+2] - x[i]``,
``x[i-2] - x[i]`` in the last two columns); per voxel, the mean ``|gradient|`` in a
``(2·radius+1)²`` plate along the angles and rows, and in the ``3 × radius`` windows
right and left of the voxel; the weight is the smaller of the two ratios
``min(a, b) / max(a, b)`` (small at a stripe's edge). Where the plate and the right-hand
window are both zero the C code keeps the value its dead 6-neighbour mean left there
(``0.1428 ·`` the sum of the voxel and its six neighbours), capped at the left ratio, and
so does this port. Last, a median along the angles over ``2·size+1`` values, taking, as
the C code does, the element at index ``size - 1`` of the sorted window (just below the
median). Neighbours outside the block are mirrored about the voxel (``k - m`` for
``k + m``), as in C; where a block is thinner than the stencil (C reads outside the
array there) the mirrored index is clamped into the block.

``stripes_mask3d``: ``weights <= threshold`` is a candidate; a candidate with more than
``int(sensitivity% · min_stripe_depth)`` candidates within ``± min_stripe_depth // 2``
rows is dropped (too deep for a stripe), then one with fewer than ``int(sensitivity% ·
min_stripe_length)`` within ``± min_stripe_length // 2`` angles, then one with fewer than
``min_stripe_length // 2`` there; last, ``min_stripe_width`` passes fill a gap that has
the mask within ``min_stripe_width // 2`` columns on both sides, or within ``2 ·
min_stripe_width`` angles above and below. The mask is float32 0/1 (TomoPy: bool).

Both outputs replace the data (weights, mask), as in TomoPy and HTTomo: a pipeline keeps
them by saving that step's output. Both run in the array module of their block (the
shifted-index tables are made on the host and uploaded), so a CuPy block stays on its
device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "stripes_detect3d", "stripes_mask3d"]


def _mirrored(length: int, offset: int) -> npt.NDArray[np.intp]:
    """Index ``k + offset``, or ``k - offset`` outside ``[0, length)`` (TomoPy's C rule),
    clamped into the array where that is outside too."""
    k = np.arange(length)
    index = k + offset
    outside = (index < 0) | (index >= length)
    index[outside] = k[outside] - offset
    return np.clip(index, 0, length - 1).astype(np.intp)


def _shifted(data: npt.NDArray[Any], axis: int, offset: int) -> npt.NDArray[Any]:
    xp = array_module(data)
    shifted: npt.NDArray[Any] = xp.take(data, xp.asarray(_mirrored(data.shape[axis], offset)),
                                        axis=axis)
    return shifted


class StripesDetectParams(StageParams):
    """``tomopy.prep.stripe.stripes_detect3d`` (template: ``size: 10``, ``radius: 3``)."""

    size: int = Field(default=10, ge=1, description="half-length of the median along angles")
    radius: int = Field(default=3, ge=1, le=64, description="half-size of the ratio stencil")


def stripes_detect3d(block: npt.NDArray[Any], *, size: int = 10, radius: int = 3
                     ) -> npt.NDArray[np.float32]:
    """Stripe-edge weights in [0, 1] of a sinogram block ``(rows, angles, cols)``."""
    stage = "stripes_detect3d"
    checked = float_block(block, stage)
    xp = array_module(checked)
    data = xp.ascontiguousarray(checked.transpose(1, 0, 2))  # TomoPy's axes
    angles = data.shape[0]
    if size <= 0 or size > angles // 2:
        raise StageError(f"stage {stage!r}: size: expected 1 … {angles // 2} (half the "
                         f"{angles} angles), got {size}")
    neighbours = data.copy()
    for axis in range(3):
        neighbours += _shifted(data, axis, -1) + _shifted(data, axis, 1)
    mean = np.float32(0.1428) * neighbours  # the C code's dead smoothing, kept for ties
    cols = data.shape[2]
    step = np.arange(cols) + 2
    step[step >= cols] -= 4
    step = np.clip(step, 0, cols - 1)
    grad = xp.abs(data[:, :, xp.asarray(step)] - data)
    plate = xp.zeros_like(grad)
    for dk in range(-radius, radius + 1):
        along = _shifted(grad, 0, dk)
        for dj in range(-radius, radius + 1):
            plate += _shifted(along, 1, dj)
    plate /= np.float32((2 * radius + 1) ** 2)
    right = xp.zeros_like(grad)
    left = xp.zeros_like(grad)
    for dj in (-1, 0, 1):
        rows = _shifted(grad, 1, dj)
        for di in range(1, radius + 1):
            right += _shifted(rows, 2, di)
            left += _shifted(rows, 2, -di)
    right /= np.float32(radius * 3)
    left /= np.float32(radius * 3)
    with np.errstate(divide="ignore", invalid="ignore"):  # host numpy only; CuPy is quiet
        ratio = xp.where(right >= plate, plate / right, right / plate)
        ratio = xp.where((right == 0) & (plate == 0), mean, ratio)
        other = xp.where(left >= plate, plate / left, left / plate)
        other = xp.where((left == 0) & (plate == 0), np.float32(0), other)
    ratio = xp.minimum(ratio, other).astype(xp.float32)
    window = xp.stack([_shifted(ratio, 0, dk) for dk in range(-size, size + 1)])
    weights = xp.partition(window, size - 1, axis=0)[size - 1]
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(weights.transpose(1, 0, 2),
                                                           dtype=xp.float32)
    return result


class StripesMaskParams(StageParams):
    """``tomopy.prep.stripe.stripes_mask3d`` (template defaults). The template's
    ``weights: REQUIRED`` is TomoPy's data argument listed as a parameter: the weights are
    the step's input, so ``weights`` only takes ``null``."""

    weights: None = Field(default=None, description="null: the weights are the input")
    threshold: float = Field(default=0.6, allow_inf_nan=False)
    min_stripe_length: int = Field(default=20, ge=1)
    min_stripe_depth: int = Field(default=10, ge=0)
    min_stripe_width: int = Field(default=5, ge=1)
    sensitivity_perc: float = Field(default=85.0, gt=0, le=100)


def _count(mask: npt.NDArray[np.bool_], axis: int, half: int) -> npt.NDArray[np.int32]:
    total: npt.NDArray[np.int32] = array_module(mask).zeros(mask.shape, np.int32)
    for offset in range(-half, half + 1):
        total += _shifted(mask, axis, offset)
    return total


def _any(mask: npt.NDArray[np.bool_], axis: int, offsets: range) -> npt.NDArray[np.bool_]:
    found: npt.NDArray[np.bool_] = array_module(mask).zeros(mask.shape, bool)
    for offset in offsets:
        found |= _shifted(mask, axis, offset)
    return found


def stripes_mask3d(block: npt.NDArray[Any], *, weights: None = None, threshold: float = 0.6,
                   min_stripe_length: int = 20, min_stripe_depth: int = 10,
                   min_stripe_width: int = 5, sensitivity_perc: float = 85.0
                   ) -> npt.NDArray[np.float32]:
    """1 where the weights of a sinogram block ``(rows, angles, cols)`` mark a stripe."""
    stage = "stripes_mask3d"
    checked = float_block(block, stage)
    xp = array_module(checked)
    values = xp.ascontiguousarray(checked.transpose(1, 0, 2))
    angles, depth, cols = values.shape
    for name, value, limit in (("min_stripe_length", min_stripe_length, angles),
                               ("min_stripe_depth", min_stripe_depth, depth),
                               ("min_stripe_width", min_stripe_width, cols)):
        if value >= limit or value < (0 if name == "min_stripe_depth" else 1):
            raise StageError(f"stage {stage!r}: {name}: expected below the {limit} of that "
                             f"axis (TomoPy's rule), got {value}")
    if not 0 < sensitivity_perc <= 100:
        raise StageError(f"stage {stage!r}: sensitivity_perc: expected (0, 100], got "
                         f"{sensitivity_perc}")
    share = np.float32(0.01) * np.float32(sensitivity_perc)
    mask = values <= np.float32(threshold)
    if min_stripe_depth != 0:
        too_deep = _count(mask, 1, min_stripe_depth // 2) > int(share * np.float32(
            min_stripe_depth))
        mask = mask & ~too_deep
    half_length = min_stripe_length // 2
    mask = mask & ~(_count(mask, 0, half_length) < int(share * np.float32(min_stripe_length)))
    mask = mask & ~(_count(mask, 0, half_length) < half_length)
    half_width, reach = min_stripe_width // 2, 2 * min_stripe_width
    for _ in range(min_stripe_width):
        sideways = (_any(mask, 2, range(-half_width, 1))
                    & _any(mask, 2, range(0, half_width + 1)))
        vertical = _any(mask, 0, range(-reach, 1)) & _any(mask, 0, range(0, reach + 1))
        mask = mask | sideways | vertical
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(mask.transpose(1, 0, 2),
                                                           dtype=xp.float32)
    return result


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="stripes_detect3d", fn=stripes_detect3d, pattern=Pattern.SINOGRAM,
        angle_local=False,  # along the angles of whole sinograms
        # across rows: the dead-voxel 6-neighbour mean (1) and the ratio plate (radius)
        halo=lambda p: p.radius + 1,
        params=StripesDetectParams,
        # transposed copy, neighbour mean, gradient, plate/left/right means, ratio, and
        # the (2·size+1)-deep median window (the largest term)
        memory=lambda shape, dtype, params: int(
            (10 + 2 * params.size + 1) * np.prod(shape) * 4),
        summary="stripe-edge weights from gradient ratios (TomoPy's stripes_detect3d)",
        aliases=("tomopy.prep.stripe.stripes_detect3d",), device=True,
    ),
    StageSpec(
        name="stripes_mask3d", fn=stripes_mask3d, pattern=Pattern.SINOGRAM,
        angle_local=False,  # along the angles of whole sinograms
        # the depth count reaches min_stripe_depth // 2 rows; a halo of the whole depth
        # also gives every block the more than min_stripe_depth rows TomoPy's rule needs
        halo=lambda p: p.min_stripe_depth,
        params=StripesMaskParams,
        memory=scaled_memory(6.0),  # transposed copy, masks, counts (int32), output
        summary="binary stripe mask from stripes_detect3d's weights (TomoPy)",
        aliases=("tomopy.prep.stripe.stripes_mask3d",), device=True,
    ),
)

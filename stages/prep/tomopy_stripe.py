"""TomoPy's remaining stripe removers, in its names, parameters and semantics, on sinogram
blocks ``(rows, angles, cols)`` (TomoPy filters each ``tomo[:, row, :]``).

* ``remove_stripe_sf`` (``tomopy.prep.stripe.remove_stripe_sf``, TomoPy's C
  ``remove_stripe_sf``): the mean over the angles of each sinogram is smoothed by a
  ``size``-wide moving average (offsets ``-size//2 … size - 1 - size//2``, indices
  clamped to the detector), and the difference ``mean - smooth`` is subtracted from
  every angle.
* ``remove_stripe_based_interpolation`` (``tomopy.prep.stripe.remove_stripe_based_
  interpolation``, algorithms 4–6 of Vo et al. 2018 as TomoPy writes them): sort each
  column over the angles, median-smooth the sorted sinogram across ``size`` columns,
  their means over the middle ``1 - drop_ratio`` of the angles give a factor per
  column; TomoPy's ``_detect_stripe`` (a line fitted to the sorted factors, ``snr``
  times its noise level) marks stripes, dilated by one column and never in the two
  columns at each edge; ``norm`` divides by the factor; the marked columns are linearly
  interpolated, angle by angle, from the nearest unmarked ones (TomoPy evaluates a
  degree-1 ``RectBivariateSpline`` at the same points: the same values). Differs from
  algotom's namesake in two details TomoPy does not have (algotom sets a zero sorted
  mean to 1, and its stripe detector differs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy import ndimage

from stages.backends.xp import array_module, host_copy, ndimage_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "detect_stripe_tomopy", "remove_stripe_based_interpolation",
           "remove_stripe_sf"]


class StripeSfParams(StageParams):
    """``tomopy.prep.stripe.remove_stripe_sf`` (template: ``size: 5``)."""

    size: int = Field(default=5, ge=1, le=4096, description="moving-average width, columns")


def remove_stripe_sf(block: npt.NDArray[Any], *, size: int = 5) -> npt.NDArray[np.float32]:
    """Subtract each sinogram's column-mean minus its moving average (module notes)."""
    stage = "remove_stripe_sf"
    if size < 1:
        raise StageError(f"stage {stage!r}: size: expected >= 1, got {size}")
    data = float_block(block, stage)
    xp = array_module(data)
    cols = data.shape[2]
    mean = data.mean(axis=1, dtype=xp.float32)  # (rows, cols)
    smooth = xp.zeros_like(mean)
    index = np.arange(cols)
    for j in range(size):
        neighbour = xp.asarray(np.clip(index + j - size // 2, 0, cols - 1))
        smooth += mean[:, neighbour]
    smooth /= np.float32(size)
    result: npt.NDArray[np.float32] = (data - (mean - smooth)[:, None, :]).astype(xp.float32)
    return result


class StripeInterpolationParams(StageParams):
    """``tomopy.prep.stripe.remove_stripe_based_interpolation`` (template defaults)."""

    snr: float = Field(default=3.0, gt=0, allow_inf_nan=False)
    size: int = Field(default=31, ge=1, le=4096)
    drop_ratio: float = Field(default=0.1, ge=0, allow_inf_nan=False)
    norm: bool = True


def detect_stripe_tomopy(factors: npt.NDArray[np.floating], snr: float
                         ) -> npt.NDArray[np.float64]:
    """TomoPy's ``_detect_stripe`` (algorithm 4 of Vo et al. 2018): 1 at stripe columns."""
    count = len(factors)
    ordered = np.sort(factors)[::-1]
    x = np.arange(0, count, 1.0)
    ndrop = int(np.int16(0.25 * count))
    slope, intercept = np.polyfit(x[ndrop:-ndrop - 1], ordered[ndrop:-ndrop - 1], 1)
    end = intercept + slope * x[-1]
    noise = max(float(np.abs(end - intercept)), 1e-6)
    mask = np.zeros(count, dtype=np.float64)
    if np.abs(ordered[0] - intercept) / noise >= snr:
        mask[factors > intercept + noise * snr * 0.5] = 1.0
    if np.abs(ordered[-1] - end) / noise >= snr:
        mask[factors <= end - noise * snr * 0.5] = 1.0
    return mask


def _stripe_columns(factors: npt.NDArray[np.floating], snr: float) -> npt.NDArray[np.bool_]:
    """The columns of one sinogram to interpolate: TomoPy's detection, dilated by one
    column, never the two columns at each edge."""
    mask = ndimage.binary_dilation(detect_stripe_tomopy(factors, snr), iterations=1)
    mask[:2] = False
    mask[-2:] = False
    return np.asarray(mask, dtype=bool)


def _interpolation_plan(masks: npt.NDArray[np.bool_]
                        ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp],
                                   npt.NDArray[np.float64]]:
    """For every sinogram and column, the unmarked columns either side and the weight of
    the right one: ``(lo, hi, weight)`` of shape ``(rows, cols)``; an unmarked column is
    its own ``lo`` and ``hi`` with weight 0 (``(1 - 0)·x + 0·x`` is ``x`` exactly)."""
    rows, cols = masks.shape
    lo = np.broadcast_to(np.arange(cols), (rows, cols)).copy()
    hi = lo.copy()
    weight = np.zeros((rows, cols), dtype=np.float64)
    for r in np.flatnonzero(masks.any(axis=1)):
        missing = np.flatnonzero(masks[r])
        valid = np.flatnonzero(~masks[r])
        right = np.searchsorted(valid, missing)  # valid[right - 1] < missing < valid[right]
        lo[r, missing], hi[r, missing] = valid[right - 1], valid[right]
        weight[r, missing] = (missing - lo[r, missing]) / (hi[r, missing] - lo[r, missing])
    return lo, hi, weight


def remove_stripe_based_interpolation(
    block: npt.NDArray[Any], *, snr: float = 3.0, size: int = 31, drop_ratio: float = 0.1,
    norm: bool = True,
) -> npt.NDArray[np.float32]:
    """Vo's interpolation-based stripe removal, TomoPy's version, per sinogram.

    The whole block at once, in its array module: the sort over the angles, the median
    across ``size`` columns, the means, the normalisation and the interpolation (one
    gather). Only the per-sinogram factors (``cols`` values each) come to the host for
    TomoPy's line fit (``np.polyfit``, as TomoPy), and the interpolation's index tables
    go back up."""
    stage = "remove_stripe_based_interpolation"
    data = float_block(block, stage)
    if data.shape[2] < 5 or data.shape[1] < 2:
        raise StageError(f"stage {stage!r}: expected at least 2 angles and 5 columns, got "
                         f"{data.shape[1]} and {data.shape[2]}")
    xp = array_module(data)
    if not bool(xp.isfinite(data).all()):
        raise StageError(f"stage {stage!r}: expected finite values, got NaN or inf")
    rows, nrow, _ = data.shape
    ndrop = int(0.5 * float(np.clip(drop_ratio, 0.0, 0.8)) * nrow)
    ordered = xp.sort(data, axis=1)
    smooth = ndimage_module(xp).median_filter(ordered, (1, 1, size))
    list1 = xp.mean(ordered[:, ndrop:nrow - ndrop], axis=1)
    list2 = xp.mean(smooth[:, ndrop:nrow - ndrop], axis=1)
    nonzero = list2 != 0
    factors = xp.where(nonzero, list1 / xp.where(nonzero, list2, np.float32(1)),
                       np.float32(1))
    host_factors = host_copy(factors)
    masks = np.stack([_stripe_columns(f, snr) for f in host_factors])
    out = data / factors[:, None, :] if norm else data.copy()
    if not masks.any():
        return xp.ascontiguousarray(out, dtype=xp.float32)  # type: ignore[no-any-return]
    lo, hi, weight = (xp.asarray(table) for table in _interpolation_plan(masks))
    sino = xp.arange(rows)[:, None, None]
    angle = xp.arange(nrow)[None, :, None]
    right = weight[:, None, :]
    result: npt.NDArray[np.float32] = ((1.0 - right) * out[sino, angle, lo[:, None, :]]
                                       + right * out[sino, angle, hi[:, None, :]]
                                       ).astype(xp.float32)
    return result


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="remove_stripe_sf", fn=remove_stripe_sf, pattern=Pattern.SINOGRAM,
        angle_local=False,  # the mean over all angles
        params=StripeSfParams, memory=scaled_memory(3.0), device=True,
        summary="stripe removal by smoothing the mean sinogram row (TomoPy)",
        aliases=("tomopy.prep.stripe.remove_stripe_sf",),
    ),
    StageSpec(
        name="remove_stripe_based_interpolation", fn=remove_stripe_based_interpolation,
        pattern=Pattern.SINOGRAM, angle_local=False,  # sorting over all angles
        params=StripeInterpolationParams,
        # input, float32 copy, sorted, smoothed and normalised copies, the interpolation's
        # two float64 gathers and its float64 sum
        memory=scaled_memory(11.0), device=True,
        summary="Vo's interpolation-based stripe removal, TomoPy's version",
        aliases=("tomopy.prep.stripe.remove_stripe_based_interpolation",),
    ),
)

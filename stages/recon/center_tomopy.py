"""TomoPy's ``tomopy.recon.rotation.find_center``: the CoR that minimises the entropy of a
reconstructed slice (Donath et al. 2006), checked by the one CoR policy.

TomoPy reconstructs row ``ind`` (default the middle) with gridrec at the detector middle
``cols // 2`` to set a histogram range (``[2·min, 2·max]``, each halved when it has the
"wrong" sign, after a circular mask), then runs SciPy's Nelder–Mead from ``init``
(default ``cols // 2``) with ``tol`` on the cost ``-Σ p log2 p`` of the 64-bin histogram
of the masked slice (``p`` = bin count / pixels + 1e-12). Here the same, with gridrec
being our Fourier-domain FBP with TomoPy's ``shepp`` window (``tomopy_recon``'s
gridrec), and TomoPy's circular mask (``ratio`` is accepted and, as in TomoPy, not used
by the cost).

The entropy surface has local minima; Nelder–Mead from one start finds the nearest.
So the result goes through the policy of :mod:`stages.recon.center_policy` as
``find_center_pc``'s does: the policy's own estimate (Vo's method in the window clamped
to the detector, the 0°/180° pair) cross-checks it. Agreement (within ``max(1,
cols/500)`` px) combines the confidences; disagreement is a warning, and when the
policy's estimate is itself confident (≥ 0.5) it is used instead (TomoPy would return
the local minimum silently). A minimum outside the detector's reliable range is a
warning too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy.optimize import minimize

from stages.misc.geometry import circle_inside
from stages.recon.center_policy import (
    CorEstimate,
    checked_by_policy,
    find_center,
    reliable_window,
)
from stages.recon.fourier import fourier_fbp
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory, unchanged
from streamer.errors import StageError

__all__ = ["SPECS", "FindCenterEntropyParams", "entropy_center", "slice_entropy"]

#: TomoPy's histogram bins.
BINS = 64


class FindCenterEntropyParams(StageParams):
    """``tomopy.recon.rotation.find_center`` (template defaults)."""

    ind: int | None = Field(default=None, ge=0, description="detector row (null: middle)")
    init: float | None = Field(default=None, allow_inf_nan=False,
                               description="start of the search (null: cols // 2)")
    tol: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    mask: bool = True
    ratio: float = Field(default=1.0, gt=0, description="accepted; unused, as in TomoPy")
    sinogram_order: bool = Field(default=False,
                                 description="accepted; our finder always gets projections")


def _gridrec(sinogram: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64],
             center: float, mask: bool) -> npt.NDArray[np.float32]:
    slice_: npt.NDArray[np.float32] = fourier_fbp(
        sinogram[None], angles_deg=angles_deg, center=center, filter_name="shepp")[0]
    if mask:
        inside = circle_inside(*slice_.shape)
        slice_ = np.where(inside, slice_, np.float32(0.0)).astype(np.float32)
    return slice_


def slice_entropy(slice_: npt.NDArray[np.float32], low: float, high: float) -> float:
    """TomoPy's cost: ``-Σ p log2 p`` of the 64-bin histogram over ``[low, high]``."""
    counts, _ = np.histogram(slice_, bins=BINS, range=(low, high))
    p = counts.astype(np.float32) / np.float32(slice_.size) + np.float32(1e-12)
    return float(-np.dot(p, np.log2(p)))


def _widened(low: float, high: float) -> tuple[float, float]:
    """TomoPy's ``_adjust_hist_min``/``_adjust_hist_max``."""
    return (2 * low if low < 0 else 0.5 * low), (0.5 * high if high < 0 else 2 * high)


def entropy_center(sinogram: npt.NDArray[np.floating], angles_deg: npt.NDArray[np.float64],
                   *, init: float | None = None, tol: float = 0.5, mask: bool = True
                   ) -> tuple[float, int]:
    """TomoPy's entropy search on one sinogram ``(angles, cols)``: the centre and the
    number of reconstructions it took."""
    sino = np.ascontiguousarray(sinogram, dtype=np.float32)
    cols = sino.shape[1]
    start = float(cols // 2 if init is None else init)
    first = _gridrec(sino, angles_deg, float(cols // 2), mask)
    low, high = _widened(float(first.min()), float(first.max()))
    if not high > low:
        raise StageError("find_center: the reconstructed slice is constant: expected a "
                         "sinogram with structure")
    calls = 0

    def cost(center: npt.NDArray[np.float64]) -> float:
        nonlocal calls
        calls += 1
        return slice_entropy(_gridrec(sino, angles_deg, float(center[0]), mask), low, high)

    result = minimize(cost, np.array([start]), method="Nelder-Mead", tol=tol)
    return float(result.x[0]), calls


def center_by_entropy(projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64],
                      params: Any) -> CorEstimate:
    """Once per scan: TomoPy's entropy search, cross-checked by the CoR policy."""
    data = np.asarray(projections)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if data.ndim != 3 or angles.shape != (data.shape[0],):
        raise StageError(f"find_center: expected projections (angles, rows, cols) and one "
                         f"angle each, got {data.shape} and {angles.shape}")
    rows, cols = data.shape[1:]
    row = rows // 2 if params.ind is None else int(params.ind)
    if not 0 <= row < rows:
        raise StageError(f"find_center: ind: expected a row below {rows}, got {row}")
    sinogram = data[:, row, :]
    if not np.isfinite(sinogram).all():
        raise StageError(f"find_center: the sinogram of row {row} has NaN or inf values")
    center, calls = entropy_center(sinogram, angles, init=params.init, tol=params.tol,
                                   mask=params.mask)
    notes = [f"entropy minimum {center:.2f} after {calls} reconstructions of row {row}"]
    warnings: list[str] = []
    lo_ok, hi_ok = reliable_window(cols)
    if not lo_ok <= center <= hi_ok:
        warnings.append(f"the entropy minimum {center:.2f} lies outside the reliable range "
                        f"[{lo_ok:.1f}, {hi_ok:.1f}] of this {cols}-column detector")
    return checked_by_policy(center, find_center(data, angles, row=row), cols=cols,
                             finder="entropy", method="entropy", short="entropy", notes=notes,
                             warnings=warnings,
                             why_policy=" (Nelder–Mead finds the nearest local minimum)")


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="find_center_entropy", fn=unchanged, pattern=Pattern.SINOGRAM,
        angle_local=False,  # whole sinograms
        params=FindCenterEntropyParams,
        # runs once per scan on one sinogram: negligible against a block
        memory=scaled_memory(0.01),
        summary="Centre of rotation by TomoPy's entropy search (Nelder–Mead over gridrec "
        "slices), once per scan, cross-checked by the CoR policy; sets the "
        "reconstruction's center (data pass through unchanged).",
        finds_center=center_by_entropy,
        aliases=("tomopy.recon.rotation.find_center",),
    ),
)

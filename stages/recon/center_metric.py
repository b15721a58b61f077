"""httomolibgpu's ``find_center_metric_recon``: the CoR whose reconstruction scores best on
an image metric, over a window of candidate centres, checked by the one CoR policy.

httomolibgpu's source for the httomo-backends 1.3.1 template is not public (its public
history holds only a stub that returns 0.0), so this follows the method's documented
contract: reconstruct one row (``ind``; ``null``/``mid`` the middle) at every centre of
``cor_initialisation_value ± range`` (default the detector middle ``(cols - 1) / 2``) in
steps of ``step`` with ``reconstruction_method`` (``LPRec3d_tomobar``, ``FBP3d_tomobar``,
``SIRT3d_tomobar``, ``CGLS3d_tomobar``: ours of those names; ``recon_iterations``
default 15 for the iterative two), optionally smooth it (``gaussian_filter_sigma``),
keep the central ``squared_mask_x_y_size`` square (``null``: the inscribed circle), and
score it: ``tv`` the mean gradient magnitude, ``entropy`` TomoPy's 64-bin histogram
entropy (range from the first centre's slice, widened as TomoPy widens it). The lowest
score wins, refined by a parabola through it and its neighbours.

Never silent: a minimum on the window's edge, or a centre the CoR policy (Vo's method in
the clamped window, the 0°/180° pair) disagrees with, is a warning; when the policy is
confident and disagrees, its centre is used (as for TomoPy's entropy search).
``save_recon_tiff`` only takes ``null`` (a finder writes no files here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy import ndimage

from stages.misc.geometry import circle_inside
from stages.recon.center_policy import (
    CorEstimate,
    checked_by_policy,
    find_center,
)
from stages.recon.center_tomopy import slice_entropy
from stages.recon.httomo_recon import fbp3d_tomobar, lprec3d_tomobar
from stages.recon.iterative import cgls, sirt
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory, unchanged
from streamer.errors import StageError

__all__ = ["SPECS", "FindCenterMetricParams", "center_by_metric", "metric_curve"]

Method = Literal["LPRec3d_tomobar", "FBP3d_tomobar", "SIRT3d_tomobar", "CGLS3d_tomobar"]


class FindCenterMetricParams(StageParams):
    """``find_center_metric_recon`` (httomo-backends 1.3.1 template defaults)."""

    metric_type: Literal["tv", "entropy"] = "tv"
    range: int = Field(default=10, ge=1, le=4096, description="search radius, px")
    step: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    reconstruction_method: Method = "LPRec3d_tomobar"
    ind: int | Literal["mid"] | None = None
    recon_iterations: int | None = Field(default=None, ge=1, le=1000)
    cor_initialisation_value: float | None = Field(default=None, allow_inf_nan=False)
    squared_mask_x_y_size: int | None = Field(default=None, ge=4)
    gaussian_filter_sigma: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    save_recon_tiff: None = None


def _reconstructor(method: str, iterations: int | None
                   ) -> Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64], float],
                                 npt.NDArray[np.float32]]:
    """One slice at a centre, with the named method (no mask: the metric masks)."""

    def run(sino: npt.NDArray[np.float32], angles: npt.NDArray[np.float64], center: float
            ) -> npt.NDArray[np.float32]:
        block = sino[None]
        if method == "LPRec3d_tomobar":
            out = lprec3d_tomobar(block, angles_deg=angles, center=center,
                                  recon_mask_radius=None)
        elif method == "FBP3d_tomobar":
            out = fbp3d_tomobar(block, angles_deg=angles, center=center,
                                recon_mask_radius=None)
        elif method == "SIRT3d_tomobar":
            out = sirt(block, angles_deg=angles, center=center, iterations=iterations or 15,
                       recon_mask_radius=2.0)
        else:
            out = cgls(block, angles_deg=angles, center=center, iterations=iterations or 15,
                       recon_mask_radius=2.0)
        result: npt.NDArray[np.float32] = np.asarray(out[0], dtype=np.float32)
        return result

    return run


def _region(slice_: npt.NDArray[np.float32], square: int | None) -> npt.NDArray[np.float32]:
    rows, cols = slice_.shape
    if square is None:
        return slice_[circle_inside(rows, cols)]
    side = min(square, rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    return slice_[top:top + side, left:left + side]


def _tv(slice_: npt.NDArray[np.float32], square: int | None) -> float:
    gy, gx = np.gradient(slice_.astype(np.float64))
    return float(np.mean(_region(np.hypot(gx, gy).astype(np.float32), square)))


def metric_curve(sinogram: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64],
                 centers: npt.NDArray[np.float64], params: FindCenterMetricParams
                 ) -> npt.NDArray[np.float64]:
    """The metric of the row's reconstruction at each of ``centers`` (module notes)."""
    recon = _reconstructor(params.reconstruction_method, params.recon_iterations)
    sigma = params.gaussian_filter_sigma
    square = params.squared_mask_x_y_size
    limits: tuple[float, float] | None = None
    scores = []
    for center in centers:
        slice_ = recon(sinogram, angles_deg, float(center))
        if sigma is not None:
            slice_ = ndimage.gaussian_filter(slice_, sigma).astype(np.float32)
        if params.metric_type == "tv":
            scores.append(_tv(slice_, square))
            continue
        values = _region(slice_, square)
        if limits is None:
            low, high = float(values.min()), float(values.max())
            limits = ((2 * low if low < 0 else 0.5 * low), (0.5 * high if high < 0 else 2 * high))
        scores.append(slice_entropy(values, *limits))
    return np.asarray(scores, dtype=np.float64)


def _refined(centers: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], best: int
             ) -> float:
    if best in (0, centers.size - 1):
        return float(centers[best])
    left, mid, right = scores[best - 1: best + 2]
    curvature = left - 2 * mid + right
    if curvature <= 0:
        return float(centers[best])
    offset = 0.5 * (left - right) / curvature
    return float(centers[best] + offset * (centers[best + 1] - centers[best]))


def center_by_metric(projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64],
                     params: Any) -> CorEstimate:
    """Once per scan: the metric search, cross-checked by the CoR policy."""
    data = np.asarray(projections)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if data.ndim != 3 or angles.shape != (data.shape[0],):
        raise StageError(f"find_center_metric_recon: expected projections (angles, rows, "
                         f"cols) and one angle each, got {data.shape} and {angles.shape}")
    rows, cols = data.shape[1:]
    row = rows // 2 if params.ind in (None, "mid") else int(params.ind)
    if not 0 <= row < rows:
        raise StageError(f"find_center_metric_recon: ind: expected a row below {rows}, "
                         f"got {row}")
    sinogram = np.ascontiguousarray(data[:, row, :], dtype=np.float32)
    if not np.isfinite(sinogram).all():
        raise StageError(f"find_center_metric_recon: the sinogram of row {row} has NaN or "
                         "inf values")
    start = (cols - 1) / 2 if params.cor_initialisation_value is None else float(
        params.cor_initialisation_value)
    count = int(np.floor(2 * params.range / params.step + 1e-9)) + 1
    centers = start - params.range + params.step * np.arange(count)
    scores = metric_curve(sinogram, angles, centers, params)
    best = int(np.argmin(scores))
    center = _refined(centers, scores, best)
    notes = [f"{params.metric_type} minimum at {center:.2f} over {count} centres "
             f"[{centers[0]:.1f}, {centers[-1]:.1f}] of row {row}"]
    warnings: list[str] = []
    if best in (0, count - 1):
        warnings.append(f"the {params.metric_type} minimum lies on the edge of the search "
                        f"window [{centers[0]:.1f}, {centers[-1]:.1f}]: the centre may be "
                        "outside it")
    return checked_by_policy(center, find_center(data, angles, row=row), cols=cols,
                             finder=params.metric_type, method=f"metric-{params.metric_type}",
                             short="metric", notes=notes, warnings=warnings)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="find_center_metric_recon", fn=unchanged, pattern=Pattern.SINOGRAM,
        angle_local=False,  # whole sinograms
        params=FindCenterMetricParams,
        memory=scaled_memory(0.01),  # once per scan on one sinogram
        summary="Centre of rotation by an image metric (tv/entropy) of one row's "
        "reconstructions over a window of centres, once per scan, cross-checked by the CoR "
        "policy; sets the reconstruction's center (data pass through unchanged).",
        finds_center=center_by_metric,
        aliases=("httomolibgpu.recon.rotation.find_center_metric_recon",),
    ),
)

"""``find_center_360``: the CoR of an offset-axis 360° scan (Vo et al., Opt. Express 29,
17849, 2021), ported from algotom ``prep/calculation.py`` (its origin) and httomolibgpu
``recon/rotation.py`` (the same search, with a CUDA metric kernel) to NumPy.

The sinogram's first half (rows ``0 … n//2``) and its mirrored second half (the last
``n//2 + 1`` rows, columns flipped) see the same rays; with the axis off the detector
centre they overlap on one side only. A window of ``win_width`` columns at the edge of the
mirrored half slides across the first half; the metric at each position is
``|1 - r|``, ``r`` the Pearson correlation of the two windows (optionally with each row of
the sliding window scaled to the other's sum of absolute values, ``norm``), divided by the
smallest metric. The side with the sharper minimum (the quadratic coefficient of a
parabola through the 5 metrics around it) wins; a 3-point parabola refines the minimum's
position (``overlap_position``), and

    overlap = overlap_position + win_width // 2                  (left)
    overlap = ncol - overlap_position + win_width // 2           (right)
    cor     = overlap / 2 - 1 (left),   ncol - overlap / 2 - 1 (right)   (algotom)

Differences from upstream, on purpose: ``cor`` is algotom's formula (httomolibgpu since
Feb 2026 returns ``ncol`` there, for its stitching step); the metric is computed in
float64 from running sums (upstream: float32 per window); a constant window (zero
variance, e.g. empty background at a detector edge) counts as uncorrelated, ``r = 0``,
where upstream's NaN ends the search with an error; ``use_overlap`` (upstream's
blended three-window metric) is not implemented and refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.polynomial import Polynomial
from scipy import ndimage

from streamer.errors import StageError

__all__ = ["Center360", "calculate_curvature", "find_center_360", "find_overlap",
           "overlap_metrics"]

Side = Literal["left", "right"]


@dataclass(frozen=True)
class Center360:
    """What ``find_center_360`` finds (HTTomo's four side outputs).

    Attributes
    ----------
    cor : float
        0-based detector column of the rotation axis.
    overlap : float
        Width in columns of the overlap between the two halves of the sinogram.
    side : {"left", "right"}
        The side of the detector where the halves overlap (where the axis is).
    overlap_position : float
        Centre of the best window in the first half, columns.
    curvature : float
        Sharpness of the metric's minimum (larger: more distinct).
    at_edge : bool
        Whether the minimum lies at the end of the searched positions (less reliable).
    """

    cor: float
    overlap: float
    side: Side
    overlap_position: float
    curvature: float
    at_edge: bool


def overlap_metrics(
    mat1: npt.NDArray[Any], mat2: npt.NDArray[Any], win_width: int, side: Side,
    *, denoise: bool = True, norm: bool = False,
) -> tuple[npt.NDArray[np.float64], int]:
    """The metric ``|1 - r|`` (divided by its minimum) for every window position in
    ``mat1`` against the ``side`` edge window of ``mat2``, and the offset (half the
    window) of position 0, as upstream's ``_search_overlap``."""
    if denoise:
        mat1 = ndimage.gaussian_filter(np.asarray(mat1, np.float64), (2, 2), mode="reflect")
        mat2 = ndimage.gaussian_filter(np.asarray(mat2, np.float64), (2, 2), mode="reflect")
    else:
        mat1 = np.asarray(mat1, np.float64)
        mat2 = np.asarray(mat2, np.float64)
    nrow, ncol1 = mat1.shape
    ncol2 = mat2.shape[1]
    win = int(np.clip(win_width, 6, min(ncol1, ncol2) // 2 - 1))
    offset = win // 2
    win = 2 * offset
    npos = ncol1 - win
    ref = mat2[:, :win] if side == "right" else mat2[:, ncol2 - win :]
    if not norm:  # Pearson is shift-invariant: centre for accuracy
        mat1 = mat1 - mat1.mean()
        ref = ref - ref.mean()
    # per row and position: window sums of mat1, mat1² and mat1·ref
    s1 = np.zeros((nrow, npos))
    s11 = np.zeros((nrow, npos))
    s12 = np.zeros((nrow, npos))
    a1 = np.zeros((nrow, npos))
    for x in range(win):
        cols = mat1[:, x : x + npos]
        s1 += cols
        s11 += cols * cols
        s12 += cols * ref[:, x : x + 1]
        a1 += np.abs(cols)
    if norm:
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.abs(ref).sum(axis=1)[:, None] / a1
    else:
        factor = np.ones((nrow, 1))
    factor[~np.isfinite(factor)] = 0.0  # an all-zero row of mat1: upstream's inf/NaN
    n = nrow * win
    sum1 = (factor * s1).sum(axis=0)
    sum11 = (factor * factor * s11).sum(axis=0)
    sum12 = (factor * s12).sum(axis=0)
    sum2, sum22 = ref.sum(), (ref * ref).sum()
    cov = sum12 - sum1 * sum2 / n
    var1 = sum11 - sum1 * sum1 / n
    var2 = sum22 - sum2 * sum2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(cov / np.sqrt(var1 * var2), -1.0, 1.0)
    r[~np.isfinite(r)] = 0.0  # a constant window correlates with nothing
    metric: npt.NDArray[np.float64] = np.abs(1.0 - r)
    smallest = metric.min()
    if smallest != 0.0:
        metric /= smallest
    return metric, offset


def calculate_curvature(metric: npt.NDArray[np.float64]) -> tuple[float, float, bool]:
    """(curvature, sub-pixel minimum position, minimum at the edge) of ``metric``, as
    upstream's ``_calculate_curvature`` (5-point and 3-point parabolas)."""
    radius = 2
    if metric.size < 2 * radius + 1:
        raise StageError(f"stage 'find_center_360': expected at least 5 window positions, "
                         f"got {metric.size} (detector too narrow)")
    index = int(np.argmin(metric))
    at = int(np.clip(index, radius, metric.size - radius - 1))
    five = metric[at - radius : at + radius + 1]
    three = metric[at - 1 : at + 2]
    if not (np.isfinite(five).all() and np.isfinite(three).all()):
        raise StageError("stage 'find_center_360': the overlap metric is not finite "
                         "(constant or non-finite sinogram)")
    curvature = abs(float(Polynomial.fit(np.arange(2 * radius + 1), five, 2).convert().coef[-1]))
    coef = Polynomial.fit(np.arange(at - 1, at + 2), three, 2).convert().coef
    position = float(at)
    if len(coef) == 3 and coef[2] != 0.0:
        vertex = -coef[1] / (2 * coef[2])
        if at - 1 <= vertex <= at + 1:
            position = float(vertex)
    at_edge = index <= 1 or index >= metric.size - 2
    return curvature, position, at_edge


def find_overlap(
    mat1: npt.NDArray[Any], mat2: npt.NDArray[Any], win_width: int,
    side: Side | None = None, *, denoise: bool = True, norm: bool = False,
) -> tuple[float, Side, float, float, bool]:
    """(overlap, side, overlap_position, curvature, at_edge) of two images, upstream's
    ``_find_overlap`` (``side`` None: the side with the larger curvature)."""
    ncol1 = mat1.shape[1]
    win = int(np.clip(win_width, 6, min(ncol1, mat2.shape[1]) // 2))
    found: dict[str, tuple[float, float, bool]] = {}
    for candidate in ("right", "left") if side is None else (side,):
        metric, offset = overlap_metrics(mat1, mat2, win, candidate, denoise=denoise, norm=norm)
        curvature, position, at_edge = calculate_curvature(metric)
        found[candidate] = (curvature, position + offset, at_edge)
    if side is None:
        side = "right" if found["right"][0] > found["left"][0] else "left"
    curvature, position, at_edge = found[side]
    overlap = ncol1 - position + win // 2 if side == "right" else position + win // 2
    return overlap, side, position, curvature, at_edge


def find_center_360(
    sinogram: npt.NDArray[Any], *, win_width: int = 10, side: Side | None = None,
    denoise: bool = True, norm: bool = False,
) -> Center360:
    """The CoR, overlap, side and overlap position of a 360° ``(angles, cols)`` sinogram.

    Raises
    ------
    StageError
        If the sinogram is not 2-D and real, has fewer than 4 angles, or is too narrow.
    """
    if sinogram.ndim != 2 or sinogram.dtype.kind not in "uif":
        raise StageError(f"stage 'find_center_360': sinogram: expected a real 2-D array, got "
                         f"shape {sinogram.shape} of {sinogram.dtype.name}")
    nrow, ncol = sinogram.shape
    if nrow < 4 or ncol < 16:
        raise StageError(f"stage 'find_center_360': sinogram: expected at least 4 angles and "
                         f"16 columns, got {nrow} x {ncol}")
    half = nrow // 2 + 1
    top = sinogram[:half]
    bottom = np.fliplr(sinogram[-half:])
    overlap, found_side, position, curvature, at_edge = find_overlap(
        top, bottom, win_width, side, denoise=denoise, norm=norm
    )
    cor = overlap / 2.0 - 1.0 if found_side == "left" else ncol - overlap / 2.0 - 1.0
    return Center360(float(cor), float(overlap), found_side, float(position), curvature,
                     at_edge)

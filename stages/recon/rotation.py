"""Centre-of-rotation (CoR) estimation.

Convention: the CoR is the **0-based detector column of the rotation axis**: pixel ``k``
has its centre at ``x = k``, so the middle of an ``n``-column detector is ``(n - 1) / 2``.
This is algotom's convention, and also that of tomopy's ``find_center_vo`` (whose
metric shifts the flipped sinogram by ``2 (cor - (ncol - 1) / 2)``); tomopy's
reconstruction ``center`` argument can differ from it by up to ±0.5 px.

These are plain functions, not block stages: they reduce a sinogram or a pair of
projections to a number.

* :func:`find_center_vo`: Vo's Fourier-metric method on a 0–180° sinogram, through
  ``algotom.prep.calculation.find_center_vo``.
* :func:`find_center_pair`: the mirrored 0°/180° projection pair, by normalised
  cross-correlation with parabolic sub-pixel refinement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from algotom.prep import calculation

from stages.spec import StageSpec
from streamer.errors import StageError

__all__ = ["SPECS", "CorResult", "find_center_pair", "find_center_vo"]


@dataclass(frozen=True)
class CorResult:
    """A CoR estimate and how much to trust it.

    Attributes
    ----------
    center : float
        Axis position, 0-based detector column (``(cols - 1) / 2`` is the middle).
    confidence : float
        Method-specific quality: for :func:`find_center_pair`, the Pearson correlation
        (-1 … 1) of the two mirrored projections at the best whole-pixel shift.
    shift : float
        For :func:`find_center_pair`: the sub-pixel shift ``s`` (px) with
        ``center = (cols - 1) / 2 + s / 2``.
    """

    center: float
    confidence: float
    shift: float

    def __float__(self) -> float:
        return self.center


def _as_2d(name: str, argument: str, array: Any, *, min_rows: int, min_cols: int) -> Any:
    data = np.asarray(array)
    if data.ndim == 1 and min_rows == 1:
        data = data[np.newaxis, :]
    if data.ndim != 2:
        raise StageError(f"{name}: {argument}: expected a 2-D array, got shape {data.shape}")
    if data.dtype.kind not in "uif":
        raise StageError(f"{name}: {argument}.dtype: expected real numbers, got {data.dtype}")
    if data.shape[0] < min_rows or data.shape[1] < min_cols:
        raise StageError(
            f"{name}: {argument}.shape: expected at least ({min_rows}, {min_cols}), "
            f"got {data.shape}"
        )
    data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise StageError(f"{name}: {argument}: expected finite values, got NaN or inf")
    return data


def find_center_vo(
    sinogram: npt.ArrayLike,
    *,
    start: float | None = None,
    stop: float | None = None,
    step: float = 0.25,
    radius: float = 4,
    ratio: float = 0.5,
    dsp: bool = True,
    hor_drop: int | None = None,
    ver_drop: int | None = None,
    ncore: int = 1,
) -> float:
    """Find the CoR of a 0–180° sinogram with Vo's Fourier-metric method.

    A coarse whole-pixel search over ``[start, stop]`` minimises the energy, inside a
    double-wedge mask, of the 2-D FFT of the sinogram stacked on its flipped,
    shifted copy; a fine search of ``± radius`` around it in steps of ``step`` follows.
    Parameters and defaults are algotom's (``hor_drop``/``ver_drop`` replace the older
    tomopy ``drop``).

    Parameters
    ----------
    sinogram : array_like, shape (angles, cols)
        One sinogram over 180° (attenuation, i.e. after flat/dark correction and
        ``-log``). For a sinogram block ``(rows, angles, cols)`` pass ``block[row]``.
    start, stop : float, optional
        Coarse search range, in px (0-based columns); default
        ``cols // 2 ∓ cols // 16``. Must satisfy ``0 <= start < stop <= cols - 1``.
    step : float
        Fine search step, px (> 0): the result's resolution.
    radius : float
        Fine search half-range, px (> 0).
    ratio : float
        Sample width over detector width, in (0, 1] (sets the mask).
    dsp : bool
        Downsample large sinograms (> 1000 px) for the coarse search.
    hor_drop, ver_drop : int, optional
        Mask rows/columns dropped around the centre (algotom's
        ``make_inverse_double_wedge_mask``).
    ncore : int
        Threads for the metric (1: serial and deterministic).

    Returns
    -------
    float
        The CoR, 0-based detector column.

    Raises
    ------
    StageError
        Bad shape, non-finite values or out-of-range parameters.

    Notes
    -----
    algotom warns (``UserWarning``) when the coarse minimum lies on the edge of the
    search range: widen ``[start, stop]`` then.
    """
    name = "find_center_vo"
    sino = _as_2d(name, "sinogram", sinogram, min_rows=3, min_cols=8)
    cols = sino.shape[1]
    lo = cols // 2 - cols // 16 if start is None else start
    hi = cols // 2 + cols // 16 if stop is None else stop
    if not 0 <= lo < hi <= cols - 1:
        raise StageError(
            f"{name}: start, stop: expected 0 <= start < stop <= {cols - 1}, got {lo}, {hi}"
        )
    if not step > 0:
        raise StageError(f"{name}: step: expected > 0, got {step}")
    if not radius > 0:
        raise StageError(f"{name}: radius: expected > 0, got {radius}")
    if not 0 < ratio <= 1:
        raise StageError(f"{name}: ratio: expected 0 < ratio <= 1, got {ratio}")
    if ncore < 1:
        raise StageError(f"{name}: ncore: expected >= 1, got {ncore}")
    center = calculation.find_center_vo(
        sino, start=lo, stop=hi, step=step, radius=radius, ratio=ratio, dsp=dsp,
        ncore=ncore, hor_drop=hor_drop, ver_drop=ver_drop,
    )
    return float(center)


def _window_sums(values: npt.NDArray[np.float64], shifts: npt.NDArray[np.int64],
                 cols: int, *, moving: bool) -> npt.NDArray[np.float64]:
    """Sums of ``values`` (per column) over the overlap for each shift ``t``.

    For shift ``t`` the overlap pairs ``p0[k + t]`` with ``f[k]`` for
    ``k`` in ``[max(0, -t), min(cols, cols - t))``. ``moving`` selects the ``p0``
    side (indices ``k + t``).
    """
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    k_lo = np.maximum(0, -shifts)
    k_hi = np.minimum(cols, cols - shifts)
    if moving:
        return np.asarray(cumulative[k_hi + shifts] - cumulative[k_lo + shifts])
    return np.asarray(cumulative[k_hi] - cumulative[k_lo])


def find_center_pair(
    projection_0: npt.ArrayLike,
    projection_180: npt.ArrayLike,
    *,
    max_shift: int | None = None,
) -> CorResult:
    """Find the CoR from two projections 180° apart (mirrored-pair correlation).

    Derivation: with the axis at column ``c``, the projection at θ + 180° is the one at
    θ mirrored about ``c``: ``p180(x) = p0(2c - x)``. Flipping it left-right,
    ``f[k] = p180(cols - 1 - k) = p0(k + s)`` with ``s = 2c - (cols - 1)``: ``f`` is
    ``p0`` displaced by ``s``. The shift ``s`` maximises the normalised
    cross-correlation ``r(t) = pearson(p0[k + t], f[k])`` over the overlapping columns
    (all rows together), refined to sub-pixel by a parabola through ``r`` at the best
    whole shift and its neighbours. Hence::

        c = (cols - 1) / 2 + s / 2

    Parameters
    ----------
    projection_0 : array_like, shape (rows, cols) or (cols,)
        Projection at θ (attenuation or intensity, but both the same kind).
    projection_180 : array_like, same shape
        Projection at θ + 180°. A pair that is not exactly 180° apart biases the result
        (an object at distance ``d`` from the axis moves by ``d·sin(Δθ)`` px).
    max_shift : int, optional
        Largest ``|s|`` searched, px; default ``cols // 2`` (CoR within the middle half
        of the detector; the overlap is then at least half the width).

    Returns
    -------
    CorResult
        ``center`` (0-based column), ``confidence`` (Pearson r at the best whole-pixel
        shift) and ``shift`` (``s``, px). ``float(result)`` is the centre.

    Raises
    ------
    StageError
        Shapes differ or are too small, non-finite values, bad ``max_shift``, or a
        projection with no contrast.
    """
    name = "find_center_pair"
    p0 = _as_2d(name, "projection_0", projection_0, min_rows=1, min_cols=4)
    p180 = _as_2d(name, "projection_180", projection_180, min_rows=1, min_cols=4)
    if p0.shape != p180.shape:
        raise StageError(
            f"{name}: projection_180.shape: expected {p0.shape} (as projection_0), "
            f"got {p180.shape}"
        )
    rows, cols = p0.shape
    limit = cols // 2 if max_shift is None else max_shift
    if not 1 <= limit <= cols - 2:
        raise StageError(f"{name}: max_shift: expected 1 … {cols - 2}, got {max_shift}")
    flipped = p180[:, ::-1]
    shifts = np.arange(-limit, limit + 1, dtype=np.int64)

    # Σ_rows Σ_k p0[r, k + t] f[r, k] for every t, by FFT along columns (zero padded).
    size = 2 * cols
    spectrum = np.fft.rfft(p0, size, axis=1) * np.conj(np.fft.rfft(flipped, size, axis=1))
    correlation = np.fft.irfft(spectrum.sum(axis=0), size)
    sum_xy = correlation[shifts % size]

    count = rows * (cols - np.abs(shifts)).astype(np.float64)
    sum_x = _window_sums(p0.sum(axis=0), shifts, cols, moving=True)
    sum_xx = _window_sums((p0**2).sum(axis=0), shifts, cols, moving=True)
    sum_y = _window_sums(flipped.sum(axis=0), shifts, cols, moving=False)
    sum_yy = _window_sums((flipped**2).sum(axis=0), shifts, cols, moving=False)
    covariance = sum_xy - sum_x * sum_y / count
    variance = np.maximum(sum_xx - sum_x**2 / count, 0.0) * np.maximum(
        sum_yy - sum_y**2 / count, 0.0
    )
    if not (variance > 0).any():
        raise StageError(f"{name}: projections: expected some contrast, got constant images")
    pearson = np.where(variance > 0, covariance / np.sqrt(np.where(variance > 0, variance, 1)),
                       -1.0)

    best = int(np.argmax(pearson))
    shift = float(shifts[best])
    if 0 < best < shifts.size - 1:
        left, mid, right = pearson[best - 1 : best + 2]
        curvature = left - 2 * mid + right
        if curvature < 0:
            shift += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return CorResult(
        center=(cols - 1) / 2 + shift / 2, confidence=float(pearson[best]), shift=shift
    )


#: No block stages here: CoR estimators reduce data to a number (see the module notes);
#: the ``find_center_vo`` pipeline step is in :mod:`stages.recon.centering`.
SPECS: tuple[StageSpec, ...] = ()

"""The centre of rotation from opposite projections, as soon as they have arrived.

A projection at ``θ + 180°`` is the one at ``θ`` mirrored about the axis:
``p_{θ+180}(x) = p_θ(2c - x)``. So ``Σ_x p_θ(x) · p_{θ+180}(2c' - x)`` — a convolution of the
two profiles, evaluated at ``t = 2c'`` — peaks at ``c' = c``. The convolution is computed by
FFT over all the given rows, upsampled 16× by zero-padding its spectrum, and the peak is
refined by a parabola: sub-pixel, no resampling of the data. This needs only the pair, so
a streaming reconstruction gets its CoR when the projection opposite the first one
arrives: at the end of a 180° scan (first and last projections), half-way through a 360°
scan.

When no projection is exactly opposite another (a 180° scan whose last projection is one
step short of 180°, like the APS tooth at 179.0°), the pairs within a few angular steps
of opposition are each measured; their estimates drift linearly with the angle gap (the
object turns between them), so a straight line through (gap, estimate) is read at gap 0.

Measured on the real scans of ``/work/shared/data`` (``tests/test_pair_center.py``):
DIAD 12.50 (Vo 12.5), I13 85.66 (Vo 85.5; pair cross-correlation in the data README
85.6), APS tooth 295.9 (Vo 295.0; the scan is sharp at 295-296 and TomoPy's own
``find_center`` gives 295.9-296.3). On the same pairs
:func:`stages.recon.rotation.find_center_pair` (Pearson over the overlap, a parabola
through whole-pixel shifts, one pair) reads I13 85.85 and DIAD 12.47: the upsampled
convolution is kept here for that 0.2 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import StreamerError

__all__ = ["PairWatch", "opposite_pairs", "pair_center"]

#: Projections this close to opposite (in angular steps) are an exact pair.
EXACT_GAP_STEPS = 0.05
#: Pairs up to this many angular steps from opposite enter the gap fit.
MAX_GAP_STEPS = 3.5
#: Upsampling of the convolution before the peak is read.
UPSAMPLE = 16
#: Detector rows a :class:`PairWatch` keeps of each projection (evenly spaced): enough
#: for a stable peak, and the FFT stays small on a tall band.
WATCH_ROWS = 64


def _step(angles: npt.NDArray[np.float64]) -> float:
    """Typical angular step (degrees) of a set of angles."""
    reduced = np.sort(np.mod(angles, 180.0))
    gaps = np.diff(reduced)
    gaps = gaps[gaps > 1e-9]
    return float(np.median(gaps)) if gaps.size else 180.0


def opposite_pairs(
    angles_deg: npt.NDArray[np.float64],
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, gap)`` of projections within ``MAX_GAP_STEPS`` steps of opposite:
    ``gap = θ_i - (θ_j - 180°)`` in degrees, each unordered pair once (``θ_j > θ_i``)."""
    angles = np.asarray(angles_deg, dtype=np.float64)
    if angles.size < 2:
        return []
    reach = MAX_GAP_STEPS * _step(angles)
    pairs = []
    order = np.argsort(angles, kind="stable")
    ordered = angles[order]
    for j in range(angles.size):
        target = angles[j] - 180.0
        lo = np.searchsorted(ordered, target - reach, side="left")
        hi = np.searchsorted(ordered, target + reach, side="right")
        for i in order[lo:hi]:
            if angles[j] > angles[i]:
                pairs.append((int(i), j, float(angles[i] - target)))
    return pairs


def _mirror_center(
    first: npt.NDArray[np.float64], second: npt.NDArray[np.float64], lo: float, hi: float
) -> float:
    """The ``c`` in ``[lo, hi]`` that best maps ``second`` (rows, cols) onto ``first``
    mirrored about ``c``: the peak of their convolution at ``t = 2c``."""
    cols = first.shape[-1]
    length = 2 * cols
    spectrum = (np.fft.rfft(first, length) * np.fft.rfft(second, length)).sum(axis=0)
    values = np.fft.irfft(spectrum, length * UPSAMPLE)
    t = np.arange(values.size) / UPSAMPLE
    inside = np.flatnonzero((t >= 2 * lo) & (t <= 2 * hi))
    k = int(inside[np.argmax(values[inside])])
    left, mid, right = values[k - 1], values[k], values[(k + 1) % values.size]
    curvature = left - 2 * mid + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float((k + offset) / UPSAMPLE / 2)


def pair_center(
    projections: npt.NDArray[Any],
    angles_deg: npt.NDArray[np.float64],
    *,
    search: tuple[float, float] | None = None,
) -> float | None:
    """CoR (0-based column) from the opposite pairs among ``projections``, or ``None``
    while no pair has arrived.

    Parameters
    ----------
    projections : ndarray of shape (angles, rows, cols)
        Corrected projections (``-log`` line integrals) received so far, any rows.
    angles_deg : ndarray of shape (angles,)
        Their angles in degrees.
    search : (float, float), optional
        Columns the axis may be in; the middle 80 % of the detector when omitted.

    Raises
    ------
    StreamerError
        If the shapes do not match or the data are not finite.
    """
    data = np.asarray(projections)
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if data.ndim != 3 or data.shape[0] != angles.size or data.dtype.kind not in "uif":
        raise StreamerError(
            "pair centre: expected real projections (angles, rows, cols) with one angle "
            f"each, got shape {data.shape} and {angles.size} angles"
        )
    cols = data.shape[2]
    lo, hi = search if search is not None else (0.1 * (cols - 1), 0.9 * (cols - 1))
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi <= cols - 1):
        raise StreamerError(
            f"pair centre: search: expected 0 <= lo < hi <= {cols - 1}, got ({lo}, {hi})"
        )
    pairs = opposite_pairs(angles)
    if not pairs:
        return None
    step = _step(angles)
    gaps = np.array([gap for _, _, gap in pairs])
    nearest = int(np.argmin(np.abs(gaps)))
    exact = abs(gaps[nearest]) <= EXACT_GAP_STEPS * step
    chosen = [pairs[nearest]] if exact else pairs
    estimates = []
    for i, j, _ in chosen:
        first, second = data[i].astype(np.float64), data[j].astype(np.float64)
        if not (np.isfinite(first).all() and np.isfinite(second).all()):
            raise StreamerError(f"pair centre: projections {i} and {j}: expected finite values")
        estimates.append(_mirror_center(first, second, lo, hi))
    used = np.array([gap for _, _, gap in chosen])
    if exact or np.ptp(used) < EXACT_GAP_STEPS * step:
        return float(estimates[int(np.argmin(np.abs(used)))])
    slope, intercept = np.polyfit(used, np.array(estimates), 1)
    del slope
    return float(min(max(intercept, lo), hi))


@dataclass
class PairWatch:
    """Waits for a scan's opposite pair as its projections arrive (any order) and
    measures the CoR once it is in.

    It keeps (a few rows of) the projections within :data:`MAX_GAP_STEPS` steps of the
    first planned angle and of that angle + 180°: on a 180° scan the last projections,
    on a 360° scan the ones half-way. When every planned angle of both windows has
    arrived, :meth:`add` returns :func:`pair_center` of them, once; a scan whose plan has
    no angle near + 180° never gets one (:meth:`for_plan` returns None).

    Parameters
    ----------
    planned : ndarray of shape (P,)
        The scan's planned angles (degrees), equally spaced.
    rows : ndarray of int
        The band rows kept of each projection.
    """

    planned: npt.NDArray[np.float64]
    rows: npt.NDArray[np.intp]
    wanted: frozenset[int]
    found: float | None = None
    done: bool = False
    _kept: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)

    @classmethod
    def for_plan(cls, planned: npt.NDArray[np.float64], band_rows: int) -> PairWatch | None:
        """The watch of a scan planned at ``planned`` with ``band_rows`` rows here, or None
        when the plan has no projection near the first one + 180°."""
        angles = np.asarray(planned, dtype=np.float64)
        if angles.size < 2 or band_rows < 1:
            return None
        reach = MAX_GAP_STEPS * _step(angles)
        first = float(angles[0])
        anchors = np.flatnonzero(np.abs(angles - first) <= reach)
        opposite = np.flatnonzero(np.abs(angles - (first + 180.0)) <= reach)
        if opposite.size == 0:
            return None
        rows = np.unique(np.linspace(0, band_rows - 1, min(band_rows, WATCH_ROWS))
                         .round().astype(np.intp))
        return cls(angles, rows, frozenset(int(i) for i in (*anchors, *opposite)))

    def add(self, angles_deg: npt.NDArray[np.float64],
            projections: npt.NDArray[Any]) -> float | None:
        """Projections ``(n, rows, cols)`` arrived at ``angles_deg``: the CoR when they
        complete the pair (once), else None."""
        if self.done:
            return None
        step = float(self.planned[1] - self.planned[0])
        for position, angle in enumerate(np.asarray(angles_deg, dtype=np.float64).tolist()):
            index = round((angle - float(self.planned[0])) / step)
            if index in self.wanted and index not in self._kept \
                    and abs(float(self.planned[index]) - angle) <= EXACT_GAP_STEPS * step:
                self._kept[index] = np.array(projections[position][self.rows],
                                             dtype=np.float32)
        if len(self._kept) < len(self.wanted):
            return None
        self.done = True
        order = sorted(self._kept)
        stack = np.stack([self._kept[i] for i in order])
        self._kept = {}
        self.found = pair_center(stack, self.planned[order])
        return self.found

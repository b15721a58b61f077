"""An early centre of rotation from the projections that have arrived: the sinusoid of
each row's centre of mass.

In parallel-beam geometry the centre of mass of a detector row's profile (``-log`` line
integrals) turns about the axis as the object does: ``c(θ) = cor + a·cos θ + b·sin θ``
(the first Helgason-Ludwig condition; ``a, b`` place the slice's own centre of mass),
while the row's mass ``Σ p`` stays the same at every angle. So a least-squares fit of the
three numbers to the centres received so far gives the CoR well before the opposite
pair of a 180° scan (its last projection) has arrived, from any part of the scan; no
resampling, and each projection costs two sums per row.

It holds only when each row sees the whole slice: a sample wider than the field of view
(truncation), a background that is not zero (bad flat field), or a row with nothing in
it breaks it. So the estimate says how sure it is, and :func:`early_center` declines
(``center`` ``None`` and the reason) when

- fewer than :data:`MIN_ROWS` rows keep their mass within :data:`MASS_SPREAD` (standard
  deviation over the angles, relative to the mean; the rest are truncated, or too faint),
- the usable rows disagree: the spread of their estimates (the standard error of their
  median) exceeds ``max_error``,
- or the fit's own standard error of ``cor`` (from its residual and the angular span
  covered: a short span cannot separate ``cor`` from the sinusoid) exceeds ``max_error``.

The background is taken out first per projection: the mean of the outermost
:data:`EDGE_FRACTION` of the columns at each side (air when the sample is inside) is
subtracted, so a flat field that leaves a small offset does not pull the centres toward
the detector's middle (a constant offset cannot be told from the CoR by the fit itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamer.errors import StreamerError

__all__ = ["EARLY_FRACTION", "LATE_FRACTION", "EarlyCenter", "EarlyWatch", "early_center",
           "row_moments"]

#: Fraction of the columns at each side of a row taken as its background (air when
#: nothing is truncated), at least :data:`MIN_EDGE_COLUMNS`.
EDGE_FRACTION: Final = 1 / 16
MIN_EDGE_COLUMNS: Final = 2
#: A row is usable when the standard deviation of its mass over the angles is at most
#: this fraction of its mean (a truncated row's changes by tens of per cent).
MASS_SPREAD: Final = 0.03
#: A row's mass must be at least this fraction of the brightest row's to be used.
MIN_MASS_FRACTION: Final = 0.05
#: Usable rows needed for an estimate.
MIN_ROWS: Final = 2
#: Angles needed for an estimate (three unknowns, and a residual to judge them by).
MIN_ANGLES: Final = 8
#: A pair whose last projection lies beyond this fraction of the plan comes too late to
#: start the accumulators: adding the kept blocks then (each costs 1.75-4x its share of
#: the batch reconstruction) would be slower than reconstructing them at close. A
#: property of the plan, the same on every rank whatever order the pieces land in.
LATE_FRACTION: Final = 0.75
#: Fraction of a scan's projections in before its early CoR estimate is first tried (a
#: scan whose pair comes last). Half: on the real scans the centre-of-mass fit is within
#: 0.05 px (I13) of Vo's there, against 0.35 px from a third (60° of a 180° scan: the
#: sinusoid is poorly told from a constant over a short arc), and the kept half is added
#: while the second half arrives. A try that is not sure enough is repeated each
#: eighth of the plan until :data:`LATE_FRACTION`; after that the pair or the close decide.
EARLY_FRACTION: Final = 0.5
#: Pixels the early estimate may be uncertain by (standard error) and still be used: a
#: fifth of the 0.5 px tolerance at close, so a used estimate is rarely redone.
DEFAULT_MAX_ERROR_PX: Final = 0.1


@dataclass(frozen=True)
class EarlyCenter:
    """An early CoR, how sure it is, or why there is none (``center`` None)."""

    center: float | None
    #: Standard error (px): the larger of the rows' disagreement and the fits' own.
    error: float
    #: Rows used / rows looked at, and the angles the fit had.
    rows_used: int
    rows: int
    angles: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"center": self.center, "error": None if not math.isfinite(self.error)
                else round(self.error, 4), "rows_used": self.rows_used, "rows": self.rows,
                "angles": self.angles, "reason": self.reason}


def row_moments(projections: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float64],
                                                         npt.NDArray[np.float64]]:
    """The mass ``Σ p`` and first moment ``Σ x·p`` of each row of each projection
    ``(angles, rows, cols)``, each row's background (its edge columns) taken out:
    two arrays of shape (angles, rows)."""
    data = np.asarray(projections, dtype=np.float64)
    if data.ndim != 3 or data.shape[2] < 8 * MIN_EDGE_COLUMNS:
        raise StreamerError(
            "early centre: expected projections (angles, rows, cols) with at least "
            f"{8 * MIN_EDGE_COLUMNS} columns, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise StreamerError("early centre: expected finite projections, got NaN or inf")
    edge = max(MIN_EDGE_COLUMNS, round(EDGE_FRACTION * data.shape[2]))
    edges = np.concatenate([data[..., :edge], data[..., -edge:]], axis=-1)
    profile = data - edges.mean(axis=-1, keepdims=True)
    x = np.arange(data.shape[2], dtype=np.float64)
    return profile.sum(axis=-1), profile @ x


def _fit(angles_rad: npt.NDArray[np.float64], centres: npt.NDArray[np.float64],
         ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Least squares of ``c = cor + a cos θ + b sin θ`` for each column of ``centres``
    (angles, rows): ``cor`` and its standard error per row."""
    design = np.stack([np.ones_like(angles_rad), np.cos(angles_rad), np.sin(angles_rad)],
                      axis=1)
    coefficients, *_ = np.linalg.lstsq(design, centres, rcond=None)
    residual = centres - design @ coefficients
    dof = max(angles_rad.size - 3, 1)
    sigma2 = (residual**2).sum(axis=0) / dof
    inverse = np.linalg.pinv(design.T @ design)
    return coefficients[0], np.sqrt(sigma2 * max(float(inverse[0, 0]), 0.0))


def early_center(
    mass: npt.NDArray[np.float64], moment: npt.NDArray[np.float64],
    angles_deg: npt.NDArray[np.float64], cols: int, *,
    max_error: float = DEFAULT_MAX_ERROR_PX,
) -> EarlyCenter:
    """The CoR from the rows' masses and first moments ``(angles, rows)`` (from
    :func:`row_moments`) at ``angles_deg``, on a ``cols``-column detector, or the reason
    it is not sure enough (see the module docstring).

    Raises
    ------
    StreamerError
        If the shapes do not match or ``max_error`` is not a positive number.
    """
    mass = np.asarray(mass, dtype=np.float64)
    moment = np.asarray(moment, dtype=np.float64)
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if mass.ndim != 2 or mass.shape != moment.shape or mass.shape[0] != angles.size:
        raise StreamerError(
            "early centre: expected mass and moment (angles, rows) with one angle each, "
            f"got {mass.shape}, {moment.shape} and {angles.size} angles")
    if not (math.isfinite(max_error) and max_error > 0):
        raise StreamerError(f"early centre: max_error: expected a positive number of "
                            f"pixels, got {max_error}")
    rows = mass.shape[1]
    if angles.size < MIN_ANGLES:
        return EarlyCenter(None, math.inf, 0, rows, angles.size,
                           f"{angles.size} angles, {MIN_ANGLES} needed")
    mean = mass.mean(axis=0)
    strong = mean > MIN_MASS_FRACTION * max(float(mean.max()), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = mass.std(axis=0) / np.abs(mean)
    usable = strong & (spread <= MASS_SPREAD)
    used = int(usable.sum())
    if used < MIN_ROWS:
        worst = float(np.nanmin(spread[strong])) if strong.any() else math.nan
        return EarlyCenter(None, math.inf, used, rows, angles.size,
                           f"{used} of {rows} rows keep their mass over the angles "
                           f"(least spread {worst:.1%}, {MASS_SPREAD:.0%} allowed): the "
                           "sample is truncated or the background is not flat")
    centres = moment[:, usable] / mass[:, usable]
    estimates, errors = _fit(np.deg2rad(angles), centres)
    center = float(np.median(estimates))
    mad = 1.4826 * float(np.median(np.abs(estimates - center)))
    error = max(mad / math.sqrt(used), float(np.median(errors)) / math.sqrt(used))
    if not 0 <= center <= cols - 1:
        return EarlyCenter(None, error, used, rows, angles.size,
                           f"the fit puts the axis at column {center:.2f}, off the "
                           f"{cols}-column detector")
    if error > max_error:
        return EarlyCenter(None, error, used, rows, angles.size,
                           f"uncertain by {error:.2f} px ({max_error:g} allowed) over "
                           f"{np.ptp(angles):.0f}° of angles")
    return EarlyCenter(center, error, used, rows, angles.size)


@dataclass
class EarlyWatch:
    """Measures the rows' moments of a scan's projections as they arrive (any order)
    and tries :func:`early_center` once ``fraction`` of the planned projections are in.

    It keeps two numbers per watched row and projection, not the projections.
    :meth:`add` returns the :class:`EarlyCenter` of the first try that is sure enough,
    once; a try that is not is kept in :attr:`last` and retried each further
    ``retry_fraction`` of the plan up to ``last_fraction`` of it (after that the scan's
    pair or its close decide).

    Parameters
    ----------
    projections : int
        Projections planned.
    rows : ndarray of int
        The band rows watched (e.g. :data:`~streamer.run.center_pair.WATCH_ROWS` evenly
        spaced).
    fraction : float
        Fraction of the plan in before the first try.
    """

    projections: int
    rows: npt.NDArray[np.intp]
    fraction: float
    retry_fraction: float = 0.125
    last_fraction: float = 1.0
    max_error: float = DEFAULT_MAX_ERROR_PX
    done: bool = False
    last: EarlyCenter | None = None
    found: EarlyCenter | None = None
    _cols: int = 0
    _next_try: int = 0
    _angles: list[float] = field(default_factory=list)
    _mass: list[npt.NDArray[np.float64]] = field(default_factory=list)
    _moment: list[npt.NDArray[np.float64]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (0 < self.fraction <= self.last_fraction <= 1 and 0 < self.retry_fraction <= 1):
            raise StreamerError(
                "early centre: expected fractions 0 < first <= last <= 1 and 0 < retry <= 1, "
                f"got first {self.fraction}, last {self.last_fraction}, retry "
                f"{self.retry_fraction}")
        self._next_try = max(MIN_ANGLES, math.ceil(self.fraction * self.projections))

    def add(self, angles_deg: npt.NDArray[np.float64],
            projections: npt.NDArray[Any]) -> EarlyCenter | None:
        """Projections ``(n, rows, cols)`` arrived at ``angles_deg``: the estimate when
        this try is sure enough (once), else None."""
        if self.done:
            return None
        data = np.asarray(projections)
        mass, moment = row_moments(data[:, self.rows])
        self._cols = int(data.shape[2])
        self._angles.extend(np.asarray(angles_deg, dtype=np.float64).reshape(-1).tolist())
        self._mass.append(mass)
        self._moment.append(moment)
        if len(self._angles) < self._next_try:
            return None
        result = early_center(np.concatenate(self._mass), np.concatenate(self._moment),
                              np.array(self._angles), self._cols, max_error=self.max_error)
        self.last = result
        if result.center is not None:
            self.done, self.found = True, result
            self._mass, self._moment, self._angles = [], [], []
            return result
        self._next_try = len(self._angles) + max(
            1, math.ceil(self.retry_fraction * self.projections))
        if self._next_try > self.last_fraction * self.projections:  # the pair or the close
            self.done = True
            self._mass, self._moment, self._angles = [], [], []
        return None

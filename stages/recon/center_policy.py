"""One CoR policy: find the centre of rotation of a scan, say how sure it is, never fail
silently.

Every automatic CoR (``recon --center auto``, a pipeline's ``find_center_vo`` entry, the
live path) goes through :func:`find_center`. It exists because Vo's method, run as
HTTomo's templates set it up (``smin: -50, smax: 50`` around the middle), returns a
detector edge on narrow detectors (I13 24737, 160 columns: 28.0 instead of 85.5; DIAD
k11-18014, 26 columns: 25.0 instead of 12.5): near the edges the flipped sinogram
overlaps the original over a few columns only, and the metric of a tiny overlap is
smaller than that of the true centre. The policy:

1. **Clamp the window.** The coarse search covers the asked window (``smin``/``smax``
   around the middle, or around ``around``) intersected with the *reliable range*: the
   middle ± a quarter of the width (at least 2 px), where the two sinograms overlap over
   at least half the detector. A window entirely outside it falls back to the whole
   reliable range. Clamping is reported as a note.
2. **Vo's metric** (algotom's :func:`~algotom.prep.calculation.calculate_center_metric`,
   same mask and smoothing as algotom's ``find_center_vo``; computed by
   :class:`~stages.recon.vo_metric.VoMetric`, the same scores with a fifth of the work)
   at every whole column of the window, then algotom's fine search (``± srad`` in steps
   of ``step``: :func:`~stages.recon.vo_metric.fine_search`). The metric
   curve gives a *distinctness*: how far the best minimum lies below the best
   alternative minimum (more than ``max(2, 3 % of the width)`` away), relative to the
   curve's median; 1 is an unambiguous minimum, 0 a tie.
3. **Cross-check with the 0°/180° pair** when the scan has one (a projection within
   0.1° of θ₀ + 180°): :func:`~stages.recon.rotation.find_center_pair` on the two whole
   projections. Agreement (within ``max(1, cols / 500)`` px) combines the evidence:
   ``confidence = 1 - (1 - distinctness)(1 - max(r, 0))``; disagreement caps the
   confidence at 0.2 and warns.
4. **Warn, never fail silently.** A coarse minimum on the edge of the searched window,
   a confidence below :data:`LOW_CONFIDENCE`, or a disagreement with the pair is a
   warning in :attr:`CorEstimate.warnings`, which the commands print and store next to
   the CoR. A minimum on the edge caps the confidence at 0.3 unless the pair confirms
   it; when the pair is trustworthy (r ≥ 0.5, inside the reliable range) and disagrees,
   the pair's centre is used instead (still with a warning).

Convention: 0-based detector column (``(cols - 1) / 2`` is the middle), as algotom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from algotom.prep import calculation
from scipy import ndimage

from stages.recon.rotation import find_center_pair
from stages.recon.vo_metric import VoMetric, fine_search
from streamer.errors import StageError

__all__ = ["LOW_CONFIDENCE", "PAIR_TOLERANCE_DEG", "CorEstimate", "VoSearch", "find_center",
           "find_center_from_pair", "pair_index", "reliable_window", "vo_search"]

#: Below this confidence the CoR is reported with a warning.
LOW_CONFIDENCE = 0.5
#: A 0°/180° pair must be 180° apart within this many degrees to be used.
PAIR_TOLERANCE_DEG = 0.1
#: Fewest projections within 180° Vo's method is given.
MIN_ANGLES = 8


@dataclass(frozen=True)
class CorEstimate:
    """A scan's CoR, how it was found and how much to trust it.

    Attributes
    ----------
    center : float
        0-based detector column of the rotation axis.
    confidence : float
        0 … 1 (see the module notes); below :data:`LOW_CONFIDENCE` is a warning.
    method : str
        ``"vo"``, ``"vo+pair"`` (Vo's, confirmed by the 0°/180° pair) or ``"pair"``.
    window : tuple of float
        The coarse window searched, detector columns (after clamping).
    notes : tuple of str
        Facts worth printing (window clamped, pair used or not available).
    warnings : tuple of str
        Reasons to doubt the result; empty when it is trustworthy.
    side_outputs : tuple of (str, value)
        Other results a pipeline may refer to (HTTomo's side outputs, e.g.
        ``find_center_360``'s ``overlap`` and ``side``, which ``sino_360_to_180`` takes).
    """

    center: float
    confidence: float
    method: str
    window: tuple[float, float]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    side_outputs: tuple[tuple[str, float | str], ...] = ()

    def __float__(self) -> float:
        return self.center

    def describe(self) -> str:
        """One line: value, method, confidence."""
        return f"{self.center:.2f} ({self.method}, confidence {self.confidence:.2f})"


@dataclass(frozen=True)
class VoSearch:
    """Result of :func:`vo_search`: the centre, the coarse minimum, and its quality."""

    center: float
    coarse: float
    distinctness: float
    at_edge: bool
    window: tuple[float, float]


def reliable_window(cols: int) -> tuple[float, float]:
    """Columns where a CoR leaves the mirrored sinograms overlapping over ≥ half the
    detector: the middle ± ``max(2, cols / 4)``, at least one column from each edge."""
    middle = (cols - 1) / 2
    reach = max(2.0, cols / 4)
    return max(1.0, middle - reach), min(cols - 2.0, middle + reach)


def vo_search(
    sinogram: npt.NDArray[np.floating], start: float, stop: float, *, step: float = 0.25,
    radius: float = 6.0, ratio: float = 0.5, drop: int | None = 20,
) -> VoSearch:
    """Vo's method on one 0–180° sinogram ``(angles, cols)`` over ``[start, stop]``,
    keeping the coarse metric curve to judge the minimum (algotom's metric and fine
    search; its coarse search, like algotom's, smooths along angles and downsamples
    sinograms wider than 1000 columns or taller than 1000 angles)."""
    sino = np.asarray(sinogram, dtype=np.float32)
    rows, cols = sino.shape
    dsp_col = int(np.floor(cols / 640.0)) if cols > 1000 else 1
    dsp_row = int(np.floor(rows / 900.0)) if rows > 1000 else 1
    smooth = ndimage.gaussian_filter(sino, (3, 1), mode="reflect")
    coarse_sino = calculation.downsample_cor(smooth, dsp_row, dsp_col) if (
        dsp_col > 1 or dsp_row > 1) else smooth
    first = int(np.ceil(start / dsp_col))
    last = int(np.floor(stop / dsp_col))
    if last <= first:
        last = first + 1
    candidates = np.arange(first, last + 1)
    score = VoMetric(coarse_sino, ratio=ratio, drop=drop)  # algotom's metric, less work
    metric = np.array([np.float32(score(float(k))) for k in candidates], dtype=np.float64)
    best = int(np.argmin(metric))
    coarse = float(candidates[best] * dsp_col + (0.5 * dsp_col if dsp_col > 1 else 0.0))
    median = float(np.median(metric))
    spread = median - float(metric[best])
    far = np.abs(candidates - candidates[best]) * dsp_col > max(2.0, 0.03 * cols)
    if spread <= 0:
        distinctness = 0.0
    elif far.any():
        distinctness = float(np.clip((metric[far].min() - metric[best]) / spread, 0, 1))
    else:
        distinctness = 1.0
    center = fine_search(sino, coarse, max(radius, dsp_col), step, ratio=ratio, drop=drop)
    return VoSearch(float(center), coarse, distinctness,
                    at_edge=best in (0, candidates.size - 1),
                    window=(float(candidates[0] * dsp_col), float(candidates[-1] * dsp_col)))


def pair_index(angles_deg: npt.NDArray[np.float64]) -> int | None:
    """Index of the projection 180° after the first, if one is within tolerance."""
    gap = np.abs(angles_deg - angles_deg[0] - 180.0)
    index = int(np.argmin(gap))
    return index if gap[index] <= PAIR_TOLERANCE_DEG else None


def find_center(
    projections: npt.NDArray[np.floating],
    angles_deg: npt.NDArray[np.float64],
    *,
    row: int | None = None,
    average_radius: int = 0,
    smin: float | None = None,
    smax: float | None = None,
    around: float | None = None,
    step: float = 0.25,
    srad: float = 6.0,
    ratio: float = 0.5,
    drop: int | None = 20,
) -> CorEstimate:
    """The scan's CoR by the policy of the module notes.

    Parameters
    ----------
    projections : ndarray, shape (angles, rows, cols)
        Corrected (attenuation) projections, in angle order of ``angles_deg``.
    angles_deg : ndarray, shape (angles,)
        Projection angles, degrees.
    row : int, optional
        Detector row whose sinogram Vo's method uses; default the middle row.
    average_radius : int
        Average the sinograms of rows ``row ± average_radius`` (HTTomo's parameter).
    smin, smax : float, optional
        Coarse window relative to ``around`` (default the detector middle), px;
        default the whole reliable range.
    around : float, optional
        Centre of the window (HTTomo's ``cor_initialisation_value``).
    step, srad, ratio, drop
        Vo's fine step, fine radius, sample/detector ratio and mask rows dropped.

    Raises
    ------
    StageError
        Bad shapes or parameters, fewer than 8 projections within 180°, non-finite data.
    """
    data = np.asarray(projections)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if data.ndim != 3 or angles.shape != (data.shape[0],):
        raise StageError(f"CoR: expected projections (angles, rows, cols) and one angle "
                         f"each, got {data.shape} and {angles.shape}")
    _, rows, cols = data.shape
    if cols < 8:
        raise StageError(f"CoR: expected at least 8 detector columns, got {cols}")
    middle_row = rows // 2 if row is None else row
    if not 0 <= middle_row < rows:
        raise StageError(f"CoR: ind: expected a row below {rows}, got {row}")
    if average_radius < 0:
        raise StageError(f"CoR: average_radius: expected >= 0, got {average_radius}")
    if not (step > 0 and srad > 0 and 0 < ratio <= 1):
        raise StageError(f"CoR: expected step > 0, srad > 0, 0 < ratio <= 1, got "
                         f"{step}, {srad}, {ratio}")
    half = angles - angles[0] <= 180.0 + 1e-6
    if int(half.sum()) < MIN_ANGLES:
        raise StageError(f"CoR: needs at least {MIN_ANGLES} projections within 180°, got "
                         f"{int(half.sum())}")
    first, last = max(0, middle_row - average_radius), min(rows, middle_row + average_radius + 1)
    sinogram = data[half, first:last, :].astype(np.float64).mean(axis=1)
    if not np.isfinite(sinogram).all():
        raise StageError(f"CoR: the sinogram of row {middle_row} has NaN or inf values")

    notes: list[str] = []
    warnings: list[str] = []
    lo_ok, hi_ok = reliable_window(cols)
    base = (cols - 1) / 2 if around is None else float(around)
    asked = (base + (smin if smin is not None else lo_ok - base),
             base + (smax if smax is not None else hi_ok - base))
    lo, hi = max(min(asked), lo_ok), min(max(asked), hi_ok)
    if hi - lo < 1:
        notes.append(f"search window [{min(asked):.1f}, {max(asked):.1f}] lies outside the "
                     f"reliable range [{lo_ok:.1f}, {hi_ok:.1f}] of this {cols}-column "
                     "detector: searched the reliable range")
        lo, hi = lo_ok, hi_ok
    elif (lo, hi) != (min(asked), max(asked)):
        notes.append(f"search window [{min(asked):.1f}, {max(asked):.1f}] clamped to "
                     f"[{lo:.1f}, {hi:.1f}] (the mirrored sinograms overlap over at least "
                     f"half of the {cols} columns there)")
    vo = vo_search(sinogram, lo, hi, step=step, radius=srad, ratio=ratio, drop=drop)
    center, method, confidence = vo.center, "vo", vo.distinctness
    if vo.at_edge:
        warnings.append(f"Vo's minimum lies on the edge of the search window "
                        f"[{vo.window[0]:.1f}, {vo.window[1]:.1f}]: the centre may be "
                        "outside it")

    pair_at = pair_index(angles)
    if pair_at is None:
        notes.append("no projection 180° from the first: no 0°/180° cross-check")
    else:
        shift = int(np.ceil(2 * max(abs(lo_ok - (cols - 1) / 2), abs(hi_ok - (cols - 1) / 2))))
        pair = find_center_pair(data[0], data[pair_at], max_shift=min(shift, cols - 2))
        tolerance = max(1.0, cols / 500)
        agree = abs(pair.center - vo.center) <= tolerance
        trusted = pair.confidence >= 0.5 and lo_ok <= pair.center <= hi_ok
        if vo.at_edge and trusted and not agree:
            center, method = pair.center, "pair"
            confidence = max(0.0, pair.confidence) * 0.5
            warnings.append(f"used the 0°/180° pair's centre {pair.center:.2f} "
                            f"(r = {pair.confidence:.2f}) instead of Vo's {vo.center:.2f}")
        elif agree:
            method = "vo+pair"
            confidence = 1 - (1 - vo.distinctness) * (1 - max(pair.confidence, 0.0))
            notes.append(f"0°/180° pair agrees: {pair.center:.2f} (r = {pair.confidence:.2f})")
        else:
            confidence = min(confidence, 0.2)
            warnings.append(f"Vo's centre {vo.center:.2f} and the 0°/180° pair's "
                            f"{pair.center:.2f} (r = {pair.confidence:.2f}) disagree by more "
                            f"than {tolerance:.1f} px")
    if vo.at_edge and method == "vo":
        confidence = min(confidence, 0.3)  # a minimum on the edge is not a minimum
    if confidence < LOW_CONFIDENCE:
        warnings.append(f"low confidence {confidence:.2f} (< {LOW_CONFIDENCE}): check the "
                        "centre (e.g. a centre sweep) or give it")
    return CorEstimate(float(center), float(confidence), method, (lo, hi), tuple(notes),
                       tuple(warnings))


def find_center_from_pair(
    projections: npt.NDArray[np.floating], angles_deg: npt.NDArray[np.float64], *,
    around: float | None = None,
    pair: tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]] | None = None,
) -> CorEstimate:
    """The CoR from the 0°/180° projection pair (HTTomo's ``find_center_pc``), cross-checked
    with Vo's method as :func:`find_center` does the other way round.

    ``around`` (``rotc_guess``) restricts the pair search to the reliable range around it.
    ``pair``: the whole first projection and the one 180° later, ``(rows, cols)`` each,
    when ``projections`` holds only some rows of the scan (R ranks gather the pair's rows
    from every band, so the pair is correlated as on one rank). Raises
    :class:`StageError` when the scan has no projection 180° from the first.
    """
    data = np.asarray(projections)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if data.ndim != 3 or angles.shape != (data.shape[0],):
        raise StageError(f"CoR: expected projections (angles, rows, cols) and one angle "
                         f"each, got {data.shape} and {angles.shape}")
    cols = data.shape[2]
    pair_at = pair_index(angles)
    if pair_at is None:
        raise StageError(f"find_center_pc: needs a projection 180° (± {PAIR_TOLERANCE_DEG}°) "
                         f"from the first, got none (last at "
                         f"{angles[-1] - angles[0]:.3f}°); use find_center_vo")
    lo_ok, hi_ok = reliable_window(cols)
    middle = (cols - 1) / 2
    reach = max(abs(lo_ok - middle), abs(hi_ok - middle))
    shift = min(int(np.ceil(2 * reach)), cols - 2)
    first, opposite = (data[0], data[pair_at]) if pair is None else pair
    if np.shape(first) != np.shape(opposite) or np.shape(first)[-1:] != (cols,):
        raise StageError(f"find_center_pc: expected the pair as two (rows, {cols}) "
                         f"projections, got {np.shape(first)} and {np.shape(opposite)}")
    paired = find_center_pair(first, opposite, max_shift=shift)
    warnings: list[str] = []
    notes: list[str] = []
    if around is not None and abs(paired.center - around) > reach:
        warnings.append(f"the pair's centre {paired.center:.2f} is far from rotc_guess {around}")
    vo = find_center(data, angles, smin=None, smax=None)
    tolerance = max(1.0, cols / 500)
    confidence = max(paired.confidence, 0.0)
    method = "pair"
    if abs(vo.center - paired.center) <= tolerance:
        method = "pair+vo"
        confidence = 1 - (1 - confidence) * (1 - vo.confidence)
        notes.append(f"Vo's method agrees: {vo.center:.2f}")
    else:
        confidence = min(confidence, 0.2)
        warnings.append(f"the pair's centre {paired.center:.2f} and Vo's {vo.center:.2f} "
                        f"disagree by more than {tolerance:.1f} px")
    if confidence < LOW_CONFIDENCE:
        warnings.append(f"low confidence {confidence:.2f} (< {LOW_CONFIDENCE}): check the "
                        "centre (e.g. a centre sweep) or give it")
    return CorEstimate(paired.center, float(confidence), method, (lo_ok, hi_ok), tuple(notes),
                       tuple(warnings))


def checked_by_policy(
    center: float, policy: CorEstimate, *, cols: int, finder: str, method: str,
    short: str, notes: list[str], warnings: list[str], why_policy: str = "",
) -> CorEstimate:
    """Another finder's ``center`` cross-checked with the CoR policy's estimate ``policy``
    of the same row (as :func:`find_center_from_pair` is with Vo's method).

    They agree within ``max(1, cols / 500)`` px (and the finder has no warning): the finder's
    centre, ``method`` joined with the policy's. They disagree and the policy is confident
    without warnings: the policy's centre, ``"<policy method> (<short> disagreed)"``, with a
    warning (``why_policy`` added to it). Otherwise the finder's centre at a confidence of at
    most 0.2, with a warning. ``finder`` names the finder in the messages (``"the <finder>
    minimum"``).
    """
    tolerance = max(1.0, cols / 500)
    confidence = policy.confidence
    disagree = (f"the {finder} minimum {center:.2f} and the CoR policy's {policy.describe()} "
                f"disagree by more than {tolerance:.1f} px")
    if abs(policy.center - center) <= tolerance and not warnings:
        method += f"+{policy.method}"
        notes.append(f"the CoR policy agrees: {policy.describe()}")
    elif policy.confidence >= LOW_CONFIDENCE and not policy.warnings:
        warnings.append(f"{disagree}: used the policy's{why_policy}")
        center, method = policy.center, f"{policy.method} ({short} disagreed)"
        confidence = min(policy.confidence, 0.6)
    else:
        confidence = min(policy.confidence, 0.2)
        warnings.append(disagree)
    if confidence < LOW_CONFIDENCE:
        warnings.append(f"low confidence {confidence:.2f} (< {LOW_CONFIDENCE}): check the "
                        "centre (e.g. a centre sweep) or give it")
    return CorEstimate(float(center), float(confidence), method, reliable_window(cols),
                       tuple(notes), tuple(warnings))

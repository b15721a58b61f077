"""Fourier-domain filtered back-projection: FBP's filter, back-projection by a type-1 NUFFT.

The same reconstruction as :func:`stages.recon.fbp.fbp` (same discrete ramp × window,
same padding, same angle weights, same geometry and units), but the back-projection
``Σ_θ w_θ q_θ(center + x·cos θ + y·sin θ)`` is evaluated in Fourier space: each filtered
projection is a trigonometric polynomial in ``u``, so the sum over angles is a sum of
plane waves at the polar points ``(ω cos θ, ω sin θ)`` (the Fourier slice theorem), and
a non-uniform FFT of type 1 (``finufft``) puts them on the ``N × N`` pixel grid in
``O(P·M + N² log N)`` instead of FBP's ``O(P·N²)``.
See ``docs/explanation/fourier-reconstruction.md`` for the derivation and measurements.

Algorithm
---------
1. **Filter** exactly as :mod:`stages.recon.fbp`: each projection is padded to
   ``L = padded_length(cols)`` (edge values, or zeros with ``pad=False``), FFT'd,
   multiplied by ``filter_response(L, filter_name)`` (the discrete ramp with its DC
   term, × window) and transformed back. Two sinogram rows travel as one complex signal
   (``a + i·b``): the filter is real and even, so one complex FFT filters both.
2. **Crop** the filtered projection to a window of ``M`` samples centred on the axis,
   just wider than the detector positions the output needs (the inscribed circle with
   ``circle_mask``, else the whole square: ``M ≈ √2·N``), and FFT it: ``M`` Fourier
   coefficients per angle instead of ``L`` (``≈ 2N``), which halves (circle) or
   nearly halves (square) the NUFFT points.
3. **Phases, not resampling.** The coefficient at frequency ``ω = k/M`` of angle ``θ``
   is multiplied by ``w_θ/M · exp(2πiω(center + left − start))``: the off-centre axis is
   a phase ramp, exact for any sub-pixel ``center``; for even ``N`` a second phase puts
   the pixel centres at ``x = m + 1/2``. The Nyquist term is split half at ``ω = −1/2``,
   half at ``+1/2``, so each packed image stays real.
4. **Gridding** by a type-1 NUFFT at the points ``2πω (sin θ, cos θ)`` onto the modes
   ``(k_y, k_x)``, read upside down into ``(iy, ix)`` (``y = (N-1)/2 - iy``, the
   orientation of TomoPy, ASTRA and algotom); its real part is the slice of row ``a``,
   its imaginary part that of row ``b``. Only the half ``ω ≥ 0`` of each line is
   spread (two strength vectors: at ``ω`` and, for the mirror ``-ω``, reflected on the
   grid afterwards): each row's grid is then exactly Hermitian, so a row's slice is the
   same whether it shares the NUFFT with another row or with zeros (to float32
   rounding; spreading ``±ω`` directly lets the partner leak in at ~``eps/10``).
   finufft spreads onto a 1.25× oversampled grid
   (single precision, tolerance ``eps``; its ``spreadinterponly`` mode, points sorted
   once per plan and handed to it in the order of its bins, so that it reads them in
   memory order); the reflection touches only the rows the points reach; scipy's FFT
   (in place, pruned to the wanted columns) and the kernel's deconvolution, fused into
   the writes of the two slices, finish the transform, as finufft's own type 1 would,
   without FFTW's planning stalls.
   Each thread takes whole row pairs, one plan per thread for the block.
5. **Angles.** Weights are :func:`stages.recon.fbp.angle_weights` (180°, 360°,
   non-uniform, missing wedge). A projection at ``θ + 180°`` lies on the same line of
   Fourier space as ``θ`` (reversed), so repeated lines (360° scans) are summed before
   the NUFFT: a 360° scan costs the NUFFT of a 180° scan.
6. **Angular decimation.** Near the origin the lines are angularly oversampled: for
   equally spaced lines, only every ``2^b``-th line is spread at ``|ω| < 2^-b/2`` (with
   ``2^b`` times its weight), which keeps the arcs between lines no wider than at the
   edge and drops about a third of the NUFFT points. Each line keeps one run of
   columns: the line order puts the low frequencies at both ends (see :class:`_Lines`).
   Irregular angle sets (and odd counts) are spread whole.

Array module
------------
Every step runs in the array module of the block (``xp``): numpy, or CuPy on a GPU,
where cufinufft spreads (:func:`stages.backends.nufft.spreading_plan`: the same plan
options under cufinufft's names), ``cupyx.scipy.fft`` transforms, the kernel's
deconvolution is probed from cufinufft's own kernel, and one worker takes the pairs in
turn, filtering :data:`_DEVICE_CHUNK` projections per launch. The plan's host tables are
uploaded once and kept, with the device gridder, in :class:`FourierFbpCache`. On the
CPU the device path is checked in ``tests/stages/device_like.py``'s namespace (bit for
bit with the host, one thread); see ``docs/decisions/0018``.

The output differs from :func:`~stages.recon.fbp.fbp` only by the interpolation of the
filtered projections: trigonometric (exact for band-limited data) here, linear in FBP,
which smooths a little (closer to the analytic phantom here; the two agree to about
1 % relative L2 with a Hann window, a few % with the bare ramp at small N).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft
from pydantic import Field

from stages.backends.nufft import download, spreading_plan
from stages.backends.xp import array_module, fft_module
from stages.checks import sinogram_inputs
from stages.misc.geometry import circle_inside
from stages.prep.kernel import worker_count
from stages.recon.fbp import (
    FbpParams,
    FilterName,
    angle_weights,
    filter_response,
    padded_length,
)
from stages.spec import Pattern, StageSpec
from streamer.errors import StageError

__all__ = ["SPECS", "FourierFbpCache", "FourierFbpParams", "fourier_fbp", "window_length"]

_STAGE = "fourier_fbp"
_FILTERS = ("ramlak", "shepp", "cosine", "hamming", "hann", "parzen")
#: Extra samples on each side of the cropped window beyond the farthest detector
#: position the output reads: keeps the window's wrap-around away from those positions.
_MARGIN = 8
#: Tolerance range of the single-precision gridding (below 1e-4 float32 rounding and
#: finufft's kernel-width caps take over).
_EPS_MIN, _EPS_MAX = 1e-4, 1e-1
#: Angles (degrees, mod 180°) closer than this are the same line of Fourier space.
_SAME_LINE_DEG = 1e-6
#: Oversampling of the gridding: a 1.25·N grid (its FFT costs ~40 % of a 2·N grid's; the
#: kernel is one cell wider for the same tolerance).
_UPSAMPFAC = 1.25
#: Angular decimation: thinned sets keep at least this many lines; a frequency uses one
#: below this fraction of the radius where its arcs match the full set's at the edge.
_DECIMATE_MIN_LINES = 16
#: Lines count as equally spaced (and are thinned) when every gap is within this fraction
#: of 180°/lines.
_UNIFORM_TOLERANCE = 1e-3
_DECIMATE_SAFETY = 1.0
#: Projections filtered together: the working set (a few × CHUNK × L complex64) stays
#: in a core's L2 cache, which makes the element-wise passes 2-3× faster than whole-block.
_CHUNK = 32
#: The gridder's points are handed to finufft in the order of these bins (grid rows ×
#: columns), which finufft's own sort then keeps: its reads of the points and strengths
#: run through memory in order instead of jumping between lines (measured at N = 1024:
#: the spreading 24 → 19.5 ms per pair; bins of 2-8 rows × 16-32 columns all alike).
_BIN_ROWS, _BIN_COLS = 4, 16
#: Kernel probe: sub-cell samples per cell, and cells between probe points (> kernel width).
_PROBE_STEPS, _PROBE_SPACING = 16, 24


class FourierFbpParams(FbpParams):
    """Parameters of :func:`fourier_fbp`: those of ``fbp`` (same meaning), plus the
    NUFFT tolerance and the threads."""

    circle_mask: bool = Field(
        False,
        description="set pixels outside the inscribed circle to 0 (and skip the corners' "
        "work: 1.2-1.5x faster)",
    )
    eps: float = Field(
        1e-2,
        ge=_EPS_MIN,
        le=_EPS_MAX,
        description="relative tolerance of the NUFFT (1e-2: 0.2 % of the image)",
    )
    threads: int | None = Field(
        None, ge=1, description="threads for the FFTs and the NUFFT; None: the CPUs allowed"
    )


def window_length(size: int, circle: bool) -> int:
    """Samples ``M`` of the cropped filtered projection (even, FFT-friendly).

    The output reads detector positions within ``R`` of the axis: ``size/2`` inside the
    inscribed circle, ``(size-1)/√2`` for the whole square; the window spans ``2R`` plus
    a margin on each side (the window follows the output, not the detector).
    """
    reach = size / 2 if circle else (size - 1) / math.sqrt(2.0)
    length = scipy.fft.next_fast_len(2 * math.ceil(reach) + 2 * _MARGIN + 2)
    while length % 2:
        length = scipy.fft.next_fast_len(length + 1)
    return int(length)


def _threads(threads: int | None) -> int:
    """``threads`` if given, else every CPU this process may run on."""
    return int(threads) if threads is not None else worker_count()


def _check(  # noqa: PLR0917 - one argument per parameter, checked in order
    block: Any,
    angles_deg: Any,
    center: float | None,
    filter_name: str,
    output_size: int | None,
    eps: float,
    threads: int | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    data, angles = sinogram_inputs(_STAGE, block, angles_deg, center, output_size)
    if filter_name not in _FILTERS:
        raise StageError(
            f"stage {_STAGE!r}: filter_name: expected one of {'|'.join(_FILTERS)}, "
            f"got {filter_name!r}"
        )
    if not _EPS_MIN <= eps <= _EPS_MAX:
        raise StageError(
            f"stage {_STAGE!r}: eps: expected {_EPS_MIN:g} <= eps <= {_EPS_MAX:g}, got {eps}"
        )
    if threads is not None and threads < 1:
        raise StageError(f"stage {_STAGE!r}: threads: expected >= 1 or None, got {threads}")
    return data, angles


@dataclass(frozen=True)
class _Lines:
    """The Fourier-space lines: NUFFT points, per-projection multipliers, line of each.

    A line holds ``M+1`` frequencies in *line order*: ``0, 1/M, …, (M/2−1)/M`` (columns
    ``0 … M/2−1``), ``+1/2`` (column ``M/2``), then ``−1/2, …, −1/M`` (``M/2+1 … M``): the
    ``M``-point FFT's order with the split Nyquist term moved to the middle, so that the
    low frequencies sit at both ends and what angular decimation keeps of a line is one
    run of columns. ``multiplier[p, j]`` turns the FFT coefficient of projection ``p``'s
    cropped window into its NUFFT strength at column ``j``.

    Every projection on its own line (the usual case): projections are processed in the
    order ``order``; ``pieces`` lists ``(first, last, lo, hi, offset)``: processed
    projections ``first … last−1`` keep columns ``lo … hi−1``, stored from ``offset`` in
    the strengths (their thinned weights are in ``multiplier``). Repeated lines (360°
    scans): projection ``p`` adds into line ``line[p]``, its frequencies negated when
    ``flipped[p]``; the merged ``(lines, M+1)`` strengths are then thinned by
    ``keep`` and ``scale``.

    **Half set.** Only the points with ``ω ≥ 0`` (line columns ``0 … M/2``) are NUFFT
    points: the mirror ``-ω`` of each is spread by reflecting the grid (see
    :func:`_add_reflected`), so each packed row's grid is exactly Hermitian and its slice
    exactly real: the two rows of a pair do not leak into each other through the
    spreading kernel's rounding. Pieces hold only those columns; ``ω = 0`` is its own
    mirror and is spread half from each side.
    """

    rows_y: npt.NDArray[np.float32]  # (points,) NUFFT coordinate along iy
    cols_x: npt.NDArray[np.float32]  # (points,) NUFFT coordinate along ix
    shift: npt.NDArray[np.float64]  # (P,) window index of the axis, for the phases
    weights: npt.NDArray[np.float64]  # (P,) angle weight / M
    factor: npt.NDArray[np.float64]  # (M+1,) thinned weight / own weight (2^band)
    order: npt.NDArray[np.intp]  # (P,) processing order of the projections
    pieces: tuple[tuple[int, int, int, int, int], ...]
    line: npt.NDArray[np.intp]  # (P,)
    flipped: npt.NDArray[np.bool_]  # (P,)
    n_lines: int
    keep: npt.NDArray[np.intp] | None  # merged lines only: kept half-set entries
    mirror: npt.NDArray[np.intp] | None  # merged lines only: the entry at -ω of each
    scale: npt.NDArray[np.float32] | None  # their weight factors (DC halved)

    @property
    def points(self) -> int:
        """Number of NUFFT points."""
        return int(self.rows_y.shape[0])


def _line_frequencies(length: int) -> npt.NDArray[np.float64]:
    """The ``M+1`` frequencies of a line, in line order (see :class:`_Lines`)."""
    half = length // 2
    omega = np.fft.fftfreq(length)
    return np.concatenate([omega[:half], [0.5], omega[half:]])


def _lines(
    angles_deg: npt.NDArray[np.float64], length: int, phase_shift: float, half_pixel: bool
) -> _Lines:
    """Points and multipliers for window length ``length`` (``M``, even).

    ``phase_shift`` is the window index of the axis (``center + left - start``); with
    ``half_pixel`` (even ``N``) pixel centres sit at ``mode + 1/2``.
    """
    count = angles_deg.shape[0]
    columns = length + 1
    omega = _line_frequencies(length)
    theta = np.deg2rad(angles_deg)
    offset = 0.5 if half_pixel else 0.0
    shift = phase_shift + offset * (np.cos(theta) + np.sin(theta))  # (P,) axis, in samples
    weights = angle_weights(angles_deg) / length
    # Lines: angles reduced mod 180°; θ and θ + 180° share one line (reversed).
    reduced = np.mod(angles_deg, 360.0)
    flipped = reduced >= 180.0
    reduced = np.where(flipped, reduced - 180.0, reduced)
    key = np.round(reduced / _SAME_LINE_DEG).astype(np.int64)
    wrap = key >= round(180.0 / _SAME_LINE_DEG)  # 179.9999999…° is 0° reversed
    key = np.where(wrap, 0, key)
    flipped ^= wrap
    reduced = np.where(wrap, 0.0, reduced)
    _, first, line = np.unique(key, return_index=True, return_inverse=True)
    shared = first.size < count
    if shared:
        line_theta = np.deg2rad(reduced[first])
    else:  # every projection on its own line: keep its own angle
        line_theta = theta
        line = np.arange(count)
        flipped = np.zeros(count, dtype=bool)
    depth, band = _decimation(np.rad2deg(line_theta), omega)
    kept = band[None, :] <= depth[:, None]  # (lines, M+1)
    factor = np.exp2(band)  # (M+1,) thinned weight / own weight
    radial = (2.0 * np.pi * omega).astype(np.float32)
    sin_line = np.sin(line_theta).astype(np.float32)
    cos_line = np.cos(line_theta).astype(np.float32)
    if shared:  # 360°: whole lines (own weights) are merged, then thinned by a gather
        order = np.arange(count)
        lo, hi = np.zeros(count, dtype=np.intp), np.full(count, columns, dtype=np.intp)
    else:  # group the projections by the run of columns they keep (one run per line)
        lo = np.argmax(kept, axis=1)  # the run is symmetric: keep its ω >= 0 part
        hi = np.minimum(columns - np.argmax(kept[:, ::-1], axis=1), length // 2 + 1)
        order = np.lexsort((np.arange(count), lo))
        lo, hi = lo[order], hi[order]
    pieces: list[tuple[int, int, int, int, int]] = []
    rows_y, cols_x = [], []
    stored = 0
    for chunk in range(0, count, _CHUNK):
        end = min(chunk + _CHUNK, count)
        p = chunk
        while p < end:
            same = (lo[p:end] == lo[p]) & (hi[p:end] == hi[p])
            q = p + (int(np.argmin(same)) if not same.all() else end - p)
            a, b = int(lo[p]), int(hi[p])
            chosen = order[p:q]
            if not shared:
                rows_y.append(np.multiply.outer(sin_line[chosen], radial[a:b]).ravel())
                cols_x.append(np.multiply.outer(cos_line[chosen], radial[a:b]).ravel())
            pieces.append((p, q, a, b, stored))
            stored += (q - p) * (b - a)
            p = q
    keep: npt.NDArray[np.intp] | None = None
    mirror: npt.NDArray[np.intp] | None = None
    scale_kept: npt.NDArray[np.float32] | None = None
    if shared:
        plus = np.arange(columns) <= length // 2
        keep = np.flatnonzero(kept & plus[None, :]).astype(np.intp)
        mirror = (keep - keep % columns + _negated(length)[keep % columns]).astype(np.intp)
        rows_y.append(np.multiply.outer(sin_line, radial).ravel()[keep])
        cols_x.append(np.multiply.outer(cos_line, radial).ravel()[keep])
        halved = np.where(np.arange(columns) == 0, 0.5, 1.0) * factor  # ω = 0: half each side
        scale_kept = np.broadcast_to(halved, kept.shape).ravel()[keep].astype(np.float32)
    return _Lines(
        rows_y=np.concatenate(rows_y),
        cols_x=np.concatenate(cols_x),
        shift=shift,
        weights=weights,
        factor=np.ones(columns) if shared else factor,
        order=order.astype(np.intp),
        pieces=tuple(pieces),
        line=line.astype(np.intp),
        flipped=flipped,
        n_lines=int(first.size),
        keep=keep,
        mirror=mirror,
        scale=scale_kept,
    )


def _multipliers(lines: _Lines, length: int) -> npt.NDArray[np.complex64]:
    """Multipliers ``(stored,)``, laid out as the strengths before merging: for each kept
    column ``j`` of each projection, ``weight · factor_j · exp(2πi ω_j · shift)``, the two
    Nyquist columns at half weight, and ``ω = 0`` at half weight in the half set (every
    projection on its own line; merged lines halve it in ``scale``). (Its own step: it
    runs while the plans sort points.)"""
    omega = _line_frequencies(length)
    parts = []
    for p, q, a, b, _ in lines.pieces:
        chosen = lines.order[p:q]
        # Phase in turns, reduced to [0, 1) in float64 before the float32 sine and cosine
        # (the shift reaches hundreds of turns; float32 keeps ~1e-7 of a turn after this).
        turns = np.multiply.outer(lines.shift[chosen], omega[a:b])
        angle = (2.0 * np.pi * (turns - np.floor(turns))).astype(np.float32)
        out = np.empty(angle.shape, dtype=np.complex64)
        np.cos(angle, out=out.real)
        np.sin(angle, out=out.imag)
        out *= np.multiply.outer(lines.weights[chosen], lines.factor[a:b]).astype(np.float32)
        for nyquist in (length // 2, length // 2 + 1):  # half at +1/2, half at -1/2
            if a <= nyquist < b:
                out[:, nyquist - a] *= 0.5
        if a == 0 and lines.keep is None:  # half set: ω = 0 spread half from each side
            out[:, 0] *= 0.5
        parts.append(out.ravel())
    return np.concatenate(parts)


def _decimation(
    line_deg: npt.NDArray[np.float64], omega: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Angular decimation: fewer lines at low frequency, with the same worst arc spacing.

    The arc between neighbouring lines at frequency ``|ω|`` is ``|ω|·Δθ``: at the edge,
    ``|ω| = 1/2``, it sets the angular sampling of the result; nearer the origin the
    lines are oversampled. For equally spaced lines (mod 180°), every ``2^b``-th line is
    again an equally spaced set, whose arcs at ``|ω| < 2^-b/2`` are no wider than the
    full set's at the edge: only those lines are spread there, with ``2^b`` times their
    weight (the trapezoidal rule on the thinned set, as exact for the angular harmonics
    that remain as the full set is at the edge). About a third fewer points.
    Non-uniform angles are left whole: on an irregular set the thinned weights are only
    first-order accurate, which showed (0.049 → 0.071 on the shuffled-angles test).

    Returns the depth of each line (the coarsest thinned set it belongs to) and the band
    of each frequency (the thinned set spread there): a line is spread at the frequencies
    whose band is at most its depth, with ``2^band`` times its weight.
    """
    count = line_deg.shape[0]
    reduced = np.mod(line_deg, 180.0)
    order = np.argsort(reduced, kind="stable")
    gaps = np.diff(np.append(reduced[order], reduced[order[0]] + 180.0))
    depth = np.zeros(count, dtype=np.intp)
    band = np.zeros(omega.shape[0], dtype=np.intp)  # coarsest thinning allowed at ω
    step = 180.0 / count
    if np.abs(gaps - step).max() > _UNIFORM_TOLERANCE * step:
        return depth, band
    level = 0
    while count % (2 << level) == 0 and count >> (level + 1) >= _DECIMATE_MIN_LINES:
        level += 1
        band[np.abs(omega) < 0.5 * _DECIMATE_SAFETY / (1 << level)] = level
    rank = np.arange(count)
    depth[order] = np.minimum(_trailing_zeros(rank), level)
    return depth, band


def _trailing_zeros(values: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Trailing zero bits of each value (0 counts as many: it is in every thinned set)."""
    result = np.zeros(values.shape, dtype=np.intp)
    rest = values.copy()
    rest[rest == 0] = 1 << 30
    while np.any(rest % 2 == 0):
        even = rest % 2 == 0
        result += even
        rest = np.where(even, rest // 2, rest)
    return result


def _negated(length: int) -> npt.NDArray[np.intp]:
    """Column of ``-ω_j`` for each column ``j`` of a line (line order, see :class:`_Lines`)."""
    steps = np.round(_line_frequencies(length) * length).astype(np.int64)  # −M/2 … M/2
    position = np.empty(length + 1, dtype=np.intp)
    position[steps + length // 2] = np.arange(length + 1)
    return position[-steps + length // 2]


@dataclass(frozen=True)
class _Layout:
    """Where the data sit: padded length, data offset, window start and length."""

    length: int  # L, padded projection
    left: int  # padded index of detector column 0
    start: int  # padded index of window sample 0
    window: int  # M


@dataclass(frozen=True)
class _Filter:
    """Everything a pair's filtering needs besides the data: fixed for the whole block."""

    layout: _Layout
    response: npt.NDArray[np.float32]  # (L,) filter in complex-FFT bin order
    lines: _Lines
    multiplier: npt.NDArray[np.complex64]  # (stored,) see _multipliers
    conjugate: npt.NDArray[np.complex64]  # its conjugate (the mirrors' multipliers)
    negated: npt.NDArray[np.intp]  # (M+1,) column of -ω
    pad: bool

    @property
    def shared(self) -> bool:
        """Whether projections share lines (merged before the half set is taken)."""
        return self.lines.keep is not None


@dataclass(frozen=True)
class _Tables:
    """A :class:`_Filter`'s arrays in the array module of the data (``xp``): the host's
    own arrays for numpy, copies uploaded once per plan for a device (kept in the
    plan, so in the scan's :class:`FourierFbpCache`).

    ``merges`` lists, for merged (360°) lines, the passes that sum projections into
    their lines: ``(projections, their lines, flipped)``, each line once per pass.
    ``chunk`` is the number of projections filtered together: :data:`_CHUNK` on the
    host (the working set in a core's L2 cache), a multiple of it on a device (fewer,
    larger launches; pieces never straddle a chunk since they split at ``_CHUNK``).

    The strengths are made in line order and spread in the gridder's order
    (:func:`_point_order`): on the host each piece's products are scattered there as
    they are made (``scatter``), on a device the whole vectors are gathered once per
    pair (``gather``: two launches, not two per piece); merged lines gather their half
    set in that order directly (``keep``, ``mirror``, ``scale`` are permuted).
    """

    xp: Any
    response: Any
    multiplier: Any
    conjugate: Any
    negated: Any
    order: Any
    keep: Any
    mirror: Any
    scale: Any
    merges: tuple[tuple[Any, Any, bool], ...]
    chunk: int
    in_order: bool
    scatter: Any  # host, own lines: where each line-order strength goes (gridder order)
    gather: Any  # device, own lines: the line-order strength of each gridder point


#: Projections filtered together on a device (a multiple of :data:`_CHUNK`).
_DEVICE_CHUNK = 32 * _CHUNK


def _tables(setup: _Filter, xp: Any, order: npt.NDArray[np.intp]) -> _Tables:
    """``setup``'s arrays for blocks of ``xp``, the strengths laid out for a gridder
    whose point ``i`` is line-order point ``order[i]`` (see :class:`_Tables`)."""
    lines = setup.lines
    merges: list[tuple[Any, Any, bool]] = []
    if setup.shared:
        rank = _occurrence(lines.line)
        for level in range(int(rank.max()) + 1):
            for flip in (False, True):
                chosen = np.flatnonzero((rank == level) & (lines.flipped == flip))
                if chosen.size:
                    merges.append((xp.asarray(chosen), xp.asarray(lines.line[chosen]), flip))

    def put(value: Any) -> Any:
        return None if value is None else xp.asarray(value)

    def ordered(value: Any) -> Any:
        return None if value is None else xp.asarray(value[order])

    scatter = gather = None
    if not setup.shared and xp is np:
        scatter = np.empty_like(order)
        scatter[order] = np.arange(order.size)
    elif not setup.shared:
        gather = xp.asarray(order)
    return _Tables(
        xp=xp, response=put(setup.response), multiplier=put(setup.multiplier),
        conjugate=put(setup.conjugate), negated=put(setup.negated), order=put(lines.order),
        keep=ordered(lines.keep), mirror=ordered(lines.mirror), scale=ordered(lines.scale),
        merges=tuple(merges), chunk=_CHUNK if xp is np else _DEVICE_CHUNK,
        in_order=bool(np.all(lines.order[1:] > lines.order[:-1])),
        scatter=scatter, gather=gather,
    )


def _point_order(lines: _Lines, grid: int) -> npt.NDArray[np.intp]:
    """The gridder's order of the NUFFT points: by bins of :data:`_BIN_ROWS` grid rows ×
    :data:`_BIN_COLS` columns (the bins finufft sorts into), the lines' order within a
    bin. finufft then finds its points and strengths in memory order (it reads them
    through its sort index), not one short run per line; the sums on the grid are the
    same up to float32 rounding (the order of the additions)."""
    scale, centre = np.float32(grid / (2.0 * np.pi)), np.float32(grid / 2)
    rows = np.floor(lines.rows_y * scale + centre).astype(np.int32) % grid
    cols = np.floor(lines.cols_x * scale + centre).astype(np.int32) % grid
    bins_across = -(-grid // _BIN_COLS)
    key = (rows // _BIN_ROWS).astype(np.int64) * bins_across + cols // _BIN_COLS
    if int(key.max(initial=0)) <= np.iinfo(np.uint16).max:
        key = key.astype(np.uint16)  # a radix sort
    order: npt.NDArray[np.intp] = np.argsort(key, kind="stable").astype(np.intp)
    return order


def _pair_strengths(
    sino: npt.NDArray[np.float32], pair: int, setup: _Filter, threads: int, tables: _Tables,
) -> npt.NDArray[np.complex64]:
    """NUFFT strengths ``(2, points)`` of rows ``2·pair`` (``a``) and ``2·pair+1`` (``b``).

    Per chunk of projections (in the lines' processing order): pack ``a + i·b`` padded
    to ``L``, FFT, × filter, inverse FFT, crop the window, FFT, × multiplier on the kept
    columns; ``threads`` for the FFTs (pairs run in parallel, so usually 1). Row 0 holds
    the packed strengths at the half set's points ``ω ≥ 0``; row 1 those at their mirrors
    ``-ω`` (spread at ``ω`` and reflected, see :func:`_add_reflected`): for every
    projection on its own line, the coefficient at ``-ω`` times the conjugate multiplier.
    Every array operation is ``tables.xp``'s (the data's module: numpy or CuPy).
    """
    t = tables
    xp = t.xp
    fft = fft_module(xp)
    workers: dict[str, Any] = {"workers": threads} if xp is np else {}
    rows, n_angles, cols = sino.shape
    layout, lines, pad = setup.layout, setup.lines, setup.pad
    left, length, start, window = layout.left, layout.length, layout.start, layout.window
    half = window // 2
    inside = start >= 0 and start + window <= length
    lo, hi = max(start, 0), min(start + window, length)
    shared = setup.shared
    chunk = t.chunk
    strengths: npt.NDArray[np.complex64] = xp.empty((2, lines.points), dtype=xp.complex64)
    # Merged lines: the whole lines' strengths first, then the two halves are gathered.
    # Own lines on the host: each piece's products in a staging area, scattered to the
    # gridder's order; on a device, made in line order and gathered at the end.
    scatter = t.scatter
    line_order = strengths if t.gather is None else xp.empty_like(strengths)
    staging = None
    if scatter is not None:
        largest = max((q - p) * (b - a) for p, q, a, b, _ in lines.pieces)
        staging = xp.empty((2, largest), dtype=xp.complex64)
    full = xp.empty(n_angles * (window + 1), dtype=xp.complex64) if shared else line_order[0]
    conjugate = t.conjugate
    packed = xp.empty((min(chunk, n_angles), length), dtype=xp.complex64)
    parts = packed.view(xp.float32).reshape(packed.shape[0], length, 2)
    edges = xp.empty((packed.shape[0], 2), dtype=xp.complex64)  # (left, right) pad values
    for first in range(0, n_angles, chunk):
        last = min(first + chunk, n_angles)
        count = last - first
        # The detector columns of rows a and b, interleaved; then each side's padding as
        # one complex value per projection (a contiguous broadcast, not two strided).
        edges[:count] = 0.0
        for part, row in enumerate((2 * pair, 2 * pair + 1)):
            if row >= rows:  # odd block: the last imaginary part is 0
                parts[:count, :, part] = 0.0
                continue
            data = sino[row, first:last] if t.in_order else sino[row][t.order[first:last]]
            parts[:count, left : left + cols, part] = data
            if pad:
                edge = edges[:count].imag if part else edges[:count].real
                edge[:, 0] = data[:, 0]
                edge[:, 1] = data[:, -1]
        packed[:count, :left] = edges[:count, :1]
        packed[:count, left + cols :] = edges[:count, 1:]
        spectrum = fft.fft(packed[:count], axis=-1, **workers)
        spectrum *= t.response
        filtered = fft.ifft(spectrum, axis=-1, overwrite_x=True, **workers)
        if inside:  # the usual case: a view, no copy
            cropped = filtered[:, start : start + window]
        else:  # positions off the padded projection read 0, as in fbp
            cropped = xp.zeros((count, window), dtype=xp.complex64)
            if hi > lo:
                cropped[:, lo - start : hi - start] = filtered[:, lo:hi]
        coefficients = fft.fft(cropped, axis=-1, **workers)
        for p, q, a, b, stored in lines.pieces:
            if p < first or p >= last:
                continue
            # Line columns a … b-1: coefficients a … M/2 (the last as +1/2), then
            # M/2 … M-1 (from -1/2 on): two runs of the FFT's own order.
            size = (q - p) * (b - a)
            # Where this piece's products go: line order (merged lines, a device), or the
            # staging area (own lines on the host, scattered below).
            target = full[stored:] if staging is None else staging[0]
            out = target[:size].reshape(q - p, b - a)
            mult = t.multiplier[stored : stored + size].reshape(q - p, b - a)
            coef = coefficients[p - first : q - first]
            split = max(min(half + 1, b) - a, 0)
            if split:
                xp.multiply(coef[:, a : a + split], mult[:, :split], out=out[:, :split])
            if split < b - a:
                xp.multiply(coef[:, a + split - 1 : b - 1], mult[:, split:], out=out[:, split:])
            if shared:
                continue
            # Half set (b <= M/2 + 1): the mirror -ω of column j is FFT coefficient
            # (M - j) mod M, its multiplier the conjugate of j's.
            target = line_order[1, stored:] if staging is None else staging[1]
            mirror = target[:size].reshape(q - p, b - a)
            conj = conjugate[stored : stored + size].reshape(q - p, b - a)
            low = a
            if a == 0:  # ω = 0 is its own mirror
                xp.multiply(coef[:, 0], conj[:, 0], out=mirror[:, 0])
                low = 1
            if b > low:
                xp.multiply(coef[:, window - b + 1 : window - low + 1][:, ::-1],
                            conj[:, low - a :], out=mirror[:, low - a :])
            if staging is not None:  # (one index per vector: 2-D fancy indexing is ~6x slower)
                where = scatter[stored : stored + size]
                strengths[0][where] = staging[0, :size]
                strengths[1][where] = staging[1, :size]
    if not shared:
        if t.gather is not None:
            xp.take(line_order, t.gather, axis=1, out=strengths)
        return strengths
    # Sum the projections of each line (θ and θ + 180°: frequencies reversed). Within one
    # pass every target line appears once (fancy-index += does not accumulate repeats).
    whole = full.reshape(n_angles, window + 1)
    merged = xp.zeros((lines.n_lines, window + 1), dtype=xp.complex64)
    for chosen, target_lines, flip in t.merges:
        values = whole[chosen]
        if flip:
            values = values[:, t.negated]
        merged[target_lines] += values
    flat = merged.reshape(-1)
    xp.multiply(flat[t.keep], t.scale, out=strengths[0])
    xp.multiply(flat[t.mirror], t.scale, out=strengths[1])
    return strengths


def _occurrence(labels: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """For each element, how many earlier elements share its label (0, 1, …)."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run = np.arange(labels.size) - np.repeat(starts, np.diff(np.r_[starts, labels.size]))
    rank = np.empty_like(labels)
    rank[order] = run
    return rank


def _kernel_transform(
    eps: float, grid: int, modes: npt.NDArray[np.int64], xp: Any = np
) -> npt.NDArray[np.float64]:
    """Continuous Fourier transform ``φ̂(k)`` of finufft's spreading kernel at ``modes``.

    The kernel (its width and shape follow from ``eps`` and the oversampling only) is
    probed by spreading ``_PROBE_STEPS`` unit points at sub-cell offsets ``q/_PROBE_STEPS``
    onto a small grid; the samples at spacing ``1/_PROBE_STEPS`` cell give ``φ̂`` by
    quadrature (spectrally accurate: ``φ`` is smooth and compact). This is the
    deconvolution finufft applies in a full type-1 transform. The probe spreads with the
    library that will grid (``xp``'s: cufinufft's kernel for CuPy blocks), so the
    deconvolution matches the spreading on either device.
    """
    steps, spacing = _PROBE_STEPS, _PROBE_SPACING
    probe = spacing * (steps + 2)
    cells = spacing * (np.arange(steps) + 1) - probe // 2  # probe point q near this cell
    positions = cells + np.arange(steps) / steps
    plan = spreading_plan(xp, 1, (probe, probe), n_trans=1, eps=eps, upsampfac=_UPSAMPFAC,
                          threads=1, stage=_STAGE)
    plan.setpts(
        xp.asarray(np.zeros(steps, dtype=np.float32)),
        xp.asarray((2 * np.pi * positions / probe).astype(np.float32)),
    )
    spread = plan.execute(xp.asarray(np.ones((1, steps), dtype=np.complex64)))
    row = download(spread.reshape(probe, probe)[probe // 2].real)
    offsets = np.arange(-(spacing // 2), spacing // 2)
    nodes = cells[:, None] + offsets[None, :]  # grid cells around each probe point
    distance = (nodes - positions[:, None]).ravel()
    values = row[nodes + probe // 2].astype(np.float64).ravel()
    values /= math.sqrt(values[np.argmin(np.abs(distance))])  # the row is φ(0)·φ(s)
    phase = 2.0 * np.pi * np.outer(modes, distance) / grid
    transform: npt.NDArray[np.float64] = (np.cos(phase) @ values) / steps
    return transform


def _grid_size(size: int) -> int:
    """Edge of the oversampled gridding grid: even, FFT-friendly, ``>= 1.25·size``."""
    grid = scipy.fft.next_fast_len(math.ceil(_UPSAMPFAC * size))
    return int(grid + grid % 2)


def _deconvolution(eps: float, size: int, xp: Any = np) -> npt.NDArray[np.float32]:
    """``1 / (φ̂(k_y) φ̂(k_x))`` on the output modes, with the grid's centring sign (the
    kernel of ``xp``'s NUFFT library; a host array either way)."""
    grid = _grid_size(size)
    modes = np.arange(-(size // 2), (size + 1) // 2)
    # Grid cell m is at 2π(m - grid/2)/grid: the centre offset is a (-1)^k factor.
    kernel = _kernel_transform(eps, grid, modes, xp) * np.where(modes % 2, -1.0, 1.0)
    inverse = (1.0 / kernel).astype(np.float32)
    return np.multiply.outer(inverse, inverse)


def _add_reflected(
    target: npt.NDArray[np.complex64], source: npt.NDArray[np.complex64]
) -> None:
    """``target[m] += source[-m mod G]`` on both axes of a ``G × G`` grid (``G`` even).

    Grid cell ``m`` sits at ``2π(m - G/2)/G``, so ``-m mod G`` is the cell at minus its
    position: spreading a strength at ``ω`` and reflecting the grid is spreading it at
    ``-ω`` with a kernel that is exactly the mirror image (finufft's kernel evaluation at
    ``±x`` differs by its rounding and polynomial fit, ~``eps/10``: enough to leak one
    row of a pair into the other's slice).
    """
    target[0, 0] += source[0, 0]
    target[0, 1:] += source[0, :0:-1]
    target[1:, 0] += source[:0:-1, 0]
    target[1:, 1:] += source[:0:-1, :0:-1]


#: Grid rows a spread point can reach on each side of its own cell (finufft's kernel is
#: at most 16 cells wide: half of it, plus one for the rounding of the point's cell).
_KERNEL_REACH = 9


def _reflected_runs(rows_y: npt.NDArray[np.float32], grid: int) -> tuple[tuple[int, int], ...]:
    """The runs ``(first, end)`` of target rows that :func:`_add_reflected` can change
    when the source grid is the spreading of points at ``rows_y``: the rows ``m`` whose
    mirror ``-m mod G`` a point's kernel reaches.

    Grid row ``m`` sits at ``2π(m - G/2)/G``, so a point at ``y`` reaches the rows within
    the kernel's half-width of ``y·G/2π + G/2`` (periodically); every other source row
    is exactly zero and adding it changes nothing. The half set's points lie at
    ``y ≥ 0`` for angles in ``[0°, 180°)`` (``ω ≥ 0``, ``sin θ ≥ 0``): about half the
    rows, so the reflection reads and writes half the grid.
    """
    centre = np.floor(rows_y.astype(np.float64) * (grid / (2.0 * np.pi)) + grid / 2)
    touched = np.zeros(grid, dtype=bool)
    touched[np.unique(centre.astype(np.int64)) % grid] = True
    reach = _KERNEL_REACH
    padded = np.concatenate([touched[-reach:], touched, touched[:reach]]).astype(np.int64)
    counts = np.concatenate([[0], np.cumsum(padded)])
    dilated = (counts[2 * reach + 1 :] - counts[: -2 * reach - 1]) > 0  # (grid,)
    needed = dilated[(-np.arange(grid)) % grid]  # target m reads source -m
    edges = np.flatnonzero(np.diff(np.concatenate([[0], needed.astype(np.int8), [0]])))
    return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))


def add_reflected_rows(
    target: npt.NDArray[np.complex64], source: npt.NDArray[np.complex64], first: int, end: int
) -> None:
    """:func:`_add_reflected` on rows ``first … end-1`` of ``target`` only:
    ``target[m] += source[-m mod G]`` on both axes (``G × G``, ``G`` even); the same
    sums, bit for bit, where the other source rows are zero (the streaming
    accumulator's rows too: :mod:`stages.recon.streaming`)."""
    grid = target.shape[0]
    if first == 0:  # row 0 reflects onto itself
        target[0, 0] += source[0, 0]
        target[0, 1:] += source[0, :0:-1]
        first = 1
    if end <= first:
        return
    # Rows first … end-1 read source rows G-first down to G-end+1.
    rows = source[grid - first : grid - end : -1]
    target[first:end, 0] += rows[:, 0]
    target[first:end, 1:] += rows[:, :0:-1]


def _add_reflected_runs(
    target: npt.NDArray[np.complex64],
    source: npt.NDArray[np.complex64],
    runs: tuple[tuple[int, int], ...],
) -> None:
    """:func:`add_reflected_rows` on the target rows of each of ``runs``."""
    for start, end in runs:
        add_reflected_rows(target, source, start, end)


class _Gridder:
    """Type-1 NUFFT of one pair's strengths onto ``size × size`` modes (one per thread).

    finufft spreads (``spreadinterponly``; points sorted once by ``setpts``) the two rows
    of strengths (half set and mirrors, see :func:`_pair_strengths`) onto two oversampled
    grids; the second is reflected into the first on the rows it reaches
    (:func:`_add_reflected_runs`: about half the grid); the FFT is scipy's, in place,
    pruned to the ``size`` wanted columns before the second axis; the kernel's transform
    is divided out as the real and imaginary parts are written to the two slices (one
    pass, no image copy).
    (finufft's own FFT is FFTW: with ESTIMATE plans it is 3-5x slower than scipy's here,
    with MEASURE plans it costs seconds of planning per size and process.)
    On a CuPy block the same steps run on the device: cufinufft spreads (same options,
    :func:`stages.backends.nufft.spreading_plan`) and ``cupyx.scipy.fft`` transforms.
    """

    def __init__(self, lines: _Lines, size: int, eps: float, threads: int, xp: Any = np, *,
                 points: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]) -> None:
        grid = _grid_size(size)
        self.grid = grid
        self.threads = threads
        self.xp = xp
        self.fft = fft_module(xp)
        self.fft_options: dict[str, Any] = {"workers": threads} if xp is np else {}
        self.plan = spreading_plan(xp, 1, (grid, grid), n_trans=2, eps=eps,
                                   upsampfac=_UPSAMPFAC, threads=threads, stage=_STAGE)
        # The points in the plan's order (:func:`_point_order`; a device keeps its copy).
        self.plan.setpts(xp.asarray(points[0]), xp.asarray(points[1]))
        self.runs = _reflected_runs(lines.rows_y, grid)
        # Modes -size//2 … -1 sit at the end of the grid's FFT, 0 … at its start.
        self.negative = size // 2
        self.nonnegative = size - size // 2

    def grids(self) -> npt.NDArray[np.complex64]:
        """The two spread grids ``(2, G, G)`` a worker reuses for all its pairs (at
        N = 2048 they are 105 MB: allocated per pair, every page faulted in anew)."""
        grids: npt.NDArray[np.complex64] = self.xp.empty((2, self.grid, self.grid),
                                                         dtype=self.xp.complex64)
        return grids

    def __call__(
        self,
        strengths: npt.NDArray[np.complex64],
        grids: npt.NDArray[np.complex64],
        factor: npt.NDArray[np.float32],
        real: npt.NDArray[np.float32],
        imag: npt.NDArray[np.float32] | None,
    ) -> None:
        """Grid one pair: write the slice of the packed real part into ``real`` and that
        of the imaginary part into ``imag`` (``None``: a lone row), both ``(size, size)``,
        deconvolved by ``factor`` (:func:`_deconvolution`, stored upside down as the
        slices are read); ``grids`` (from :meth:`grids`) is overwritten."""
        xp = self.xp
        neg, nonneg = self.negative, self.nonnegative
        spread = self.plan.execute(strengths, out=grids)
        _add_reflected_runs(spread[0], spread[1], self.runs)
        # In place (contiguous complex64): the first grid becomes the row transform.
        rows = self.fft.ifft(spread[0], axis=-1, norm="forward", overwrite_x=True,
                             **self.fft_options)
        # Second axis only on the wanted columns (two runs of the grid, no gather copy),
        # in place on the host. Image row ``k_y + neg`` (modes ``k_y`` from ``-neg``) is
        # slice row ``size - 1 - k_y - neg`` (y = (N-1)/2 - iy): slice rows ``0 …
        # nonneg-1`` are grid rows ``nonneg-1 … 0``, rows ``nonneg …`` are grid rows
        # ``G-1 … G-neg``, each read upside down (a view) and multiplied by the factor
        # straight into the slice.
        for columns, wanted in ((rows[:, rows.shape[1] - neg :], slice(0, neg)),
                                (rows[:, :nonneg], slice(neg, neg + nonneg))):
            if columns.shape[1] == 0:
                continue
            full = self.fft.ifft(columns, axis=0, norm="forward", overwrite_x=True,
                                 **self.fft_options)
            grid_rows = full.shape[0]
            upper, lower = full[nonneg - 1 :: -1], full[grid_rows - 1 : grid_rows - neg - 1 : -1]
            xp.multiply(upper.real, factor[:nonneg, wanted], out=real[:nonneg, wanted])
            xp.multiply(lower.real, factor[nonneg:, wanted], out=real[nonneg:, wanted])
            if imag is not None:
                xp.multiply(upper.imag, factor[:nonneg, wanted], out=imag[:nonneg, wanted])
                xp.multiply(lower.imag, factor[nonneg:, wanted], out=imag[nonneg:, wanted])


@dataclass(frozen=True)
class _Geometry:
    """What fixes a reconstruction's plan: equal geometries share lines, multipliers,
    deconvolution and the gridders' sorted points (:class:`FourierFbpCache`)."""

    angles: bytes  # float64 angles, in block order
    cols: int
    size: int
    axis: float
    filter_name: str
    pad: bool
    circle: bool
    eps: float

    @property
    def layout(self) -> _Layout:
        length = padded_length(self.cols)
        left = (length - self.cols) // 2
        window = window_length(self.size, self.circle)
        start = math.floor(left + self.axis + 0.5) - window // 2
        return _Layout(length=length, left=left, start=start, window=window)


class _Plan:
    """The fixed work of one geometry: lines, filter set-up, deconvolution, gridders.

    Made in parts, so that a fresh plan's parts are made concurrently (the gridders sort
    their points and the deconvolution is probed in the pool while the calling thread
    computes the multipliers); a cached plan has them all. Gridders are lent to one call's
    workers and given back; each is for one thread count and array module. A device
    (CuPy) call keeps its own tables, deconvolution and gridder here too: uploaded and
    planned once per scan, not once per block.
    """

    def __init__(self, geometry: _Geometry) -> None:
        self.geometry = geometry
        self.layout = geometry.layout
        layout = self.layout
        angles = np.frombuffer(geometry.angles, dtype=np.float64)
        self.lines = _lines(angles, layout.window, layout.left + geometry.axis - layout.start,
                            geometry.size % 2 == 0)
        self.setup: _Filter | None = None
        self.deconvolution: npt.NDArray[np.float32] | None = None
        self._idle: dict[tuple[int, str], list[_Gridder]] = {}
        self._tables: dict[str, _Tables] = {}
        self._device_deconvolution: dict[str, Any] = {}
        self._order: npt.NDArray[np.intp] | None = None
        self._ordered_points: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        self._order_lock = threading.Lock()
        #: Tables other users of the same geometry derive from it (the streaming
        #: contributions, the last block's gridding plan), by name.
        self.derived: dict[str, Any] = {}

    def make_setup(self) -> _Filter:
        """The filter set-up (multipliers: the largest fixed cost after the sorting)."""
        if self.setup is None:
            geometry, layout = self.geometry, self.layout
            rfft_response = filter_response(layout.length, geometry.filter_name)
            # Full-spectrum (complex FFT order) copy of the real, even rfft response.
            response = np.concatenate(
                [rfft_response, rfft_response[1 : layout.length // 2][::-1]]
            )
            multiplier = _multipliers(self.lines, layout.window)
            self.setup = _Filter(
                layout, response.astype(np.float32), self.lines, multiplier,
                np.conj(multiplier), _negated(layout.window), geometry.pad,
            )
        return self.setup

    def make_deconvolution(self) -> npt.NDArray[np.float32]:
        """The kernel's deconvolution, upside down as the slices are read, 0 outside the
        circle with ``circle_mask`` (zeroed on the way out: no extra pass)."""
        if self.deconvolution is None:
            size = self.geometry.size
            result = _deconvolution(self.geometry.eps, size)
            if self.geometry.circle:
                result[~circle_inside(size, size)] = 0.0
            self.deconvolution = np.ascontiguousarray(result[::-1])
        return self.deconvolution

    def point_order(self) -> npt.NDArray[np.intp]:
        """The gridders' order of the points (:func:`_point_order`), made once."""
        with self._order_lock:  # the pool's gridders and the caller's tables ask at once
            if self._order is None:
                self._order = _point_order(self.lines, _grid_size(self.geometry.size))
            return self._order

    def ordered_points(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The points ``(rows_y, cols_x)`` in the gridders' order, one copy for all of
        them (finufft reads them at every spreading: each plan keeps a reference)."""
        order = self.point_order()
        with self._order_lock:
            if self._ordered_points is None:
                self._ordered_points = (np.ascontiguousarray(self.lines.rows_y[order]),
                                        np.ascontiguousarray(self.lines.cols_x[order]))
            return self._ordered_points

    def make_tables(self, xp: Any) -> _Tables:
        """The filter set-up's arrays for blocks of ``xp`` (uploaded once for a device)."""
        key = _module_name(xp)
        if key not in self._tables:
            self._tables[key] = _tables(self.make_setup(), xp, self.point_order())
        return self._tables[key]

    def deconvolution_for(self, xp: Any) -> Any:
        """:meth:`make_deconvolution` for blocks of ``xp``: the host's for numpy; for a
        device, that of its own library's kernel (probed there), uploaded once."""
        if xp is np:
            return self.make_deconvolution()
        key = _module_name(xp)
        if key not in self._device_deconvolution:
            size = self.geometry.size
            result = _deconvolution(self.geometry.eps, size, xp)
            if self.geometry.circle:
                result[~circle_inside(size, size)] = 0.0
            self._device_deconvolution[key] = xp.asarray(np.ascontiguousarray(result[::-1]))
        return self._device_deconvolution[key]

    def lend(self, threads: int, xp: Any = np) -> _Gridder | None:
        """An idle gridder for ``threads`` threads and ``xp``, or ``None`` (make one)."""
        idle = self._idle.get((threads, _module_name(xp)))
        return idle.pop() if idle else None

    def make_gridder(self, threads: int, xp: Any = np) -> _Gridder:
        return _Gridder(self.lines, self.geometry.size, self.geometry.eps, threads, xp,
                        points=self.ordered_points())

    def give_back(self, gridder: _Gridder) -> None:
        key = (gridder.threads, _module_name(gridder.xp))
        self._idle.setdefault(key, []).append(gridder)


def _module_name(xp: Any) -> str:
    """The name a plan files its per-module parts under (``numpy``, ``cupy``, …)."""
    return str(getattr(xp, "__name__", type(xp).__name__))


class FourierFbpCache:
    """Per-scan cache of :func:`fourier_fbp`'s fixed work, owned by the caller.

    Every call of the same geometry (angles, detector width, output size, CoR, filter,
    padding, circle mask, tolerance) needs the same lines, multipliers, kernel
    deconvolution and gridding plans (the points sorted per thread): about 28 ms at
    N = 1024, P = 1200, paid once per scan instead of once per block of rows when the
    caller keeps this object for the scan (the executor does: :class:`StageSpec.cache`)
    and passes it as ``fourier_fbp(..., cache=...)``. Only the last geometry is kept (a
    new one replaces it). One call at a time uses it; a call that finds it in use by
    another thread works without it. It holds about 64 bytes per NUFFT point between
    calls with 2 threads (the points in line order and in the gridders' order,
    multipliers and their conjugates, that order and its inverse, one sort index per
    thread) plus the ``N²`` deconvolution: about 42 MB at N = 1024, P = 1200
    (docs/decisions/0010).
    """

    def __init__(self) -> None:
        self._plan: _Plan | None = None
        self._lock = threading.Lock()
        #: Calls that found their plan here, and calls that made one.
        self.hits = 0
        self.misses = 0
        #: Streaming bands that found their block's gridding here (made by another band).
        self.blocks_shared = 0

    def acquire(self, geometry: _Geometry) -> _Plan | None:
        """The plan for ``geometry`` (made if new), locked for the caller; ``None`` when
        another call holds it. Release with :meth:`release`."""
        if not self._lock.acquire(blocking=False):
            return None
        if self._plan is not None and self._plan.geometry == geometry:
            self.hits += 1
        else:
            self._plan = None  # the old plan's memory goes first
            self._plan = _Plan(geometry)
            self.misses += 1
        return self._plan

    def release(self) -> None:
        self._lock.release()

    def shared(self, geometry: _Geometry) -> _Plan:
        """The plan for ``geometry`` (made if new) to read its fixed tables, not its
        gridders (:class:`stages.recon.streaming.StreamingFbp`'s bands share it)."""
        if self._plan is None or self._plan.geometry != geometry:
            self._plan = None
            self._plan = _Plan(geometry)
            self.misses += 1
        else:
            self.hits += 1
        return self._plan

    def try_lock(self) -> bool:
        """Take the cache for a job that uses its plans (``False``: in use elsewhere)."""
        return self._lock.acquire(blocking=False)


def fourier_fbp(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    center: float | None = None,
    filter_name: FilterName = "ramlak",
    pad: bool = True,
    output_size: int | None = None,
    circle_mask: bool = False,
    eps: float = 1e-2,
    threads: int | None = None,
    cache: FourierFbpCache | None = None,
) -> npt.NDArray[np.float32]:
    """Reconstruct the slices of a sinogram block by Fourier-domain FBP (NUFFT gridding).

    Parameters
    ----------
    block : ndarray of shape (rows, angles, cols)
        ``-log`` transmissions (line integrals in attenuation × pixels), one sinogram per
        detector row.
    angles_deg : ndarray of shape (angles,)
        Projection angles in degrees, any order and spacing (180° and 360° scans alike).
    center : float, optional
        Rotation axis, 0-based detector column; ``(cols-1)/2`` when omitted. Any real
        value: applied as a Fourier phase ramp, no resampling.
    filter_name : {"ramlak", "shepp", "cosine", "hamming", "hann", "parzen"}
        Window on the ramp, as in :func:`stages.recon.fbp.filter_response`.
    pad : bool
        Pad projections with edge values (True) or zeros (False) to
        ``padded_length(cols)`` before filtering.
    output_size : int, optional
        Edge ``N`` of the square slices; ``cols`` when omitted; 1-pixel voxels centred on
        the axis whatever ``N``.
    circle_mask : bool
        Set voxels outside the inscribed circle (``x² + y² < (N/2)²``) to 0; the corners
        are then not computed at all (a ~30 % shorter window).
    eps : float
        Relative tolerance of the single-precision NUFFT (``1e-4 … 1e-1``).
    threads : int, optional
        Threads for the FFTs and the NUFFT; the CPUs this process may use when omitted.
    cache : FourierFbpCache, optional
        Keeps the fixed work (lines, multipliers, deconvolution, sorted points) for the
        next call of the same geometry: pass the same object for every block of a scan.
        The result is the same with or without it.

    Returns
    -------
    ndarray of shape (rows, N, N), float32
        ``img[r, iy, ix]``, attenuation per pixel, as :func:`stages.recon.fbp.fbp`.

    Raises
    ------
    StageError
        If ``block`` is not a real non-empty 3-D array, ``angles_deg`` does not give one
        finite angle per projection, or a parameter is out of range.
    """
    sino, angles = _check(block, angles_deg, center, filter_name, output_size, eps, threads)
    if cache is not None and not isinstance(cache, FourierFbpCache):
        raise StageError(f"stage {_STAGE!r}: cache: expected a FourierFbpCache or None, "
                         f"got {type(cache).__name__}")
    cols = sino.shape[2]
    geometry = _Geometry(
        angles=np.ascontiguousarray(angles, dtype=np.float64).tobytes(), cols=cols,
        size=cols if output_size is None else int(output_size),
        axis=(cols - 1) / 2 if center is None else float(center),
        filter_name=filter_name, pad=bool(pad), circle=bool(circle_mask), eps=float(eps),
    )
    plan = cache.acquire(geometry) if cache is not None else None
    try:
        return _reconstruct(sino, plan if plan is not None else _Plan(geometry),
                            _threads(threads))
    finally:
        if plan is not None and cache is not None:
            cache.release()


def _reconstruct(
    sino: npt.NDArray[np.float32], plan: _Plan, workers: int
) -> npt.NDArray[np.float32]:
    """:func:`fourier_fbp` of a checked block with ``plan`` (fresh or cached), in the
    array module of ``sino``: on a device one worker takes the pairs in turn (the device
    parallelises each step; host threads would only queue launches)."""
    xp = array_module(sino)
    rows = sino.shape[0]
    size = plan.geometry.size
    n_pairs = (rows + 1) // 2
    n_workers = min(n_pairs, workers) if xp is np else 1
    per_worker = max(1, workers // n_workers) if xp is np else 1
    out: npt.NDArray[np.float32] = xp.empty((rows, size, size), dtype=xp.float32)
    pending = iter(range(n_pairs))
    lock = threading.Lock()

    def work(gridder: _Gridder, setup: _Filter, tables: _Tables, factor: Any) -> None:
        """Take pairs until none is left: filter, grid, deconvolve, write out."""
        grids = gridder.grids()
        try:
            while True:
                with lock:
                    pair = next(pending, None)
                if pair is None:
                    return
                gridder(_pair_strengths(sino, pair, setup, per_worker, tables), grids, factor,
                        out[2 * pair], out[2 * pair + 1] if 2 * pair + 1 < rows else None)
        finally:
            plan.give_back(gridder)

    if n_workers == 1:
        gridder = plan.lend(per_worker, xp) or plan.make_gridder(per_worker, xp)
        setup = plan.make_setup()
        work(gridder, setup, plan.make_tables(xp), plan.deconvolution_for(xp))
        return out
    # Each worker runs whole pairs on its own gridder: no barrier between the filtering
    # and the gridding, so a core slowed by other load does not hold the others back. A
    # fresh plan's gridders (sorting the points) and deconvolution are made by the pool
    # while this thread computes the multipliers.
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        lent = [plan.lend(per_worker) for _ in range(n_workers)]
        made = [pool.submit(plan.make_gridder, per_worker) for g in lent if g is None]
        factor_job = pool.submit(plan.make_deconvolution)
        setup = plan.make_setup()
        tables = plan.make_tables(np)
        factor = factor_job.result()
        gridders = [g for g in lent if g is not None] + [job.result() for job in made]
        for job in [pool.submit(work, g, setup, tables, factor) for g in gridders]:
            job.result()
    return out


def _fourier_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Upper bound of the bytes alive at the peak of one :func:`fourier_fbp` call.

    Held for the whole call: the input (and a float32 copy of any other dtype), the
    float32 output, the multipliers and points (``8 + 8`` bytes per projection and
    frequency, made from float64 temporaries), the gridders' point order, its inverse and
    the points in that order (``8 + 8 + 8``), the kernel probe and the deconvolution.
    Measured at N = 1024, 16 rows, 2 threads: about 240 MB at the peak, estimate 429 MB. Per
    worker thread
    (``w = min(pairs, threads)``): finufft's sort index (8 bytes per point), one pair's
    strengths (8 bytes per point, twice with merged 360° lines), the filtering chunks
    (a few ``_CHUNK × L`` complex64), and the gridding's two spread grids (half set and
    mirrors), its first FFT and one column half of the second (``≤ 4 G²`` complex64,
    ``G ≈ 1.25 N``) plus the image.
    """
    rows, angles, cols = shape
    size = cols if getattr(params, "output_size", None) is None else int(params.output_size)
    circle = bool(getattr(params, "circle_mask", False))
    workers = min((rows + 1) // 2, _threads(getattr(params, "threads", None)))
    length = padded_length(cols)
    window = window_length(size, circle)
    points = angles * (window + 1)
    grid = _grid_size(size)
    return int(
        rows * angles * cols * np.dtype(dtype).itemsize  # input
        + (0 if np.dtype(dtype) == np.float32 else rows * angles * cols * 4)  # float32 copy
        + rows * size * size * 4  # output
        + points * (8 + 8 + 3 * 8 + 4 * 8)  # multipliers, coordinates (twice), point
        # order and its inverse, float64 temporaries
        + (_PROBE_SPACING * (_PROBE_STEPS + 2)) ** 2 * 8  # the kernel probe's grid
        + 2 * size * _PROBE_SPACING * _PROBE_STEPS * 8  # its quadrature
        + size * size * 4  # deconvolution
        + workers * (
            points * (8 + 2 * 8)  # sort index, strengths (+ merged lines)
            + 6 * _CHUNK * length * 8  # filtering chunks
            + (4 * grid * grid + size * size) * 8  # gridding (two spread grids)
        )
    )


def _fourier_device_memory(shape: tuple[int, int, int], dtype: np.dtype[Any],
                           params: Any) -> int:
    """Upper bound of the device bytes of one :func:`fourier_fbp` call on a CuPy block.

    One worker takes the pairs in turn (:func:`_reconstruct`): the input (and its
    float32 copy), the output and the deconvolution; the plan's tables (multipliers and
    conjugates, points, processing order, merged lines' gathers, the gridder's point
    order: ``≤ 56`` bytes a point) and cufinufft's sorting of the points (``≤ 16`` bytes
    a point); per pair the strengths in line order and in the gridder's (twice for merged
    360° lines), one chunk of the filtering
    (:data:`_DEVICE_CHUNK` projections, four ``L``-sample complex64 arrays), the two
    spread grids, their FFTs' temporaries (one more grid, cuFFT's work area as much
    again) and the image.
    """
    rows, angles, cols = shape
    size = cols if getattr(params, "output_size", None) is None else int(params.output_size)
    circle = bool(getattr(params, "circle_mask", False))
    length = padded_length(cols)
    window = window_length(size, circle)
    points = angles * (window + 1)
    grid = _grid_size(size)
    chunk = min(angles, _DEVICE_CHUNK)
    return int(
        rows * angles * cols * np.dtype(dtype).itemsize
        + (0 if np.dtype(dtype) == np.float32 else rows * angles * cols * 4)
        + rows * size * size * 4  # output
        + size * size * 4  # deconvolution
        + points * (56 + 16)  # tables (with the point order), cufinufft's sort
        + points * 5 * 8  # strengths in line order and the gridder's (+ merged lines)
        + 4 * chunk * length * 8  # filtering chunk
        + 4 * grid * grid * 8  # two spread grids, FFT temporaries and work area
        + size * size * 8  # image
    )


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name=_STAGE,
        angle_local=False,  # a reconstructor: all angles (streamed by stages.recon.streaming)
        fn=fourier_fbp,
        pattern=Pattern.SINOGRAM,
        params=FourierFbpParams,
        memory=_fourier_memory,
        cache=FourierFbpCache,
        summary="filtered back-projection in Fourier space: fbp's filter and weights, "
        "NUFFT gridding (finufft; cufinufft on the device), any angles, sub-pixel CoR by "
        "phase",
        needs_angles=True,
        device=True,
        device_memory=_fourier_device_memory,
    ),
)

"""Streaming Fourier FBP: the reconstruction advances block by block while the scan arrives.

:func:`stages.recon.fourier.fourier_fbp` is linear in the projections: every projection
becomes NUFFT *strengths* at its own points of Fourier space (filter, crop, FFT, × its
weight and phase), the strengths are *spread* onto an oversampled grid, and one FFT
plus the kernel's deconvolution turns the grid into the slice. Spreading is a sum over
points, so it can be done a block of projections at a time: :class:`StreamingFbp` keeps
the spread grid of every row pair of its band and adds each arriving block's share;
:meth:`StreamingFbp.finish` only runs the grid FFT and the deconvolution. By default the
FFT along x is also done block by block (it is linear too; only the ``N`` wanted columns
are kept), so ``finish`` runs only the FFT along y. The result is
``fourier_fbp`` on the whole sinogram up to float32 summation order (tested to 1e-5
relative), whatever the order and sizes of the blocks.

After the last frame only the last block's share and ``finish`` are left: a block only
reflects and transforms the grid rows its points can reach (a few degrees around 0° or
180° reach a few: :func:`_row_runs`), the block that completes the scan is spread onto
just those rows when they are few, and :func:`tapered_block` lets the caller make that
block small (docs/explanation/streaming-reconstruction.md).

Same machinery, same result
---------------------------
The plan (:func:`stages.recon.fourier._lines`) is made once, from the **planned** angle
set of the scan, with the same window, padding, filter, CoR phase, even-``N`` half-pixel
shift, circle mask, 180°/360° line merging and angular decimation as the batch call.
Each projection's contributions are precomputed as a sparse table (points it feeds, the
column of its own coefficient line, the multiplier): for a 360° scan, a projection at
``θ + 180°`` feeds the points of ``θ``'s line with reversed frequencies, which is exactly
what the batch call's merge of repeated lines sums.

Angle weights
-------------
The weight of a projection (:func:`stages.recon.fbp.angle_weights`) depends on its
neighbours in the *final* angle set, and angular decimation on that set being equally
spaced: both are fixed at construction from the planned angles, and applied inside each
projection's multiplier (weights stay separable per projection, so blocks can come in any
order). Angles outside the plan are refused when they arrive. If the scan closes with
planned angles missing (dropped frames), the planned weights are wrong for their
neighbours: :meth:`StreamingFbp.finish` refuses (:class:`IncompleteScanError`) and the caller
reconstructs the kept sinogram in batch with the angles that did arrive.

Memory (per band of ``rows`` rows)
----------------------------------
The accumulated grids, ``⌈rows/2⌉ · G · N · 8`` bytes with ``G ≈ 1.25 N`` (about 1.25×
the band's float32 output: 5.2 MB per row at ``N = 1024``; ``G²`` instead of ``G · N``
with ``rows_early=False``), the contribution table
(``≈ 24`` bytes per NUFFT point, about ``P · 1.2 N`` points, shared by the band's rows)
and one block's temporaries; the band's output ``rows · N² · 4`` is allocated at finish,
while the grids are still held (the peak). :func:`streaming_memory` gives the figure.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.nufft import spreading_plan
from stages.backends.xp import TransferStats, array_module, fft_module, host_copy
from stages.recon.fbp import padded_length
from stages.recon.fourier import (
    _UPSAMPFAC,
    FourierFbpCache,
    FourierFbpParams,
    _Geometry,
    _grid_size,
    _Lines,
    _negated,
    _Plan,
    _threads,
    add_reflected_rows,
    window_length,
)
from streamer.errors import StageError

__all__ = ["IncompleteScanError", "StreamingFbp", "streaming_memory", "tapered_block"]

_STAGE = "fourier_fbp (streaming)"
#: The last block of a scan is spread onto a band of grid rows (y stretched) only when
#: the band is at most this fraction of the grid: the stretched coordinates round
#: differently in float32 (~1e-4 of a cell at N = 2048, as the batch call's own), so the
#: share of the points spread so must stay small for the volume to equal batch to 1e-5
#: (N = 2048: a quarter of the points gave 1.5e-5, 3 % gave 4.8e-6). Only the block
#: that completes the scan, the one whose spreading is latency, is spread so.
_BAND_FRACTION = 16
#: Grid rows a spread point can reach on each side of its own (finufft's kernel is at
#: most 16 cells wide: half of it, plus one for the rounding of the point's cell).
_KERNEL_REACH = 9
#: Planned and arriving angles closer than this (degrees) are the same projection.
_MATCH_DEG = 1e-6


class IncompleteScanError(StageError):
    """:meth:`StreamingFbp.finish` was called with planned projections still missing."""


@dataclass(frozen=True)
class _Contributions:
    """What each planned projection adds to the NUFFT strengths (CSR by projection).

    Entries ``ptr[p] … ptr[p+1]-1`` belong to projection ``p``: at the half-set NUFFT
    point ``point`` (an index into the plan's ``rows_y``/``cols_x``, ``ω ≥ 0``), strength
    ``coef_p[fft_column[0]] · multiplier[0]``, and at its mirror ``-ω`` (spread at ``ω``
    and reflected, as the batch call does) ``coef_p[fft_column[1]] · multiplier[1]``,
    where ``coef_p`` is the ``M``-point FFT of ``p``'s cropped filtered projection.
    """

    ptr: npt.NDArray[np.intp]
    point: npt.NDArray[np.intp]
    fft_column: npt.NDArray[np.intp]  # (2, entries)
    multiplier: npt.NDArray[np.complex64]  # (2, entries)


def _contributions(
    lines: _Lines, window: int, stored: npt.NDArray[np.complex64]
) -> _Contributions:
    """The sparse table of :class:`_Contributions` for ``lines`` (window ``M``) and their
    multipliers ``stored`` (:func:`stages.recon.fourier._multipliers`)."""
    columns = window + 1
    half = window // 2
    count = lines.order.shape[0]
    negated = _negated(window)  # line column of -ω: the mirror of each column
    if lines.keep is None or lines.scale is None:  # every projection on its own line
        owners, points, cols = [], [], []
        for p, q, a, b, offset in lines.pieces:
            width = b - a
            owners.append(np.repeat(lines.order[p:q], width))
            points.append(offset + np.arange((q - p) * width, dtype=np.intp))
            cols.append(np.tile(np.arange(a, b, dtype=np.intp), q - p))
        owner = np.concatenate(owners)
        point = np.concatenate(points)
        column = np.concatenate(cols)  # half set: line column j is FFT coefficient j
        fft_columns = np.stack([column, (window - column) % window])
        multipliers = np.stack([stored[point], np.conj(stored[point])])
    else:  # repeated lines (360°): projection p feeds the kept points of its line
        kept_line = lines.keep // columns
        kept_col = lines.keep % columns
        labels = np.arange(lines.n_lines)
        starts = np.searchsorted(kept_line, labels, side="left")
        ends = np.searchsorted(kept_line, labels, side="right")
        counts = (ends - starts)[lines.line]
        owner = np.repeat(np.arange(count), counts)
        first = np.cumsum(counts) - counts
        point = (
            np.arange(int(counts.sum()), dtype=np.intp)
            - np.repeat(first, counts)
            + np.repeat(starts[lines.line], counts)
        )
        full = stored.reshape(count, columns)  # the pieces cover projections in order
        flipped = lines.flipped[owner]
        fft_parts, mult_parts = [], []
        for line_column in (kept_col[point], negated[kept_col[point]]):  # ω, then -ω
            column = np.where(flipped, negated[line_column], line_column)
            mult_parts.append(full[owner, column] * lines.scale[point])
            # Line-order column j is FFT coefficient j up to +1/2 (j = M/2), then j - 1.
            fft_parts.append(np.where(column <= half, column, column - 1))
        fft_columns = np.stack(fft_parts)
        multipliers = np.stack(mult_parts)
    order = np.argsort(owner, kind="stable")
    ptr = np.zeros(count + 1, dtype=np.intp)
    np.cumsum(np.bincount(owner, minlength=count), out=ptr[1:])
    return _Contributions(
        ptr=ptr,
        point=point[order].astype(np.intp),
        fft_column=np.ascontiguousarray(fft_columns[:, order], dtype=np.intp),
        multiplier=np.ascontiguousarray(multipliers[:, order], dtype=np.complex64),
    )


@dataclass(frozen=True)
class _BlockGridding:
    """The NUFFT of one block of projections: where its strengths come from and the plan
    with its points sorted (``points`` keeps the coordinates the plan reads alive)."""

    key: tuple[bytes, int, str]
    gather: tuple[Any, Any]  # in the band's array module, as the two below
    multiplier: Any  # (2, entries)
    points: tuple[Any, Any]
    plan: Any
    #: Runs ``(first, end)`` of the grid rows the block's spread grid (after the
    #: reflection) can touch: the others stay 0, so they are neither reflected nor
    #: transformed (see :func:`_row_runs`).
    rows: tuple[tuple[int, int], ...]
    #: The block is spread onto grid rows ``offset … offset + height - 1`` only (the
    #: whole grid: ``0`` and ``G``).
    offset: int
    height: int


def _row_runs(rows_y: npt.NDArray[np.float32], grid: int) -> tuple[tuple[int, int], ...]:
    """The runs of grid rows that spreading points at ``rows_y`` (and reflecting the
    grid) can make non-zero, each ``(first, end)``, in order.

    Grid row ``m`` sits at ``2π(m - G/2)/G``: a point at ``y`` reaches the rows within
    the kernel's half-width of ``y·G/2π + G/2`` (periodically), and the reflection
    :func:`stages.recon.fourier._add_reflected` moves row ``m`` to ``-m mod G``. A block
    of projections over a few degrees around 0° or 180° spreads near ``y = 0`` only
    (about ``sin(span)`` of the rows): its rows' FFT is all the last block costs.
    """
    if rows_y.size == 0:
        return ()
    reach = _KERNEL_REACH
    centre = np.floor(rows_y.astype(np.float64) * (grid / (2.0 * np.pi)) + grid / 2)
    touched = np.zeros(grid, dtype=bool)
    touched[np.unique(centre.astype(np.int64)) % grid] = True
    # Dilate by the kernel's reach on both sides, periodically (a cumulative count).
    padded = np.concatenate([touched[-reach:], touched, touched[:reach]]).astype(np.int64)
    counts = np.concatenate([[0], np.cumsum(padded)])
    width = 2 * reach + 1
    dilated = (counts[width:] - counts[:-width]) > 0  # (grid,)
    dilated |= dilated[(-np.arange(grid)) % grid]  # the reflection
    if dilated.all():
        return ((0, grid),)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], dilated.astype(np.int8), [0]])))
    return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))


class StreamingFbp:
    """Fourier FBP of one band, fed angle blocks as they arrive; see the module docstring.

    Parameters
    ----------
    rows, cols : int
        The band's detector rows and the detector width.
    angles_deg : ndarray of shape (P,)
        The planned angles of the whole scan (degrees, any order; 180° or 360°).
    params : FourierFbpParams
        The reconstruction's parameters (``center``, filter, padding, output size,
        circle mask, NUFFT tolerance, threads), as for :func:`fourier_fbp`.
    center : float, optional
        Overrides ``params.center`` (a CoR found for this scan).
    rows_early : bool
        Transform each block's grid along x as it is added and keep only the ``N``
        wanted columns (``G × N`` per row pair): ``finish`` then runs only the FFT along
        y, about a third of the latency of the whole grid FFT, for about 30 % more work
        while the scan arrives. ``False``: keep the spread grids (``G × G``) and run the
        whole FFT at ``finish``.
    cache : FourierFbpCache, optional
        Shared by the bands of one scan (fed the same blocks, one after the other, in
        one thread): the plan's tables are made once, not per band, and each block's
        gridding plan (its points sorted) once, not per band.

    Raises
    ------
    StageError
        If the sizes, angles or centre are not valid.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        angles_deg: npt.NDArray[np.float64],
        params: FourierFbpParams,
        center: float | None = None,
        *,
        rows_early: bool = True,
        cache: FourierFbpCache | None = None,
        xp: Any = np,
        transfers: TransferStats | None = None,
    ) -> None:
        if rows < 1 or cols < 1:
            raise StageError(
                f"stage {_STAGE!r}: band: expected rows >= 1 and cols >= 1, got {rows} x {cols}"
            )
        angles = np.asarray(angles_deg)
        if angles.ndim != 1 or angles.size == 0 or angles.dtype.kind not in "uif":
            raise StageError(
                f"stage {_STAGE!r}: angles_deg: expected a non-empty 1-D array of real "
                f"numbers, got shape {angles.shape} of {angles.dtype.name!r}"
            )
        self.angles = angles.astype(np.float64)
        if not np.isfinite(self.angles).all():
            raise StageError(
                f"stage {_STAGE!r}: angles_deg: expected finite angles, got NaN or inf"
            )
        axis = params.center if center is None else center
        if axis is not None and not math.isfinite(axis):
            raise StageError(f"stage {_STAGE!r}: center: expected a finite column, got {axis}")
        self.rows, self.cols = int(rows), int(cols)
        self.size = cols if params.output_size is None else int(params.output_size)
        self.axis = (cols - 1) / 2 if axis is None else float(axis)
        self.params = params
        self.threads = _threads(params.threads)
        self.length = padded_length(cols)
        self.left = (self.length - cols) // 2
        self.window = window_length(self.size, params.circle_mask)
        self.start = math.floor(self.left + self.axis + 0.5) - self.window // 2
        geometry = _Geometry(
            angles=self.angles.tobytes(), cols=self.cols, size=self.size, axis=self.axis,
            filter_name=params.filter_name, pad=params.pad, circle=params.circle_mask,
            eps=params.eps,
        )
        self.cache = cache
        self.plan = cache.shared(geometry) if cache is not None else _Plan(geometry)
        self.lines = self.plan.lines
        setup = self.plan.make_setup()
        if "contributions" not in self.plan.derived:
            self.plan.derived["contributions"] = _contributions(
                self.lines, self.window, setup.multiplier
            )
        self.table: _Contributions = self.plan.derived["contributions"]
        self.xp = xp
        self.transfers = transfers if transfers is not None else TransferStats()
        self._device = _module_key(xp)
        self.fft = fft_module(xp)
        self.response = self._table(f"response on {self._device}", setup.response)
        self.grid = _grid_size(self.size)
        self.pairs = (self.rows + 1) // 2
        self.rows_early = rows_early
        width = self.size if rows_early else self.grid
        # The accumulators live where the reconstructor's backend computes (xp): a
        # device band adds each block there and downloads only the finished slices.
        self.spread: Any = xp.zeros((self.pairs, self.grid, width), dtype=xp.complex64)
        # The kernel's deconvolution (0 outside the circle with circle_mask), read upside
        # down as the slices are: made now, not after the last frame. A device's is its
        # own NUFFT library's kernel (ADR 0018), uploaded once per plan.
        self.deconvolve = (self.plan.make_deconvolution() if xp is np
                           else self.plan.deconvolution_for(xp))
        self.received = np.zeros(self.angles.shape[0], dtype=bool)
        self._sorted = np.argsort(self.angles, kind="stable")

    def _table(self, key: str, host: npt.NDArray[Any]) -> Any:
        """``host`` in the band's array module, uploaded once per plan (the bands of a
        scan share it)."""
        if self.xp is np:
            return host
        if key not in self.plan.derived:
            self.plan.derived[key] = self.xp.asarray(host)
        return self.plan.derived[key]

    def _fft_options(self, threads: int) -> dict[str, Any]:
        return {"workers": threads} if self.xp is np else {}

    def _upload(self, block: Any) -> Any:
        """The block in the band's array module, float32 and contiguous: a host block
        going to a device is copied once (counted and timed in :attr:`transfers`)."""
        xp = self.xp
        if xp is np or not isinstance(block, np.ndarray):
            return xp.ascontiguousarray(block, dtype=xp.float32)
        host = np.ascontiguousarray(block, dtype=np.float32)
        start = time.perf_counter()
        moved = xp.asarray(host)
        self.transfers.seconds_to_device += time.perf_counter() - start
        self.transfers.to_device += 1
        self.transfers.bytes_to_device += int(host.nbytes)
        return moved

    @property
    def missing(self) -> int:
        """Planned projections not received yet."""
        return int(self.received.size - np.count_nonzero(self.received))

    def _positions(self, angles: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Planned index of each arriving angle (the first not yet received among equals)."""
        planned = self.angles[self._sorted]
        lo = np.searchsorted(planned, angles - _MATCH_DEG, side="left")
        hi = np.searchsorted(planned, angles + _MATCH_DEG, side="right")
        taken = np.zeros(self.received.shape, dtype=bool)
        positions = np.empty(angles.shape[0], dtype=np.intp)
        for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
            free = [int(j) for j in self._sorted[a:b] if not (self.received[j] or taken[j])]
            if not free:
                state = "not in the planned angles" if a == b else "already received"
                raise StageError(
                    f"stage {_STAGE!r}: angles_deg: expected planned angles not yet "
                    f"received, got {angles[i]:.6f}° ({state})"
                )
            positions[i] = free[0]
            taken[free[0]] = True
        return positions

    def add(self, block: npt.NDArray[Any], angles_deg: npt.NDArray[np.float64]) -> None:
        """Add a block of corrected sinograms ``(rows, angles, cols)`` and its angles.

        Raises
        ------
        StageError
            If the block does not match the band, an angle is not planned or already
            received, or :meth:`finish` has run.
        """
        if self.spread is None:
            raise StageError(f"stage {_STAGE!r}: add: expected a running band, got a finished one")
        where = "numpy" if isinstance(block, np.ndarray) else _module_key(array_module(block))
        if where not in {"numpy", self._device}:
            raise StageError(
                f"stage {_STAGE!r}: block: expected a host array or one of {self._device} "
                f"(the band's backend), got one of {where}"
            )
        if block.ndim != 3 or np.dtype(block.dtype).kind not in "uif":
            raise StageError(
                f"stage {_STAGE!r}: block: expected a real 3-D sinogram block "
                f"(rows, angles, cols), got {getattr(block, 'shape', None)}"
            )
        if block.shape[0] != self.rows or block.shape[2] != self.cols:
            raise StageError(
                f"stage {_STAGE!r}: block: expected ({self.rows}, angles, {self.cols}), "
                f"got {block.shape}"
            )
        angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
        if angles.shape[0] != block.shape[1]:
            raise StageError(
                f"stage {_STAGE!r}: angles_deg: expected {block.shape[1]} angles (the "
                f"block's angle axis), got {angles.shape[0]}"
            )
        if angles.size == 0:
            return
        positions = self._positions(angles)
        sino = self._upload(block)
        locked = self.cache is not None and self.cache.try_lock()
        try:
            self._add(sino, positions, shared=locked)
        finally:
            if locked and self.cache is not None:
                self.cache.release()
        self.received[positions] = True

    def _block_gridding(self, positions: npt.NDArray[np.intp], *, shared: bool) -> _BlockGridding:
        """The gridding of a block of planned projections ``positions``: the last
        block's is kept in the shared plan (the other bands get the same block next)."""
        key = (positions.tobytes(), self.threads, self._device)
        if shared:
            kept = self.plan.derived.get("block")
            if isinstance(kept, _BlockGridding) and kept.key == key:
                assert self.cache is not None
                self.cache.blocks_shared += 1
                return kept
            self.plan.derived.pop("block", None)  # its memory goes first
        table = self.table
        counts = table.ptr[positions + 1] - table.ptr[positions]
        first = np.cumsum(counts) - counts
        entries = (
            np.arange(int(counts.sum()), dtype=np.intp)
            - np.repeat(first, counts)
            + np.repeat(table.ptr[positions], counts)
        )
        local = np.repeat(np.arange(positions.shape[0], dtype=np.intp), counts) * self.window
        rows_y = np.ascontiguousarray(self.lines.rows_y[table.point[entries]])
        cols_x = np.ascontiguousarray(self.lines.cols_x[table.point[entries]])
        # The last block, when it lies next to 0° or 180°, spreads near y = 0 only: onto
        # the middle ``height`` rows of the grid (rows ``offset …``; filling the whole
        # grid with zeros costs more than its spreading), with y stretched so that a
        # point keeps its cell position relative to the middle (the kernel is the same
        # in cells).
        grid = self.grid
        reach = float(np.abs(rows_y).max(initial=0.0)) * grid / (2.0 * np.pi)
        height = 2 * (math.ceil(reach) + _KERNEL_REACH + 1)
        if height > grid // _BAND_FRACTION or positions.shape[0] < self.missing:
            height = grid
        offset = (grid - height) // 2
        xp = self.xp
        plan = spreading_plan(xp, 1, (height, grid), n_trans=2, eps=self.params.eps,
                              upsampfac=_UPSAMPFAC, threads=self.threads, stage=_STAGE)
        stretched = rows_y if height == grid else (rows_y * np.float32(grid / height))
        points = (xp.asarray(stretched), xp.asarray(cols_x))  # a device's: uploaded once
        plan.setpts(*points)
        gridding = _BlockGridding(
            key=key, gather=(xp.asarray(local + table.fft_column[0, entries]),
                             xp.asarray(local + table.fft_column[1, entries])),
            multiplier=xp.asarray(table.multiplier[:, entries]), points=points, plan=plan,
            rows=_row_runs(rows_y, grid), offset=offset, height=height,
        )
        if shared:
            self.plan.derived["block"] = gridding
        return gridding

    def _add(self, sino: Any, positions: npt.NDArray[np.intp], *, shared: bool) -> None:
        """Spread the block's share of every row pair into the accumulators (``sino`` and
        everything here in the band's array module)."""
        assert self.spread is not None
        xp = self.xp
        gridding = self._block_gridding(positions, shared=shared)
        gather, multiplier, plan = gridding.gather, gridding.multiplier, gridding.plan
        strengths = xp.empty((2, gather[0].shape[0]), dtype=xp.complex64)
        # Reused by every pair of the block (2 G² complex64: 105 MB at N = 2048).
        grids = xp.empty((2, gridding.height, self.grid), dtype=xp.complex64)
        offset = gridding.offset
        for pair in range(self.pairs):
            coefficients = self._coefficients(sino, pair).reshape(-1)
            for part in (0, 1):  # at ω >= 0, and at -ω (spread at ω, then reflected)
                xp.multiply(coefficients[gather[part]], multiplier[part], out=strengths[part])
            spread = plan.execute(strengths, out=grids)
            for first, end in gridding.rows:  # the other rows stay 0
                # Rows ``first … end-1`` of the grid are rows ``first - offset …`` here.
                low, high = first - offset, end - offset
                add_reflected_rows(spread[0], spread[1], low, high)
                if self.rows_early:
                    self._fold_rows(spread[0, low:high], self.spread[pair, first:end])
                else:
                    self.spread[pair, first:end] += spread[0, low:high]

    def _coefficients(self, sino: Any, pair: int) -> Any:
        """``M``-point FFTs ``(angles, M)`` of the cropped filtered projections of rows
        ``2·pair`` (real part) and ``2·pair + 1`` (imaginary part), as in the batch call."""
        xp, fft, options = self.xp, self.fft, self._fft_options(self.threads)
        count = sino.shape[1]
        left, length, cols = self.left, self.length, self.cols
        packed = xp.empty((count, length), dtype=xp.complex64)
        parts = packed.view(xp.float32).reshape(count, length, 2)
        for part, row in enumerate((2 * pair, 2 * pair + 1)):
            target = parts[:, :, part]
            if row >= self.rows:  # odd band: the last imaginary part is 0
                target[...] = 0.0
                continue
            data = sino[row]
            target[:, left : left + cols] = data
            target[:, :left] = data[:, :1] if self.params.pad else 0.0
            target[:, left + cols :] = data[:, -1:] if self.params.pad else 0.0
        spectrum = fft.fft(packed, axis=-1, overwrite_x=True, **options)
        spectrum *= self.response
        filtered = fft.ifft(spectrum, axis=-1, overwrite_x=True, **options)
        start, window = self.start, self.window
        if start >= 0 and start + window <= length:
            cropped = filtered[:, start : start + window]
        else:  # positions off the padded projection read 0, as in the batch call
            cropped = xp.zeros((count, window), dtype=xp.complex64)
            lo, hi = max(start, 0), min(start + window, length)
            if hi > lo:
                cropped[:, lo - start : hi - start] = filtered[:, lo:hi]
        return fft.fft(cropped, axis=-1, **options).astype(xp.complex64, copy=False)

    def _fold_rows(self, grid: Any, target: Any) -> None:
        """Add the FFT along x of a block's spread grid, pruned to the ``N`` wanted
        columns (modes ``-N//2 … -1`` then ``0 …``), into ``target`` ``(G, N)``."""
        neg, nonneg = self.size // 2, self.size - self.size // 2
        rows = self.fft.ifft(grid, axis=-1, norm="forward", overwrite_x=True,
                             **self._fft_options(self.threads))
        target[:, :neg] += rows[:, self.grid - neg :]
        target[:, neg:] += rows[:, :nonneg]

    def _transform(self, grid: Any, pair: int, out: Any, threads: int) -> None:
        """Grid FFT (pruned to the ``N`` wanted columns) and deconvolution of one row pair,
        written into ``out[2·pair]`` (real part) and ``out[2·pair + 1]`` (imaginary)."""
        xp, fft, options = self.xp, self.fft, self._fft_options(threads)
        size = self.size
        neg, nonneg = size // 2, size - size // 2
        deconvolve = self.deconvolve
        if self.rows_early:  # the x transform was done block by block
            full = fft.ifft(grid, axis=0, norm="forward", overwrite_x=True, **options)
            # Slice row r is mode nonneg-1-r: modes nonneg-1 … 0 (the start of the
            # transform, upside down), then -1 … -neg (its end, upside down); read in
            # place, no copy of the image.
            top, bottom = full[nonneg - 1 :: -1], full[: full.shape[0] - neg - 1 : -1]
            for part, row in (("real", 2 * pair), ("imag", 2 * pair + 1)):
                if row < self.rows:
                    xp.multiply(getattr(top, part), deconvolve[:nonneg], out=out[row, :nonneg])
                    xp.multiply(getattr(bottom, part), deconvolve[nonneg:],
                                out=out[row, nonneg:])
            return
        image = xp.empty((size, size), dtype=xp.complex64)
        rows = fft.ifft(grid, axis=-1, norm="forward", overwrite_x=True, **options)
        for target, columns in ((image[:, :neg], rows[:, self.grid - neg :]),
                                (image[:, neg:], rows[:, :nonneg])):
            full = fft.ifft(columns, axis=0, norm="forward", **options)
            target[:neg] = full[full.shape[0] - neg :]
            target[neg:] = full[:nonneg]
        # Modes run along +y, the slice's rows down: both read upside down (views).
        xp.multiply(image.real[::-1], deconvolve, out=out[2 * pair])
        if 2 * pair + 1 < self.rows:
            xp.multiply(image.imag[::-1], deconvolve, out=out[2 * pair + 1])

    def finish(self) -> npt.NDArray[np.float32]:
        """The band's slices ``(rows, N, N)`` float32, as :func:`fourier_fbp` returns them.

        Runs the grid FFT and the deconvolution of each row pair, releasing its grid.

        Raises
        ------
        IncompleteScanError
            If planned projections never arrived (their neighbours' weights would be
            wrong): reconstruct the sinogram that arrived in batch instead.
        StageError
            If the band has already finished.
        """
        if self.spread is None:
            raise StageError(
                f"stage {_STAGE!r}: finish: expected a running band, got a finished one"
            )
        if self.missing:
            raise IncompleteScanError(
                f"stage {_STAGE!r}: finish: expected all {self.received.size} planned "
                f"projections, got {self.received.size - self.missing} ({self.missing} "
                "missing); reconstruct the received sinogram in batch"
            )
        out = self.xp.empty((self.rows, self.size, self.size), dtype=self.xp.float32)
        spread, self.spread = self.spread, None
        workers = min(self.pairs, self.threads) if self.xp is np else 1
        if workers == 1:
            for pair in range(self.pairs):
                self._transform(spread[pair], pair, out, self.threads)
        else:  # whole pairs per thread, one FFT thread each (as the batch call)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                jobs = [pool.submit(self._transform, spread[pair], pair, out, 1)
                        for pair in range(self.pairs)]
                for job in jobs:
                    job.result()
        if self.xp is np:
            host: npt.NDArray[np.float32] = out
            return host
        start = time.perf_counter()  # the band's one copy back (synchronous)
        host = host_copy(out)
        self.transfers.seconds_to_host += time.perf_counter() - start
        self.transfers.to_host += 1
        self.transfers.bytes_to_host += int(host.nbytes)
        return host


def _module_key(xp: Any) -> str:
    return str(getattr(xp, "__name__", type(xp).__name__))


def streaming_memory(
    rows: int, cols: int, angles: int, params: FourierFbpParams, *, rows_early: bool = True
) -> int:
    """Upper bound of the bytes one :class:`StreamingFbp` band holds between blocks, plus
    its finish (the output): accumulated grids, contribution table, plan points, output."""
    size = cols if params.output_size is None else int(params.output_size)
    grid = _grid_size(size)
    window = window_length(size, params.circle_mask)
    points = angles * (window + 1)
    pairs = (rows + 1) // 2
    return int(
        pairs * grid * (size if rows_early else grid) * 8  # accumulated grids
        + 2 * points * (8 + 8 + 8 + 8)  # table (x2 for 360° lines) and the plan's points
        + rows * size * size * 4  # the output at finish
    )


def tapered_block(remaining: int, block: int, last: int) -> int:
    """Frames to take in the next block when ``remaining`` planned frames are still to
    come: ``block`` while the end is far, then half of what remains, so that the blocks
    shrink toward the end and the last one holds ``last`` to ``2·last - 1`` frames (all
    that remain when fewer are planned; never more than ``block``).

    After the last frame only the last block's share and :meth:`StreamingFbp.finish`
    are left: tapering from ``block`` to ``last`` costs about ``log2(block / last)``
    more blocks while the scan arrives (each a spreading set-up per row pair) and makes
    the last block's share about ``last / block`` of a full block's.

    Raises
    ------
    StageError
        If ``remaining`` is negative or ``block`` or ``last`` is below 1.
    """
    if remaining < 0 or block < 1 or last < 1:
        raise StageError(
            f"stage {_STAGE!r}: tapered_block: expected remaining >= 0, block >= 1 and "
            f"last >= 1, got {remaining}, {block} and {last}"
        )
    if remaining < 2 * last:  # the last block: ``last`` … ``2·last - 1`` frames
        return min(block, remaining)
    return min(block, remaining // 2)

"""The flat/dark correction kernel: one fused, cache-sized pass on both cores.

Correcting a projection block is ``T = (P - dark) / denom`` followed by the repair of
pixels without signal, an optional cutoff, ``-log``, nonnegativity and NaN removal.
Done as whole-block NumPy passes, each step streams the block through memory once more
(a 2048² float32 frame is 16 MiB, far above the caches) and ``np.log`` runs on one core.

Here the frame is cut into *bands* of detector rows and every band of every frame into
*tiles* of :data:`TILE_ELEMENTS` values (1 MiB of float32: a tile and its references
stay in a core's L2/L3 between the steps); every step runs on a tile before the next
tile is read. The work is shared out in *units* (a band, or a run of frames of a band) to
the calling thread, which takes units from the front of the block, and helper threads,
which take them from the back (:class:`_WorkQueue`): NumPy's ufuncs release the GIL in
their inner loops, so the threads run on separate cores, on distant parts of the output.

When the stage hands over the raw reference stacks (:class:`RawReferences`), the dark,
the divisor and the mask of dead pixels are also computed band by band in the threads,
once per band, and used from the cache for every frame of the band: averaging the
references is a per-pixel operation, so a band of the average is the average of the band
(:func:`mean_of_frames` is NumPy's float32 mean, bit for bit, without its slow buffered
reduction over the first axis).

What the profile showed (``docs/performance.md``, "Correction"), on the project's 2-core
VM: (1) the first kernel's two threads took their first writes to the new output block
at the same time, and page faults from two threads at once cost 2–3× the CPU of the same
faults on one (8 × 1024² float32: ~20 ms of system time per call in some runs, more than
the whole of plain NumPy); (2) every NumPy call hands the GIL over, a futex wake-up and a
cross-CPU interrupt when the other thread waits: ~1000 calls per such block (256 KiB
tiles, references averaged on the calling thread first) cost ~60 context switches per
call. Hence: the calling thread touches the output's pages (:func:`_touch_pages`) while
a helper averages the references, and a helper writes only pages already touched; few,
large tiles (~60 calls per such block, plus ~12 per band); no per-tile allocation. What
remains is the arithmetic, the first read of block and references, and the zeroing of
the output's new pages by the OS (~3.5 ms per 32 MiB here), which plain NumPy pays too.

Each step is the same float32 NumPy operation as the whole-block code, applied to the
same values, so the results are identical bit for bit: an integer block is converted to
float32 (exact) before the subtraction, as the ufunc would do itself; the repair
interpolates along detector rows only, so it gives the same values tile by tile, and its
counts are added up per tile.

Why not numexpr: it would fuse the arithmetic too, but the repair between the division
and the log needs the tile anyway, its ``log`` is not NumPy's (the results would change),
and two threads over large tiles get both cores with no new dependency
(``docs/explanation/dependencies.md``).
"""

from __future__ import annotations

import _thread
import contextlib
import math
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from stages.prep.repair import repair_no_signal

#: Values per tile: 256 Ki float32 values (1 MiB). Smaller tiles cost more GIL hand-overs
#: between the threads (a tile is 5–7 NumPy calls, each one a hand-over); larger ones
#: fall out of the caches. On the 2-core EPYC, one thread: 128 Ki–256 Ki the fastest
#: (16 Ki +30 %, 1 Mi +15 %); two threads: 256 Ki–512 Ki the fastest.
TILE_ELEMENTS: Final = 1 << 18

#: Blocks smaller than this many values are corrected on the calling thread: starting
#: threads costs more than it saves.
THREAD_MIN_ELEMENTS: Final = 1 << 20

#: Units of work per thread: enough that a helper that starts late (a busy machine) still
#: gets its share, few enough that a unit is many tiles.
UNITS_PER_THREAD: Final = 8

FloatArray = npt.NDArray[np.float32]
Averager = Callable[[npt.NDArray[Any]], FloatArray]


@dataclass(frozen=True)
class Correction:
    """What to do after the division, in this order (see :func:`correct`)."""

    cutoff: float | None = None
    minus_log: bool = False
    nonnegative: bool = False
    remove_nans: bool = False


@dataclass(frozen=True)
class RawReferences:
    """Dark and flat frames as received, averaged by the kernel band by band.

    ``average`` combines a stack ``(n, rows', cols)`` into a new float32 frame ``(rows',
    cols)`` (which the kernel may overwrite) and must work pixel by pixel (a mean or
    median over the first axis), so that the average of a band of rows is that band of
    the average (:func:`mean_of_frames` is the mean).
    """

    darks: npt.NDArray[Any]  # (n, rows, cols), n = 0: a dark of 0
    flats: npt.NDArray[Any]  # (m, rows, cols), m >= 1
    average: Averager
    eps: float  # lower bound of flat - dark


@dataclass(frozen=True)
class Corrected:
    """What :func:`correct_raw` returns."""

    out: FloatArray  # (angles, rows, cols), C-contiguous
    repaired: int  # values repaired (pixels without signal)
    flat_not_above_dark: int  # pixels of the frame whose flat - dark <= 0


def mean_of_frames(stack: npt.NDArray[Any]) -> FloatArray:
    """``np.mean(stack, axis=0, dtype=np.float32)`` bit for bit, in frame-sized passes.

    NumPy reduces over the first axis with a float32 accumulator: ``0 + s[0] + s[1] +
    ...`` in that order (the identity first: ``-0.0`` becomes ``+0.0``), then divides by
    the count. Doing the same with one ufunc per frame avoids the reduction's
    buffered casting (a uint16 stack was 3× slower per value than a float32 one there).
    The test suite checks the equality on float, integer and special values.
    """
    frames = stack.shape[0]
    if frames == 0:
        raise ValueError("mean_of_frames: expected at least 1 frame, got 0")
    acc = np.empty(stack.shape[1:], dtype=np.float32)
    if stack.dtype == np.float32:
        np.add(stack[0], np.float32(0), out=acc)
    else:
        np.copyto(acc, stack[0], casting="unsafe")
        if stack.dtype.kind == "f":  # -0.0 can come out of the conversion: 0 + it
            np.add(acc, np.float32(0), out=acc)
    spare = None if stack.dtype == np.float32 else np.empty_like(acc)
    for index in range(1, frames):
        if spare is None:
            np.add(acc, stack[index], out=acc)
        else:  # converted first: exact for integers, as the reduction converts them
            np.copyto(spare, stack[index], casting="unsafe")
            np.add(acc, spare, out=acc)
    # NumPy divides by an intp count in float64 and rounds to float32; float64 has more
    # than 2 × 24 + 2 bits, so that double rounding is the float32 quotient (Figueroa):
    # dividing in float32 gives the same bits without the float64 round trip
    np.true_divide(acc, np.float32(frames), out=acc)
    return acc


def worker_count() -> int:
    """Threads to use: the CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def correct(
    block: npt.NDArray[Any],
    dark: FloatArray | None,
    denom: FloatArray | None,
    dead: npt.NDArray[np.bool_] | None,
    steps: Correction,
    *,
    threads: int | None = None,
) -> tuple[FloatArray, int]:
    """Corrected float32 copy of ``block`` and the number of values repaired.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Raw projections (any real dtype), converted to float32 tile by tile.
    dark : ndarray of shape (rows, cols), float32, optional
        Dark reference subtracted from every frame (``None``: the block is a
        transmission already, and is only converted; ``denom`` must be ``None`` too).
    denom : ndarray of shape (rows, cols) or (angles, rows, cols), float32, optional
        Divisor (``max(flat - dark, eps)``), one frame for all, or one per projection.
    dead : ndarray of bool, same shape as ``denom``, optional
        Pixels without signal whatever their value (flat not above dark): repaired.
    steps : Correction
        Cutoff, ``-log``, nonnegativity and NaN removal, applied after the repair.
    threads : int, optional
        Worker threads (default: :func:`worker_count`).

    Returns
    -------
    (ndarray of shape (angles, rows, cols), float32, C-contiguous; int)
        The result, identical to the whole-block NumPy passes, and the repairs.
    """
    if (dark is None) != (denom is None):
        raise ValueError("correct: dark and denom go together (both or neither)")

    def band(r0: int, r1: int) -> _Band:
        return _Band.given(block.dtype, dark, denom, dead, (r0, r1))

    out, repaired, _ = _Plan(block, threads).run(band, steps)
    return out, repaired


def correct_raw(
    block: npt.NDArray[Any],
    references: RawReferences,
    steps: Correction,
    *,
    threads: int | None = None,
) -> Corrected:
    """:func:`correct` with the references averaged in the kernel, band by band.

    The dark is ``average(darks)`` (0 without darks), the divisor
    ``max(average(flats) - dark, eps)`` and the dead pixels those whose
    ``average(flats) - dark`` is not above 0: the values :func:`correct` gets from a
    caller that averages whole frames first, computed where they are used (in the
    threads, in cache) instead of in extra passes on the calling thread. The caller
    checks ``flat_not_above_dark`` (flats without beam) on the result.
    """
    rows, cols = block.shape[1:]
    for name, stack in (("darks", references.darks), ("flats", references.flats)):
        if stack.ndim != 3 or stack.shape[1:] != (rows, cols):
            raise ValueError(f"correct_raw: {name}: expected (n, {rows}, {cols}), "
                             f"got {stack.shape}")
    if references.flats.shape[0] == 0:
        raise ValueError("correct_raw: flats: expected at least 1 frame, got 0")

    def band(r0: int, r1: int) -> _Band:
        return _Band.averaged(block.dtype, references, r0, r1)

    out, repaired, no_signal = _Plan(block, threads).run(band, steps)
    return Corrected(out, repaired, no_signal)


@dataclass(frozen=True)
class _Band:
    """The references of rows ``r0:r1``, as a tile of those rows needs them."""

    dark: FloatArray | None  # (h, cols), None: no dark to subtract
    denom: FloatArray | None  # (h, cols) or (angles, h, cols)
    dead: npt.NDArray[np.bool_] | None  # as denom; None where no pixel is dead
    per_frame: bool  # denom (and dead) have one frame per projection
    bounded: bool  # see _cannot_overflow
    no_signal: int  # pixels with flat - dark <= 0 (averaged references only)

    @staticmethod
    def given(dtype: np.dtype[Any], dark: FloatArray | None, denom: FloatArray | None,
              dead: npt.NDArray[np.bool_] | None, rows: tuple[int, int]) -> _Band:
        """The band of references the caller computed for the whole frame."""
        r0, r1 = rows
        per_frame = denom is not None and denom.ndim == 3
        band_dark = None if dark is None else dark[r0:r1]
        band_denom = None if denom is None else denom[:, r0:r1] if per_frame else denom[r0:r1]
        band_dead = None
        if dead is not None:
            band_dead = dead[:, r0:r1] if dead.ndim == 3 else dead[r0:r1]
            if not band_dead.any():
                band_dead = None
        return _Band(band_dark, band_denom, band_dead, per_frame,
                     _cannot_overflow(dtype, band_dark, band_denom), 0)

    @staticmethod
    def averaged(dtype: np.dtype[Any], refs: RawReferences, r0: int, r1: int) -> _Band:
        """The band of the averaged references: dark, ``max(flat - dark, eps)``, dead."""
        signal = refs.average(refs.flats[:, r0:r1])  # a new array: changed in place
        dark = refs.average(refs.darks[:, r0:r1]) if refs.darks.shape[0] else None
        if dark is not None:  # without darks: flat - 0 is the flat, bit for bit
            np.subtract(signal, dark, out=signal)
        positive = signal > 0  # NaN compares False: dead too
        dead, no_signal = None, 0
        if not positive.all():
            dead, no_signal = ~positive, int(np.count_nonzero(signal <= 0))
        denom = np.maximum(signal, np.float32(refs.eps), out=signal)
        return _Band(dark, denom, dead, False,
                     _cannot_overflow(dtype, dark, denom, dark_is_zero=dark is None),
                     no_signal)


class _Plan:
    """How a block is cut into bands, tiles and units of work, and who does them."""

    def __init__(self, block: npt.NDArray[Any], threads: int | None) -> None:
        if block.ndim != 3:
            raise ValueError(f"correct: block: expected 3 dimensions, got shape {block.shape}")
        self.block = block
        angles, rows, cols = block.shape
        tile = max(1, TILE_ELEMENTS)
        # a band: rows whose tile is one frame's rows; a small frame is one band, and
        # its tiles hold several frames
        band_rows = max(1, min(rows, tile // max(cols, 1)))
        self.bands = [(r, min(r + band_rows, rows)) for r in range(0, rows, band_rows)]
        self.frames_per_tile = max(1, tile // max(rows * cols, 1)) if band_rows == rows else 1
        workers = threads if threads is not None else worker_count()
        if block.size < THREAD_MIN_ELEMENTS:
            workers = 1
        self.workers = max(1, workers)
        # units: each band's frames in runs, so that there are enough units to share
        runs = 1 if self.workers == 1 else max(1, math.ceil(
            UNITS_PER_THREAD * self.workers / max(len(self.bands), 1)))
        tiles_per_band = math.ceil(angles / self.frames_per_tile)
        runs = min(runs, max(tiles_per_band, 1))
        per_run = math.ceil(tiles_per_band / runs) * self.frames_per_tile if angles else 1
        self.units = [(b, a, min(a + per_run, angles))
                      for b in range(len(self.bands)) for a in range(0, angles, per_run)]

    def run(self, band_of: Callable[[int, int], _Band],
            steps: Correction) -> tuple[FloatArray, int, int]:
        """The corrected block, the repairs and the frame's pixels with no signal."""
        block = self.block
        out = np.empty(block.shape, dtype=np.float32)
        threaded = self.workers > 1 and len(self.units) > 1
        bands = _BandCache(self.bands, band_of)
        step = self.frames_per_tile

        def work(unit: tuple[int, int, int]) -> int:
            index, a0, a1 = unit
            r0, r1 = self.bands[index]
            refs = bands.get(index)
            repaired = 0
            for a in range(a0, a1, step):
                end = min(a + step, a1)
                repaired += _correct_tile(block[a:end, r0:r1], out[a:end, r0:r1], refs,
                                          (a, end), steps)
            return repaired

        def prepare(still_needed: Callable[[], bool]) -> None:
            # a helper's first job, while the calling thread touches the new block's
            # pages: the bands' references, from the back (the helper's end)
            for index in reversed(range(len(self.bands))):
                if not still_needed():
                    return
                bands.get(index)

        if not threaded:
            repaired = sum(work(unit) for unit in self.units)
        else:
            def touch(unit: tuple[int, int, int]) -> None:
                r0, r1 = self.bands[unit[0]]
                for a in range(unit[1], unit[2]):
                    _touch_pages(out[a, r0:r1])

            repaired = _WorkQueue(self.units, work).run_with_helpers(
                self.workers - 1, touch=touch, prelude=prepare)
        # bands no unit needed (a block of 0 frames) still say whether the flats are good
        return out, repaired, bands.no_signal()


def _touch_pages(out: FloatArray) -> None:
    """Write one value in every memory page of (a part of) the new block, on the calling
    thread, so that the kernel maps and zeroes its pages there, one fault at a time,
    before a helper writes there.

    First touches of a new block from two threads at once cost 1.5–3× the system time of
    the same faults on one thread on the project's 2-core VM (8 × 1024² float32: 17–20 ms
    of CPU per call against 12.5–14 ms touched first; 4 × 2048²: 40–58 ms against 29–35),
    and up to 3× the wall time in some runs; touched first, the block costs one serial
    zeroing (~3.5 ms per 32 MiB here), which plain NumPy pays too. The values written are
    overwritten by the correction."""
    flat = out.reshape(-1)  # a view: ``out`` is one frame's rows, contiguous
    flat[:: max(1, mmap.PAGESIZE // out.itemsize)] = 0


class _BandCache:
    """Each band's references, computed once by the first thread that needs them."""

    def __init__(self, bands: list[tuple[int, int]],
                 band_of: Callable[[int, int], _Band]) -> None:
        self._bands = bands
        self._band_of = band_of
        self._done: list[_Band | None] = [None] * len(bands)
        self._locks = [threading.Lock() for _ in bands]

    def get(self, index: int) -> _Band:
        done = self._done[index]
        if done is not None:
            return done
        with self._locks[index]:
            done = self._done[index]
            if done is None:
                done = self._band_of(*self._bands[index])
                self._done[index] = done
            return done

    def no_signal(self) -> int:
        """Pixels with flat - dark <= 0 over all bands (computing the bands not used)."""
        return sum(self.get(index).no_signal for index in range(len(self._bands)))


def _correct_tile(src: npt.NDArray[Any], part: FloatArray, band: _Band,
                  frames: tuple[int, int], steps: Correction) -> int:
    """Correct the frames ``a0:a1`` (``frames``) of one band into ``part``; the repairs."""
    a0, a1 = frames
    denom, dead = band.denom, band.dead
    if band.per_frame:
        denom = None if denom is None else denom[a0:a1]
        dead = None if dead is None else dead[a0:a1]
        if dead is not None and not dead.any():
            dead = None
    if (band.dark is None and denom is None and dead is None and steps.minus_log
            and steps.cutoff is None and src.dtype == np.float32
            and not _needs_repair(src, True, band.bounded)):
        np.log(src, out=part)  # a clean float32 transmission: -log without a copy
        np.negative(part, out=part)
        _finish_tile(part, Correction(nonnegative=steps.nonnegative,
                                      remove_nans=steps.remove_nans))
        return 0
    _transmission(src, part, band.dark, denom)
    repaired = _repair_tile(part, dead, steps.minus_log, band.bounded)
    _finish_tile(part, steps)
    return repaired


def _transmission(src: npt.NDArray[Any], part: FloatArray, dark: FloatArray | None,
                  denom: FloatArray | None) -> None:
    """``part = (src - dark) / denom`` in float32 (``dark``, ``denom``: ``None`` to skip)."""
    if src.dtype == np.float32:
        if dark is not None:
            np.subtract(src, dark, out=part)
        elif denom is not None:
            np.divide(src, denom, out=part)  # (src - 0) / denom: the same bits
            return
        else:
            np.copyto(part, src)
    else:  # exact for integers; the ufuncs would convert the same way
        np.copyto(part, src, casting="unsafe")
        if dark is not None:
            np.subtract(part, dark, out=part)
    if denom is not None:
        np.divide(part, denom, out=part)


class _WorkQueue:
    """Units handed out one at a time: to the calling thread from the front, to helper
    threads from the back (so the threads write distant parts of the output).

    Helpers are started with ``_thread.start_new_thread``, which does not wait for the new
    thread to be scheduled (``threading.Thread.start`` does: on a loaded 2-core machine
    that wait was ~4 ms per thread, a third of a block's correction). The calling thread
    first runs ``touch`` on every unit, from the back (touching the output's pages, see
    :func:`_touch_pages`), then takes units from the front; a helper first runs
    ``prelude`` (work that does not touch the output: the references), then takes units
    from the back as soon as they are touched, whenever it gets a core. A helper that
    starts after the last unit was taken finds none and ends without touching the block.
    The call returns when every unit taken is done; a helper still in its prelude is not
    waited for (it stops at its next check of ``still_needed``).
    """

    def __init__(self, units: list[tuple[int, int, int]],
                 work: Callable[[tuple[int, int, int]], int]) -> None:
        self._units = units
        self._work = work
        self._front = 0
        self._back = len(units)
        self._touched = 0  # units from this index on may be written by helpers
        self._busy = 0
        self._repaired = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def run_with_helpers(
        self, helpers: int, *,
        touch: Callable[[tuple[int, int, int]], None] | None = None,
        prelude: Callable[[Callable[[], bool]], None] | None = None,
    ) -> int:
        """Process every unit with ``helpers`` extra threads; the repairs, summed."""
        self._touched = len(self._units) if touch is not None else 0
        for _ in range(helpers):
            _thread.start_new_thread(self._help, (prelude,))
        if touch is not None:
            self._touch_all(touch)
        self._drain(False)
        with self._idle:
            while self._busy:
                self._idle.wait()
            if self._error is not None:
                raise self._error
            return self._repaired

    def _touch_all(self, touch: Callable[[tuple[int, int, int]], None]) -> None:
        """``touch`` every unit from the back, letting helpers at each one once done."""
        try:
            for index in reversed(range(len(self._units))):
                with self._lock:
                    if self._error is not None or index < self._front:
                        break
                touch(self._units[index])
                with self._idle:
                    self._touched = index
                    self._idle.notify_all()
        except BaseException as exc:
            with self._idle:
                self._error = exc  # helpers find no unit to take
                self._idle.notify_all()
            raise
        finally:
            with self._idle:
                self._touched = 0
                self._idle.notify_all()

    def _still_needed(self) -> bool:
        """Whether units are left to take (a prelude's work may still serve them)."""
        with self._lock:
            return self._error is None and self._front < self._back

    def _help(self, prelude: Callable[[Callable[[], bool]], None] | None) -> None:
        if prelude is not None:
            # a failure here is not lost: the unit that needs what failed computes it
            # again on its own thread, and raises there
            with contextlib.suppress(BaseException):
                prelude(self._still_needed)
        self._drain(True)

    def _claim(self, from_back: bool) -> tuple[int, int, int] | None:
        with self._idle:
            while from_back and self._back - 1 < self._touched and self._error is None \
                    and self._front < self._back:
                self._idle.wait()  # the next unit's pages are being touched
            if self._error is not None or self._front >= self._back:
                return None
            if from_back:
                self._back -= 1
                unit = self._units[self._back]
            else:
                unit = self._units[self._front]
                self._front += 1
            self._busy += 1
            return unit

    def _drain(self, from_back: bool) -> None:
        while (unit := self._claim(from_back)) is not None:
            repaired, error = 0, None
            try:
                repaired = self._work(unit)
            except BaseException as exc:  # handed to the calling thread, raised there
                error = exc
            with self._idle:
                self._busy -= 1
                self._repaired += repaired
                if error is not None and self._error is None:
                    self._error = error
                self._idle.notify_all()


def _cannot_overflow(dtype: np.dtype[Any], dark: FloatArray | None,
                     denom: FloatArray | None, *, dark_is_zero: bool = False) -> bool:
    """Whether ``(block - dark) / denom`` is sure to be finite, never ±inf or NaN:
    integer counts, a finite dark and a divisor bounded away from 0 (checked on the
    band's references, once). Then a tile needs no check before a division without
    ``-log``, and its minimum alone says whether it needs repair before ``-log``.
    ``dark_is_zero``: no dark is subtracted (``dark`` is ``None``), only divided."""
    if not np.issubdtype(dtype, np.integer):
        return False
    if denom is None:
        return dark is None  # the counts themselves
    if dark is None and not dark_is_zero:
        return False
    largest = float(np.iinfo(dtype).max)
    if dark is not None and dark.size:
        largest += max(float(dark.max()), -float(dark.min()))
    smallest = float(denom.min(initial=np.inf))
    limit = float(np.finfo(np.float32).max) / 4
    # NaN in dark or denom fails the comparisons: not bounded
    return bool(largest < limit and smallest > 0 and largest / smallest < limit)


def _needs_repair(tile: npt.NDArray[Any], positive: bool, bounded: bool) -> bool:
    """Whether a tile may hold a value :func:`repair_no_signal` would change (without
    dead pixels), from one or two SIMD reductions: not all finite, or (``positive``,
    before ``-log``) not all above 0. ``bounded``: the values are finite (integer counts
    over a bounded divisor), so only ``<= 0`` before ``-log`` is possible."""
    if bounded and not positive:
        return False
    low = tile.min()
    if not (low > 0 if positive else low > -np.inf):  # NaN fails every comparison
        return True
    return not bounded and not tile.max() < np.inf


def _repair_tile(tile: FloatArray, dead: npt.NDArray[np.bool_] | None,
                 positive: bool, bounded: bool) -> int:
    """:func:`repair_no_signal` on one tile, skipped when reductions show it has nothing
    to repair: all finite, and all positive before ``-log`` (NaN fails every comparison)."""
    if dead is None and not _needs_repair(tile, positive, bounded):
        return 0
    return repair_no_signal(tile, dead=dead, positive=positive)


def _finish_tile(tile: FloatArray, steps: Correction) -> None:
    """Cutoff, ``-log``, nonnegativity and NaN removal, in place, in that order."""
    if steps.cutoff is not None:
        np.minimum(tile, np.float32(steps.cutoff), out=tile)
    if steps.minus_log:
        np.log(tile, out=tile)
        np.negative(tile, out=tile)
    if steps.nonnegative:
        np.maximum(tile, np.float32(0), out=tile)
    if steps.remove_nans:
        np.nan_to_num(tile, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

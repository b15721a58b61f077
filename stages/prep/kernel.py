"""The flat/dark correction kernel: one fused, cache-sized, multi-threaded pass.

Correcting a projection block is ``T = (P - dark) / denom`` followed by the repair of
pixels without signal, an optional cutoff, ``-log``, nonnegativity and NaN removal.
Done as whole-block NumPy passes, each step streams the block through memory once more
(a 2048² float32 frame is 16 MiB, far above the caches), and ``np.log`` runs on one core:
on the project's 2-core machine the stage ran at 0.87 of plain NumPy and 3.7 % of
``np.copyto`` bandwidth.

Here the block is cut into *tiles* of a few detector rows of one frame (about
:data:`TILE_ELEMENTS` values, a few hundred KiB: they stay in L2 between the steps) and
every step runs on a tile before the next tile is read. The tiles are shared out to
threads: NumPy's ufuncs release the GIL in their inner loops, so the threads run on
separate cores. Each step is the same float32 NumPy operation as the whole-block code,
applied to the same values in the same order, so the results are identical; the repair
interpolates along detector rows only, so it gives the same values tile by tile, and its
counts are added up per tile.

Why not numexpr: it would fuse the arithmetic too, but the repair between the division
and the log needs the tile anyway, and a thread pool over tiles gets both cores with no
new dependency (``docs/explanation/dependencies.md``).
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from stages.prep.repair import repair_no_signal

#: Values per tile: 64 Ki float32 values (256 KiB) fit with their input in a core's L2.
TILE_ELEMENTS: Final = 1 << 16

#: Blocks smaller than this many values are corrected on the calling thread: starting
#: threads costs more than it saves.
THREAD_MIN_ELEMENTS: Final = 1 << 20


@dataclass(frozen=True)
class Correction:
    """What to do after the division, in this order (see :func:`correct`)."""

    cutoff: float | None = None
    minus_log: bool = False
    nonnegative: bool = False
    remove_nans: bool = False


def worker_count() -> int:
    """Threads to use: the CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def correct(
    block: npt.NDArray[Any],
    dark: npt.NDArray[np.float32] | None,
    denom: npt.NDArray[np.float32] | None,
    dead: npt.NDArray[np.bool_] | None,
    steps: Correction,
    *,
    threads: int | None = None,
) -> tuple[npt.NDArray[np.float32], int]:
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
    angles, rows, cols = block.shape
    out = np.empty((angles, rows, cols), dtype=np.float32)
    per_frame = denom is not None and denom.ndim == 3
    dead_rows: npt.NDArray[np.bool_] | None = (
        None if dead is None else np.asarray(dead.reshape(-1, rows, cols).any(axis=2)))
    bounded = _cannot_overflow(block.dtype, dark, denom)
    step = max(1, TILE_ELEMENTS // max(cols, 1))
    tiles = [(a, r, min(r + step, rows)) for a in range(angles) for r in range(0, rows, step)]

    def run(tile: tuple[int, int, int]) -> int:
        a, r0, r1 = tile
        d = a if per_frame else 0
        part = out[a, r0:r1]
        if dark is None or denom is None:
            np.copyto(part, block[a, r0:r1], casting="unsafe")
        else:
            np.subtract(block[a, r0:r1], dark[r0:r1], out=part, dtype=np.float32,
                        casting="unsafe")
            np.divide(part, denom[a, r0:r1] if per_frame else denom[r0:r1], out=part)
        part_dead = None
        if dead is not None and dead_rows is not None and dead_rows[d, r0:r1].any():
            part_dead = dead[a, r0:r1] if per_frame else dead[r0:r1]
        repaired = _repair_tile(part, part_dead, steps.minus_log, bounded)
        _finish_tile(part, steps)
        return repaired

    workers = threads if threads is not None else worker_count()
    if workers <= 1 or block.size < THREAD_MIN_ELEMENTS or len(tiles) < 2:
        return out, sum(run(tile) for tile in tiles)
    return out, _TileQueue(tiles, run).run_with_helpers(workers - 1)


class _TileQueue:
    """Tiles handed out one at a time to the calling thread and helper threads.

    Helpers are started with ``_thread.start_new_thread``, which does not wait for the new
    thread to be scheduled (``threading.Thread.start`` does: on a loaded 2-core machine
    that wait was ~4 ms per thread, a third of a block's correction). The calling thread
    starts on the tiles at once; a helper takes tiles whenever it gets a core, and one
    that starts after the last tile was taken finds none and ends without touching the
    block. The call returns when every tile taken is done.
    """

    def __init__(self, tiles: list[tuple[int, int, int]],
                 work: Callable[[tuple[int, int, int]], int]) -> None:
        self._tiles = tiles
        self._work = work
        self._next = 0
        self._busy = 0
        self._repaired = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def run_with_helpers(self, helpers: int) -> int:
        """Process every tile with ``helpers`` extra threads; the repairs, summed."""
        for _ in range(helpers):
            _thread.start_new_thread(self._drain, ())
        self._drain()
        with self._idle:
            while self._busy:
                self._idle.wait()
            if self._error is not None:
                raise self._error
            return self._repaired

    def _claim(self) -> tuple[int, int, int] | None:
        with self._lock:
            if self._error is not None or self._next >= len(self._tiles):
                return None
            tile = self._tiles[self._next]
            self._next += 1
            self._busy += 1
            return tile

    def _drain(self) -> None:
        while (tile := self._claim()) is not None:
            repaired, error = 0, None
            try:
                repaired = self._work(tile)
            except BaseException as exc:  # handed to the calling thread, raised there
                error = exc
            with self._idle:
                self._busy -= 1
                self._repaired += repaired
                if error is not None and self._error is None:
                    self._error = error
                self._idle.notify_all()


def _cannot_overflow(dtype: np.dtype[Any], dark: npt.NDArray[np.float32] | None,
                     denom: npt.NDArray[np.float32] | None) -> bool:
    """Whether ``(block - dark) / denom`` is sure to be finite or NaN, never ±inf: integer
    counts, a finite dark and a divisor bounded away from 0 (checked on the frame-sized
    references, once). Then a tile's minimum alone says whether it needs repair (NaN, from
    a NaN divisor, propagates into the minimum)."""
    if not np.issubdtype(dtype, np.integer):
        return False
    if dark is None or denom is None:
        return True
    largest = float(np.iinfo(dtype).max) + float(np.abs(dark).max(initial=0.0))
    smallest = float(denom.min(initial=np.inf))
    limit = float(np.finfo(np.float32).max) / 4
    # NaN in dark or denom fails the comparisons: not bounded
    return bool(largest < limit and smallest > 0 and largest / smallest < limit)


def _repair_tile(tile: npt.NDArray[np.float32], dead: npt.NDArray[np.bool_] | None,
                 positive: bool, bounded: bool) -> int:
    """:func:`repair_no_signal` on one tile, skipped when reductions show it has nothing
    to repair: all finite, and all positive before ``-log`` (NaN fails every comparison).
    ``bounded``: no value can be ±inf (integer counts, finite dark), so the minimum alone
    decides."""
    if dead is None:
        low = tile.min()
        clean = low > 0 if positive else low > -np.inf
        if clean and not bounded:
            clean = tile.max() < np.inf
        if clean:
            return 0
    return repair_no_signal(tile, dead=dead, positive=positive)


def _finish_tile(tile: npt.NDArray[np.float32], steps: Correction) -> None:
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

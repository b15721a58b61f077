"""One rank's sinogram band while a scan's projections arrive: columns, rules, sorting.

:class:`SinogramBand` is the sans-IO half of the reslice (:mod:`streamer.exchange.reslice` does
the messaging). It owns the band buffer, allocated once as ``(band_rows, projections,
cols)`` float32 — sinogram layout, so frames are written into their columns as they come
and the band is never copied into sinogram order — and decides, per frame, which column
it gets or why it is refused. At the end, :meth:`SinogramBand.assemble` sorts the columns
by frame index and closes the gaps, in place.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

REJECT_REASONS: Final = ("out_of_range", "bad_angle", "over_capacity")


@dataclass(frozen=True)
class Assembled:
    """A band sorted by frame index: ``sinograms`` is ``(band_rows, n, cols)``,
    C-contiguous, a view of the band buffer; ``moved_bytes`` is what sorting moved."""

    indices: npt.NDArray[np.int64]
    angles_deg: npt.NDArray[np.float64]
    sinograms: npt.NDArray[np.float32]
    moved_bytes: int


@dataclass
class SinogramBand:
    """Rows ``[a, b)`` of every projection of a scan, as sinograms.

    Parameters
    ----------
    rows : (int, int)
        Detector rows of the band.
    cols : int
        Detector columns.
    projections : int
        Columns of the buffer: the most projections the band holds.
    frames : int, optional
        Frames in the scan: indices must lie in ``[0, frames)``.
    first_index : int, optional
        Frame index of the first projection, when projections are consecutive frames:
        frame ``i`` then goes to column ``i - first_index`` (its final place).
    """

    rows: tuple[int, int]
    cols: int
    projections: int
    frames: int | None = None
    first_index: int | None = None
    received: int = 0  #: frames whose data is in the buffer
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    #: Told every piece as its data lands: ``(indices, angles_deg, frames)`` with frames
    #: ``(n, band_rows, cols)`` (a copy): the streaming reconstruction on R ranks adds
    #: each piece's share as it comes (:mod:`streamer.run.ranks`).
    on_landed: Callable[[npt.NDArray[np.int64], npt.NDArray[np.float64],
                         npt.NDArray[np.float32]], None] | None = None
    buffer: npt.NDArray[np.float32] = field(init=False)

    def __post_init__(self) -> None:
        self.buffer = np.empty((self.rows[1] - self.rows[0], self.projections, self.cols),
                               dtype=np.float32)
        self._slot_index = np.empty(self.projections, dtype=np.int64)
        self._slot_angle = np.empty(self.projections, dtype=np.float64)
        self._slot_taken = np.zeros(self.projections, dtype=bool)
        self._next_free = 0  # columns below are all taken (frames without a home column)
        self._seen: set[int] = set()  # valid indices ever claimed (duplicates)
        self._slot_of: dict[int, int] = {}  # kept index -> column
        self._kept_heap: list[int] = []  # -index of kept frames (lazy: evicted ones stay)
        self._assembled: Assembled | None = None

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def nbytes(self) -> int:
        return self.projections * self.height * self.cols * 4

    def would_evict(self, indices: npt.NDArray[np.int64],
                    angles: npt.NDArray[np.float64]) -> bool:
        """The band is full and one of these frames ranks before a kept one: claiming
        them would evict a kept frame, whose data must then already be in."""
        if len(self._slot_of) < self.projections or not self._slot_of:
            return False
        largest = self._largest_kept()
        return any(index < largest and index not in self._seen and index >= 0
                   and math.isfinite(angle)
                   for index, angle in zip(indices.tolist(), angles.tolist(), strict=True))

    def claim(self, indices: npt.NDArray[np.int64],
              angles: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Give each frame a column, or -1 with the reason counted.

        Order-independent, so that every rank ends with the same frames whatever order
        pieces reach it in: an index seen before is a duplicate; when more distinct
        projections come than the band holds, it keeps the ``projections`` smallest
        indices (a newcomer evicts the largest kept frame, which counts as
        ``over_capacity``; the caller makes sure that frame's data is in: see
        :meth:`would_evict`)."""
        slots = np.full(len(indices), -1, dtype=np.int64)
        for position, (index, angle) in enumerate(zip(indices.tolist(), angles.tolist(),
                                                      strict=True)):
            if index < 0 or (self.frames is not None and index >= self.frames):
                self.rejected["out_of_range"] += 1
                continue
            if not math.isfinite(angle):
                self.rejected["bad_angle"] += 1
                continue
            if index in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(index)
            if len(self._slot_of) < self.projections:
                slot = self._free_slot(index)
            elif self._slot_of and index < self._largest_kept():
                slot = self._slot_of.pop(self._largest_kept())
                self.received -= 1  # its data was in; the newcomer's overwrites it
                self.rejected["over_capacity"] += 1
            else:
                self.rejected["over_capacity"] += 1
                continue
            self._slot_of[index] = slot
            self._slot_taken[slot] = True
            heapq.heappush(self._kept_heap, -index)
            self._slot_index[slot], self._slot_angle[slot] = index, angle
            slots[position] = slot
        return slots

    def view(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.float32] | None:
        """The buffer's columns for these frames as a ``(frames, band_rows, cols)`` view
        (data written there lands in place), when every frame is kept in evenly spaced
        columns; else None."""
        columns = columns_of(slots)
        if columns is None:
            return None
        return self.buffer[:, columns, :].transpose(1, 0, 2)

    def store(self, slots: npt.NDArray[np.int64], rows: npt.NDArray[np.float32]) -> None:
        """Copy frames ``rows`` ``(frames, band_rows, cols)`` into their columns,
        skipping refused ones (-1), and count them received."""
        target = self.view(slots)
        if target is not None:
            target[...] = rows  # one strided copy
        else:
            for position, slot in enumerate(slots.tolist()):
                if slot >= 0:
                    self.buffer[:, slot, :] = rows[position]
        self.landed(slots)

    def landed(self, slots: npt.NDArray[np.int64]) -> None:
        """These frames' data is in their columns (written through :meth:`view`)."""
        kept = slots[slots >= 0]
        self.received += int(kept.size)
        if self.on_landed is not None and kept.size:
            self.on_landed(self._slot_index[kept].copy(), self._slot_angle[kept].copy(),
                           self.buffer[:, kept, :].transpose(1, 0, 2))

    def assemble(self) -> Assembled:
        """Sort the columns by frame index and close the gaps, in place: row by row,
        through one sinogram of scratch. Nothing moves when every frame sits in its home
        column and none is missing. The buffer is the band's afterwards (idempotent)."""
        if self._assembled is not None:
            return self._assembled
        buffer, cols, height = self.buffer, self.cols, self.height
        order = sorted(self._slot_of)
        count = len(order)
        slots = np.array([self._slot_of[index] for index in order], dtype=np.int64)
        flat = buffer.reshape(-1)
        moved = 0
        if height and count and not (count == self.projections
                                     and bool((slots == np.arange(count)).all())):
            for row in range(height):  # rows move down only: no row is overwritten early
                flat[row * count * cols:(row + 1) * count * cols] = (
                    buffer[row, slots, :].reshape(-1))  # the gather copies first
            moved = height * count * cols * 4
        self._assembled = Assembled(
            indices=np.array(order, dtype=np.int64), angles_deg=self._slot_angle[slots],
            sinograms=flat[:height * count * cols].reshape(height, count, cols),
            moved_bytes=moved,
        )
        return self._assembled

    def _largest_kept(self) -> int:
        while -self._kept_heap[0] not in self._slot_of:  # drop evicted entries
            heapq.heappop(self._kept_heap)
        return -self._kept_heap[0]

    def _free_slot(self, index: int) -> int:
        """The frame's home column (``index - first_index``) when free, else the lowest
        free one (there is one: fewer frames are kept than the band holds)."""
        if self.first_index is not None:
            home = index - self.first_index
            if 0 <= home < self.projections and not self._slot_taken[home]:
                return home
        while self._slot_taken[self._next_free]:
            self._next_free += 1
        return self._next_free


def columns_of(slots: npt.NDArray[np.int64]) -> slice | None:
    """Evenly spaced columns ``s, s+d, s+2d, …`` (d >= 1) as a slice, or None."""
    if not len(slots) or slots[0] < 0:
        return None
    first = int(slots[0])
    if len(slots) == 1:
        return slice(first, first + 1)
    step = int(slots[1]) - first
    if step < 1 or not bool((np.diff(slots) == step).all()):
        return None
    return slice(first, first + step * (len(slots) - 1) + 1, step)


def progressions(indices: npt.NDArray[np.int64]) -> list[int]:
    """Cut points ``[0, …, len]`` splitting ``indices`` into runs of evenly increasing
    values (``0,1,2,3 | 8,9,10,11`` or ``1,5,9,13``), greedily: each run lands in evenly
    spaced columns when ``first_index`` is known."""
    cuts = [0]
    start = 0
    while start < len(indices):
        stop = start + 1
        if stop < len(indices):
            step = int(indices[stop] - indices[start])
            while step >= 1 and stop < len(indices) and indices[stop] - indices[stop - 1] == step:
                stop += 1
        cuts.append(stop)
        start = stop
    return cuts

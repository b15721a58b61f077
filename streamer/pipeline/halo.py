"""Blocks with real neighbours: the halo of a section's stages (HTTomo's ``padding``).

A stage whose output for one entry of the block axis (a frame of a projection block, a
row of a sinogram block) depends on its neighbours along that axis declares how far
(:attr:`stages.spec.StageSpec.halo`: a 3-D median of edge ``k`` reaches ``k // 2``). A
run of such stages reaches the sum of their halos (each widens what the next one
needs). The runner then gives each block ``[first, last)`` the entries
``[first - h, last + h)`` of the section's input, clipped to the scan (its true ends keep
the stage's own edge mode), runs the steps on that window and keeps the rows of the
block itself: the neighbours of an entry are the same whatever the block size, so the
result equals the whole-scan single-block result (ADR 0019). The window's outer entries
are computed from a truncated neighbourhood and thrown away; with ``h`` summed over the
steps, every kept entry only ever saw real neighbours.

A stage in such a window must keep the length of the block axis (a frame-averaging or
binning step along it cannot be haloed): :func:`keep_block` refuses one that does not.

Repairs are counted once per entry, like the output is kept once: a step that counts the
values it repairs (``counts_repairs``; each acts entry by entry) runs on the block's own
entries apart from the halo entries, whose repairs are not counted there
(:func:`counted_apart`): they are counted when those entries are a block of their own, so
the counts do not depend on the block size either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from stages.backends.xp import array_module
from stages.prep.repair import RepairCounts
from streamer.errors import StageError
from streamer.pipeline.config import PipelineStep

__all__ = ["WITHOUT_NEIGHBOURS", "Window", "counted_apart", "keep_block", "keep_saved",
           "section_halo", "window", "without_neighbours_line"]

#: The run report's entry (and ``scan_end``'s field): projections corrected before all
#: their halo neighbours had arrived (:attr:`ScanProcessor.corrected_without_neighbours`,
#: summed over the ranks).
WITHOUT_NEIGHBOURS: Final = "corrected_without_neighbours"


def section_halo(steps: Iterable[PipelineStep]) -> int:
    """How many real neighbours on each side a block of ``steps`` needs (the sum of the
    steps' halos along the block axis; ``0``: every entry on its own)."""
    return sum(step.spec.reach(step.params) for step in steps)


class Window:
    """The haloed window ``[low, high)`` of the block ``[first, last)`` in an axis of
    ``total`` entries."""

    __slots__ = ("first", "high", "last", "low")

    def __init__(self, first: int, last: int, low: int, high: int) -> None:
        self.first, self.last, self.low, self.high = first, last, low, high

    @property
    def inner(self) -> slice:
        """Where the block's own entries lie in the window's output."""
        return slice(self.first - self.low, self.last - self.low)


def window(first: int, last: int, total: int, halo: int) -> Window:
    """The block ``[first, last)`` widened by ``halo`` on each side, within ``[0, total)``."""
    return Window(first, last, max(0, first - halo), min(total, last + halo))


def keep_block(data: npt.NDArray[Any], where: Window, what: str) -> npt.NDArray[Any]:
    """The block's own entries of ``data``, the output of a haloed window (a
    ``StageError`` when a step changed the length of the block axis)."""
    expected = where.high - where.low
    if data.shape[0] != expected:
        raise StageError(
            f"{what}: a step with a halo (a kernel across the block axis) needs every step "
            f"of its section to keep that axis's length; expected {expected}, got "
            f"{data.shape[0]} (move the step that changes it to another section)")
    xp = array_module(data)  # a device block (a queued section) is cut on the device
    kept: npt.NDArray[Any] = xp.ascontiguousarray(data[where.inner])
    return kept


def keep_saved(
    on_result: Callable[[PipelineStep, npt.NDArray[np.float32],
                         npt.NDArray[np.float64] | None], None] | None,
    where: Window, *, angles_along: bool,
) -> Callable[[PipelineStep, npt.NDArray[np.float32],
               npt.NDArray[np.float64] | None], None] | None:
    """``apply_steps``'s ``on_result`` for a haloed window: each saved output cut to the
    block's own entries (and its angles, where they run along the block axis:
    ``angles_along``, a projection block)."""
    if on_result is None or (where.low == where.first and where.high == where.last):
        return on_result
    hook = on_result

    def save(step: PipelineStep, data: npt.NDArray[np.float32],
             angles: npt.NDArray[np.float64] | None) -> None:
        kept = keep_block(data, where, f"stage {step.name!r} ({step.where})")
        if angles_along and angles is not None:
            angles = angles[where.inner]
        hook(step, kept, angles)

    return save


def counted_apart(
    run: Callable[[slice, RepairCounts], npt.NDArray[Any]], where: Window,
    repairs: RepairCounts,
) -> npt.NDArray[Any]:
    """A repair-counting step on a haloed window, its repairs counted on the block's own
    entries only: ``run(entries, counts)`` runs the step on those entries of the window
    (a step that counts repairs works entry by entry along the block axis, so the pieces
    joined equal the whole window); the own entries count into ``repairs``, each side's
    halo entries into a count that is dropped."""
    inner, length = where.inner, where.high - where.low
    pieces = (slice(0, inner.start), inner, slice(inner.stop, length))
    parts = [run(piece, repairs if piece is inner else RepairCounts())
             for piece in pieces if piece.stop > piece.start]
    if len(parts) == 1:
        return parts[0]
    joined: npt.NDArray[Any] = array_module(parts[0]).concatenate(parts)
    return joined


def without_neighbours_line(count: int) -> str:
    """The terminal line for ``count`` projections corrected without all their halo
    neighbours (a frame lost, or later than two blocks)."""
    return (f"{count} projections corrected before all their neighbours had arrived (a "
            "frame lost or late): the kernels across frames saw the frames at hand")

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

**R ranks** (ADR 0019's addendum). A rank's projections are dealt blocks, not contiguous
in angle, and its band of rows has no rows of its neighbours. So the reslice delivers
*overlapping* bands (:func:`ranks_halo` rows more on each side,
:func:`streamer.exchange.reslice.overlapping_bands`): the projection-section steps from
the first halo step on (:func:`split_at_halo`) run *after* the reslice, on the widened
band seen as ``(angles, rows, cols)``, where every angle of those rows is at hand
(:func:`run_on_band`); the sinogram section then runs its row windows on the widened band
and keeps the rank's own rows. A step in that tail must not reach across rows further
than the halo accounts for: a halo step reaches no further across rows than along its
block axis (every declared kernel), a step of :data:`ROW_LOCAL` not at all. From the
first other step there on (a Paganin filter, a binning, a distortion correction: whole
frames) the steps run as a later projection section, resliced to ranges of whole frames
and back (:func:`split_band_tail`, :func:`streamer.pipeline.sections.rank_sections`); a
step that changes the geometry there is refused on R ranks (:func:`band_tail_refusal`).
Repairs in that tail are counted once too: on each window's own frames, and on the
rank's own rows only (:func:`counted_apart` along the rows; a repairing step there is row
by row), the overlap rows being counted by the rank that owns them (ADR 0029).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from stages.backends.xp import array_module
from stages.prep.repair import RepairCounts
from stages.spec import Pattern
from streamer.errors import StageError
from streamer.pipeline.config import PipelineStep

__all__ = ["ROW_LOCAL", "WITHOUT_NEIGHBOURS", "Window", "band_tail_refusal", "counted_apart",
           "keep_block", "keep_saved", "local_window", "ranks_halo", "row_by_row", "run_on_band",
           "section_halo", "split_at_halo", "split_band_tail", "window", "without_neighbours_line"]

#: The run report's entry (and ``scan_end``'s field): projections corrected before all
#: their halo neighbours had arrived (:attr:`ScanProcessor.corrected_without_neighbours`,
#: summed over the ranks).
WITHOUT_NEIGHBOURS: Final = "corrected_without_neighbours"

#: Projection-section stages whose output pixel depends only on pixels of its own
#: detector row (element-wise maths, flat/dark corrections, repairs along the row), so
#: they run on a band of rows as on whole frames: they may follow a halo step on R ranks.
ROW_LOCAL: frozenset[str] = frozenset({
    "dark_flat_field_correction", "normalize", "normalize_interpolated", "normalize_nf",
    "minus_log", "remove_nan", "remove_neg", "data_checker", "data_reducer",
    "median_filter_nonfinite",
})


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


def local_window(first: int, last: int, halo: int, low: int, high: int) -> Window:
    """The haloed window of the block ``[first, last)`` within the entries ``[low, high)``
    a rank holds (its own and its overlap; the scan's ends are where the overlap stops),
    counted from ``low``: where to cut the rank's array."""
    where = window(first, last, high, halo)
    return Window(first - low, last - low, max(where.low, low) - low, where.high - low)


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
    repairs: RepairCounts, *, axis: int = 0,
) -> npt.NDArray[Any]:
    """A repair-counting step on a haloed window, its repairs counted on the block's own
    entries only: ``run(entries, counts)`` runs the step on those entries of the window
    (a step that counts repairs works entry by entry along the block axis, so the pieces
    joined equal the whole window); the own entries count into ``repairs``, each side's
    halo entries into a count that is dropped. ``axis``: the output's axis the window
    runs along (``0``, the block axis; ``1``, the detector rows of a projection block on
    a rank's widened band, where such a step works row by row: :data:`ROW_LOCAL`)."""
    inner, length = where.inner, where.high - where.low
    pieces = (slice(0, inner.start), inner, slice(inner.stop, length))
    parts = [run(piece, repairs if piece is inner else RepairCounts())
             for piece in pieces if piece.stop > piece.start]
    if len(parts) == 1:
        return parts[0]
    joined: npt.NDArray[Any] = array_module(parts[0]).concatenate(parts, axis=axis)
    return joined


def without_neighbours_line(count: int) -> str:
    """The terminal line for ``count`` projections corrected without all their halo
    neighbours (a frame lost, or later than two blocks)."""
    return (f"{count} projections corrected before all their neighbours had arrived (a "
            "frame lost or late): the kernels across frames saw the frames at hand")


def split_at_halo(
    steps: tuple[PipelineStep, ...],
) -> tuple[tuple[PipelineStep, ...], tuple[PipelineStep, ...]]:
    """A projection section cut before its first halo step: the head (runs on the frames
    a rank is dealt) and the tail (runs after the reslice on R ranks; empty without a
    halo step)."""
    for number, step in enumerate(steps):
        if step.spec.reach(step.params):
            return steps[:number], steps[number:]
    return steps, ()


def row_by_row(step: PipelineStep) -> bool:
    """Whether ``step`` may run on a band of rows after a halo step (its row reach is
    bounded by its halo, or it has none)."""
    if step.spec.reach(step.params) or step.name in ROW_LOCAL:
        return True
    # element-wise maths (a cubic kernel declares its halo)
    return step.spec.pattern is Pattern.ALL and step.spec.is_angle_local(step.params)


def split_band_tail(
    projection: tuple[PipelineStep, ...],
) -> tuple[tuple[PipelineStep, ...], tuple[PipelineStep, ...], tuple[PipelineStep, ...]]:
    """R ranks: the first projection section cut in three: the head (the dealt frames),
    the band tail (from the first halo step on, every step row by row: run on the
    widened band after the band exchange) and the whole-frame rest (from the first step
    of that tail that needs whole frames on: a Paganin filter, a 2-D filter, a
    distortion correction), which R ranks run as a later projection section, resliced
    to ranges of whole frames and back (ADR 0019's addendum); empty where there is
    none."""
    head, tail = split_at_halo(projection)
    for number, step in enumerate(tail):
        if not row_by_row(step):
            return head, tail[:number], tail[number:]
    return head, tail, ()


def ranks_halo(sections: tuple[tuple[PipelineStep, ...], tuple[PipelineStep, ...]]) -> int:
    """Rows of overlap each rank's band needs on each side on R ranks: the halos of the
    projection section's band tail (their row reach is bounded by their halo) plus those
    of the sinogram section (``sections``: the projection and sinogram sections); the
    band tail's only when a whole-frame rest follows it (the sinogram section then gets
    its overlap from the reslice back to bands)."""
    projection, sinogram = sections
    _head, tail, rest = split_band_tail(projection)
    if rest:
        return section_halo(tail)
    return section_halo(tail) + section_halo(
        s for s in sinogram if s.spec.finds_center is None)


def band_tail_refusal(projection: tuple[PipelineStep, ...]) -> str | None:
    """Why R ranks cannot run the projection section's tail (one line, naming the step),
    or None: a step that changes the geometry after the first halo step. A step there
    that needs whole frames runs as a later projection section (:func:`split_band_tail`)."""
    tail = split_at_halo(projection)[1]
    for step in tail:
        if step.spec.geometry is not None:
            return (f"stage {step.name!r} ({step.where}): it changes the projections' "
                    f"geometry after the halo step {tail[0].name!r}, which R ranks run "
                    "on their band of rows after the reslice (ADR 0019): move it before "
                    f"{tail[0].name!r} or run on one rank")
    return None


def run_on_band(
    sinograms: npt.NDArray[np.float32], block_frames: int, halo: int,
    apply: Callable[[Window, npt.NDArray[np.float32]], npt.NDArray[np.float32]],
) -> None:
    """Run a projection tail on a band ``(rows, angles, cols)`` in place, in blocks of
    frames with ``halo`` real neighbours each (every angle is at hand): ``apply(frames,
    data)`` gets the window of frames (its own frames and the halo's, of the angles) and
    its data as ``(angles, rows, cols)``
    and returns them transformed, same shape. A block's output is written back only once
    the next window (which reads its last ``halo`` frames) has been read, so every window
    sees the input."""
    count = sinograms.shape[1]
    size = max(block_frames, halo, 1)
    pending: tuple[int, int, npt.NDArray[np.float32]] | None = None
    for first in range(0, count, size):
        last = min(first + size, count)
        where = window(first, last, count, halo)
        block = np.ascontiguousarray(sinograms[:, where.low:where.high].transpose(1, 0, 2))
        out = apply(where, block)
        if out.shape != block.shape:
            raise StageError(
                f"projection section on a band: a step after a halo step must keep the "
                f"block's shape; expected {block.shape}, got {out.shape}")
        if pending is not None:
            sinograms[:, pending[0]:pending[1]] = pending[2].transpose(1, 0, 2)
        pending = (first, last, out[where.inner])
    if pending is not None:
        sinograms[:, pending[0]:pending[1]] = pending[2].transpose(1, 0, 2)

"""A CoR finder sees the data at its place: the rows it reads, tapped from the frames.

A CoR finder transforms nothing, so :func:`~streamer.pipeline.sections.sections_of` puts
it at the start of the first sinogram section, where it gets the projections corrected by
the whole first section. That is the data at its place unless a step after it in that
section needs whole frames (a Paganin filter, a 2-D filter, a distortion correction:
:func:`~streamer.pipeline.halo.split_band_tail`'s "rest"): in ``normalize →
find_center_vo → paganin_filter → FBP3d_tomobar`` the finder would see post-Paganin
data, which HTTomo's centering wrapper does not (it gathers its ``ind`` sinogram from the
data where it stands). So where such a step follows the finder, the runners **tap** the
finder's input there: the rows it reads (``ind`` ± ``average_radius``; ``find_center_360``
row ``ind``) of every frame, right before that whole-frame step (a per-scan buffer of
``(angles, rows, cols)`` float32, a few MB), and run the finder on it at the section
boundary. Steps between the finder and that whole-frame step act row by row
(element-wise maths, flat-field corrections, 3-D kernels of a bounded reach) and are
applied before the tap, as they are where no tap is needed: every runner and rank count
so give the finder the same data (:func:`finder_tap` decides it once).

No tap (today's path, no extra copy) where no whole-frame step follows the finder in the
first section, where a step from the tap on changes the frame's shape or the geometry
(the CoR found before it would not be in the reconstruction's columns: the finder then
sees the frames after it, as before), and for the pair finder ``find_center_pc``, which
correlates whole frames (it sees the corrected frames: a known limit).

On R ranks (ADR 0019's addendum) the tap lies either in the head the ranks run on their
dealt frames (each rank taps its frames and sends the rows to the CoR owner:
:mod:`streamer.run.finder_rows`), or exactly where the whole-frame rest begins (then the
band after the exchange and the band tail *is* the data at the tap: the finder runs on
it, as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, SupportsFloat

import numpy as np
import numpy.typing as npt

from streamer.errors import StageError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.halo import row_by_row
from streamer.pipeline.sections import sections_of

__all__ = ["FinderTap", "TappedRows", "finder_row", "finder_rows", "finder_tap",
           "run_finder_on_rows"]


@dataclass(frozen=True)
class FinderTap:
    """Where a finder's input is tapped: after the first ``at`` steps of the first
    projection section (before ``before``, the whole-frame step after the finder)."""

    finder: PipelineStep
    at: int
    before: PipelineStep


def _finder(steps: tuple[PipelineStep, ...]) -> PipelineStep | None:
    """The finder the runners use (the last one, as :meth:`ScanProcessor._with_center`)."""
    finders = [s for s in steps if s.spec.finds_center is not None]
    return finders[-1] if finders else None


def finder_tap(steps: tuple[PipelineStep, ...]) -> FinderTap | None:
    """Where ``steps``' CoR finder must be given its rows from the frames (see the module
    notes), or None where the corrected frames are the data at its place."""
    finder = _finder(steps)
    if finder is None or "ind" not in type(finder.params).model_fields:
        return None  # no finder, or the pair finder (whole frames)
    first = sections_of(steps)[0].steps
    place = steps.index(finder)
    before = sum(1 for s in steps[:place] if s in first)  # first-section steps before it
    for at in range(before, len(first)):
        if not row_by_row(first[at]):
            after = first[at:]
            if any(s.spec.geometry is not None or s.spec.changes_rows is not None
                   for s in (*first[:at], *after)):
                return None  # the CoR's columns would move (module notes)
            return FinderTap(finder, at, first[at])
    return None


def finder_row(finder: PipelineStep | None, rows: int) -> int:
    """The detector row the CoR finder looks at, as the finder itself picks it: its
    ``ind`` (``mid``: the middle row); unset, the middle row, except ``find_center_360``
    (row 0, as upstream)."""
    ind = dict(finder.params).get("ind") if finder is not None else None
    if ind == "mid" or (ind is None and (finder is None or finder.name != "find_center_360")):
        return rows // 2
    return 0 if ind is None else int(ind)


def finder_rows(finder: PipelineStep, rows: int) -> tuple[int, int]:
    """The rows ``[a, b)`` of a ``rows``-row frame the finder reads (its row, ± its
    ``average_radius``, clipped to the frame); a ``StageError`` for a row off it."""
    row = finder_row(finder, rows)
    if not 0 <= row < rows:
        raise StageError(f"stage {finder.name!r} ({finder.where}): ind: expected a row "
                         f"below {rows}, got {row}")
    radius = int(dict(finder.params).get("average_radius") or 0)
    return max(0, row - radius), min(rows, row + radius + 1)


class TappedRows:
    """One scan's tapped rows ``[a, b)`` of every frame at the tap (this rank's frames):
    blocks kept as they come, put in frame order by :meth:`stack`."""

    def __init__(self, rows: tuple[int, int], frame: tuple[int, int]) -> None:
        self.rows = rows
        self.frame = frame  # (rows, cols) of a frame at the tap
        self._indices: list[npt.NDArray[np.int64]] = []
        self._angles: list[npt.NDArray[np.float64]] = []
        self._data: list[npt.NDArray[np.float32]] = []

    def add(self, indices: npt.NDArray[np.int64], angles: npt.NDArray[np.float64],
            frames: npt.NDArray[np.float32]) -> None:
        """A block of ``(frames, rows, cols)`` at the tap: its finder rows are kept."""
        if tuple(frames.shape[1:]) != self.frame:
            raise StageError(f"CoR finder's rows: expected frames of {self.frame} at the "
                             f"tap, got {tuple(frames.shape[1:])}")
        self._indices.append(np.asarray(indices, dtype=np.int64))
        self._angles.append(np.asarray(angles, dtype=np.float64))
        self._data.append(np.array(frames[:, self.rows[0]:self.rows[1]], dtype=np.float32))

    def add_parts(self, indices: npt.NDArray[np.int64], angles: npt.NDArray[np.float64],
                  rows: npt.NDArray[np.float32]) -> None:
        """Rows tapped elsewhere (another rank's): ``(frames, b - a, cols)``."""
        self._indices.append(indices)
        self._angles.append(angles)
        self._data.append(rows)

    def parts(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64],
                             npt.NDArray[np.float32]]:
        """Everything kept, in frame order: indices, angles, ``(frames, b - a, cols)``."""
        cols = self.frame[1]
        if not self._indices:
            return (np.zeros(0, np.int64), np.zeros(0, np.float64),
                    np.zeros((0, self.rows[1] - self.rows[0], cols), np.float32))
        indices = np.concatenate(self._indices)
        order = np.argsort(indices, kind="stable")
        return (indices[order], np.concatenate(self._angles)[order],
                np.concatenate(self._data)[order])


def run_finder_on_rows(finder: PipelineStep, tapped: TappedRows) -> SupportsFloat:
    """The finder on its tapped rows (every frame, in frame order), its ``ind`` moved
    into them; a frame seen twice (a duplicate) is kept once."""
    assert finder.spec.finds_center is not None
    indices, angles, stack = tapped.parts()
    _, first = np.unique(indices, return_index=True)
    angles, stack = angles[first], stack[first]
    if stack.shape[0] == 0:
        raise StageError(f"stage {finder.name!r} ({finder.where}): no corrected projection "
                         "reached the CoR finder")
    row = finder_row(finder, tapped.frame[0]) - tapped.rows[0]
    params: Any = finder.params.model_copy(update={"ind": row})
    try:
        return finder.spec.finds_center(stack, angles, params)
    except StageError as error:
        raise StageError(f"{error} (pipeline entry at {finder.where})") from None

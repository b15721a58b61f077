"""The shape of a corrected frame: the detector rows and columns after the first section.

A step of the first projection section may bin, crop or resample the frames (a fast live
preview bins them 2× before the reslice). On one rank the processor shapes its band from
the first corrected block; on R ranks every rank must agree on the corrected frame's rows
and columns *before* the band exchange starts (the bands are cut from them, the writers
and the plan sized by them), including a rank that is dealt no frame. So each rank runs
the steps of the first projection section that come before its first halo step (what R
ranks run on the frames they are dealt) on a block of *no* frames of the scan's shape:
the output's shape is the rule of the steps themselves, the same on every rank, with no
data and no message (the way a rank without angles learns the shape a later projection
section gives, ADR 0022). ADR 0029.

The memory plan uses the same rule for every projection section
(:func:`frame_after`): a section that upsamples its rows holds more than its input, and
the sections after it are planned at the rows it gives.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from stages.prep.repair import RepairCounts
from streamer.errors import StageError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.device_bands import DEVICE_BACKENDS
from streamer.pipeline.executor import apply_steps
from streamer.pipeline.halo import split_at_halo
from streamer.pipeline.sections import sections_of

__all__ = ["corrected_frame", "frame_after", "may_change_frame"]


def may_change_frame(steps: tuple[PipelineStep, ...]) -> bool:
    """Whether a step of the first projection section can change the frames' rows or
    columns (declares :attr:`~stages.spec.StageSpec.changes_rows`: binning, cropping,
    resampling), so that the corrected frame's shape must be worked out."""
    return any(step.spec.changes_rows is not None for step in sections_of(steps)[0].steps)


def corrected_frame(steps: tuple[PipelineStep, ...], rows: int, cols: int) -> tuple[int, int]:
    """``(rows, cols)`` of a frame of ``rows`` x ``cols`` after the first projection
    section's steps up to its first halo step (the rest keeps the shape on a band: ADR
    0019's addendum); the frame's own shape where no step may change it. A
    ``StageError`` naming the cause where the steps refuse such a frame."""
    if not may_change_frame(steps):
        return rows, cols
    head = split_at_halo(sections_of(steps)[0].steps)[0]
    return _zero_frame_run(head, rows, cols, references=True,
                           what="the first projection section")


def frame_after(steps: tuple[PipelineStep, ...], rows: int,
                cols: int) -> tuple[int, int]:
    """``(rows, cols)`` of a frame of ``rows`` x ``cols`` after the projection steps
    ``steps``: each step that declares it may change the frame
    (:attr:`~stages.spec.StageSpec.changes_rows`) runs on a block of no frames of the
    shape it gets (only those change it; a step across frames, which refuses an empty
    block, never runs here). A ``StageError`` naming the cause where a step refuses it."""
    for step in steps:
        if step.spec.changes_rows is not None:
            rows, cols = _zero_frame_run((step,), rows, cols, references=False,
                                         what=f"stage {step.name!r}")
    return rows, cols


def _zero_frame_run(steps: tuple[PipelineStep, ...], rows: int, cols: int, *,
                    references: bool, what: str) -> tuple[int, int]:
    """The steps on a block of no frames of ``rows`` x ``cols``: the shape they give. A
    step on a device backend runs on ``numpy`` here (the same code, or our port of the
    adapter's), so that a plan needs no device (``check --device 16`` on any machine)."""
    steps = tuple(replace(step, backend="numpy") if step.backend in DEVICE_BACKENDS
                  else step for step in steps)
    darks = np.zeros((1, rows, cols), np.float32) if references else None
    flats = np.ones((1, rows, cols), np.float32) if references else None
    none = np.zeros(0, np.int64)
    try:
        out = apply_steps(steps, np.zeros((0, rows, cols), np.float32), darks=darks,
                          flats=flats, angles_deg=np.zeros(0, np.float64), frame_indices=none,
                          flat_indices=np.zeros(1, np.int64) if references else None,
                          projection_indices=none, repairs=RepairCounts())
    except StageError as error:
        raise StageError(f"the corrected frame's shape (rows, cols) from a {rows} x {cols} "
                         f"frame: {error}") from None
    if out.ndim != 3 or out.shape[1] < 1 or out.shape[2] < 1:
        raise StageError(f"{what} makes frames of shape "
                         f"{tuple(out.shape[1:])} from {rows} x {cols}: expected at least "
                         "one row and one column")
    return int(out.shape[1]), int(out.shape[2])

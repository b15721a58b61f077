"""What the live preview's projections have been through: its label in the feed.

The preview back-projects the corrected projections as the runner hands them over
(``on_projections``). On one rank they have been through the whole first projection
section. On R ranks a frame is corrected on the rank it reached, which does not hold its
neighbouring frames: a step whose kernel reaches across frames (a 3-D median,
:attr:`stages.spec.StageSpec.halo`) and every step after it in the section run only after
the band exchange, on each rank's band of rows with every angle (ADR 0019's addendum:
the band tail and a whole-frame rest). No rank has those corrected frames while the scan
streams, so R ranks preview the frames as far as they are corrected, and the feed says
so: ``scan_start`` and every ``preview`` carry the label (``after normalize``) and the
steps the preview's frames have not been through (the reconstruction applies them).
Where no step is deferred (no halo step in the first section, or one rank) the label is
the same on every rank count.

:func:`previewed_steps` is the split the runner's processor makes
(:class:`~streamer.pipeline.executor.ScanProcessor` with ``defer_halo`` on R ranks:
:func:`~streamer.pipeline.halo.split_band_tail`), so the label names what the frames
really went through (tested against the processor's own steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.pipeline.config import PipelineStep
from streamer.pipeline.halo import split_band_tail
from streamer.pipeline.sections import sections_of

__all__ = ["AS_RECEIVED", "PreviewStage", "preview_stage", "previewed_steps"]

#: The label of frames no projection step has corrected (a pipeline whose first step is a
#: sinogram step).
AS_RECEIVED = "as received"


@dataclass(frozen=True)
class PreviewStage:
    """``label``: how far the preview's frames are corrected (``after <step>``);
    ``not_applied``: the projection steps they have not been through, in order."""

    label: str
    not_applied: tuple[str, ...] = ()


def previewed_steps(
    steps: tuple[PipelineStep, ...], *, ranks: int,
) -> tuple[tuple[PipelineStep, ...], tuple[PipelineStep, ...]]:
    """The first projection section's steps the previewed frames have been through on
    ``ranks`` ranks, and those they have not (run after the band exchange on R ranks)."""
    first = sections_of(steps)[0].steps
    if ranks <= 1:
        return first, ()
    head, tail, rest = split_band_tail(first)
    return head, tail + rest


def preview_stage(steps: tuple[PipelineStep, ...], *, ranks: int) -> PreviewStage:
    """The preview's label for ``steps`` on ``ranks`` ranks."""
    applied, deferred = previewed_steps(steps, ranks=ranks)
    label = f"after {applied[-1].name}" if applied else AS_RECEIVED
    return PreviewStage(label, tuple(step.name for step in deferred))

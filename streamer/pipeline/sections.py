"""The one sectionizer: which steps run on projections and which on sinograms.

``check``, the memory plan and the run all split a pipeline here, so they never
disagree. As in HTTomo, a step's pattern is ``projection``, ``sinogram`` or ``all``
(works on either layout: element-wise maths, cubic 3-D kernels, output steps), and a
CoR finder transforms nothing (it runs once, on the corrected projections, whatever its
place). The projection section is every step up to the first ``sinogram`` step; the
sinogram section is the rest, CoR finders first. A ``projection`` step after a
``sinogram`` step would need a second reslice, which the runner does not do (yet): such
a pipeline is refused here, naming the step.
"""

from __future__ import annotations

from stages.spec import Pattern
from streamer.errors import StageError
from streamer.pipeline.config import PipelineStep

__all__ = ["split_sections"]


def split_sections(
    steps: tuple[PipelineStep, ...],
) -> tuple[tuple[PipelineStep, ...], tuple[PipelineStep, ...]]:
    """The projection section and the sinogram section (finders first) of ``steps``."""
    finders = tuple(s for s in steps if s.spec.finds_center is not None)
    data = [s for s in steps if s.spec.finds_center is None]
    cut = 0
    while cut < len(data) and data[cut].spec.pattern is not Pattern.SINOGRAM:
        cut += 1
    rest = data[cut:]
    stray = [s for s in rest if s.spec.pattern is Pattern.PROJECTION]
    if stray:
        raise StageError(
            f"stage {stray[0].name!r} ({stray[0].where}): a projection stage after the "
            f"sinogram stage {rest[0].name!r} needs a second reslice, which is not "
            f"supported; move it before {rest[0].name!r}"
        )
    return tuple(data[:cut]), finders + tuple(rest)

"""The one sectionizer: which steps run on projections and which on sinograms.

``check``, the memory plan and the run all split a pipeline here, so they never
disagree. As in HTTomo, a step's pattern is ``projection``, ``sinogram`` or ``all``
(works on either layout: element-wise maths, cubic 3-D kernels, output steps), and a
CoR finder transforms nothing (it runs once, on the corrected projections, whatever its
place). A section is a run of steps in one layout: the pipeline starts in projections,
and every step whose pattern is not the current layout (nor ``all``) starts a new
section, i.e. a reslice. A pipeline may so go projection → sinogram → projection →
sinogram (HTTomo's Paganin after ``sino_360_to_180``): :func:`sections_of` gives every
section, CoR finders at the start of the first sinogram section.

On R ranks (:func:`refuse_on_ranks`) the link's exchange reslices once and every rank
reconstructs its band with the CoR agreed once: a pipeline with a second reslice, a
stage that changes the scan's geometry (``sino_360_to_180``,
``average_projection_frames``) or a parameter filled from a side output at run time
other than the CoR is refused there before the first scan, with the reason; one rank
(``recon``, ``run``) runs them.

:func:`split_sections` is the single-reslice view (projection section, sinogram
section) for the runners that reslice once (the live one-rank and R-rank services):
a pipeline that needs more reslices is refused there with a one-line error naming the
step and the command that runs it (``recon``).
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.spec import Pattern
from streamer.errors import ConfigError, StageError
from streamer.pipeline.config import PipelineStep

__all__ = ["Section", "refuse_on_ranks", "refuse_save_result", "sections_of", "split_sections"]


@dataclass(frozen=True)
class Section:
    """Consecutive steps that run on one layout (a reslice lies between two sections)."""

    pattern: Pattern
    steps: tuple[PipelineStep, ...]


def sections_of(steps: tuple[PipelineStep, ...]) -> tuple[Section, ...]:
    """Every section of ``steps``, alternating from ``projection`` (the first may be
    empty; every later one has a step); CoR finders open the first sinogram section
    (which exists, possibly with the finders only, when the pipeline has a finder)."""
    finders = tuple(s for s in steps if s.spec.finds_center is not None)
    out: list[tuple[Pattern, list[PipelineStep]]] = [(Pattern.PROJECTION, [])]
    for step in steps:
        if step.spec.finds_center is not None:
            continue
        pattern = step.spec.pattern
        if pattern is not Pattern.ALL and pattern is not out[-1][0]:
            out.append((pattern, []))
        out[-1][1].append(step)
    if finders:
        if len(out) == 1:
            out.append((Pattern.SINOGRAM, []))
        out[1] = (Pattern.SINOGRAM, [*finders, *out[1][1]])
    return tuple(Section(pattern, tuple(members)) for pattern, members in out)


def split_sections(
    steps: tuple[PipelineStep, ...],
) -> tuple[tuple[PipelineStep, ...], tuple[PipelineStep, ...]]:
    """The projection section and the sinogram section (finders first) of a pipeline
    with at most one reslice; a ``StageError`` for one that needs more."""
    found = sections_of(steps)
    if len(found) > 2:
        step = found[2].steps[0]
        raise StageError(
            f"stage {step.name!r} ({step.where}): a {step.spec.pattern.value} stage after "
            f"the sinogram stage {found[1].steps[-1].name!r} needs a second reslice, which "
            "only `recon` runs (one rank, from a file); the live services reslice once"
        )
    if len(found) == 1:
        return found[0].steps, ()
    return found[0].steps, found[1].steps


def refuse_save_result(steps: tuple[PipelineStep, ...], command: str) -> None:
    """A ``ConfigError`` for HTTomo's ``save_result: true`` where ``command`` does not
    write intermediate files (only ``recon`` on one rank does), never a silent skip."""
    saved = [step for step in steps if step.save_result]
    if saved:
        raise ConfigError(
            f"stage {saved[0].name!r} ({saved[0].where}): save_result: true writes an "
            f"intermediate file with `recon` on one rank; `{command}` does not: remove it "
            "or use `recon`")


def refuse_on_ranks(steps: tuple[PipelineStep, ...]) -> None:
    """A ``ConfigError`` naming the first step R ranks cannot run (see the module notes)."""
    refuse_save_result(steps, "several ranks")
    found = sections_of(steps)
    if len(found) > 2:
        step = found[2].steps[0]
        raise ConfigError(
            f"stage {step.name!r} ({step.where}): this pipeline needs {len(found) - 1} "
            "reslices; on several ranks the exchange reslices once: run it on one rank")
    for step in steps:
        if step.spec.geometry is not None:
            raise ConfigError(
                f"stage {step.name!r} ({step.where}): it changes the projections' angles or "
                "width, which the ranks' bands do not follow yet: run it on one rank")
        linked = [param for param, _ in step.linked if param != "center"]
        if linked:
            raise ConfigError(
                f"stage {step.name!r} ({step.where}): parameter {linked[0]!r} comes from a "
                "side output at run time, which is not shared between ranks yet: give it "
                "a value or run on one rank")

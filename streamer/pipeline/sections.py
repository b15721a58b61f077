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

On R ranks the band exchange reslices once; a pipeline that needs more
(:func:`beyond_one_band`: a second reslice, a stage that changes the scan's geometry,
``sino_360_to_180``'s side outputs) runs its later sections with every rank's band, the
CoR and the finder's side outputs shared, and reslices again between them
(:mod:`streamer.run.later_sections`, ADR 0009's addendum). :func:`refuse_on_ranks` still
refuses, before the first scan, what R ranks do not run: ``save_to_images`` along an axis
other than the slices' (each rank writes the images of its own band:
:meth:`~streamer.run.ranks.RankedReconstruction`). ``save_result`` runs on R ranks (a
part per rank and a virtual file over them, ADR 0022), written by ``recon`` and, per
scan, by ``run`` (ADR 0029); a runner that writes no intermediate files refuses it
(:func:`refuse_save_result`).

:func:`refuse_on_ranks` also refuses what R ranks cannot give its real neighbours
(:attr:`stages.spec.StageSpec.halo`, ADR 0019 and its addendum): overlapping bands serve
the projection section from its first halo step on (run after the reslice on the band)
and every later section (the later reslices overlap too); a step after that first halo
step that needs whole frames runs as a later projection section
(:func:`rank_sections`, the one place that sections a pipeline for R ranks); refused are
a step there that changes the geometry
(:func:`~streamer.pipeline.halo.band_tail_refusal`) and a CoR finder in such a pipeline
(R ranks would find the CoR before the whole-frame steps).

:func:`refuse_row_change` refuses, before the scan is read (``check``, and every runner
at its start), a step that changes the number of detector rows where the runners do not
follow it: in a sinogram section (a block is a band of the slices: a step that resamples
across them would mix bands and change the volume's height under the writer). Every rank
count follows it in a projection section: in the first one, one rank shapes its band from
the first corrected block and R ranks agree on the corrected frame's shape before the
band exchange (:func:`streamer.pipeline.frame_shape.corrected_frame`, ADR 0029); in a
later one every rank holds all rows of a range of angles and the next bands are cut from
its output (:mod:`streamer.run.later_sections`).

:func:`split_sections` is the single-reslice view (projection section, sinogram
section) of the band path (:class:`~streamer.run.ranks.RankedReconstruction`'s sinogram
section on each band). The runners send a pipeline that needs more reslices elsewhere
before they get there — ``recon`` and ``run``, on any number of ranks: one rank runs its
later sections at the scan's close (:meth:`~streamer.pipeline.executor.ScanProcessor.finish`),
R ranks in :mod:`streamer.run.later_sections` — so a caller that still hands one to
:func:`split_sections` gets a one-line error naming the step and those runners.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.spec import Pattern
from streamer.errors import ConfigError, StageError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.halo import band_tail_refusal, split_band_tail

__all__ = ["Section", "beyond_one_band", "halo_refusal_on_ranks", "rank_sections",
           "ranks_reslices", "refuse_on_ranks", "refuse_row_change",
           "refuse_save_result", "sections_of", "split_sections"]


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
    with at most one reslice; a ``StageError`` for one that needs more, naming the
    runners that run it (see the module notes)."""
    found = sections_of(steps)
    if len(found) > 2:
        step = found[2].steps[0]
        raise StageError(
            f"stage {step.name!r} ({step.where}): a {step.spec.pattern.value} stage after "
            f"the sinogram stage {found[1].steps[-1].name!r} needs a second reslice, which "
            "the one-reslice band path does not run; `recon` and `run` run such a pipeline "
            "on any number of ranks (one rank: the scan processor's later sections at the "
            "scan's close; R ranks: streamer.run.later_sections)"
        )
    if len(found) == 1:
        return found[0].steps, ()
    return found[0].steps, found[1].steps


def refuse_save_result(steps: tuple[PipelineStep, ...], command: str) -> None:
    """A ``ConfigError`` for HTTomo's ``save_result: true`` where ``command`` does not
    write intermediate files (``recon`` and ``run`` do, on any number of ranks), never
    a silent skip."""
    saved = [step for step in steps if step.save_result]
    if saved:
        raise ConfigError(
            f"stage {saved[0].name!r} ({saved[0].where}): save_result: true writes an "
            f"intermediate file with `recon` and `run`; `{command}` does not: remove it "
            "or use `recon`")


def refuse_row_change(steps: tuple[PipelineStep, ...], *, ranks: int = 1) -> None:
    """A ``ConfigError`` naming the first step that changes the number of detector rows
    (:attr:`stages.spec.StageSpec.changes_rows`) where the runners do not follow it: a
    sinogram section (see the module notes). Every rank count follows it in a projection
    section; ``ranks`` is kept for the callers (the rule no longer depends on it)."""
    del ranks
    for number, section in enumerate(sections_of(steps)):
        if section.pattern is Pattern.PROJECTION:
            continue  # whole frames (first) or all rows of a range of angles (later)
        for step in section.steps:
            declared = step.spec.changes_rows
            if declared is None or not declared(step.params):
                continue
            raise ConfigError(f"stage {step.name!r} ({step.where}): it changes the number of "
                              f"detector rows in the sinogram section after reslice {number} "
                              "(a block is a band of the volume's slices), which is not "
                              "supported: expected it in a projection section, or remove it")


def rank_sections(steps: tuple[PipelineStep, ...]) -> tuple[Section, ...]:
    """The sections R ranks run (the one place that decides it, for ``check`` and the
    runners): :func:`sections_of`, except that a first projection section with a step
    that needs whole frames after a halo step (:func:`~streamer.pipeline.halo.
    split_band_tail`: HTTomo's ``remove_outlier`` → … → ``paganin_filter``) is cut
    before that step: the head and the row-by-row band tail stay first (the band
    exchange's overlapping band), an empty sinogram section follows, and the rest runs as
    a projection section of its own on ranges of whole frames (two more reslices)."""
    found = sections_of(steps)
    head, tail, rest = split_band_tail(found[0].steps)
    if not rest:
        return found
    return (Section(Pattern.PROJECTION, head + tail), Section(Pattern.SINOGRAM, ()),
            Section(Pattern.PROJECTION, rest), *found[1:])


def beyond_one_band(steps: tuple[PipelineStep, ...], *, on_ranks: bool = False) -> bool:
    """Whether ``steps`` need more than one reslice and the sinogram section on each band
    with the CoR filled in: a second reslice, a geometry-changing stage or a parameter
    filled from a side output other than the CoR (the runners then run the later
    sections themselves: :meth:`~streamer.pipeline.executor.ScanProcessor.finish` on one
    rank, :mod:`streamer.run.later_sections` on R ranks). ``on_ranks``: as R ranks
    section it (:func:`rank_sections`)."""
    found = rank_sections(steps) if on_ranks else sections_of(steps)
    if len(found) > 2:
        return True
    return any(step.spec.geometry is not None
               or any(param != "center" for param, _ in step.linked) for step in steps)


def refuse_on_ranks(steps: tuple[PipelineStep, ...]) -> None:
    """A ``ConfigError`` naming the first step R ranks cannot run (see the module notes)."""
    from streamer.pipeline.images import image_tail  # noqa: PLC0415  # images -> h5py

    tail = image_tail(steps)
    if tail is not None and tail.axis != 0:
        saver = [step for step in steps if step.name == "save_to_images"][-1]
        axis = dict(saver.params)["axis"]
        raise ConfigError(
            f"stage 'save_to_images' ({saver.where}): axis {axis!r} cuts across every "
            "rank's band of slices; several ranks write images along the slices only: "
            "expected axis: auto or 1, or run on one rank")
    refusal = halo_refusal_on_ranks(steps)
    if refusal is not None:
        raise ConfigError(refusal)


def halo_refusal_on_ranks(steps: tuple[PipelineStep, ...]) -> str | None:
    """Why R ranks cannot give a step of ``steps`` its real neighbours (one line naming
    the step; ``check`` prints it as a note, the runners refuse with it), or None."""
    found = sections_of(steps)
    refusal = band_tail_refusal(found[0].steps)
    if refusal is not None:
        return refusal
    rest = split_band_tail(found[0].steps)[2]
    finders = [s for s in steps if s.spec.finds_center is not None]
    if rest and finders:
        # R ranks find the CoR on the band exchange's band, before the whole-frame rest:
        # the CoR would differ from one rank's (found after it)
        return (f"stage {finders[0].name!r} ({finders[0].where}): R ranks find the CoR "
                f"before {rest[0].name!r}, which they run after a later reslice (it needs "
                "whole frames after a halo step), so the CoR would differ from one rank's: "
                "remove the finder and give the reconstruction a center, or run on one rank")
    return None


def ranks_reslices(steps: tuple[PipelineStep, ...]) -> int:
    """How many reslices R ranks run for ``steps`` (``check``'s note)."""
    return max(len(rank_sections(steps)) - 1, 0)

"""Block sizes from a memory budget, per section of a pipeline (no data needed).

What a scan holds for its whole duration is counted first (:func:`plan_scan`): the
corrected scan in sinogram layout (every row on one rank, the band on each of R ranks,
with its overlap when steps reach across rows: :func:`rank_band_rows`) and the darks and
flats as float32. The blocks are planned in what that leaves of the
budget; a scan whose held part alone exceeds the budget is refused at its ``start``, with
the figures, before any frame is held. A pipeline that reslices again holds parts of the
scan in its later sections too (:func:`later_parts_bytes`: each part as the runners hold
it, widened by its section's halo on R ranks, at the rows a step upsamples them to).

A pipeline splits into sections as the run splits it
(:func:`~streamer.pipeline.sections.sections_of`, as in HTTomo: projection, sinogram and
again, a reslice between each two; a stage that changes the number of projections or the
width changes the shape planned for the sections after it, one that changes the rows
(:func:`~streamer.pipeline.frame_shape.frame_after`) the rows each later step is
estimated at, never fewer than the scan's). Within a section, a
block of ``n`` frames (projection) or ``n`` sinograms (sinogram) needs the largest of
its stages' ``memory`` estimates, at ``n`` plus twice the section's halo (the real
neighbours a block gets when a kernel reaches across its axis, ADR 0019); the plan
takes the largest ``n`` that keeps that peak within the budget (a binary search over
``n``, so estimates that are not proportional to ``n`` are honoured). A scan whose
single frame or sinogram cannot fit is refused here, before it starts, never with an
out-of-memory error mid-scan.

The same plan runs against a device (as HTTomo sizes its GPU blocks): with a device's
usable bytes (:func:`stages.backends.device.device_budget_bytes`, from the free memory
measured by cupy or a stated size), only the steps that run there (``cupy``,
``httomolibgpu``) count, and a section's block is the smaller of its host and device
blocks. A device-ready stage uses the same estimate on both backends: it is the same
code, holding the same buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stages.spec import Geometry, MemoryEstimate, Pattern, StageSpec
from streamer.errors import ConfigError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.device_bands import DEVICE_BACKENDS
from streamer.pipeline.frame_shape import frame_after
from streamer.pipeline.halo import section_halo
from streamer.pipeline.sections import rank_sections, sections_of


@dataclass(frozen=True)
class SectionPlan:
    """Block size of one section: ``block`` frames or sinograms per block."""

    pattern: Pattern
    steps: tuple[str, ...]
    block: int
    units: int  # frames (projection) or sinograms (sinogram) in the whole scan
    peak_bytes: int
    limiting_step: str
    device: bool = False  # planned against the device's memory, not the host's

    def describe(self) -> str:
        unit = "frames" if self.pattern is Pattern.PROJECTION else "sinograms"
        where = "device: " if self.device else ""
        return (f"{where}{self.pattern.value} section [{', '.join(self.steps)}]: blocks of "
                f"{self.block} {unit} (of {self.units}), peak {self.peak_bytes / 2**20:,.1f} "
                f"MiB set by {self.limiting_step!r}")


def _largest_fitting(peak_for: Callable[[int], int], units: int, budget: int) -> int:
    """Largest ``n <= units`` with ``peak_for(n) <= budget`` (estimates grow with ``n``;
    some, like Paganin's chunked scratch, are not proportional to it)."""
    low, high = 1, units
    while low < high:
        middle = (low + high + 1) // 2
        if peak_for(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def sections(steps: tuple[PipelineStep, ...]) -> list[tuple[Pattern, list[PipelineStep]]]:
    """The non-empty sections of :func:`~streamer.pipeline.sections.sections_of` (the one
    sectionizer, shared with the run)."""
    return [(section.pattern, list(section.steps)) for section in sections_of(steps)
            if section.steps]


@dataclass(frozen=True)
class ShapedSection:
    """A non-empty section with the shape it is planned at: the number of projections
    and the detector width it starts with (the largest within it, as a step that changes
    them changes them for the steps after it), and the detector rows it starts and ends
    with (a projection step may bin, crop or upsample the rows:
    :func:`~streamer.pipeline.frame_shape.frame_after`). ``place``: its position among
    every section, empty ones included (an empty sinogram section passes the band on
    as it is)."""

    pattern: Pattern
    steps: list[PipelineStep]
    count: int
    width: int
    rows_in: int
    rows_out: int
    place: int
    #: The detector rows each step takes in (its estimate is made at them).
    step_rows: tuple[int, ...] = ()
    #: The detector columns of the frames it ends with (a projection section's steps).
    cols_out: int = 0


def shaped_sections(
    steps: tuple[PipelineStep, ...], *, angles: int, cols: int, on_ranks: bool = False,
) -> list[tuple[Pattern, list[PipelineStep], int, int]]:
    """Each non-empty section with the number of projections and the detector width it
    starts with: a step that changes them (``average_projection_frames``,
    ``sino_360_to_180``, :attr:`stages.spec.StageSpec.geometry`) changes them for the
    sections after it (within a section, the largest is planned). ``on_ranks``: the
    sections R ranks run (:func:`~streamer.pipeline.sections.rank_sections`: a whole-frame
    step after a halo step is a later section there)."""
    return [(section.pattern, section.steps, section.count, section.width)
            for section in shaped_with_rows(steps, angles=angles, cols=cols, rows=1,
                                            on_ranks=on_ranks, follow_rows=False)]


def shaped_with_rows(
    steps: tuple[PipelineStep, ...], *, angles: int, cols: int, rows: int,
    on_ranks: bool = False, follow_rows: bool = True,
) -> list[ShapedSection]:
    """:func:`shaped_sections` with the detector rows each section starts and ends with,
    from a frame of ``rows`` (the steps run on a block of no frames, as every rank
    learns the corrected frame's shape, ADR 0029; ``follow_rows=False``: the rows are
    left at ``rows``)."""
    geometry = Geometry(np.zeros(angles), cols)
    frame_rows, frame_cols = rows, cols
    out = []
    found = rank_sections(steps) if on_ranks else sections_of(steps)
    for place, section in enumerate(found):
        count, width = geometry.angles_deg.size, geometry.cols
        for step in section.steps:
            geometry = step.spec.after(geometry, step.params)
            count, width = max(count, geometry.angles_deg.size), max(width, geometry.cols)
        rows_in = frame_rows
        step_rows = []
        for step in section.steps:
            step_rows.append(frame_rows)
            if follow_rows and section.pattern is Pattern.PROJECTION:
                frame_rows, frame_cols = frame_after((step,), frame_rows, frame_cols)
        if section.steps:
            out.append(ShapedSection(section.pattern, list(section.steps), count, width,
                                     rows_in, frame_rows, place, tuple(step_rows),
                                     frame_cols))
    return out


def _estimate(step: PipelineStep, device: bool) -> MemoryEstimate:
    """The step's memory estimate on the host, or on the device (its own where given)."""
    if device and step.spec.device_memory is not None:
        return step.spec.device_memory
    return step.spec.memory


def on_device(step: PipelineStep) -> bool:
    """Whether the step runs on a CUDA device."""
    return step.backend in DEVICE_BACKENDS


def steps_on_device(steps: tuple[PipelineStep, ...]) -> tuple[PipelineStep, ...]:
    """``--device gpu``: every device-ready stage left on ``numpy`` moves to ``cupy``;
    stages with another backend chosen, or not device-ready, keep theirs."""
    def moved(step: PipelineStep) -> PipelineStep:
        spec: StageSpec = step.spec
        if step.backend == "numpy" and spec.device:
            return replace(step, backend="cupy")
        return step

    return tuple(moved(step) for step in steps)


def plan_blocks(
    steps: tuple[PipelineStep, ...],
    *,
    rows: int,
    cols: int,
    angles: int,
    dtype: np.dtype[Any],
    budget_bytes: int,
) -> list[SectionPlan]:
    """Plan every section for a scan of ``angles`` projections of ``rows × cols``."""
    return _plan(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                 budget_bytes=budget_bytes, device=False, what="memory budget")


def plan_device_blocks(
    steps: tuple[PipelineStep, ...],
    *,
    rows: int,
    cols: int,
    angles: int,
    dtype: np.dtype[Any],
    device_bytes: int,
) -> list[SectionPlan]:
    """Plan the sections that have device steps against ``device_bytes`` usable on the
    device (only those steps count); a frame or sinogram that cannot fit is refused."""
    return _plan(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                 budget_bytes=device_bytes, device=True, what="usable device memory")


def _plan(
    steps: tuple[PipelineStep, ...],
    *,
    rows: int,
    cols: int,
    angles: int,
    dtype: np.dtype[Any],
    budget_bytes: int,
    device: bool,
    what: str,
) -> list[SectionPlan]:
    if budget_bytes < 1:
        raise ConfigError(f"{what}: expected > 0 bytes, got {budget_bytes}")
    plans = []
    for shaped in shaped_with_rows(steps, angles=angles, cols=cols, rows=rows):
        pattern, all_members, count, width = (shaped.pattern, shaped.steps, shaped.count,
                                              shaped.width)
        members = [step for step in all_members if not device or on_device(step)]
        if not members:
            continue
        # a step after one that upsamples the rows takes more of them (its estimate is
        # made at them); one after binning or cropping at the scan's rows (never fewer)
        planes = {id(s): max(rows, taken) if pattern is Pattern.PROJECTION else count
                  for s, taken in zip(all_members, shaped.step_rows, strict=True)}
        if pattern is Pattern.PROJECTION:
            units, unit_shape = count, (1, max(planes[id(s)] for s in members), width)
        else:  # a sinogram section's blocks are of the rows it takes
            units, unit_shape = max(rows, shaped.rows_in), (1, count, width)
        # a block of n runs as n plus its halo of real neighbours on each side (ADR 0019)
        halo = section_halo(all_members)

        def widened(n: int, units: int = units, halo: int = halo) -> int:
            return min(units, n + 2 * halo)

        unit_shape = (widened(1), unit_shape[1], unit_shape[2])
        per_unit = {s.name: _estimate(s, device)((widened(1), planes[id(s)], width), dtype,
                                                 s.params) for s in members}
        limiting = max(per_unit, key=lambda name: per_unit[name])
        need = per_unit[limiting]
        if pattern is Pattern.PROJECTION:  # the limiting step's frame
            unit_shape = (widened(1), planes[id(next(s for s in members
                                                     if s.name == limiting))], width)
        if need > budget_bytes:
            unit = "frame" if pattern is Pattern.PROJECTION else "sinogram"
            with_halo = f" (with its {halo} neighbours on each side)" if halo else ""
            raise ConfigError(
                f"stage {limiting!r}: one {unit}{with_halo} of shape {unit_shape[1:]} needs "
                f"{need / 2**20:,.1f} MiB, the {what} is {budget_bytes / 2**20:,.1f} MiB"
            )
        def need_at(count: int, members: list[PipelineStep] = members,
                    planes: dict[int, int] = planes, width: int = width) -> dict[str, int]:
            return {s.name: _estimate(s, device)((widened(count), planes[id(s)], width),
                                                 dtype, s.params)
                    for s in members}

        def peak_for(count: int) -> int:
            return max(need_at(count).values())

        block = _largest_fitting(peak_for, units, budget_bytes)
        # the step that sets the peak at the planned block, which need not be the one
        # with the largest one-unit estimate (a fixed overhead dominates small blocks)
        at_block = need_at(block)
        setter = max(at_block, key=lambda name: at_block[name])
        plans.append(SectionPlan(pattern, tuple(s.name for s in members), block, units,
                                 at_block[setter], setter, device))
    return plans


def default_budget_bytes() -> int:
    """Half of this machine's physical memory: the host budget when none is given."""
    import os  # noqa: PLC0415  # only where a default budget is needed

    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)


def block_sizes(
    steps: tuple[PipelineStep, ...],
    *,
    rows: int,
    cols: int,
    angles: int,
    dtype: np.dtype[Any],
    budget_bytes: int,
    device_bytes: int | None = None,
) -> tuple[int, int, list[SectionPlan]]:
    """Frames per projection block and sinograms per sinogram block for one scan, from
    the plan (a section that is absent gets a block of 1); with ``device_bytes``, the
    device plan of the device steps too, each block the smaller of the two. The plans
    returned are the host's then the device's."""
    plans = plan_blocks(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                        budget_bytes=budget_bytes)
    if device_bytes is not None:
        plans += plan_device_blocks(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                                    device_bytes=device_bytes)

    def smallest(pattern: Pattern) -> int:
        return min((p.block for p in plans if p.pattern is pattern), default=1)

    return smallest(Pattern.PROJECTION), smallest(Pattern.SINOGRAM), plans


@dataclass(frozen=True)
class ScanMemory:
    """Bytes one rank holds for one scan, by part (see :func:`plan_scan`)."""

    sinogram_buffer: int  #: the corrected band, ``band_rows × angles × cols`` float32
    references: int  #: darks and flats, float32, kept for the whole scan
    blocks: int  #: the largest section peak of the block plan
    budget: int

    @property
    def total(self) -> int:
        return self.sinogram_buffer + self.references + self.blocks

    def describe(self) -> str:
        mib = 2**20
        return (f"memory {self.total / mib:,.1f} MiB of {self.budget / mib:,.1f} MiB: "
                f"sinogram buffer {self.sinogram_buffer / mib:,.1f} + references "
                f"{self.references / mib:,.1f} + largest block {self.blocks / mib:,.1f}")


def rank_band_rows(rows: int, ranks: int, halo: int) -> int:
    """The most detector rows one of ``ranks`` ranks holds in its band: its share of
    ``rows`` plus the ``halo`` rows of overlap on each side that steps reaching across
    rows need (:func:`~streamer.pipeline.halo.ranks_halo`, ADR 0019's addendum),
    within the detector."""
    return min(rows, -(-rows // max(ranks, 1)) + 2 * halo)


def plan_scan(
    steps: tuple[PipelineStep, ...],
    *,
    rows: int,
    cols: int,
    angles: int,
    references: int,
    dtype: np.dtype[Any],
    budget_bytes: int,
    band_rows: int | None = None,
    device_bytes: int | None = None,
    on_ranks: bool = False,
    ranks: int | None = None,
) -> tuple[int, int, list[SectionPlan], ScanMemory]:
    """Block sizes and the memory of one scan on one rank, or a ``ConfigError`` with the
    figures when the scan cannot fit ``budget_bytes``.

    ``band_rows`` is the most detector rows one rank reconstructs (all ``rows`` on one
    rank); ``references`` the darks and flats the scan announces; ``device_bytes`` the
    usable memory of the rank's device (``--device gpu``), whose plan also bounds the
    blocks (the host figures count the host plans only); ``on_ranks``: R ranks, whose
    further reslices follow :func:`~streamer.pipeline.sections.rank_sections`;
    ``ranks``: how many ranks share the scan (the runners give it), so that each later
    section's part is counted as it is held (:func:`later_parts_bytes`: its overlap
    when its steps reach across its block axis, the rows a step upsamples them to); the
    figure is then never below the estimate made without it.
    """
    if budget_bytes < 1:
        raise ConfigError(f"memory budget: expected > 0 bytes, got {budget_bytes}")
    mib = 2**20
    shaped = shaped_sections(steps, angles=angles, cols=cols, on_ranks=on_ranks)
    has_sinogram_section = any(p is Pattern.SINOGRAM for p, *_ in shaped)
    band = rows if band_rows is None else band_rows
    band_cols = cols
    first = shaped_with_rows(steps, angles=angles, cols=cols, rows=rows)[:1]
    if ranks == 1 and first and first[0].place == 0:
        # one rank holds every row of the corrected frame (its band is shaped by the first
        # corrected block): more than the scan's where a step upsamples the frame
        band, band_cols = max(band, first[0].rows_out), max(cols, first[0].cols_out)
    buffer = band * max(angles, 1) * band_cols * 4 if has_sinogram_section else 0
    # Each further reslice holds the scan once more, in its shape then (in and out of a
    # middle section), on top of the band.
    later = [band * max(count, 1) * width * 4 for _, _, count, width in shaped[2:]]
    buffer += max(2 * max(later, default=0),
                  0 if ranks is None else later_parts_bytes(
                      steps, rows=rows, cols=cols, angles=angles, ranks=ranks,
                      on_ranks=on_ranks))
    held = references * rows * cols * 4
    if buffer + held >= budget_bytes:
        raise ConfigError(
            f"memory: the scan needs {(buffer + held) / mib:,.1f} MiB held while it runs "
            f"(sinogram buffer {band} rows x {angles} projections x {band_cols} columns float32 "
            f"= {buffer / mib:,.1f} MiB + {references} darks and flats "
            f"{held / mib:,.1f} MiB) before any block, the memory budget is "
            f"{budget_bytes / mib:,.1f} MiB (--memory)")
    left = budget_bytes - buffer - held
    try:
        frames, sinograms, plans = block_sizes(steps, rows=rows, cols=cols, angles=angles,
                                               dtype=dtype, budget_bytes=left,
                                               device_bytes=device_bytes)
    except ConfigError as error:
        raise ConfigError(
            f"memory: {error} left of {budget_bytes / mib:,.1f} MiB after the sinogram "
            f"buffer ({buffer / mib:,.1f} MiB) and references ({held / mib:,.1f} MiB)"
        ) from None
    peak = max((p.peak_bytes for p in plans if not p.device), default=0)
    return frames, sinograms, plans, ScanMemory(buffer, held, peak, budget_bytes)


def later_parts_bytes(
    steps: tuple[PipelineStep, ...], *, rows: int, cols: int, angles: int, ranks: int,
    on_ranks: bool,
) -> int:
    """The most bytes one of ``ranks`` ranks holds at once in the later sections of a
    scan of ``angles`` frames of ``rows`` x ``cols`` (on top of the band, which stays
    held), part by part as the runners hold them:

    - R ranks (:mod:`streamer.run.later_sections`): a reslice holds the part it sends
      (the previous section's output, this rank's own entries) and the part it
      receives; a section holds its input part and its output. A part is this rank's
      share of the section's axis (angles in a projection section, rows in a sinogram
      one) widened by the section's halo on each side (``transpose(halo=h)``, ADR 0019's
      addendum), at the rows the section starts with; its output has the rows the
      section ends with (a step that upsamples them makes more).
    - One rank (:meth:`~streamer.pipeline.executor.ScanProcessor.finish`): a section
      reads the previous section's output in place (a transposed view) and gathers its
      own, so two outputs are held at once.

    ``0`` for a pipeline without a second reslice."""
    found = shaped_with_rows(steps, angles=angles, cols=cols, rows=rows, on_ranks=on_ranks)
    if not any(section.place >= 2 for section in found):
        return 0
    share = max(ranks, 1)
    peaks = []
    previous_out = 0  # bytes of the previous section's output on this rank (0: the band)
    for number, section in enumerate(found):
        if section.place == 0:
            continue
        along_angles = section.pattern is Pattern.PROJECTION
        entries = section.count if along_angles else section.rows_in  # the block axis
        plane = section.rows_in if along_angles else section.count
        out_plane = section.rows_out if along_angles else section.count
        if section.place == 1:
            held = 0  # the band itself
        elif share == 1:
            held = previous_out  # read in place (a transposed view)
        else:  # received by a reslice while the previous output is sent
            held = (rank_band_rows(entries, share, section_halo(section.steps))
                    * plane * section.width * 4)
            peaks.append(previous_out + held)
        if number == len(found) - 1:
            peaks.append(held)  # the last section's output leaves block by block
            break
        previous_out = -(-entries // share) * out_plane * section.width * 4
        peaks.append(held + previous_out)
    return max(peaks, default=0)

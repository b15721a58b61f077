"""Block sizes from a memory budget, per section of a pipeline (no data needed).

What a scan holds for its whole duration is counted first (:func:`plan_scan`): the
corrected scan in sinogram layout (every row on one rank, the band on each of R ranks)
and the darks and flats as float32. The blocks are planned in what that leaves of the
budget; a scan whose held part alone exceeds the budget is refused at its ``start``, with
the figures, before any frame is held.

A pipeline splits into a projection and a sinogram section as the run splits it
(:func:`~streamer.pipeline.sections.split_sections`, as in HTTomo). Within a section, a
block of ``n`` frames (projection) or ``n`` sinograms (sinogram) needs the largest of its
stages' ``memory`` estimates; the plan takes the largest ``n`` that keeps that peak
within the budget (a binary search over ``n``, so estimates that are not proportional to
``n`` are honoured). A scan whose single frame or
sinogram cannot fit is refused here, before it starts, never with an out-of-memory
error mid-scan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.spec import Pattern
from streamer.errors import ConfigError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.sections import split_sections


@dataclass(frozen=True)
class SectionPlan:
    """Block size of one section: ``block`` frames or sinograms per block."""

    pattern: Pattern
    steps: tuple[str, ...]
    block: int
    units: int  # frames (projection) or sinograms (sinogram) in the whole scan
    peak_bytes: int
    limiting_step: str

    def describe(self) -> str:
        unit = "frames" if self.pattern is Pattern.PROJECTION else "sinograms"
        return (f"{self.pattern.value} section [{', '.join(self.steps)}]: blocks of "
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
    """The non-empty sections of :func:`~streamer.pipeline.sections.split_sections`
    (the one sectionizer, shared with the run)."""
    projection, sinogram = split_sections(steps)
    return [(pattern, list(members)) for pattern, members in
            ((Pattern.PROJECTION, projection), (Pattern.SINOGRAM, sinogram)) if members]


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
    if budget_bytes < 1:
        raise ConfigError(f"memory budget: expected > 0 bytes, got {budget_bytes}")
    plans = []
    for pattern, members in sections(steps):
        if pattern is Pattern.PROJECTION:
            units, unit_shape = angles, (1, rows, cols)
        else:
            units, unit_shape = rows, (1, angles, cols)
        per_unit = {s.name: s.spec.memory(unit_shape, dtype, s.params) for s in members}
        limiting = max(per_unit, key=lambda name: per_unit[name])
        need = per_unit[limiting]
        if need > budget_bytes:
            what = "frame" if pattern is Pattern.PROJECTION else "sinogram"
            raise ConfigError(
                f"stage {limiting!r}: one {what} of shape {unit_shape[1:]} needs "
                f"{need / 2**20:,.1f} MiB, the memory budget is {budget_bytes / 2**20:,.1f} MiB"
            )
        def peak_for(count: int, members: list[PipelineStep] = members,
                     tail: tuple[int, int] = (unit_shape[1], unit_shape[2])) -> int:
            return max(s.spec.memory((count, *tail), dtype, s.params) for s in members)

        block = _largest_fitting(peak_for, units, budget_bytes)
        peak = peak_for(block)
        plans.append(SectionPlan(pattern, tuple(s.name for s in members), block, units, peak,
                                 limiting))
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
) -> tuple[int, int, list[SectionPlan]]:
    """Frames per projection block and sinograms per sinogram block for one scan, from
    the plan (a section that is absent gets a block of 1)."""
    plans = plan_blocks(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                        budget_bytes=budget_bytes)
    frames = next((p.block for p in plans if p.pattern is Pattern.PROJECTION), 1)
    sinograms = next((p.block for p in plans if p.pattern is Pattern.SINOGRAM), 1)
    return frames, sinograms, plans


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
) -> tuple[int, int, list[SectionPlan], ScanMemory]:
    """Block sizes and the memory of one scan on one rank, or a ``ConfigError`` with the
    figures when the scan cannot fit ``budget_bytes``.

    ``band_rows`` is the most detector rows one rank reconstructs (all ``rows`` on one
    rank); ``references`` the darks and flats the scan announces.
    """
    if budget_bytes < 1:
        raise ConfigError(f"memory budget: expected > 0 bytes, got {budget_bytes}")
    mib = 2**20
    has_sinogram_section = any(p is Pattern.SINOGRAM for p, _ in sections(steps))
    band = rows if band_rows is None else band_rows
    buffer = band * max(angles, 1) * cols * 4 if has_sinogram_section else 0
    held = references * rows * cols * 4
    if buffer + held >= budget_bytes:
        raise ConfigError(
            f"memory: the scan needs {(buffer + held) / mib:,.1f} MiB held while it runs "
            f"(sinogram buffer {band} rows x {angles} projections x {cols} columns float32 "
            f"= {buffer / mib:,.1f} MiB + {references} darks and flats "
            f"{held / mib:,.1f} MiB) before any block, the memory budget is "
            f"{budget_bytes / mib:,.1f} MiB (--memory)")
    left = budget_bytes - buffer - held
    try:
        frames, sinograms, plans = block_sizes(steps, rows=rows, cols=cols, angles=angles,
                                               dtype=dtype, budget_bytes=left)
    except ConfigError as error:
        raise ConfigError(
            f"memory: {error} left of {budget_bytes / mib:,.1f} MiB after the sinogram "
            f"buffer ({buffer / mib:,.1f} MiB) and references ({held / mib:,.1f} MiB)"
        ) from None
    peak = max((p.peak_bytes for p in plans), default=0)
    return frames, sinograms, plans, ScanMemory(buffer, held, peak, budget_bytes)

"""The later sections of a pipeline on R ranks: sinogram → projection → sinogram … again.

After the band exchange rank ``r`` holds its band of rows × every angle and the CoR (with
the finder's side outputs) is agreed. A pipeline that goes on past one sinogram section
(:func:`~streamer.pipeline.sections.beyond_one_band`: HTTomo's Paganin after
``sino_360_to_180``, ADR 0009; a whole-frame step after a halo step of the first section,
which R ranks section apart: :func:`~streamer.pipeline.sections.rank_sections`, ADR
0019's H56 addendum) runs here, each section on its layout:

- a **sinogram** section on blocks of the band (a step may change the angles or the
  width: ``sino_360_to_180``, ``average_projection_frames``; every rank applies the same
  geometry);
- before a **projection** section the band is resliced to ranges of angles
  (:func:`streamer.exchange.transpose.transpose`), the steps run on blocks of this rank's
  projections (all rows), and the result is resliced back to bands for the next section.

The last section is left to the runner, which reconstructs and writes it as for a
pipeline that reslices once (:meth:`RankedReconstruction._write_part`); this module hands
it the band and the filled steps (:class:`LastSection`). Run-time values come from the one
rule of both runners (:func:`~streamer.pipeline.executor.fill_sections`).

Every rank takes part in every reslice, also a rank whose own part failed (a stage
refused its data, a stop): it reslices as failed, and every rank then raises with the
same ranks named, so none waits for another. A projection section may change the number
of detector rows (binning or cropping them): every rank learns the new count from its
own output (a rank without angles runs the steps on no frames), the reslice back cuts
the bands from it, and the runner writes that many slices. Memory per rank: its band and
its range of angles (about two ``1/R`` of the scan, each as large as the layout it
holds, widened by a section's halo, with the rows a step upsamples them to: the plan
counts them so, :func:`~streamer.pipeline.plan.later_parts_bytes`).

A section whose steps reach across its block axis (a 3-D median; ADR 0019 and its
addendum) gets its real neighbours from the reslice before it: ``transpose(halo=h)``
widens each rank's range by the section's halo, the section runs each block's window
there and keeps the rank's own entries (the first section: the band exchange's
overlapping band, ``widened``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.device_queue import StreamDevice
from stages.spec import Geometry, Pattern
from streamer.errors import StageError, StreamerError
from streamer.exchange.reslice import Band, PartsLink, overlapping_bands, row_bands
from streamer.exchange.transpose import Shape, TransposeResult, transpose
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.device_bands import band_outputs
from streamer.pipeline.executor import (
    ResultHook,
    StageCaches,
    apply_steps,
    bind_result,
    fill_sections,
    section_angles,
)
from streamer.pipeline.halo import keep_block, keep_saved, local_window, section_halo
from streamer.pipeline.sections import rank_sections

__all__ = ["LastSection", "SectionTools", "filled_later_sections", "run_later_sections"]


@dataclass(frozen=True)
class LastSection:
    """What the runner reconstructs and writes: ``band`` (rows, angles before the last
    section, its sinograms) and the last section's filled ``steps``; ``center`` is the
    CoR where its reconstruction stands (``moved``: the axis moved, e.g. by the 360°
    fold)."""

    band: Band
    steps: tuple[PipelineStep, ...]
    center: float | None
    moved: bool


@dataclass(frozen=True)
class SectionTools:
    """What the sections' blocks share with the scan: its block sizes, counters and
    per-scan caches (the processor's), and whether to stop."""

    block_frames: int
    block_sinograms: int
    transfers: Any
    repairs: Any
    caches: StageCaches
    #: Why this rank stops now (SIGINT/SIGTERM, its own or a peer's), None: go on.
    stopped: Callable[[], str | None]
    #: The device a sinogram section wholly on the device streams its bands through
    #: (the processor's :meth:`~streamer.pipeline.executor.ScanProcessor.queue_device`).
    device: Callable[[], StreamDevice]
    #: What each later reslice moved, in order (the scan's transfers count them all).
    moved: list[TransposeResult] = field(default_factory=list)
    #: Where the outputs of ``save_result`` steps go (``recon``: this rank's parts).
    on_result: ResultHook | None = None
    #: The last section's widened band (its rows and their overlap), when its steps
    #: reach across rows (ADR 0019's addendum); empty: no halo there.
    widened: list[Band] = field(default_factory=list)


def filled_later_sections(
    steps: tuple[PipelineStep, ...], *, center: float | None, outputs: dict[str, Any],
    override: bool, angles: npt.NDArray[np.float64], cols: int,
) -> tuple[list[tuple[Pattern, tuple[PipelineStep, ...]]], float | None]:
    """Every section after the first as R ranks section it (:func:`~streamer.pipeline.
    sections.rank_sections`: a whole-frame step after a halo step opens a projection
    section after an empty sinogram one), finders left out, with the run-time values in
    (as on one rank); a trailing projection section gets an empty sinogram section after
    it (its output is resliced back to bands)."""
    data_sections = [(section.pattern, tuple(s for s in section.steps
                                             if s.spec.finds_center is None))
                     for section in rank_sections(steps)[1:]]
    filled, moved = fill_sections(data_sections, center=center, outputs=outputs,
                                  override=override, angles=angles, cols=cols)
    if filled and filled[-1][0] is Pattern.PROJECTION:
        filled.append((Pattern.SINOGRAM, ()))
    return filled, moved


def run_later_sections(
    link: PartsLink, band: Band | None, sections: list[tuple[Pattern, tuple[PipelineStep, ...]]],
    *, rows: int, serial: int, tools: SectionTools, timeout_s: float,
    on_idle: Callable[[], object] | None = None, widened: Band | None = None,
) -> tuple[Band, tuple[PipelineStep, ...], int]:
    """Run every section but the last on this rank's part, reslicing between them, and
    return the band and steps of the last one, and the rows the bands are cut from (a
    projection section may bin or crop them: the next bands are cut from its rows).

    ``band`` is None when this rank's part failed already: it still takes part in the
    first reslice (as failed), then every rank raises :class:`StreamerError` naming the
    failed ranks. ``rows`` is the scan's detector rows (every rank's band is cut from
    them). A section whose steps reach across its block axis (ADR 0019) runs on this
    rank's part widened by its halo: ``widened`` (the band exchange's overlapping band)
    for the first, the reslice before it (``transpose(halo=...)``) for the others; each
    block keeps its own entries. The last section's widened band goes to
    :attr:`SectionTools.widened`."""
    ranks, rank = link.size, link.rank
    error: StreamerError | None = None
    data = None if band is None else band.sinograms
    angles = np.zeros(0) if band is None else band.angles_deg
    own = (0, 0) if band is None else band.rows  # this rank's entries of axis 0
    low = own[0]  # the axis-0 entry of data[0] (before own[0] with an overlap)
    total = rows  # entries of axis 0 in the scan (rows, then angles, …)
    if band is not None and widened is not None and sections \
            and section_halo(sections[0][1]):
        data, low = widened.sinograms, widened.rows[0]
    number = 1  # the band exchange was the first reslice
    for position, (pattern, steps) in enumerate(sections[:-1]):
        if data is not None:
            part = _Part(low, own, total)
            try:
                if pattern is Pattern.SINOGRAM and not steps:
                    pass  # the band as it is (before a whole-frame rest: rank_sections)
                elif pattern is Pattern.SINOGRAM:
                    data, angles = _sinogram_section(steps, data, angles, tools, part)
                else:
                    data = _projection_section(steps, data, angles, tools, part)
                    rows = int(data.shape[1])  # binned or cropped: the bands follow
            except StreamerError as failure:
                error, data = failure, None
        number += 1
        stopped = tools.stopped() if data is not None else None
        if stopped is not None:
            error, data = StreamerError(f"{stopped} before reslice {number}"), None
        # bands → ranges of angles after a sinogram section, back after a projection one
        shape = _shape(data, rows, angles, rows_first=pattern is Pattern.SINOGRAM)
        halo = section_halo(sections[position + 1][1])  # the next section's overlap
        result = transpose(link, data, shape, serial=serial, number=number,
                           timeout_s=timeout_s, on_idle=on_idle, halo=halo)
        tools.moved.append(result)
        if result.failed_ranks:
            if error is not None:
                raise error
            others = ", ".join(str(r) for r in result.failed_ranks)
            raise StreamerError(f"rank(s) {others} could not take part in reslice {number} "
                                "(see their errors): this band's later sections need every "
                                "rank's part")
        data = result.data
        total = shape.total1
        own = row_bands(total, ranks)[rank] if total else (0, 0)
        low = overlapping_bands(total, ranks, halo)[rank][0] if total else 0
    if data is None or band is None:  # no later reslice: this rank's own failure
        raise error or StreamerError("this rank's part failed before its later sections")
    first, stop = row_bands(rows, ranks)[rank]
    inner = data[first - low:stop - low]
    last = Band((first, stop), band.indices, angles, inner, band.received, band.duplicates,
                dict(band.rejected), band.other_scan)
    if inner.shape[0] != data.shape[0]:
        tools.widened.append(Band((low, low + int(data.shape[0])), band.indices, angles,
                                  data, band.received, band.duplicates, dict(band.rejected),
                                  band.other_scan))
    return last, sections[-1][1], rows


@dataclass(frozen=True)
class _Part:
    """Where this rank's array lies along axis 0: it starts at entry ``low`` and holds
    its own entries ``own`` (and, around them, the overlap), of ``total``."""

    low: int
    own: tuple[int, int]
    total: int

    def window(self, first: int, last: int, halo: int, held: int) -> Any:
        """The haloed window of own-relative block ``[first, last)`` in the array
        (``held`` entries)."""
        start = self.own[0]
        return local_window(start + first, start + last, halo, self.low, self.low + held)


def _shape(data: npt.NDArray[np.float32] | None, rows: int,
           angles: npt.NDArray[np.float64], *, rows_first: bool) -> Shape:
    """The whole array's shape at a reslice (rows × angles × width, the width from this
    rank's part; every rank's must agree, the transpose checks it). A failed rank's
    shape is not used (it only drains)."""
    if data is None:
        return Shape(0, 0, 0)
    cols = int(data.shape[2])
    if rows_first:
        return Shape(rows, int(angles.size), cols)
    return Shape(int(angles.size), rows, cols)


def _sinogram_section(
    steps: tuple[PipelineStep, ...], sinograms: npt.NDArray[np.float32],
    angles: npt.NDArray[np.float64], tools: SectionTools, part: _Part,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """``steps`` on blocks of this rank's band (``(band rows, angles, cols)``, with its
    overlap where ``part`` says), each with its real neighbour rows; the own rows out
    and the angles after them."""
    held, cols = int(sinograms.shape[0]), int(sinograms.shape[2])
    band_rows = part.own[1] - part.own[0]
    halo = section_halo(steps)
    out_angles = section_angles(steps, angles, cols)
    width = _width_after(steps, angles, cols)
    gathered = np.empty((band_rows, out_angles.size, width), np.float32)
    spans = [(first, min(first + tools.block_sinograms, band_rows))
             for first in range(0, band_rows, tools.block_sinograms)]

    def run(block: Any, first: int, last: int, *, queued: bool) -> Any:
        where = part.window(first, last, halo, held)
        places = np.arange(part.own[0] + first, part.own[0] + last, dtype=np.int64)
        saved = bind_result(tools.on_result, Pattern.SINOGRAM, places, part.total, None)
        out = apply_steps(steps, block, darks=None, flats=None, transfers=tools.transfers,
                          angles_deg=angles, repairs=tools.repairs, caches=tools.caches,
                          keep_on_device=queued, own=where,
                          on_result=keep_saved(saved, where, angles_along=False))
        return keep_block(out, where, "sinogram section")

    def haloed(first: int, last: int) -> npt.NDArray[np.float32]:
        where = part.window(first, last, halo, held)
        return sinograms[where.low:where.high]

    outputs = band_outputs(steps, spans, haloed, run, device=tools.device,
                           transfers=tools.transfers)
    for (first, last), block in zip(spans, outputs, strict=True):
        if block.shape[1:] != gathered.shape[1:]:
            raise StageError(f"sinogram section [{', '.join(s.name for s in steps)}]: "
                             f"expected blocks of {out_angles.size} angles x {width} "
                             f"columns (the steps' declared geometry), got "
                             f"{block.shape[1]} x {block.shape[2]}")
        gathered[first:last] = block
    return gathered, out_angles


def _width_after(steps: tuple[PipelineStep, ...], angles: npt.NDArray[np.float64],
                 cols: int) -> int:
    geometry = Geometry(angles, cols)
    for step in steps:
        geometry = step.spec.after(geometry, step.params)
    return geometry.cols


def _projection_section(
    steps: tuple[PipelineStep, ...], projections: npt.NDArray[np.float32],
    angles: npt.NDArray[np.float64], tools: SectionTools, part: _Part,
) -> npt.NDArray[np.float32]:
    """``steps`` on blocks of this rank's projections (``(own angles, rows, cols)``,
    with its overlap where ``part`` says), each with its real neighbour frames; the own
    frames out. A step may change the rows or the width (binning, cropping): every block
    must give the first one's shape. A rank without angles runs the steps on no frames,
    so that it knows the shape the others reslice."""
    held = int(projections.shape[0])
    count = part.own[1] - part.own[0]
    halo = section_halo(steps)
    if count == 0:  # (more ranks than angles)
        return apply_steps(steps, projections[:0], darks=None, flats=None,
                           transfers=tools.transfers, angles_deg=angles[:0],
                           projection_indices=np.zeros(0, np.int64), repairs=tools.repairs,
                           caches=tools.caches)
    out: npt.NDArray[np.float32] | None = None
    for begin in range(0, count, tools.block_frames):
        end = min(begin + tools.block_frames, count)
        where = part.window(begin, end, halo, held)
        low, high = part.low + where.low, part.low + where.high  # in the scan's angles
        first, last = part.own[0] + begin, part.own[0] + end  # the block's own angles
        places = np.arange(first, last, dtype=np.int64)
        saved = bind_result(tools.on_result, Pattern.PROJECTION, places, int(angles.size),
                            angles[first:last])
        block = apply_steps(steps, projections[where.low:where.high], darks=None,
                            flats=None, transfers=tools.transfers,
                            angles_deg=angles[low:high],
                            projection_indices=np.arange(low, high, dtype=np.int64),
                            repairs=tools.repairs, caches=tools.caches, own=where,
                            angles_along=True,
                            on_result=keep_saved(saved, where, angles_along=True))
        block = keep_block(block, where, "projection section")
        if out is None:
            out = np.empty((count, *block.shape[1:]), np.float32)
        if block.shape[1:] != out.shape[1:]:
            raise StageError(f"projection section [{', '.join(s.name for s in steps)}]: "
                             f"expected frames of {out.shape[1]} x {out.shape[2]} as its "
                             f"first block's, got {block.shape[1]} x {block.shape[2]}")
        out[begin:end] = block
    assert out is not None
    return out

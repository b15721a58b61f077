"""Streaming reconstruction on one rank: corrected projection blocks go into
:class:`~stages.recon.streaming.StreamingFbp` accumulators (one per band of rows) as they
arrive, so at close only ``finish()`` and the write remain.

:func:`plan_streaming` decides per scan whether the run streams: the pipeline must stream
(:func:`~streamer.pipeline.streaming.streaming_kind`), the reconstructor's CoR must be
fixed (given or in the pipeline: a CoR found at close cannot feed the accumulator) and the
accumulators must fit the memory left by the scan's plan; otherwise it says why and the
scan is reconstructed at close as before. The planned angles are taken from the first
corrected block (its smallest angular step, anchored near 0°); a later angle off that
plan, a scan that closes with projections missing, or a CoR set from the viewer during
the scan switch the scan back to the batch path on the kept sinogram (the processor keeps
it either way), and the reason is kept in :attr:`StreamingSection.fallback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stages.prep.repair import RepairCounts
from stages.recon.fourier import FourierFbpCache, FourierFbpParams
from stages.recon.streaming import StreamingFbp, streaming_memory
from stages.spec import Pattern
from streamer.errors import StageError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.executor import ProcessedBlock, apply_steps
from streamer.pipeline.halo import section_halo
from streamer.pipeline.sections import sections_of
from streamer.pipeline.streaming import streaming_kind

__all__ = ["StreamingSection", "plan_streaming"]

#: Angles within this fraction of a step of the plan are on it.
_STEP_TOLERANCE = 1e-4


@dataclass(frozen=True)
class StreamingPlan:
    """Whether a scan streams (``section``) or why not (``reason``)."""

    section: StreamingSection | None
    reason: str


def _band_rows(rows: int, block_sinograms: int) -> int:
    """Rows per accumulator: at most four bands (each holds its own contribution table)."""
    return max(block_sinograms, math.ceil(rows / 4), 1)


def plan_streaming(
    steps: tuple[PipelineStep, ...], *, rows: int, cols: int, projections: int,
    block_sinograms: int, memory_left: int,
) -> StreamingPlan:
    """A :class:`StreamingSection` for a scan of ``rows × cols`` and ``projections``, or
    the reason it is reconstructed at close."""
    kind = streaming_kind(steps)
    if not kind.streaming:
        return StreamingPlan(None, kind.describe())
    found = sections_of(steps)
    if len(found) > 2:  # a second reslice: the later sections need the whole scan
        return StreamingPlan(None, f"reconstruction: at close ({len(found) - 1} reslices)")
    sinogram_steps = found[1].steps
    recon = next(s for s in sinogram_steps if s.spec.needs_angles)
    after = sinogram_steps[sinogram_steps.index(recon) + 1:]
    if section_halo(after):  # the accumulators' bands would be its blocks (ADR 0019)
        return StreamingPlan(None, "reconstruction: at close (a step after it reaches "
                                   "across slices: it needs the neighbouring bands)")
    params = recon.params
    if not isinstance(params, FourierFbpParams) or params.center is None:
        return StreamingPlan(None, "reconstruction: at close (the CoR is found at close: "
                                   "give it to stream)")
    band = _band_rows(rows, block_sinograms)
    need = sum(streaming_memory(min(band, rows - first), cols, projections, params)
               for first in range(0, rows, band))
    if need > memory_left:
        mib = 2**20
        return StreamingPlan(None, f"reconstruction: at close (the streaming accumulators "
                                   f"need {need / mib:,.1f} MiB, {memory_left / mib:,.1f} "
                                   "MiB are left by the plan)")
    return StreamingPlan(StreamingSection(tuple(sinogram_steps), recon, params, projections,
                                          band, need),
                         f"reconstruction: streaming ({need / 2**20:,.1f} MiB of "
                         "accumulators)")


def _planned_angles(angles: npt.NDArray[np.float64], projections: int) -> npt.NDArray[np.float64]:
    """Equally spaced planned angles from a block's angles: its smallest step, anchored
    within half a step of 0°. Raises ``StageError`` when the block cannot tell."""
    ordered = np.unique(angles)
    steps = np.diff(ordered)
    if steps.size == 0 or steps.min() <= 0:
        raise StageError("streaming: the first block has one angle: the angle step is unknown")
    step = float(steps.min())
    ratios = steps / step
    if np.abs(ratios - np.round(ratios)).max() > _STEP_TOLERANCE:
        raise StageError(f"streaming: the first block's angles are not equally spaced "
                         f"(step {step:.6f}°)")
    offset = float(ordered[0]) - step * round(float(ordered[0]) / step)
    return offset + step * np.arange(projections, dtype=np.float64)


@dataclass
class StreamingSection:
    """The sinogram section of one scan, run block by block as projections arrive."""

    steps: tuple[PipelineStep, ...]
    recon: PipelineStep
    params: FourierFbpParams
    projections: int
    band_rows: int
    memory_bytes: int
    log: Callable[[str], None] | None = None
    #: The scan's repair counts, for stages that count (``data_checker`` …).
    repairs: RepairCounts | None = None
    #: Why the scan went back to the batch path (``None``: it streams).
    fallback: str | None = None
    blocks_added: int = 0
    _bands: list[tuple[int, StreamingFbp]] = field(default_factory=list)

    @property
    def _before(self) -> tuple[PipelineStep, ...]:
        return self.steps[: self.steps.index(self.recon)]

    @property
    def _after(self) -> tuple[PipelineStep, ...]:
        return self.steps[self.steps.index(self.recon) + 1:]

    def _give_up(self, reason: str) -> None:
        self.fallback = reason
        self._bands = []  # the accumulators' memory goes back at once
        if self.log is not None:
            self.log(f"streaming: back to reconstruction at close: {reason}")

    def add(self, block: ProcessedBlock) -> None:
        """A corrected projection block ``(n, rows, cols)``: its share goes into every band."""
        if self.fallback is not None:
            return
        sinograms = np.ascontiguousarray(block.data.transpose(1, 0, 2))
        rows, cols = sinograms.shape[0], sinograms.shape[2]
        try:
            if not self._bands:
                planned = _planned_angles(block.angles_deg, self.projections)
                shared = FourierFbpCache()  # the bands share the plan and block griddings
                self._bands = [
                    (first, StreamingFbp(min(self.band_rows, rows - first), cols, planned,
                                         self.params, cache=shared))
                    for first in range(0, rows, self.band_rows)
                ]
            if self._before:
                sinograms = apply_steps(self._before, sinograms, darks=None, flats=None,
                                        angles_deg=block.angles_deg, repairs=self.repairs)
            for first, band in self._bands:
                band.add(sinograms[first:first + band.rows], block.angles_deg)
        except StageError as error:
            self._give_up(str(error))
            return
        self.blocks_added += 1

    def finish(self, angles: npt.NDArray[np.float64], complete: bool, *,
               center_override: float | None,
               should_stop: Callable[[], bool]) -> Iterator[ProcessedBlock] | None:
        """The volume's blocks, band by band, or ``None`` when the scan must be
        reconstructed in batch (see the module docstring)."""
        if self.fallback is None and not self._bands:
            self._give_up("no projection block was added")
        if (self.fallback is None and center_override is not None
                and center_override != self.params.center):
            self._give_up(f"the CoR was set to {center_override} during the scan")
        if self.fallback is None and self._bands[0][1].missing:
            self._give_up(f"{self._bands[0][1].missing} planned projections never arrived")
        if self.fallback is not None:
            return None
        return self._blocks(angles, complete, should_stop)

    def _blocks(self, angles: npt.NDArray[np.float64], complete: bool,
                should_stop: Callable[[], bool]) -> Iterator[ProcessedBlock]:
        bands, self._bands = self._bands, []
        while bands:
            if should_stop():
                return
            first, band = bands.pop(0)
            data = band.finish()
            if self._after:
                data = apply_steps(self._after, data, darks=None, flats=None,
                                   angles_deg=angles, repairs=self.repairs)
            yield ProcessedBlock(Pattern.SINOGRAM,
                                 np.arange(first, first + band.rows, dtype=np.int64),
                                 angles, data, complete)

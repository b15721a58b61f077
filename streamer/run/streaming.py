"""Streaming reconstruction on one rank: corrected projection blocks go into
:class:`~stages.recon.streaming.StreamingFbp` accumulators (one per band of rows) as they
arrive, so at close only ``finish()`` and the write remain.

:func:`plan_streaming` decides per scan whether the run streams: the pipeline must stream
(:func:`~streamer.pipeline.streaming.streaming_kind`) and the accumulators must fit the
memory left by the scan's plan; otherwise it says why and the scan is reconstructed at
close as before. The CoR is either fixed (given or in the pipeline) or, with
``estimate_center`` (``run``), decided while the scan arrives
(:mod:`streamer.run.center_streaming`): until the runner calls :meth:`StreamingSection.start`
the section keeps the blocks (bounded by :attr:`StreamingSection.keep_limit`, counted in
the plan) and re-adds them then; the rank that owns the CoR row also watches for the
opposite pair (:class:`~streamer.run.center_pair.PairWatch`) and tells the runner; when
the plan's pair comes last (a 180° scan) it also watches the rows' centres of mass
(:class:`~streamer.run.center_early.EarlyWatch`) and tells the runner an early estimate
once :data:`EARLY_FRACTION` of the projections are in and it is sure enough.

The planned angles are taken from the first corrected block (its smallest angular step,
anchored near 0°); a later angle off that plan, a scan that closes with projections
missing, a CoR at close other than the accumulators' (the viewer's, or a final estimate
that disagrees) switch the scan back to the batch path on the kept sinogram (the
processor keeps it either way), and the reason is kept in :attr:`StreamingSection.fallback`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.xp import TransferStats, require_gpu
from stages.prep.repair import RepairCounts
from stages.recon.fourier import FourierFbpCache, FourierFbpParams
from stages.recon.streaming import StreamingFbp, streaming_memory
from stages.spec import Pattern
from streamer.errors import StageError, StreamerError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.executor import ProcessedBlock, apply_steps
from streamer.pipeline.halo import section_halo
from streamer.pipeline.sections import sections_of
from streamer.pipeline.streaming import streaming_kind
from streamer.run.center_early import EARLY_FRACTION, LATE_FRACTION, EarlyCenter, EarlyWatch
from streamer.run.center_pair import WATCH_ROWS, PairWatch

__all__ = ["EARLY_FRACTION", "LATE_FRACTION", "StreamingSection", "plan_streaming"]

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
    block_sinograms: int, memory_left: int, estimate_center: bool = False,
    center_known: bool = False, scan_range_deg: float | None = None,
    early_fraction: float | None = None,
) -> StreamingPlan:
    """A :class:`StreamingSection` for a scan of ``rows × cols`` and ``projections``, or
    the reason it is reconstructed at close.

    ``estimate_center``: a CoR left to be found streams too (the runner decides it during
    the scan). Unless it is known at the start (``center_known``: carried), the blocks
    kept until it is are counted with the accumulators: the whole band (the bound: a
    360° scan keeps about half of it, but pieces land in any order on R ranks); a scan
    known to cover less than 360° is reconstructed at close (its opposite pair comes
    with its last projections: streaming would only add work after the last frame)
    unless ``early_fraction`` is given: then its CoR is estimated from the projections
    received once that fraction is in (:class:`~streamer.run.center_early.EarlyWatch`)."""
    kind = streaming_kind(steps)
    if not kind.streaming:
        return StreamingPlan(None, kind.describe())
    found = sections_of(steps)
    if len(found) > 2:  # a second reslice: the later sections need the whole scan
        return StreamingPlan(None, f"reconstruction: at close ({len(found) - 1} reslices)")
    sinogram_steps = found[1].steps
    saved = [s for s in sinogram_steps if s.save_result]
    if saved:  # the accumulators never hand a step's output out
        return StreamingPlan(None, f"reconstruction: at close ({saved[0].name} saves its "
                                   "result: save_result: true)")
    recon = next(s for s in sinogram_steps if s.spec.needs_angles)
    after = sinogram_steps[sinogram_steps.index(recon) + 1:]
    if section_halo(after):  # the accumulators' bands would be its blocks (ADR 0019)
        return StreamingPlan(None, "reconstruction: at close (a step after it reaches "
                                   "across slices: it needs the neighbouring bands)")
    params = recon.params
    if not isinstance(params, FourierFbpParams) or (params.center is None
                                                    and not estimate_center):
        return StreamingPlan(None, "reconstruction: at close (the CoR is found at close: "
                                   "give it to stream)")
    band = _band_rows(rows, block_sinograms)
    need = sum(streaming_memory(min(band, rows - first), cols, projections, params)
               for first in range(0, rows, band))
    keep = 0
    if params.center is None and not center_known:
        if (early_fraction is None and scan_range_deg is not None
                and scan_range_deg < 360.0 - 1e-6):
            return StreamingPlan(None, f"reconstruction: at close (the CoR is found at close: "
                                       f"a {scan_range_deg:g}° scan's opposite pair comes with "
                                       "its last projections; give the CoR, name the "
                                       "sample in the start metadata to carry it, or let "
                                       "run --early-center estimate it, to stream)")
        keep = rows * projections * cols * 4
    mib = 2**20
    if need + keep > memory_left:
        kept = f" and {keep / mib:,.1f} MiB of blocks kept until the CoR is known" if keep else ""
        return StreamingPlan(None, f"reconstruction: at close (the streaming accumulators "
                                   f"need {need / mib:,.1f} MiB{kept}, "
                                   f"{memory_left / mib:,.1f} MiB are left by the plan)")
    section = StreamingSection(tuple(sinogram_steps), recon, params, projections, band,
                               need + keep, center=params.center, keep_limit=keep)
    waits = (f" and up to {keep / mib:,.1f} MiB of blocks kept until the CoR is known"
             if keep else "")
    return StreamingPlan(section, f"reconstruction: streaming ({need / mib:,.1f} MiB of "
                                  f"accumulators{waits})")


def _planned_angles(angles: npt.NDArray[np.float64], projections: int,
                    indices: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float64]:
    """Equally spaced planned angles from a block's angles: its smallest step, anchored
    within half a step of 0°. Raises ``StageError`` when the block cannot tell.

    A rank's block need not hold consecutive projections (on R ranks the frames are dealt
    as they come: frames 1, 3, 5 … make the smallest step twice the scan's). With the
    frames' indices, the angle per index step of two frames (at most the scan's step: a
    reference frame between them only adds to the index gap; equal to it for two frames
    with none between) says how many scan steps the smallest step holds."""
    ordered = np.unique(angles)
    steps = np.diff(ordered)
    if steps.size == 0 or steps.min() <= 0:
        raise StageError("streaming: the first block has one angle: the angle step is unknown")
    step = float(steps.min())
    if indices is not None and indices.size == angles.size:
        order = np.argsort(indices, kind="stable")
        gaps = np.diff(indices[order]).astype(np.float64)
        turns = np.abs(np.diff(angles[order]))
        usable = (gaps > 0) & (turns > 0)
        if usable.any():
            per_index = float((turns[usable] / gaps[usable]).max())
            step /= max(1, round(step / per_index))
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
    #: The CoR of the accumulators; None: not known yet (the blocks are kept meanwhile).
    center: float | None = None
    #: The most bytes of blocks kept while the CoR is not known (the plan counted them).
    keep_limit: int = 0
    log: Callable[[str], None] | None = None
    #: The scan's repair counts, for stages that count (``data_checker`` …).
    repairs: RepairCounts | None = None
    #: Told the CoR of the opposite pair when it has arrived (the rank that watches it);
    #: None: this rank does not watch.
    on_pair: Callable[[float], None] | None = None
    #: Told the early CoR estimate (:class:`~streamer.run.center_early.EarlyWatch`) when a
    #: scan's pair comes last and the estimate is sure enough (the rank that watches).
    on_early: Callable[[float], None] | None = None
    #: Fraction of the plan in before the early estimate is tried (None: not tried).
    early_fraction: float | None = None
    #: The array module of the accumulators: numpy, or the device of the reconstructor's
    #: backend (CuPy; a test's namespace); None: chosen from the backend at the first block.
    xp: Any = None
    #: Host→device copies of the blocks and the bands' copies back (a device backend):
    #: the runner hands the scan's own counters.
    transfers: TransferStats = field(default_factory=TransferStats)
    #: Why the scan went back to the batch path (``None``: it streams).
    fallback: str | None = None
    #: Gather blocks until this many frames before adding them (0: add each at once). On
    #: R ranks every corrected block lands as one piece per rank, and each add has fixed
    #: whole-grid passes (a spreading set-up per row pair, the x transform of each grid):
    #: adding a round of pieces at once pays them once (:meth:`_gather`).
    coalesce_frames: int = 0
    blocks_added: int = 0
    #: Adds made to the accumulators (each band's ``add`` once per gathered set).
    adds: int = 0
    _bands: list[tuple[int, StreamingFbp]] = field(default_factory=list)
    _planned: npt.NDArray[np.float64] | None = None
    _shape: tuple[int, int] = (0, 0)  # the band's rows and columns (from the first block)
    _kept: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]] = field(
        default_factory=list)
    _kept_bytes: int = 0
    _pair: PairWatch | None = None
    _early: EarlyWatch | None = None
    #: The early estimate's last try (found, or why not), for the report.
    early: EarlyCenter | None = None
    _pending: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]] = field(
        default_factory=list)
    _pending_frames: int = 0
    _frames_in: int = 0  # frames added to the accumulators or pending
    _late: bool = False  # the plan's pair comes too late to start (LATE_FRACTION)

    @property
    def _before(self) -> tuple[PipelineStep, ...]:
        return self.steps[: self.steps.index(self.recon)]

    @property
    def _after(self) -> tuple[PipelineStep, ...]:
        return self.steps[self.steps.index(self.recon) + 1:]

    @property
    def kept_blocks(self) -> int:
        """Blocks kept until the CoR is known."""
        return len(self._kept)

    def _give_up(self, reason: str) -> None:
        self.fallback = reason
        self._bands, self._kept, self._kept_bytes = [], [], 0  # the memory goes back at once
        self._pending, self._pending_frames = [], 0
        self._pair = self._early = None
        if self.log is not None:
            self.log(f"streaming: back to reconstruction at close: {reason}")

    def add(self, block: ProcessedBlock) -> None:
        """A corrected projection block ``(n, rows, cols)``: its share goes into every
        band (kept until :meth:`start` while the CoR is not known)."""
        if self.fallback is not None:
            return
        sinograms = np.ascontiguousarray(block.data.transpose(1, 0, 2))
        try:
            if self._planned is None:
                self._planned = _planned_angles(block.angles_deg, self.projections,
                                                block.indices)
                self._shape = (int(sinograms.shape[0]), int(sinograms.shape[2]))
                watch = PairWatch.for_plan(self._planned, self._shape[0])
                self._late = watch is None or max(watch.wanted) > LATE_FRACTION * (
                    self.projections - 1)
                if self.on_pair is not None:
                    self._pair = watch
                if (self._late and self.on_early is not None and self.center is None
                        and self.early_fraction is not None):
                    self._early = EarlyWatch(
                        self.projections, np.unique(np.linspace(
                            0, self._shape[0] - 1, min(self._shape[0], WATCH_ROWS))
                            .round().astype(np.intp)),
                        self.early_fraction,
                        last_fraction=max(LATE_FRACTION, self.early_fraction))
            if self._before:
                sinograms = apply_steps(self._before, sinograms, darks=None, flats=None,
                                        angles_deg=block.angles_deg, repairs=self.repairs)
            if self.center is None:
                self._keep(block.angles_deg, sinograms)
            else:
                self._gather(sinograms, block.angles_deg)
        except StageError as error:
            self._give_up(str(error))
            return
        self.blocks_added += 1
        self._watch_early(block)
        if self._pair is not None and self.on_pair is not None:
            try:
                found = self._pair.add(block.angles_deg, block.data)
            except StreamerError as error:  # e.g. non-finite values: no early CoR
                self._pair = None
                if self.log is not None:
                    self.log(f"streaming: no CoR from the opposite pair: {error}")
                return
            if found is not None:
                self._pair = None
                self.on_pair(found)

    def _watch_early(self, block: ProcessedBlock) -> None:
        """The early estimate's share of a block (the rank that watches, while no CoR is
        known): the runner is told once it is sure enough."""
        watch = self._early
        if watch is None or self.on_early is None:
            return
        if self.center is not None:  # known otherwise (the viewer, a carried one)
            self._early = None
            return
        try:
            found = watch.add(block.angles_deg, block.data)
        except StreamerError as error:  # e.g. non-finite values: no early CoR
            self._early = None
            if self.log is not None:
                self.log(f"streaming: no early CoR estimate: {error}")
            return
        self.early = watch.last
        if watch.done:
            self._early = None
            if found is None and self.log is not None and watch.last is not None:
                self.log(f"streaming: no early CoR estimate: {watch.last.reason}")
        if found is not None and found.center is not None:
            self.on_early(found.center)

    def _keep(self, angles: npt.NDArray[np.float64],
              sinograms: npt.NDArray[np.float32]) -> None:
        if self._kept_bytes + sinograms.nbytes > self.keep_limit:
            raise StageError(f"waiting for the CoR would keep more than "
                             f"{self.keep_limit / 2**20:,.1f} MiB of blocks")
        self._kept.append((np.array(angles, dtype=np.float64), sinograms))
        self._kept_bytes += sinograms.nbytes

    def _gather(self, sinograms: npt.NDArray[np.float32],
                angles: npt.NDArray[np.float64]) -> None:
        """Add a block, or keep it pending until ``coalesce_frames`` have gathered. Near
        the scan's end (the plan says how many projections are still to come) a pending
        set is added as soon as it holds at least what is still to come, so the set
        added with the last piece is at most twice that piece: little is left for
        :meth:`finish`."""
        self._frames_in += len(angles)
        if self.coalesce_frames <= 1 and not self._pending:
            self._accumulate(sinograms, angles)
            return
        self._pending.append((sinograms, angles))
        self._pending_frames += len(angles)
        to_come = self.projections - self._frames_in
        if self._pending_frames >= min(self.coalesce_frames, max(to_come, 0)):
            self._flush()

    def _flush(self) -> None:
        """Add the pending blocks as one (sinograms joined along the angles)."""
        if not self._pending:
            return
        pending, self._pending, self._pending_frames = self._pending, [], 0
        if len(pending) == 1:
            sinograms, angles = pending[0]
        else:
            sinograms = np.concatenate([part for part, _ in pending], axis=1)
            angles = np.concatenate([part for _, part in pending])
        self._accumulate(sinograms, angles)

    def _accumulate(self, sinograms: npt.NDArray[np.float32],
                    angles: npt.NDArray[np.float64]) -> None:
        self.adds += 1
        if self.xp is None:
            self.xp = np if self.recon.backend == "numpy" else require_gpu(self.recon.backend)
        xp = self.xp
        if not self._bands:
            assert self._planned is not None and self.center is not None
            rows, cols = self._shape
            shared = FourierFbpCache()  # the bands share the plan and block griddings
            self._bands = [
                (first, StreamingFbp(min(self.band_rows, rows - first), cols, self._planned,
                                     self.params, center=self.center, cache=shared, xp=xp,
                                     transfers=self.transfers))
                for first in range(0, rows, self.band_rows)
            ]
        if xp is not np:  # the block goes up once; each band adds its rows there
            sinograms = self._upload(sinograms)
        for first, band in self._bands:
            band.add(sinograms[first:first + band.rows], angles)

    def _upload(self, sinograms: npt.NDArray[np.float32]) -> Any:
        start = time.perf_counter()
        moved = self.xp.asarray(np.ascontiguousarray(sinograms, dtype=np.float32))
        self.transfers.seconds_to_device += time.perf_counter() - start
        self.transfers.to_device += 1
        self.transfers.bytes_to_device += int(sinograms.nbytes)
        return moved

    def start(self, center: float, *, early: bool = False) -> None:
        """The CoR is known (or changed): (re)start the accumulators with it and add the
        blocks kept so far. A changed CoR with no blocks kept cannot be restarted: the
        scan goes back to the batch path. ``early``: an early estimate (before
        :data:`LATE_FRACTION` of the plan on the rank that made it), added even on a scan
        whose pair comes last."""
        if self.fallback is not None or center == self.center:
            return
        restart = self.center is not None and self.blocks_added > 0
        self.center, self._bands = center, []
        if restart:
            self._give_up(f"the CoR changed to {center:.2f} during the scan and the blocks "
                          "were not kept")
            return
        if self._late and self._kept and not early:
            self._give_up("the opposite pair comes with the scan's last projections: "
                          "reconstructing at close costs less than adding the kept blocks")
            return
        kept, self._kept, self._kept_bytes = self._kept, [], 0
        try:
            for angles, sinograms in kept:
                self._gather(sinograms, angles)
        except StageError as error:
            self._give_up(str(error))

    def finish(self, angles: npt.NDArray[np.float64], complete: bool, *,
               center_override: float | None,
               should_stop: Callable[[], bool]) -> Iterator[ProcessedBlock] | None:
        """The volume's blocks, band by band, or ``None`` when the scan must be
        reconstructed in batch (see the module docstring). ``center_override``: the CoR
        the volume must have (the viewer's, or the one agreed at close)."""
        if self.fallback is None and self.center is None:
            self._give_up("no CoR was known before the scan closed")
        if self.fallback is None:
            try:
                self._flush()  # what gathered short of a set (projections missing)
            except StageError as error:
                self._give_up(str(error))
        if self.fallback is None and not self._bands:
            self._give_up("no projection block was added")
        if (self.fallback is None and center_override is not None
                and center_override != self.center):
            self._give_up(f"the CoR at close is {center_override:.2f}, the accumulators "
                          f"used {self.center:.2f}")
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

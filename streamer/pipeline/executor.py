"""Run a validated pipeline on frames as they arrive (one rank: a complete pipeline).

:class:`ScanProcessor` takes frames in any order (from the ingest frame store, or read
from a stored scan) and:

1. keeps the scan's darks and flats (converted to float32 once) — stages that need
   references get them;
2. runs the projection section (the pipeline's leading ``projection`` stages) on blocks
   of projections as soon as the references are complete, so correction happens while the
   scan is still arriving;
3. on one rank, writes the corrected projections straight into their columns of one
   preallocated sinogram buffer (:class:`~streamer.exchange.sinobuffer.SinogramBand` over every
   row: the corrected scan is held once, never stacked or transposed again) and, when the
   scan is over, runs the sinogram section on blocks of that buffer (``(rows, angles,
   cols)``); with several ranks the reslice hands each rank its band instead.

Bad pixel values are repaired and counted per scan in :attr:`ScanProcessor.repairs`
(:mod:`stages.prep.repair`): NaN/±inf pixels of received frames (float payloads, any
normalisation, ``none`` included) as they arrive (``nonfinite_input``); pixels without
signal by the correction stages that declare ``counts_repairs`` (``no_signal``); and any
NaN/±inf a correction stage still leaves, before the sinogram section
(``nonfinite_corrected``), so a volume is never NaN because of its input.

Blocks leave through ``on_projections`` / ``on_sinograms`` callbacks. A scan without all
its references by the end is still processed with what arrived, and the result is marked
``complete=False``; a ``flat_dark`` scan with no flat at all cannot be normalised and is
refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, SupportsFloat

import numpy as np
import numpy.typing as npt

from stages.backends.xp import TransferStats, to_device, to_host
from stages.prep.repair import (
    NONFINITE_CORRECTED,
    NONFINITE_INPUT,
    RepairCounts,
    repair_nonfinite,
)
from stages.spec import Pattern
from streamer.errors import StageError
from streamer.exchange.sinobuffer import SinogramBand
from streamer.ingest.store import FrameStore, HeldFrame
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.iterations import BandIteration, IterationLog, StepListener
from streamer.pipeline.sections import split_sections
from streamer.sources.scan import FrameReader
from streamer.wire.protocol import IMAGE_KEY_DARK, IMAGE_KEY_FLAT, IMAGE_KEY_PROJECTION, StartHeader


@dataclass(frozen=True)
class ProcessedBlock:
    """Corrected data and where it belongs.

    ``data`` is ``(n, rows, cols)`` projections (``indices`` are frame indices of the scan,
    ``angles_deg`` theirs) or ``(n, angles, cols)`` sinograms (``indices`` are detector
    rows, ``angles_deg`` the scan's projection angles in frame order).
    """

    pattern: Pattern
    indices: npt.NDArray[np.int64]
    angles_deg: npt.NDArray[np.float64]
    data: npt.NDArray[np.float32]
    complete: bool


class StreamingHook(Protocol):
    """A sinogram section run while the scan arrives (:mod:`streamer.run.streaming`)."""

    def add(self, block: ProcessedBlock) -> None:
        """A corrected projection block."""

    def finish(self, angles: npt.NDArray[np.float64], complete: bool, *,
               center_override: float | None,
               should_stop: Callable[[], bool]) -> Iterator[ProcessedBlock] | None:
        """The volume's blocks, or ``None``: run the sinogram section in batch."""


DEVICE_BACKENDS = frozenset({"httomolibgpu", "cupy"})


@dataclass
class DeviceReferences:
    """Darks and flats uploaded to the device once per scan (not once per block)."""

    darks: Any = None
    flats: Any = None


def apply_steps(
    steps: Iterable[PipelineStep],
    block: npt.NDArray[Any],
    *,
    darks: npt.NDArray[np.float32] | None,
    flats: npt.NDArray[np.float32] | None,
    transfers: TransferStats | None = None,
    device_references: DeviceReferences | None = None,
    angles_deg: npt.NDArray[np.float64] | None = None,
    frame_indices: npt.NDArray[np.int64] | None = None,
    flat_indices: npt.NDArray[np.int64] | None = None,
    projection_indices: npt.NDArray[np.int64] | None = None,
    repairs: RepairCounts | None = None,
    on_iteration: StepListener | None = None,
) -> npt.NDArray[np.float32]:
    """Run ``steps`` in order on one block (float32 in, float32 out, on the host).

    Iterative stages tell ``on_iteration(step, iteration)`` after each iteration.

    A run of consecutive device stages (``httomolibgpu``) gets the block moved to the
    device once where it begins and back once where it ends; references go up once per
    scan (``device_references``). Every move is counted in ``transfers``; stages that
    repair pixel values count them in ``repairs``.
    """
    stats = transfers if transfers is not None else TransferStats()
    cache = device_references if device_references is not None else DeviceReferences()
    data: Any = np.ascontiguousarray(block, dtype=np.float32)
    on_device = False
    for step in steps:
        wants_device = step.backend in DEVICE_BACKENDS
        if wants_device and not on_device:
            data = to_device(data, stats, backend=step.backend)
            on_device = True
        elif on_device and not wants_device:
            data = to_host(data, stats)
            on_device = False
        step_darks, step_flats = darks, flats
        if wants_device and step.spec.needs_references:
            if cache.flats is None:
                cache.darks = to_device(darks, stats, backend=step.backend)
                cache.flats = to_device(flats, stats, backend=step.backend)
            step_darks, step_flats = cache.darks, cache.flats
        listener = (None if on_iteration is None or not step.spec.reports_progress
                    else _bound(on_iteration, step))
        try:
            data = step.spec.run(data, step.params, darks=step_darks, flats=step_flats,
                                 angles_deg=angles_deg, frame_indices=frame_indices,
                                 flat_indices=flat_indices,
                                 projection_indices=projection_indices, backend=step.backend,
                                 repairs=repairs, on_iteration=listener)
        except StageError as error:
            raise StageError(f"{error} (pipeline entry at {step.where})") from None
        if not on_device:
            data = np.ascontiguousarray(data, dtype=np.float32)
    if on_device:
        data = to_host(data, stats)
    result: npt.NDArray[np.float32] = np.ascontiguousarray(data, dtype=np.float32)
    return result


def _bound(listener: StepListener, step: PipelineStep) -> Callable[[Any], None]:
    return lambda iteration: listener(step, iteration)


class ScanProcessor:
    """Runs one scan through a pipeline, frames in any order.

    Parameters
    ----------
    steps : tuple of PipelineStep
        The validated pipeline.
    start : StartHeader
        The scan's ``start`` (shape, expected counts, normalisation).
    block_frames, block_sinograms : int
        Block sizes (from :func:`streamer.pipeline.plan.plan_blocks`).
    on_projections, on_sinograms : callable, optional
        Receive each :class:`ProcessedBlock` of the projection / sinogram section.
    keep_sinogram_section : bool
        Collect corrected projections and run the sinogram section at the end (one rank).
    resolve_center : callable, optional
        ``resolve_center(projections, angles_deg) -> float``: called once per scan, on
        the corrected projections ``(angles, rows, cols)``, to set the ``center`` of every
        sinogram stage that has one left as ``None`` (automatic CoR); the value used is
        kept in :attr:`center`.
    on_center : callable, optional
        ``on_center(center, method)``: told the CoR as soon as it is settled (found, or
        set from a viewer), before the first reconstructed block (the live view).
    on_iteration : callable, optional
        Told each iteration of an iterative stage in the sinogram section, per band
        (:class:`~streamer.pipeline.iterations.BandIteration`); all are also counted in
        :attr:`iterations`.
    """

    def __init__(
        self,
        steps: tuple[PipelineStep, ...],
        start: StartHeader,
        *,
        block_frames: int = 16,
        block_sinograms: int = 16,
        on_projections: Callable[[ProcessedBlock], None] | None = None,
        on_sinograms: Callable[[ProcessedBlock], None] | None = None,
        keep_sinogram_section: bool = True,
        resolve_center: Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64]], SupportsFloat]
        | None = None,
        on_center: Callable[[float, str], None] | None = None,
        on_iteration: Callable[[BandIteration], None] | None = None,
    ) -> None:
        if block_frames < 1 or block_sinograms < 1:
            raise StageError(
                f"block sizes: expected >= 1, got {block_frames} frames, {block_sinograms} "
                "sinograms"
            )
        self.projection_steps, self.sinogram_steps = split_sections(steps)
        self.start = start
        self.block_frames = block_frames
        self.block_sinograms = block_sinograms
        self.on_projections = on_projections
        self.on_sinograms = on_sinograms
        frame = (start.rows, start.cols)
        self._darks: dict[int, npt.NDArray[np.float32]] = {}
        self._flats: dict[int, npt.NDArray[np.float32]] = {}
        self._waiting: dict[int, tuple[float, npt.NDArray[Any]]] = {}
        self._references: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        self._collect = keep_sinogram_section and bool(self.sinogram_steps)
        #: The corrected scan in sinogram layout (one rank), allocated at the first
        #: corrected block (whose shape it takes: a projection stage may crop or bin).
        self.band: SinogramBand | None = None
        #: Asked between sinogram blocks: True stops the section (Ctrl-C, SIGTERM); the
        #: blocks done so far have been handed out, :attr:`stopped` says it stopped early.
        self.should_stop: Callable[[], bool] | None = None
        self.stopped = False
        self.frame_shape = frame
        self.projections_done = 0
        self.transfers = TransferStats()
        #: Pixel values repaired in this scan, by reason (see the module docstring).
        self.repairs = RepairCounts()
        self._device_references = DeviceReferences()
        self.resolve_center = resolve_center
        self.center: float | None = None
        self.center_method: str | None = None
        #: How sure the finder was (0 … 1) and why to doubt it, when it says so (a
        #: :class:`~stages.recon.center_policy.CorEstimate`); printed and stored beside it.
        self.center_confidence: float | None = None
        self.center_warnings: tuple[str, ...] = ()
        #: A CoR chosen while the scan runs (the live viewer's ``set_center``, set from the
        #: feed's thread): used, if set before the sinogram section starts, by every stage
        #: with a ``center`` instead of the pipeline's value, finder or ``resolve_center``.
        self.center_override: float | None = None
        self.on_center = on_center
        #: The iterations of iterative stages, per stage and band (the run's summary).
        self.iterations = IterationLog(on_iteration)
        #: Set before the first frame: the sinogram section runs as blocks arrive, and at
        #: the end only its ``finish`` (the batch section when it declines).
        self.streaming: StreamingHook | None = None

    # --- input ---------------------------------------------------------------------

    def add(self, frames: Iterable[HeldFrame]) -> None:
        """Take frames (any order); process whatever is ready."""
        for frame in frames:
            if frame.key == IMAGE_KEY_DARK:
                self._darks[frame.index] = self._finite(frame.data, np.float32)  # a copy
            elif frame.key == IMAGE_KEY_FLAT:
                self._flats[frame.index] = self._finite(frame.data, np.float32)  # a copy
            elif frame.key == IMAGE_KEY_PROJECTION:
                # a copy: the view belongs to a received message that is released next
                self._waiting[frame.index] = (frame.angle_deg, self._finite(frame.data))
        if self._references is None and self._references_complete():
            self._references = self._stack_references()
        if self._references is not None:
            while len(self._waiting) >= self.block_frames:
                self._process_projections(self.block_frames)

    def drain(self, store: FrameStore) -> None:
        """Use as the ingest service's drain: take every held frame from the store."""
        self.add(store.take())

    def finish_projections(self) -> None:
        """The scan is over: correct the projections still waiting (fewer than a block).
        A stage that refuses the data raises here, before the sinogram section."""
        if self._references is None:
            self._references = self._stack_references()
        while self._waiting:
            self._process_projections(self.block_frames)

    def finish(self) -> None:
        """The scan is over: process what is left, then the sinogram section."""
        self.finish_projections()
        if self._collect:
            self._run_sinogram_section()

    # --- internals -----------------------------------------------------------------

    def _finite(self, data: npt.NDArray[Any], dtype: Any = None) -> npt.NDArray[Any]:
        """A copy of a received frame, NaN/±inf pixels repaired along rows and counted."""
        copy = np.array(data, dtype=dtype)
        repaired, count = repair_nonfinite(copy)
        self.repairs.add(NONFINITE_INPUT, count)
        return repaired

    @property
    def complete(self) -> bool:
        start = self.start
        return (len(self._darks) == start.darks and len(self._flats) == start.flats
                and self.projections_done == start.projections)

    def _references_complete(self) -> bool:
        return len(self._darks) >= self.start.darks and len(self._flats) >= self.start.flats

    def _stack_references(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        needs = any(step.spec.needs_references for step in self.projection_steps)
        if needs and self.start.normalisation == "flat_dark" and not self._flats:
            raise StageError(
                f"scan {self.start.scan!r}: no flat frame arrived, so flat/dark "
                "normalisation is impossible (expected "
                f"{self.start.flats} flats)"
            )
        empty = np.empty((0, *self.frame_shape), dtype=np.float32)
        darks = np.stack([self._darks[i] for i in sorted(self._darks)]) if self._darks else empty
        flats = np.stack([self._flats[i] for i in sorted(self._flats)]) if self._flats else empty
        return darks, flats

    def _projection_numbers(self, indices: list[int]) -> npt.NDArray[np.int64]:
        """Each frame's position among the scan's projections: its frame index less the
        darks and flats taken before it (every reference has arrived by now)."""
        references = np.array(sorted([*self._darks, *self._flats]), dtype=np.int64)
        frames = np.array(indices, dtype=np.int64)
        numbers: npt.NDArray[np.int64] = frames - np.searchsorted(references, frames)
        return numbers

    def _process_projections(self, count: int) -> None:
        assert self._references is not None
        indices = sorted(self._waiting)[:count]
        angles = np.array([self._waiting[i][0] for i in indices], dtype=np.float64)
        block = np.stack([self._waiting.pop(i)[1] for i in indices])
        darks, flats = self._references
        data = apply_steps(self.projection_steps, block, darks=darks, flats=flats,
                           transfers=self.transfers,
                           device_references=self._device_references,
                           frame_indices=np.array(indices, dtype=np.int64),
                           flat_indices=np.array(sorted(self._flats), dtype=np.int64),
                           projection_indices=self._projection_numbers(indices),
                           repairs=self.repairs)
        data, count = repair_nonfinite(data)
        self.repairs.add(NONFINITE_CORRECTED, count)
        self.repairs.pixels += data.size
        self.projections_done += len(indices)
        processed = ProcessedBlock(Pattern.PROJECTION, np.array(indices, dtype=np.int64),
                                   angles, data, self._references_complete())
        if self.on_projections is not None:
            self.on_projections(processed)
        if self._collect:
            if self.band is None:
                # Home columns from the first corrected index (blocks go in index order;
                # flats at both ends put the first projection after the first flats
                # only): a wrong guess costs a sort at the end, never a wrong column.
                self.band = SinogramBand((0, int(data.shape[1])), int(data.shape[2]),
                                         max(self.start.projections, 1),
                                         frames=self.start.frames,
                                         first_index=int(processed.indices[0]))
            slots = self.band.claim(processed.indices, angles)
            self.band.store(slots, data)
            if self.streaming is not None:
                self.streaming.add(processed)

    def _stopping(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.stopped = True
        return self.stopped

    def _run_sinogram_section(self) -> None:
        if self.band is None or not self.band.received or self._stopping():
            return
        assembled = self.band.assemble()
        angles = assembled.angles_deg
        sinograms_all = assembled.sinograms  # (rows, angles, cols), a view of the buffer
        rows = sinograms_all.shape[0]
        complete = self.complete
        if self.streaming is not None:
            blocks = self.streaming.finish(angles, complete,
                                           center_override=self.center_override,
                                           should_stop=self._stopping)
            if blocks is not None:
                for block in blocks:
                    if self.on_sinograms is not None:
                        self.on_sinograms(block)
                return
        # The CoR finders take projections (angles, rows, cols): a transposed view.
        steps = self._with_center(self.sinogram_steps, sinograms_all.transpose(1, 0, 2),
                                  angles)
        if self.on_center is not None and self.center is not None:
            self.on_center(self.center, self.center_method or "pipeline")
        bands = -(-rows // self.block_sinograms)
        for first in range(0, rows, self.block_sinograms):
            if self._stopping():
                return
            last = min(first + self.block_sinograms, rows)
            listener = self.iterations.listener(first // self.block_sinograms, bands,
                                                first, last)
            data = apply_steps(steps, sinograms_all[first:last], darks=None, flats=None,
                               transfers=self.transfers, angles_deg=angles,
                               on_iteration=listener, repairs=self.repairs)
            if self.on_sinograms is not None:
                self.on_sinograms(ProcessedBlock(
                    Pattern.SINOGRAM, np.arange(first, last, dtype=np.int64), angles, data,
                    complete,
                ))


    def _with_center(
        self,
        steps: tuple[PipelineStep, ...],
        stack: npt.NDArray[np.float32],
        angles: npt.NDArray[np.float64],
    ) -> tuple[PipelineStep, ...]:
        """The data steps, those with an unset ``center`` given the scan's CoR, found
        once: by the pipeline's CoR-finder step if it has one, else ``resolve_center``."""
        finders = [s for s in steps if s.spec.finds_center is not None]
        data_steps = tuple(s for s in steps if s.spec.finds_center is None)
        override = self.center_override  # read once: another thread may set it
        if override is not None:
            self.center, self.center_method = float(override), "user (viewer)"
            return tuple(
                replace(s, params=s.params.model_copy(update={"center": self.center}))
                if "center" in type(s.params).model_fields else s
                for s in data_steps
            )
        unset = [s for s in data_steps if "center" in type(s.params).model_fields
                 and dict(s.params)["center"] is None]
        if not unset:
            return data_steps
        if finders:
            finder = finders[-1]
            assert finder.spec.finds_center is not None
            try:
                found = finder.spec.finds_center(stack, angles, finder.params)
            except StageError as error:
                raise StageError(f"{error} (pipeline entry at {finder.where})") from None
            self.center_method = f"{finder.name} (pipeline)"
        elif self.resolve_center is not None:
            found = self.resolve_center(stack, angles)
            self.center_method = "auto"
        else:
            return data_steps
        self.center = float(found)
        self.center_confidence = getattr(found, "confidence", None)
        self.center_warnings = tuple(getattr(found, "warnings", ()))
        return tuple(
            replace(s, params=s.params.model_copy(update={"center": self.center}))
            if s in unset else s
            for s in data_steps
        )


def process_reader(
    steps: tuple[PipelineStep, ...],
    reader: FrameReader,
    start: StartHeader,
    *,
    block_frames: int = 16,
    block_sinograms: int = 16,
    on_projections: Callable[[ProcessedBlock], None] | None = None,
    on_sinograms: Callable[[ProcessedBlock], None] | None = None,
    resolve_center: Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64]], SupportsFloat]
    | None = None,
    on_iteration: Callable[[BandIteration], None] | None = None,
) -> ScanProcessor:
    """Run a pipeline over a stored scan read block by block (the batch path)."""
    processor = ScanProcessor(steps, start, block_frames=block_frames,
                              block_sinograms=block_sinograms, on_projections=on_projections,
                              on_sinograms=on_sinograms, resolve_center=resolve_center,
                              on_iteration=on_iteration)
    feed_reader(processor, reader, block_frames)
    return processor


def feed_reader(
    processor: ScanProcessor,
    reader: FrameReader,
    block_frames: int,
    *,
    on_read: Callable[[int, int], None] | None = None,
) -> None:
    """Give ``processor`` every frame of ``reader``, block by block, then finish it;
    ``on_read(frames_read, frames)`` follows the reading."""
    layout = reader.layout
    for first in range(0, layout.frames, block_frames):
        last = min(first + block_frames, layout.frames)
        data = reader.read(first, last)
        processor.add(
            HeldFrame(index, int(layout.image_keys[index]), float(layout.angles_deg[index]),
                      data[index - first])
            for index in range(first, last)
        )
        if on_read is not None:
            on_read(last, layout.frames)
    processor.finish()

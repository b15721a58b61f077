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

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, SupportsFloat

import numpy as np
import numpy.typing as npt

from stages.backends.device_queue import CupyStreams, StreamDevice
from stages.backends.xp import TransferStats, array_module, to_device, to_host
from stages.prep.repair import (
    NONFINITE_CORRECTED,
    NONFINITE_INPUT,
    RepairCounts,
    repair_nonfinite,
)
from stages.recon.streaming import tapered_block
from stages.spec import Geometry, Pattern
from streamer.errors import StageError
from streamer.exchange.sinobuffer import SinogramBand
from streamer.ingest.store import FrameStore, HeldFrame
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.device_bands import DEVICE_BACKENDS, band_outputs
from streamer.pipeline.finder_tap import TappedRows, finder_rows, finder_tap, run_finder_on_rows
from streamer.pipeline.halo import (
    Window,
    counted_apart,
    keep_block,
    keep_saved,
    run_on_band,
    section_halo,
    split_band_tail,
    window,
)
from streamer.pipeline.iterations import BandIteration, IterationLog, StepListener
from streamer.pipeline.sections import Section, sections_of
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


class ResultHook(Protocol):
    """Where the outputs of ``save_result`` steps go (:mod:`streamer.pipeline.intermediate`)."""

    def __call__(self, step: PipelineStep, pattern: Pattern, *,
                 indices: npt.NDArray[np.int64], total: int,
                 angles: npt.NDArray[np.float64], data: npt.NDArray[Any]) -> None:
        """One block of ``step``'s output (see ``IntermediateResults.add``)."""


def bind_result(
    hook: ResultHook | None, pattern: Pattern, indices: npt.NDArray[np.int64], total: int,
    angles: npt.NDArray[np.float64] | None,
) -> Callable[[PipelineStep, npt.NDArray[np.float32], npt.NDArray[np.float64] | None],
              None] | None:
    """``apply_steps``'s ``on_result`` for one block: to ``hook``, with where the block
    lies (``angles``: the block's own, else the step's, e.g. a sinogram block's)."""
    if hook is None:
        return None

    def save(step: PipelineStep, data: npt.NDArray[np.float32],
             step_angles: npt.NDArray[np.float64] | None) -> None:
        known = angles if angles is not None else step_angles
        hook(step, pattern, indices=indices, total=total,
             angles=np.asarray(known if known is not None else [], dtype=np.float64),
             data=data)

    return save


#: A streaming scan's projection blocks shrink toward its end down to this fraction of
#: ``block_frames`` (the last block is what is left after the last frame).
_TAPER_TO = 8


@dataclass
class DeviceReferences:
    """Darks and flats uploaded to the device once per scan (not once per block)."""

    darks: Any = None
    flats: Any = None


@dataclass
class StageCaches:
    """The per-scan caches of a pipeline's steps (``StageSpec.cache``): made at a step's
    first block of the scan and handed to its later blocks. One per scan, owned by the
    code that runs the scan (no state is kept in the stage modules)."""

    made: dict[str, Any] = field(default_factory=dict)

    def for_step(self, step: PipelineStep) -> Any:
        """The cache of ``step`` (``None`` for a stage without one)."""
        if step.spec.cache is None:
            return None
        key = f"{step.where} {step.spec.name}"
        if key not in self.made:
            self.made[key] = step.spec.cache()
        return self.made[key]


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
    on_result: Callable[[PipelineStep, npt.NDArray[np.float32],
                         npt.NDArray[np.float64] | None], None] | None = None,
    on_iteration: StepListener | None = None,
    caches: StageCaches | None = None,
    keep_on_device: bool = False,
    own: Window | None = None,
    angles_along: bool = False,
    own_rows: Window | None = None,
) -> npt.NDArray[np.float32]:
    """Run ``steps`` in order on one block (float32 in, float32 out, on the host).

    A block already on the device (from a :class:`DeviceQueue`) starts there; with
    ``keep_on_device`` a result on the device stays there (the queue downloads it).

    Iterative stages tell ``on_iteration(step, iteration)`` after each iteration.

    A run of consecutive device stages (``httomolibgpu``) gets the block moved to the
    device once where it begins and back once where it ends; references go up once per
    scan (``device_references``). Every move is counted in ``transfers``; stages that
    repair pixel values count them in ``repairs``. A stage that changes the angles
    (``average_projection_frames``, ``sino_360_to_180``) hands the stages after it the
    new ones (:meth:`stages.spec.StageSpec.after`). ``on_result(step, output, angles)``
    gets the output of each step marked ``save_result`` (on the host). Stages with a
    per-scan cache get it from ``caches`` (the same object for every block of the scan).

    ``own``: the block is a haloed window (ADR 0019) whose own entries are these; a step
    that counts repairs counts them on those entries only (:func:`counted_apart`: the
    halo entries are counted in their own block). ``angles_along``: the angles run along
    the block axis (a projection block), so they are cut with it. ``own_rows``: the
    block's detector rows (axis 1) are a rank's widened band (ADR 0019's addendum), its
    own rows these; a repair-counting step (row by row there) counts them on those rows
    only, so the overlap rows are counted once, on the rank that owns them.
    """
    stats = transfers if transfers is not None else TransferStats()
    angles = angles_deg
    cache = device_references if device_references is not None else DeviceReferences()
    xp = array_module(block)
    data: Any = xp.ascontiguousarray(block, dtype=xp.float32)
    on_device = xp is not np
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
        cache_of_step = caches.for_step(step) if caches is not None else None

        def run_rows(entries: slice, rows: slice, counts: RepairCounts | None, *,
                     step: PipelineStep = step, block: Any = data, angles: Any = angles,
                     darks: Any = step_darks, flats: Any = step_flats, listener: Any = listener,
                     cache_of_step: Any = cache_of_step) -> Any:
            return step.spec.run(
                _rows(_entries(block, entries), rows), step.params,
                darks=_rows(darks, rows), flats=_rows(flats, rows),
                angles_deg=_entries(angles, entries) if angles_along else angles,
                frame_indices=_entries(frame_indices, entries), flat_indices=flat_indices,
                projection_indices=_entries(projection_indices, entries),
                backend=step.backend, repairs=counts, on_iteration=listener,
                cache=cache_of_step)

        counting = repairs is not None and step.spec.counts_repairs
        by_rows = counting and data.ndim == 3 and _with_halo(own_rows, int(data.shape[1]))

        def run(entries: slice, counts: RepairCounts | None, *, by_rows: bool = by_rows,
                run_rows: Any = run_rows) -> Any:
            if not by_rows or counts is None:
                return run_rows(entries, _WHOLE, counts)
            assert own_rows is not None
            return counted_apart(lambda rows, kept: run_rows(entries, rows, kept), own_rows,
                                 counts, axis=1)

        apart = counting and _with_halo(own, int(data.shape[0]))
        try:
            if apart:
                assert own is not None and repairs is not None
                data = counted_apart(run, own, repairs)
            else:
                data = run(_WHOLE, repairs)
        except StageError as error:
            raise StageError(f"{error} (pipeline entry at {step.where})") from None
        if step.spec.geometry is not None and angles is not None:
            angles = step.spec.after(Geometry(angles, int(data.shape[-1])),
                                     step.params).angles_deg
        if not on_device:
            data = np.ascontiguousarray(data, dtype=np.float32)
        if step.save_result and on_result is not None:
            host = data if not on_device else to_host(data, stats)
            on_result(step, np.ascontiguousarray(host, dtype=np.float32), angles)
    if on_device and keep_on_device:
        kept: npt.NDArray[np.float32] = array_module(data).ascontiguousarray(
            data, dtype=np.float32)
        return kept
    if on_device:
        data = to_host(data, stats)
    result: npt.NDArray[np.float32] = np.ascontiguousarray(data, dtype=np.float32)
    return result


def _with_halo(where: Window | None, length: int) -> bool:
    """Whether an axis of ``length`` entries is the haloed window ``where`` with entries
    around its own (whose repairs :func:`counted_apart` counts apart)."""
    return (where is not None and length == where.high - where.low
            and (where.low, where.high) != (where.first, where.last))


#: Every entry of a block (no cut: the block is passed as it is, whatever its type).
_WHOLE: Final = slice(None)


def _entries(value: Any, entries: slice) -> Any:
    """``value`` (a block, or per-entry angles or indices) cut to ``entries`` along its
    first axis; the value itself for :data:`_WHOLE` or ``None``."""
    return value if value is None or entries == _WHOLE else value[entries]


def _rows(value: Any, rows: slice) -> Any:
    """``value`` (a block or stacked references, ``(n, rows, cols)``) cut to ``rows``
    along its detector rows; the value itself for :data:`_WHOLE` or ``None``."""
    return value if value is None or rows == _WHOLE else value[:, rows]


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
        defer_halo: bool = False,
    ) -> None:
        if block_frames < 1 or block_sinograms < 1:
            raise StageError(
                f"block sizes: expected >= 1, got {block_frames} frames, {block_sinograms} "
                "sinograms"
            )
        #: Every section (:func:`~streamer.pipeline.sections.sections_of`): the first
        #: (projections) runs as frames arrive, the later ones when the scan is over,
        #: with a reslice between each two (in memory, on this rank).
        self.sections = sections_of(steps)
        self.projection_steps = self.sections[0].steps
        #: R ranks (``defer_halo``): the projection section's steps from its first halo
        #: step on, which the runner runs after the reslice on its widened band
        #: (:meth:`run_band_steps`, ADR 0019's addendum); the frames get the head only.
        self.band_steps: tuple[PipelineStep, ...] = ()
        if defer_halo:  # a whole-frame rest runs as a later section (rank_sections)
            self.projection_steps, self.band_steps, _rest = split_band_tail(
                self.projection_steps)
        self.later_sections: tuple[Section, ...] = self.sections[1:]
        #: Where the CoR finder's rows are tapped from the frames (a whole-frame step
        #: follows it in this processor's projection steps, :mod:`~streamer.pipeline.
        #: finder_tap`), and the rows tapped so far (this processor's frames).
        tap = finder_tap(steps)
        self.finder_tap = tap if tap is not None and tap.at < len(self.projection_steps) \
            else None
        self.tapped: TappedRows | None = None
        self.sinogram_steps = self.later_sections[0].steps if self.later_sections else ()
        self.start = start
        self.block_frames = block_frames
        self.block_sinograms = block_sinograms
        self.on_projections = on_projections
        self.on_sinograms = on_sinograms
        frame = (start.rows, start.cols)
        self._darks: dict[int, npt.NDArray[np.float32]] = {}
        self._flats: dict[int, npt.NDArray[np.float32]] = {}
        self._waiting: dict[int, tuple[float, npt.NDArray[Any]]] = {}
        #: Frames each projection block needs on each side (ADR 0019): a block is
        #: corrected once the ``halo`` projections after it have arrived, with the last
        #: ``halo`` of the previous block (:attr:`_behind`, as received) before it.
        self.halo = section_halo(self.projection_steps)
        self._behind: list[tuple[int, float, npt.NDArray[Any]]] = []
        #: With a halo, frames may arrive out of order: every frame index below
        #: ``_arrived_below`` has arrived (darks and flats too), those above it that have
        #: are in ``_arrived_above``; a block waits until its neighbours are all in.
        self._arrived_below = 0
        self._arrived_above: set[int] = set()
        #: Projections in blocks corrected before all their neighbours had arrived (a
        #: frame lost, or later than two blocks): their kernels saw the frames at hand.
        self.corrected_without_neighbours = 0
        self._references: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        #: The frame index of each flat the correction gets (one after a data_reducer).
        self._flat_indices = np.empty(0, dtype=np.int64)
        self._collect = keep_sinogram_section and bool(self.later_sections)
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
        self._caches = StageCaches()  # per-scan caches of the sinogram section's stages
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
        #: Set before the first frame (one rank): gets every corrected block, so that the
        #: sinogram section runs as blocks arrive; the runner takes the volume from it at
        #: close (:meth:`streamer.run.streaming.StreamingSection.finish`), not from here.
        self.streaming: StreamingHook | None = None
        #: Set before the first frame on one of R ranks whose bands stream: taper the
        #: projection blocks by this rank's share of the scan (it sees about ``1/R`` of the
        #: projections), estimated from the frames it has had so far (:meth:`_expected`).
        self.taper_share = False
        self._projections_seen = 0  # projection frames this rank has had
        self._largest_index = -1  # the largest projection frame index among them
        #: Set before the first frame: gets the output of every step marked
        #: ``save_result`` (:meth:`~streamer.pipeline.intermediate.IntermediateResults.add`).
        self.on_result: ResultHook | None = None
        #: The slices the last section hands out (set before its first block): the rows
        #: after every section, which a later projection section may bin or crop.
        self.volume_rows: int | None = None
        #: The device a sinogram section wholly on the device streams its blocks through
        #: (:class:`~stages.backends.device_queue.DeviceQueue`: pinned buffers, copies
        #: overlapping the compute); ``None``: CuPy's streams, made when one runs.
        self.stream_device: StreamDevice | None = None

    def queue_device(self) -> StreamDevice:
        """The device a queued section streams through: :attr:`stream_device`, CuPy's
        streams made the first time one is needed (a runner's bands share it too)."""
        if self.stream_device is None:
            self.stream_device = CupyStreams()
        return self.stream_device

    @property
    def caches(self) -> StageCaches:
        """The scan's per-step caches (ADR 0010), for a runner that runs the sinogram
        section itself (:mod:`streamer.run.ranks`): its blocks share them too."""
        return self._caches

    # --- input ---------------------------------------------------------------------

    def add(self, frames: Iterable[HeldFrame]) -> None:
        """Take frames (any order); process whatever is ready."""
        for frame in frames:
            if self.halo:
                self._arrived(frame.index)
            if frame.key == IMAGE_KEY_DARK:
                self._darks[frame.index] = self._finite(frame.data, np.float32)  # a copy
            elif frame.key == IMAGE_KEY_FLAT:
                self._flats[frame.index] = self._finite(frame.data, np.float32)  # a copy
            elif frame.key == IMAGE_KEY_PROJECTION:
                # a copy: the view belongs to a received message that is released next
                self._waiting[frame.index] = (frame.angle_deg, self._finite(frame.data))
                self._projections_seen += 1
                self._largest_index = max(self._largest_index, frame.index)
        if self._references is None and self._references_complete():
            self._references = self._stack_references()
        if self._references is not None:
            while self._block_ready(size := self._next_block_frames()):
                self._process_projections(size)

    def _next_block_frames(self) -> int:
        """Frames in the next projection block: ``block_frames``, or, when the sinogram
        section streams (here or, with :attr:`taper_share`, on the ranks the blocks are
        resliced to), fewer toward the scan's end (:func:`~stages.recon.streaming.tapered_block`
        of the projections this rank still expects: :meth:`_expected`), so that the last
        block, all that is left to correct and add after the last frame, is small."""
        if self.streaming is None and not self.taper_share:
            return self.block_frames
        remaining = self._expected() - self.projections_done
        last = max(1, self.block_frames // _TAPER_TO)
        if remaining <= 0:  # more came than expected (a share misjudged): whole blocks
            return self.block_frames
        return tapered_block(remaining, self.block_frames, last)

    def _expected(self) -> int:
        """Projections this rank will have had by the scan's end: all of them on one rank;
        with :attr:`taper_share`, the scan's count times the share of the projection
        indices so far that reached this rank (frames are dealt to the ranks in index
        order, so the share is about ``1/R`` whatever the dealing's pattern)."""
        projections = self.start.projections
        if not self.taper_share or self._projections_seen == 0:
            return projections
        number = int(self._projection_numbers([self._largest_index])[0])
        share = self._projections_seen / max(number + 1, self._projections_seen)
        return min(projections, math.ceil(projections * share))

    def _arrived(self, index: int) -> None:
        self._arrived_above.add(index)
        while self._arrived_below in self._arrived_above:
            self._arrived_above.discard(self._arrived_below)
            self._arrived_below += 1

    def _block_ready(self, size: int) -> bool:
        """Whether the next projection block (``size`` frames) and the ``halo`` frames
        after it are in (with a halo: every frame of its window has arrived, from the
        first of the ``halo`` frames kept before it to the last after it; or two blocks
        wait, when a missing frame is taken as lost and the block counted). A frame lost
        long before does not hold up (or count) the blocks whose windows do not reach it."""
        waiting = len(self._waiting)
        if waiting < size + self.halo:
            return False
        if not self.halo:
            return True
        ordered = sorted(self._waiting)
        last_needed = ordered[size + self.halo - 1]
        if last_needed < self._arrived_below:
            return True
        behind = [frame[0] for frame in self._behind if frame[0] < ordered[0]]
        first_needed = behind[0] if behind else 0 if not self._behind else ordered[0]
        if all(index < self._arrived_below or index in self._arrived_above
               for index in range(first_needed, last_needed + 1)):
            return True
        if waiting >= 2 * size + self.halo:
            self.corrected_without_neighbours += size
            return True
        return False

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
        """The darks and flats as stacks in frame order, reduced where the pipeline
        has a ``data_reducer`` (:attr:`StageSpec.reduces_references`); sets the flats'
        frame indices the correction steps get."""
        self._flat_indices = np.array(sorted(self._flats), dtype=np.int64)
        section = self.sections[0].steps  # the head and the band steps alike
        needs = any(step.spec.needs_references for step in section)
        if needs and self.start.normalisation == "flat_dark" and not self._flats:
            raise StageError(
                f"scan {self.start.scan!r}: no flat frame arrived, so flat/dark "
                "normalisation is impossible (expected "
                f"{self.start.flats} flats)"
            )
        empty = np.empty((0, *self.frame_shape), dtype=np.float32)
        darks = np.stack([self._darks[i] for i in sorted(self._darks)]) if self._darks else empty
        flats = np.stack([self._flats[i] for i in sorted(self._flats)]) if self._flats else empty
        for step in section:  # data_reducer: once per scan, in order
            reduce = step.spec.reduces_references
            if reduce is not None:
                darks, flats = reduce(darks, step.params), reduce(flats, step.params)
        if flats.shape[0] < len(self._flats):
            # reduced to one flat: it stands for them all (a time interpolation between
            # flat groups then has one group)
            self._flat_indices = self._flat_indices[:flats.shape[0]]
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
        ordered = sorted(self._waiting)
        indices = ordered[:count]
        angles = np.array([self._waiting[i][0] for i in indices], dtype=np.float64)
        own = [(i, *self._waiting.pop(i)) for i in indices]
        ahead = [(i, *self._waiting[i]) for i in ordered[count:count + self.halo]]
        behind = [frame for frame in self._behind if frame[0] < indices[0]]
        frames = [*behind, *own, *ahead]
        self._behind = [*behind, *own][-self.halo:] if self.halo else []
        wide = window(len(behind), len(behind) + len(own), len(frames), self.halo)
        wide_indices = [frame[0] for frame in frames]
        darks, flats = self._references

        def run(steps: tuple[PipelineStep, ...],
                block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return apply_steps(steps, block, darks=darks, flats=flats,
                               transfers=self.transfers,
                               device_references=self._device_references,
                               frame_indices=np.array(wide_indices, dtype=np.int64),
                               flat_indices=self._flat_indices,
                               projection_indices=self._projection_numbers(wide_indices),
                               repairs=self.repairs, own=wide, angles_along=True,
                               # placed by projection number (a stream has no layout)
                               on_result=keep_saved(self._saver(
                                   Pattern.PROJECTION, self._projection_numbers(indices),
                                   self.start.projections, angles),
                                   wide, angles_along=True))

        data = np.stack([frame[2] for frame in frames])
        tap = self.finder_tap
        if tap is not None:  # the CoR finder's rows where it stands (finder_tap)
            data = run(self.projection_steps[:tap.at], data)
            kept = keep_block(data, wide, "projection section")
            if self.tapped is None:
                self.tapped = TappedRows(finder_rows(tap.finder, int(kept.shape[1])),
                                         (int(kept.shape[1]), int(kept.shape[2])))
            self.tapped.add(np.array(indices, dtype=np.int64), angles, kept)
            data = run(self.projection_steps[tap.at:], data)
        else:
            data = run(self.projection_steps, data)
        data = keep_block(data, wide, "projection section")
        if not self.band_steps:  # else after them (run_band_steps), as on one rank
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

    def run_band_steps(self, sinograms: npt.NDArray[np.float32], rows: tuple[int, int],
                       indices: npt.NDArray[np.int64],
                       own: tuple[int, int] | None = None) -> None:
        """R ranks: :attr:`band_steps` on this rank's widened band ``(rows, angles, cols)``
        of detector rows ``rows`` (every projection of them, frame ``indices``), in place,
        in blocks of frames with their real neighbours (the references cut to those
        rows); then NaN/inf repaired and counted as after the projection section.

        Repairs are counted once per pixel over the ranks: on the window's own frames
        (:func:`counted_apart`) and on the rank's ``own`` rows (default: every row of
        the band); the overlap rows are counted by the rank that owns them."""
        if not self.band_steps or sinograms.shape[0] == 0 or sinograms.shape[1] == 0:
            return  # no steps, an empty band (more ranks than rows), no projection
        if self._references is None:
            self._references = self._stack_references()
        darks, flats = self._references
        low, high = rows
        darks, flats = darks[:, low:high], flats[:, low:high]
        numbers = self._projection_numbers([int(i) for i in indices])
        first, last = own if own is not None else rows
        own_rows = Window(first, last, low, high)

        def apply(frames: Window, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            span = slice(frames.low, frames.high)
            return apply_steps(self.band_steps, block, darks=darks, flats=flats,
                               transfers=self.transfers,
                               device_references=self._device_references,
                               frame_indices=indices[span], flat_indices=self._flat_indices,
                               projection_indices=numbers[span], repairs=self.repairs,
                               own=frames, own_rows=own_rows)

        run_on_band(sinograms, self.block_frames, section_halo(self.band_steps), apply)
        for part in (slice(0, first - low), own_rows.inner, slice(last - low, high - low)):
            if part.stop <= part.start:
                continue
            repaired, count = repair_nonfinite(sinograms[part])
            if part == own_rows.inner:  # the overlap rows: counted by their own rank
                self.repairs.add(NONFINITE_CORRECTED, count)
            if count:  # a repaired copy (none: the rows as they are)
                sinograms[part] = repaired

    def _saver(
        self, pattern: Pattern, indices: npt.NDArray[np.int64], total: int,
        angles: npt.NDArray[np.float64] | None,
    ) -> Callable[[PipelineStep, npt.NDArray[np.float32], npt.NDArray[np.float64] | None],
                  None] | None:
        """``apply_steps``'s ``on_result`` for one block: to :attr:`on_result`
        (:func:`bind_result`)."""
        return bind_result(self.on_result, pattern, indices, total, angles)

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
        complete = self.complete
        # The CoR finders take projections (angles, rows, cols): a transposed view.
        sections = self._with_center(self.later_sections, sinograms_all.transpose(1, 0, 2),
                                     angles)
        if self.on_center is not None and self.center is not None:
            self.on_center(self.center, self.center_method or "pipeline")
        data: npt.NDArray[np.float32] | None = sinograms_all
        for number, (pattern, steps) in enumerate(sections):
            last = number == len(sections) - 1
            assert data is not None
            if pattern is Pattern.PROJECTION:  # a reslice back to projections and again
                data, angles = self._projection_pass(steps, data, angles)
                if data is None:
                    return
                if last:  # nothing turns them back: hand them out as sinograms
                    self._sinogram_pass((), data, angles, complete, emit=True)
            else:
                data, angles = self._sinogram_pass(steps, data, angles, complete, emit=last)
            if data is None and not last:
                return

    def _sinogram_pass(
        self, steps: tuple[PipelineStep, ...], sinograms: npt.NDArray[np.float32],
        angles: npt.NDArray[np.float64], complete: bool, *, emit: bool,
    ) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.float64]]:
        """``steps`` on blocks of ``sinograms``: handed out (``emit``, the last section)
        or gathered for the next reslice; ``None`` when stopped or handed out."""
        rows = sinograms.shape[0]
        out_angles = section_angles(steps, angles, int(sinograms.shape[2]))
        if emit:
            self.volume_rows = rows
        gathered: npt.NDArray[np.float32] | None = None
        spans = [(first, min(first + self.block_sinograms, rows))
                 for first in range(0, rows, self.block_sinograms)]
        results = self._band_results(steps, sinograms, spans, angles, emit=emit)
        for first, last in spans:
            data = next(results, None)
            if data is None:  # stopped
                return None, out_angles
            if emit:
                if self.on_sinograms is not None:
                    self.on_sinograms(ProcessedBlock(
                        Pattern.SINOGRAM, np.arange(first, last, dtype=np.int64), out_angles,
                        data, complete,
                    ))
                continue
            if gathered is None:
                gathered = np.empty((rows, *data.shape[1:]), dtype=np.float32)
            gathered[first:last] = data
        return (None if emit else gathered), out_angles

    def _band_results(
        self, steps: tuple[PipelineStep, ...], sinograms: npt.NDArray[np.float32],
        spans: list[tuple[int, int]], angles: npt.NDArray[np.float64], *, emit: bool,
    ) -> Iterator[npt.NDArray[np.float32]]:
        """``steps``' output for each span of rows, in order, on the host; stops early when
        asked (:meth:`_stopping`). A section wholly on the device (:func:`runs_on_device`)
        streams through a :class:`DeviceQueue`: a band is uploaded from a pinned buffer
        while the one before is computed, its steps run back to back on the device, and
        it comes back while the next is computed (copies counted and timed in
        :attr:`transfers`). Otherwise :func:`apply_steps` moves each band itself."""
        rows, bands = sinograms.shape[0], len(spans)
        halo = section_halo(steps)  # rows each block needs on each side (ADR 0019)

        def run(block: Any, first: int, last: int, *, queued: bool) -> Any:
            listener = self.iterations.listener(first // self.block_sinograms, bands,
                                                first, last) if emit else None
            rows_in = window(first, last, rows, halo)
            data = apply_steps(steps, block, darks=None, flats=None,
                               transfers=self.transfers, angles_deg=angles,
                               on_iteration=listener, repairs=self.repairs, own=rows_in,
                               caches=self._caches, keep_on_device=queued,
                               on_result=keep_saved(self._saver(
                                   Pattern.SINOGRAM, np.arange(first, last, dtype=np.int64),
                                   rows, None), rows_in, angles_along=False))
            return keep_block(data, rows_in, "sinogram section")

        def haloed(first: int, last: int) -> npt.NDArray[np.float32]:
            rows_in = window(first, last, rows, halo)
            return sinograms[rows_in.low:rows_in.high]

        yield from band_outputs(steps, spans, haloed, run, device=self.queue_device,
                                transfers=self.transfers, stopping=self._stopping)

    def _projection_pass(
        self, steps: tuple[PipelineStep, ...], sinograms: npt.NDArray[np.float32],
        angles: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.float64]]:
        """A later projection section: ``sinograms`` resliced to projections, ``steps``
        on blocks of frames, resliced back to ``(rows, angles, cols)`` for the next
        sinogram section (``None`` when stopped)."""
        projections = sinograms.transpose(1, 0, 2)  # (angles, rows, cols), a view
        count = projections.shape[0]
        gathered: npt.NDArray[np.float32] | None = None
        halo = section_halo(steps)  # frames each block needs on each side (ADR 0019)
        for first in range(0, count, self.block_frames):
            if self._stopping():
                return None, angles
            last = min(first + self.block_frames, count)
            frames = window(first, last, count, halo)
            data = apply_steps(steps, projections[frames.low:frames.high], darks=None,
                               flats=None, transfers=self.transfers,
                               angles_deg=angles[frames.low:frames.high],
                               projection_indices=np.arange(frames.low, frames.high,
                                                            dtype=np.int64),
                               repairs=self.repairs, own=frames, angles_along=True,
                               on_result=keep_saved(self._saver(
                                   Pattern.PROJECTION, np.arange(first, last, dtype=np.int64),
                                   count, None), frames, angles_along=True))
            data = keep_block(data, frames, "projection section")
            if gathered is None:
                gathered = np.empty((data.shape[1], count, data.shape[2]), dtype=np.float32)
            gathered[:, first:last] = data.transpose(1, 0, 2)
        return gathered, angles

    def _with_center(
        self,
        sections: tuple[Section, ...],
        stack: npt.NDArray[np.float32],
        angles: npt.NDArray[np.float64],
    ) -> list[tuple[Pattern, tuple[PipelineStep, ...]]]:
        """The data steps of every later section, with run-time values filled in.

        The scan's CoR is found once: by the pipeline's CoR-finder step if it has one,
        else ``resolve_center``. Parameters set by a finder's side outputs
        (``sino_360_to_180``'s ``overlap`` and ``side``) get them. The CoR follows the
        scan's geometry: a step that moves the axis (the 360° fold puts it in the
        stitched middle) changes the ``center`` of the steps after it; an unset
        ``center`` gets the CoR where its step stands (a viewer's CoR replaces every
        ``center``, as the found one would be)."""
        finders = [s for section in sections for s in section.steps
                   if s.spec.finds_center is not None]
        data_sections = [(section.pattern, tuple(s for s in section.steps
                                                 if s.spec.finds_center is None))
                         for section in sections]
        every = [s for _, steps in data_sections for s in steps]
        override = self.center_override  # read once: another thread may set it
        unset = [s for s in every if "center" in type(s.params).model_fields
                 and dict(s.params)["center"] is None]
        links_unset = [s for s in every for param, _ in s.linked
                       if param != "center" and dict(s.params).get(param) is None]
        found: SupportsFloat | None = None
        if override is not None:
            self.center, self.center_method = float(override), "user (viewer)"
        if (override is None and unset) or links_unset:
            if finders:
                finder = finders[-1]
                assert finder.spec.finds_center is not None
                if self.tapped is not None:  # its rows where it stands (finder_tap)
                    found = run_finder_on_rows(finder, self.tapped)
                else:
                    try:
                        found = finder.spec.finds_center(stack, angles, finder.params)
                    except StageError as error:
                        raise StageError(
                            f"{error} (pipeline entry at {finder.where})") from None
                method = f"{finder.name} (pipeline)"
            elif override is None and self.resolve_center is not None:
                found = self.resolve_center(stack, angles)
                method = "auto"
        if found is not None and override is None:
            self.center, self.center_method = float(found), method
            self.center_confidence = getattr(found, "confidence", None)
            self.center_warnings = tuple(getattr(found, "warnings", ()))
        outputs = dict(getattr(found, "side_outputs", ()) or ())
        out, moved = fill_sections(data_sections, center=self.center, outputs=outputs,
                                   override=override is not None, angles=angles,
                                   cols=int(stack.shape[2]))
        if moved is not None and self.center is not None:
            self.center_method = (f"{self.center_method or 'pipeline'}; axis at "
                                  f"{self.center:.2f} before the 360° fold, "
                                  f"{moved:.2f} after it")
            self.center = moved
        return out


def fill_sections(
    data_sections: list[tuple[Pattern, tuple[PipelineStep, ...]]], *,
    center: float | None, outputs: dict[str, Any], override: bool,
    angles: npt.NDArray[np.float64], cols: int,
) -> tuple[list[tuple[Pattern, tuple[PipelineStep, ...]]], float | None]:
    """The run-time values of the later sections' steps (finders left out), one rule
    for one rank (:meth:`ScanProcessor._with_center`) and R ranks
    (:mod:`streamer.run.later_sections`).

    Parameters set by a finder's side outputs (``outputs``: ``sino_360_to_180``'s
    ``overlap`` and ``side``) get them; the CoR ``center`` (the scan's, before any step)
    follows the geometry (the 360° fold puts the axis in the stitched middle), and an
    unset ``center`` gets it where its step stands (every ``center`` with ``override``,
    a viewer's CoR). Returns the filled sections and the CoR a reconstruction used when
    the axis moved (else None)."""
    every = [s for _, steps in data_sections for s in steps]
    unset = [s for s in every if "center" in type(s.params).model_fields
             and dict(s.params)["center"] is None]
    geometry = Geometry(angles, cols, center)
    moved: float | None = None
    out: list[tuple[Pattern, tuple[PipelineStep, ...]]] = []
    for pattern, steps in data_sections:
        filled = []
        for step in steps:
            update = {param: outputs[link.split(".", 1)[1]] for param, link in step.linked
                      if param != "center" and dict(step.params).get(param) is None
                      and link.split(".", 1)[1] in outputs}
            if "center" in type(step.params).model_fields and geometry.center is not None \
                    and (override or step in unset):
                update["center"] = geometry.center
                if step.spec.needs_angles and geometry.center != center and moved is None:
                    moved = geometry.center
            params = step.params.model_copy(update=update) if update else step.params
            filled.append(replace(step, params=params) if update else step)
            geometry = step.spec.after(geometry, params)
        out.append((pattern, tuple(filled)))
    return out, moved


def section_angles(steps: tuple[PipelineStep, ...], angles: npt.NDArray[np.float64],
                   cols: int) -> npt.NDArray[np.float64]:
    """The angles after ``steps`` (the same unless a step changes them)."""
    geometry = Geometry(angles, cols)
    for step in steps:
        geometry = step.spec.after(geometry, step.params)
    return geometry.angles_deg


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

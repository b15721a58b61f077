"""``tomo-streamer run``: the long-running service, live reconstruction on one rank.

Per scan, while it arrives: ingest accounts for every frame and hands frames to a
:class:`~streamer.pipeline.executor.ScanProcessor` (the ingest drain), which corrects
projections as soon as the scan's darks and flats are in. When the scan closes (``end``,
``abort``, idle timeout, superseded), the sinogram section and the reconstruction run on
what arrived and the volume is written: ``complete`` only if the scan was complete;
otherwise it is still written, marked incomplete, with the accounting report inside.

A scan that cannot be processed ends alone, never the service: one too big for the
memory budget (:func:`~streamer.pipeline.plan.plan_scan`) or whose ``start`` announces a
normalisation the pipeline cannot do is refused at its ``start``, before any frame is
held; one whose data a stage refuses (a closed shutter, all-zero or saturated frames)
fails at that block. Either raises :class:`~streamer.errors.ScanFailedError` to the
ingest service, which counts the scan's later frames as rejected (``scan_failed``) and
reports it ``failed`` with the reason; its output record says the same.

With ``background=True`` (``tomo-streamer run``) the sinogram section and the writing run
in a worker thread while the ingest service keeps reading and validating its socket:
garbage is refused at once instead of piling up in libzmq's queues, and the next scan's
valid frames wait in the ingest frame store (bounded; beyond it the source waits). The
next scan is processed once the worker is done: one scan's plan in memory at a time.
``stop`` (SIGINT/SIGTERM) stops a reconstruction between blocks; what was written is kept,
marked incomplete. Several MPI ranks: :mod:`streamer.run.ranks`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from stages.prep.repair import RepairCounts
from streamer.errors import ScanFailedError, SinkError, StreamerError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.state import FramesAccepted, ScanClosed, ScanClosing, ScanOpened
from streamer.ingest.store import FrameStore
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.pipeline.images import ImageTail, image_folder, image_tail, write_images
from streamer.pipeline.plan import default_budget_bytes, plan_scan
from streamer.pipeline.sections import refuse_save_result, sections_of
from streamer.run.center_check import center_outside
from streamer.run.from_file import auto_center, center_in_use, center_label, open_volume
from streamer.run.latency import LatencyRecorder
from streamer.run.streaming import plan_streaming
from streamer.sinks.disk import os_reason
from streamer.sinks.registry import DEFAULT_FORMAT, free_output_path
from streamer.wire.protocol import StartHeader

if TYPE_CHECKING:
    from streamer.live.feed import LiveFeed


#: Outputs kept in memory by a running service (the newest): months of scans must not grow it.
MAX_KEPT_OUTPUTS: Final = 1000


def keep_newest(outputs: list[ScanOutput], output: ScanOutput) -> None:
    """Append ``output``, dropping the oldest beyond ``MAX_KEPT_OUTPUTS``."""
    outputs.append(output)
    if len(outputs) > MAX_KEPT_OUTPUTS:
        del outputs[: len(outputs) - MAX_KEPT_OUTPUTS]


def with_images(output: ScanOutput, tail: ImageTail, output_format: str, *,
                per_scan: bool) -> ScanOutput:
    """One rank, HTTomo's ``calculate_stats → rescale_to_int → save_to_images``: the
    images of the closed volume (:func:`~streamer.pipeline.images.write_images`), said in
    the output's lines and figures; a volume with errors gets none, said too. An image
    that cannot be written makes the output incomplete with the reason."""
    assert output.path is not None
    folder = image_folder(output.path, output_format, tail, per_scan=per_scan)
    if output.error is not None:
        note = f"save_to_images: no images: the volume has errors ({folder} not written)"
        return replace(output, notes=(*output.notes, note))
    try:
        folder, count = write_images(output.path, output_format, tail, per_scan=per_scan)
    except StreamerError as error:
        return replace(output, complete=False, error=str(error),
                       notes=(*output.notes, f"save_to_images: {error}"))
    return images_written(output, folder, count)


def images_written(output: ScanOutput, folder: Path, count: int) -> ScanOutput:
    """``output`` with its images: the field, the JSON report's figure, a terminal line."""
    figures = {**output.figures, "images": {"folder": str(folder), "count": count}}
    return replace(output, images=(folder, count), figures=figures,
                   notes=(*output.notes, f"save_to_images: {count} TIFFs in {folder}"))


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass(frozen=True)
class ScanOutput:
    """What the service wrote for one scan."""

    scan: str
    path: Path | None
    slices: int
    center: float | None
    complete: bool
    error: str | None = None
    repaired: int = 0  # pixel values repaired (stages.prep.repair), all reasons
    #: The CoR finder's doubts (:class:`~stages.recon.center_policy.CorEstimate`).
    center_warnings: tuple[str, ...] = ()
    #: The scan's latency line (:meth:`streamer.run.latency.LatencySummary.line`).
    latency: str | None = None
    #: Figures known only once the volume is complete (``latency``, ``transfers``), for
    #: the JSON run report, which ingest wrote when the scan closed.
    figures: dict[str, Any] = field(default_factory=dict)
    #: More terminal lines (the transfers between ranks).
    notes: tuple[str, ...] = ()
    #: How the CoR was decided (as stored beside it) and how sure its finder was.
    center_method: str | None = None
    center_confidence: float | None = None
    #: Pixel values repaired, by reason (all ranks).
    repairs: RepairCounts | None = None
    #: One line per iterative stage (iterations per band, final residual/change).
    iterations: tuple[str, ...] = ()
    #: HTTomo's ``save_to_images``: the folder and the number of images written.
    images: tuple[Path, int] | None = None


@dataclass
class LiveReconstruction:
    """Reconstructs every scan ingest closes; use ``drain`` and ``on_event`` with
    :class:`~streamer.ingest.service.IngestService`.

    Parameters
    ----------
    steps : tuple of PipelineStep
        The pipeline, ending with a reconstruction stage.
    pipeline_text : str
        Its YAML, stored in every output.
    out_dir : Path
        One ``<scan>.h5`` (or ``<scan>/`` TIFF stack) per scan.
    """

    steps: tuple[PipelineStep, ...]
    pipeline_text: str
    out_dir: Path
    output_format: str = DEFAULT_FORMAT  # a name in streamer.sinks.registry.SINKS
    #: How a fixed CoR came (``streamer.run.from_file.center_source``): "given" or "pipeline".
    center_source: str = "pipeline"
    block_frames: int | None = None  # None: from the memory plan, per scan
    block_sinograms: int | None = None
    memory_bytes: int | None = None  # None: half of this machine's memory
    device_bytes: int | None = None  # --device gpu: usable device memory for the plan
    on_output: Callable[[ScanOutput], None] | None = None
    log: Callable[[str], None] | None = None
    outputs: list[ScanOutput] = field(default_factory=list)
    feed: LiveFeed | None = None  # live view: previews, slices, counters (streamer.live.feed)
    #: Reconstruct in a worker thread while ingest keeps reading (the service); False:
    #: in the caller's thread, done when ``on_event`` returns (tests, simple drivers).
    background: bool = False
    #: Set to stop a reconstruction between blocks (SIGINT/SIGTERM).
    stop: threading.Event | None = None
    #: Monotonic seconds for the latency figures (injected in tests).
    clock: Callable[[], float] = time.monotonic
    _processor: ScanProcessor | None = None
    _scan: str | None = None  # the open scan
    _failure: str | None = None  # why the open scan failed, if it did
    _worker: threading.Thread | None = None  # one for the service's life (one malloc arena)
    _jobs: queue.SimpleQueue[tuple[ScanProcessor, ScanReport]] = field(
        default_factory=queue.SimpleQueue)
    _idle: threading.Event = field(default_factory=_set_event)
    _writing: _Volume | None = None
    #: The open scan's feed opening, held back while the worker still publishes the
    #: previous scan to the feed (the feed sees scans one after the other).
    _feed_pending: tuple[StartHeader, ScanProcessor] | None = None
    #: The open scan's latencies (handed to the worker with its processor).
    _latency: LatencyRecorder | None = None
    _latencies: dict[int, LatencyRecorder] = field(default_factory=dict)

    def __post_init__(self) -> None:
        refuse_save_result(self.steps, "run")  # intermediate files: `recon` only

    def drain(self, store: FrameStore) -> None:
        if self._processor is None:  # a failed scan: nothing is held for it
            store.take()
            return
        if self.busy:
            return  # the previous scan is still reconstructed: frames wait in the store
        self._feed_catch_up()
        try:
            self._processor.drain(store)
        except StreamerError as error:
            raise self._fail(str(error)) from None

    @property
    def busy(self) -> bool:
        """The worker still reconstructs a closed scan."""
        return not self._idle.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the worker's reconstruction, if any; True when none is left."""
        return self._idle.wait(timeout_s)

    def _submit(self, processor: ScanProcessor, report: ScanReport) -> None:
        self.wait()  # one reconstruction at a time: one scan's plan in memory
        self._idle.clear()
        if self._worker is None:
            # A daemon: idle it holds nothing; the drivers wait() before they exit.
            self._worker = threading.Thread(target=self._work, name="reconstruction",
                                            daemon=True)
            self._worker.start()
        self._jobs.put((processor, report))

    def _work(self) -> None:
        while True:
            processor, report = self._jobs.get()
            try:
                self._reconstruct(processor, report)
            finally:
                self._idle.set()

    def on_event(self, event: Any) -> None:
        if isinstance(event, ScanOpened):
            self._open(event.start)
        elif isinstance(event, FramesAccepted):
            if self._latency is not None:
                message = event.message.header
                self._latency.frames_received(
                    message.first + int(i) for i in np.flatnonzero(event.accepted))
            if self.feed is not None:
                self.feed.frames_accepted(event)
        elif (isinstance(event, ScanClosing) and event.scan == self._scan
              and self._processor is not None):
            self.wait()  # one scan's data in memory at a time
            self._feed_catch_up()
            try:  # the last projections: a stage that refuses them fails the report too
                self._processor.finish_projections()
            except StreamerError as error:
                raise self._fail(str(error)) from None
        elif isinstance(event, ScanClosed) and event.report.scan == self._scan:
            processor, failure = self._processor, self._failure
            self._processor, self._scan, self._failure = None, None, None
            if processor is not None and self._latency is not None:
                self._latencies[id(processor)] = self._latency
            self._latency = None
            if self.feed is not None:
                self.wait()  # the feed sees the previous scan closed first
                self._feed_catch_up()
                self.feed.scan_closing()
            if processor is None:
                reason = failure or event.report.failure or "refused"
                self._publish(ScanOutput(event.report.scan, None, 0, None, False, reason),
                              event.report, None)
            elif self.background:
                self._submit(processor, event.report)
            else:
                self._reconstruct(processor, event.report)

    def _open(self, start: StartHeader) -> None:
        self._scan, self._processor, self._failure = start.scan, None, None
        try:
            # A fixed CoR off this scan's detector, a normalisation the pipeline cannot
            # do, a scan bigger than the budget: refused before any frame is held.
            check_servable(self.steps, start)
            frames, sinograms, plans, memory = plan_scan(
                self.steps, rows=start.rows, cols=start.cols, angles=start.projections,
                references=start.darks + start.flats, dtype=start.wire_dtype,
                budget_bytes=self.memory_bytes or default_budget_bytes(),
                device_bytes=self.device_bytes,
            )
        except StreamerError as error:
            raise self._fail(f"refused at its start: {error}") from None
        if self.log is not None:
            self.log(f"scan {start.scan}: {memory.describe()}")
            for plan in plans:
                self.log(f"scan {start.scan}: plan: {plan.describe()}")
        self._processor = ScanProcessor(
            self.steps, start, block_frames=self.block_frames or frames,
            block_sinograms=self.block_sinograms or sinograms,
            on_sinograms=self._on_sinograms, resolve_center=auto_center,
            on_projections=self.feed.projections if self.feed is not None else None,
        )
        streams = plan_streaming(self.steps, rows=start.rows, cols=start.cols,
                              projections=start.projections,
                              block_sinograms=self.block_sinograms or sinograms,
                              memory_left=memory.budget - memory.total)
        if streams.section is not None:
            streams.section.log = self.log
            streams.section.repairs = self._processor.repairs
            self._processor.streaming = streams.section
        recorder = self._latency = LatencyRecorder(clock=self.clock,
                                                   streaming=streams.section is not None)
        if self.feed is not None:
            self.feed.on_preview = _previews_of(start.scan, recorder)
        if self.log is not None:
            self.log(f"scan {start.scan}: {streams.reason}")
        if self.feed is not None:
            self._feed_pending = (start, self._processor)
            if not self.busy:
                self._feed_catch_up()

    def _feed_catch_up(self) -> None:
        """Open the scan in the feed once the worker is done with the previous one
        (called from the ingest thread, as the feed expects)."""
        pending, self._feed_pending = self._feed_pending, None
        if pending is not None and self.feed is not None:
            start, processor = pending
            center, size = self._feed_geometry()
            self.feed.scan_opened(start, target=processor, center=center, slice_size=size)

    def _fail(self, reason: str) -> ScanFailedError:
        """The open scan cannot be processed: drop what it holds, say why."""
        self._failure = reason
        self._processor = None
        if self.log is not None:
            self.log(f"scan {self._scan}: FAILED: {reason}")
        return ScanFailedError(self._failure)

    def _reconstruct(self, processor: ScanProcessor, report: ScanReport) -> None:
        """Finish one closed scan and publish its output (in the worker, if any): a
        failure of any kind becomes that scan's output error, never a dead thread."""
        try:
            output = self._finish(processor, report)
        except Exception as error:  # a bug must not kill the service silently
            output = ScanOutput(report.scan, None, 0, processor.center, False,
                                f"internal error while reconstructing: {error!r}")
        finally:
            self._latencies.pop(id(processor), None)
        self._publish(output, report, processor.center_method)

    def _publish(self, output: ScanOutput, report: ScanReport, method: str | None) -> None:
        keep_newest(self.outputs, output)
        if self.feed is not None:
            self.feed.scan_closed(
                report, center=output.center, output=str(output.path or "") or None,
                center_method=center_label(method, self.center_source,
                                           warnings=output.center_warnings),
                error=output.error, latency=output.figures.get("latency"))
        if self.on_output is not None:
            self.on_output(output)

    def _on_sinograms(self, block: ProcessedBlock) -> None:
        volume = self._writing
        assert volume is not None
        volume.write(block)
        if self.feed is not None:
            self.feed.slices(block)

    def _feed_geometry(self) -> tuple[float | None, int | None]:
        """The pipeline's fixed CoR and slice size, if it sets them (for the preview)."""
        params = [dict(s.params) for s in self.steps if s.spec.needs_angles]
        first = params[0] if params else {}
        center, size = first.get("center"), first.get("output_size")
        return (float(center) if center is not None else None,
                int(size) if size is not None else None)

    def _finish(self, processor: ScanProcessor, report: ScanReport) -> ScanOutput:
        """The sinogram section, each block written as it comes (no volume is kept in
        memory); a disk error, a stage error or ``stop`` ends this scan's output, never
        the service: the volume keeps what was written, marked incomplete, and says why."""
        scan = report.scan
        volume = self._writing = _Volume(lambda first: self._open_writer(processor, first))
        stop = self.stop
        processor.should_stop = lambda: volume.failure is not None or (
            stop is not None and stop.is_set())
        failure: str | None = None
        try:
            processor.finish()
        except StreamerError as error:
            failure = str(error)
        finally:
            self._writing = None
            processor.should_stop = None  # no cycle keeps the scan's buffers alive
        center = center_in_use(processor.center, self.steps, processor.start.cols)
        rows = processor.band.height if processor.band is not None else 0
        failure = failure or volume.failure
        repairs = processor.repairs
        warning = repairs.warning()
        if warning is not None and self.log is not None:
            self.log(f"scan {scan}: warning: {warning}")
        if failure is None and processor.stopped:
            failure = (f"stopped by the service (SIGINT/SIGTERM) after {volume.written} of "
                       f"{rows} slices")
        if volume.writer is None:
            if failure is None and processor.band is None:
                failure = "no projection arrived: nothing to reconstruct"
            return ScanOutput(scan, None, 0, center, False, failure, repairs.total,
                              processor.center_warnings)
        complete = (report.complete and processor.complete and failure is None
                    and volume.written == rows)
        latency = self._latencies.pop(id(processor), None)
        document = {**report.as_dict(), "repairs": repairs.as_dict()}
        line = None
        figures: dict[str, Any] = {}
        if latency is not None:
            streaming = processor.streaming
            latency.streaming = streaming is not None and getattr(streaming, "fallback",
                                                                  None) is None
            # Every slice is written, only the close is left (the report goes in it);
            # no frame at all: no figure.
            with contextlib.suppress(StreamerError):
                latency.volume_complete()
            summary = latency.summary()
            document["latency"] = figures["latency"] = summary.as_dict()
            line = summary.line()  # printed under the terminal's volume: line
        if failure is not None:
            document["reconstruction_error"] = failure
        try:
            volume.writer.close(complete=complete, report=document)
        except StreamerError as error:
            failure = failure or str(error)
            complete = False
        output = ScanOutput(scan, volume.path, volume.written, center, complete, failure,
                            repairs.total, processor.center_warnings, line, figures)
        tail = image_tail(self.steps)
        return output if tail is None else with_images(output, tail, self.output_format,
                                                        per_scan=True)

    def _open_writer(self, processor: ScanProcessor, first: ProcessedBlock) -> tuple[Path, Any]:
        """Name and open this scan's volume, shaped after its first block of slices."""
        scan = processor.start.scan
        rows = processor.band.height if processor.band is not None else processor.start.rows
        center = center_in_use(processor.center, self.steps, processor.start.cols)
        method = center_label(processor.center_method, self.center_source,
                              warnings=processor.center_warnings)
        try:
            path = self._path_for(scan)
            return path, open_volume(path, first, output_format=self.output_format,
                                     detector_rows=list(range(rows)), center=center,
                                     method=method, pipeline_text=self.pipeline_text,
                                     scan=scan, metadata=processor.repairs.as_metadata())
        except OSError as error:
            raise SinkError(f"{self.out_dir}: cannot write there: {os_reason(error)}") from None

    def _path_for(self, scan: str) -> Path:
        return free_output_path(self.out_dir, scan, self.output_format)


@dataclass
class _Volume:
    """The volume of the scan being reconstructed, written block by block as the
    sinogram section hands the blocks out; the first error stops it (kept in ``failure``)."""

    opener: Callable[[ProcessedBlock], tuple[Path, Any]]
    path: Path | None = None
    writer: Any = None
    written: int = 0
    failure: str | None = None

    def write(self, block: ProcessedBlock) -> None:
        if self.failure is not None:
            return
        try:
            if self.writer is None:
                self.path, self.writer = self.opener(block)
            self.writer.write(int(block.indices[0]), block.data)
        except StreamerError as error:
            self.failure = str(error)
            return
        self.written += int(block.data.shape[0])


def _previews_of(scan: str, recorder: LatencyRecorder) -> Callable[[str, int], None]:
    """The feed's ``on_preview`` for one scan: its previews go to its recorder."""

    def published(name: str, newest_frame: int) -> None:
        if name == scan:
            recorder.preview_published(newest_frame)

    return published


def check_servable(steps: tuple[PipelineStep, ...], start: StartHeader) -> None:
    """Refuse (:class:`~streamer.errors.ScanFailedError`) a scan the pipeline cannot serve,
    from its ``start`` alone: a fixed CoR off its detector, or a normalisation the pipeline
    cannot do. The same rule on one rank and on R ranks."""
    refusal = center_outside(steps, start.cols)
    if refusal is not None:
        raise ScanFailedError(refusal)
    check_normalisation(steps, start)


def check_normalisation(steps: tuple[PipelineStep, ...], start: StartHeader) -> None:
    """Refuse a scan whose ``start`` announces a normalisation the pipeline cannot do
    (flat/dark stages, but the scan brings no flats: ``air`` or ``none``)."""
    needs = [s for s in sections_of(steps)[0].steps if s.spec.needs_references]
    if needs and (start.normalisation != "flat_dark" or start.flats == 0):
        flats = ("flats: expected at least 1 flat frame, got 0" if start.flats == 0
                 else f"{start.flats} flats")
        raise ScanFailedError(
            f"start.normalisation: the pipeline's stage {needs[0].name!r} (pipeline entry "
            f"at {needs[0].where}) needs flat/dark references, got normalisation "
            f"{start.normalisation!r} with {flats} (serve such scans with a pipeline for "
            "them, e.g. normalize_bg)")

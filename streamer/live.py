"""``tomo-streamer run``: the long-running service, live reconstruction on one rank.

Per scan, while it arrives: ingest accounts for every frame and hands frames to a
:class:`~streamer.pipeline.executor.ScanProcessor` (the ingest drain), which corrects
projections as soon as the scan's darks and flats are in. When the scan closes (``end``,
``abort``, idle timeout, superseded), the sinogram section and the reconstruction run on
what arrived and the volume is written: ``complete`` only if the scan was complete;
otherwise it is still written, marked incomplete, with the accounting report inside.

While a scan is reconstructed the service does not read its socket, so the next scan's
source waits (backpressure). Several MPI ranks: :mod:`streamer.live_ranks`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from streamer.center_check import center_outside
from streamer.errors import StreamerError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.state import FramesAccepted, ScanClosed, ScanOpened
from streamer.ingest.store import FrameStore
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.pipeline.plan import block_sizes, default_budget_bytes
from streamer.recon import auto_center, center_in_use, center_label, open_volume
from streamer.sinks.disk import os_reason

if TYPE_CHECKING:
    from streamer.feed import LiveFeed


#: Outputs kept in memory by a running service (the newest): months of scans must not grow it.
MAX_KEPT_OUTPUTS: Final = 1000


def keep_newest(outputs: list[ScanOutput], output: ScanOutput) -> None:
    """Append ``output``, dropping the oldest beyond ``MAX_KEPT_OUTPUTS``."""
    outputs.append(output)
    if len(outputs) > MAX_KEPT_OUTPUTS:
        del outputs[: len(outputs) - MAX_KEPT_OUTPUTS]


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
    output_format: Literal["hdf5", "tiff"] = "hdf5"
    block_frames: int | None = None  # None: from the memory plan, per scan
    block_sinograms: int | None = None
    memory_bytes: int | None = None  # None: half of this machine's memory
    device_bytes: int | None = None  # --device gpu: usable device memory for the plan
    on_output: Callable[[ScanOutput], None] | None = None
    log: Callable[[str], None] | None = None
    outputs: list[ScanOutput] = field(default_factory=list)
    feed: LiveFeed | None = None  # live view: previews, slices, counters (streamer.feed)
    _processor: ScanProcessor | None = None
    _refused: str | None = None  # why the open scan was refused at its start
    _blocks: list[ProcessedBlock] = field(default_factory=list)

    def drain(self, store: FrameStore) -> None:
        if self._processor is not None:
            self._processor.drain(store)
        else:  # frames with no open scan cannot happen (start opens the store); keep safe
            store.take()

    def on_event(self, event: Any) -> None:
        if isinstance(event, ScanOpened):
            self._blocks = []
            start = event.start
            # A fixed CoR off this scan's detector: refuse the scan (its frames are
            # dropped by drain), report it when it closes; the service goes on.
            refusal = center_outside(self.steps, start.cols)
            self._refused = None if refusal is None else f"refused at its start: {refusal}"
            if self._refused is not None:
                self._processor = None
                if self.log is not None:
                    self.log(f"scan {start.scan}: {self._refused}")
                return
            frames, sinograms, plans = block_sizes(
                self.steps, rows=start.rows, cols=start.cols,
                angles=max(start.projections, 1), dtype=start.wire_dtype,
                budget_bytes=self.memory_bytes or default_budget_bytes(),
                device_bytes=self.device_bytes,
            )
            if self.log is not None:
                for plan in plans:
                    self.log(f"scan {start.scan}: plan: {plan.describe()}")
            self._processor = ScanProcessor(
                self.steps, start, block_frames=self.block_frames or frames,
                block_sinograms=self.block_sinograms or sinograms,
                on_sinograms=self._on_sinograms, resolve_center=auto_center,
                on_projections=self.feed.projections if self.feed is not None else None,
            )
            if self.feed is not None:
                center, size = self._feed_geometry()
                self.feed.scan_opened(start, target=self._processor, center=center,
                                      slice_size=size)
        elif isinstance(event, ScanClosed) and self._refused is not None:
            output = ScanOutput(event.report.scan, None, 0, None, False, self._refused)
            self._refused = None
            keep_newest(self.outputs, output)
            if self.on_output is not None:
                self.on_output(output)
        elif isinstance(event, FramesAccepted) and self.feed is not None:
            if self._refused is None:
                self.feed.frames_accepted(event)
        elif isinstance(event, ScanClosed) and self._processor is not None:
            if self.feed is not None:
                self.feed.scan_closing()
            output = self._finish(self._processor, event.report)
            method = self._processor.center_method
            self._processor = None
            self._blocks = []
            keep_newest(self.outputs, output)
            if self.feed is not None:
                self.feed.scan_closed(
                    event.report, center=output.center, output=str(output.path or "") or None,
                    center_method=center_label(method, "pipeline",
                                               warnings=output.center_warnings),
                    error=output.error)
            if self.on_output is not None:
                self.on_output(output)

    def _on_sinograms(self, block: ProcessedBlock) -> None:
        self._blocks.append(block)
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
        scan = report.scan
        try:
            processor.finish()
        except StreamerError as error:
            return ScanOutput(scan, None, 0, processor.center, False, str(error))
        if not self._blocks:
            return ScanOutput(scan, None, 0, processor.center, False,
                              "no projection arrived: nothing to reconstruct")
        complete = report.complete and processor.complete
        repairs = processor.repairs
        warning = repairs.warning()
        if warning is not None and self.log is not None:
            self.log(f"scan {scan}: warning: {warning}")
        first = self._blocks[0]
        rows = sum(block.data.shape[0] for block in self._blocks)
        center = center_in_use(processor.center, self.steps, processor.start.cols)
        method = center_label(processor.center_method, "pipeline",
                              warnings=processor.center_warnings)
        # A disk error (full, read-only) ends this scan's output, never the service: the
        # volume keeps what was written, marked incomplete, and the error is reported.
        try:
            path = self._path_for(scan)
            writer = open_volume(path, first, output_format=self.output_format,
                                 detector_rows=list(range(rows)), center=center,
                                 method=method, pipeline_text=self.pipeline_text, scan=scan,
                                 metadata=repairs.as_metadata())
        except OSError as error:
            return ScanOutput(scan, None, 0, center, False,
                              f"{self.out_dir}: cannot write there: {os_reason(error)}")
        except StreamerError as error:
            return ScanOutput(scan, None, 0, center, False, str(error))
        failure: str | None = None
        try:
            for block in self._blocks:
                writer.write(int(block.indices[0]), block.data)
        except StreamerError as error:
            failure = str(error)
        finally:
            try:
                writer.close(complete=complete and failure is None,
                             report={**report.as_dict(), "repairs": repairs.as_dict()})
            except StreamerError as error:
                failure = failure or str(error)
        return ScanOutput(scan, path, rows, center, complete and failure is None, failure,
                          repairs.total, processor.center_warnings)

    def _path_for(self, scan: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", scan)
        suffix = "" if self.output_format == "tiff" else ".h5"
        path = self.out_dir / f"{stem}{suffix}"
        number = 2
        while path.exists():
            path = self.out_dir / f"{stem}-{number}{suffix}"
            number += 1
        return path

"""``tomo-streamer demo``: a simulated detector streaming into ``run``'s path, in one process.

The demo is a thin driver of the production path: the ingest service (a cluster of one
rank, as ``run`` on one rank) binds a random loopback port and runs in a thread; the
simulated scan is sent from the calling thread over TCP, the way a real detector sends;
the one runner (:class:`~streamer.run.ranks.RankedReconstruction`, one rank on an
in-memory link, reconstructing in its worker thread as ``run`` does) corrects the frames
as they arrive, reconstructs the scan (``fourier_fbp``, CoR found by Vo's method; streamed
while the scan arrives when the pipeline and its CoR allow it) into ``demo.h5``, and its
observer (:class:`~streamer.live.relay.FeedRelay`, the same as ``run``'s) gives the latency
figures and, with ``--feed``, serves the live feed.

What the demo adds is the check against the phantom the simulator knows: each corrected
block is compared with the exact line integrals as it passes (a histogram of the errors,
never the corrected scan itself), and the written volume is read back, a few slices at a
time, and compared with the phantom. The run report and the volume go to ``out_dir`` (a
fresh temporary folder by default).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import h5py
import numpy as np
import numpy.typing as npt
import zmq

from stages.registry import REGISTRY
from streamer.errors import StreamerError
from streamer.exchange.links import MemoryLink, MemoryNetwork
from streamer.ingest.accounting import ScanReport
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.report import add_to_report, report_document, write_report
from streamer.ingest.service import IngestService, IngestSettings
from streamer.pipeline.config import PipelineStep, parse_pipeline
from streamer.pipeline.executor import ProcessedBlock
from streamer.run.observer import RankObserver
from streamer.run.ranks import RankedReconstruction
from streamer.sinks.disk import os_reason
from streamer.sinks.hdf5 import VOLUME_PATH
from streamer.sources.scan import FrameReader
from streamer.sources.sender import SendOptions, new_scan_id, send_scan
from streamer.wire.transport import Endpoint, bound_address, open_socket

if TYPE_CHECKING:
    from streamer.exchange.reslice import ExchangeStats
    from streamer.ingest.state import FramesAccepted, IngestState
    from streamer.run.output import ScanOutput
    from streamer.wire.protocol import StartHeader

DEMO_TIMEOUT_S: Final = 120.0
DEMO_PIPELINE: Final = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fourier_fbp
    parameters: {filter_name: shepp}  # a mild window: the simulated scan has photon noise
"""
#: The volume's file name in ``out_dir``.
VOLUME_NAME: Final = "demo.h5"
#: Resolution of the median of |corrected − exact| (a histogram, not every value kept).
ERROR_BIN: Final = 1e-5
_ERROR_BINS: Final = 200_000  # errors up to 2.0; larger ones fall in the last bin
_SLICES_READ: Final = 16  # slices read back at a time for the volume's error


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, for the terminal summary."""

    report_path: Path
    report: ScanReport
    corrected: int
    median_abs_error: float | None  # against the phantom, when the source knows it
    volume_path: Path | None
    center: float | None
    volume_error: float | None  # relative L2 against the phantom inside the field of view
    center_method: str = "vo"  # as stored beside the CoR: "vo", "user (viewer)" …
    center_warnings: tuple[str, ...] = ()  # the CoR finder's doubts
    latency: str | None = None  # frame → preview, last frame → volume (the runner's line)
    complete: bool = False  # the report and the volume both say complete
    error: str | None = None  # why the volume is missing or incomplete


@dataclass
class ProjectionCheck:
    """Corrected projections against the exact line integrals, block by block as they
    pass: a count and a histogram of ``|corrected − exact|`` (bins of
    :data:`ERROR_BIN`), so the median is known to that resolution without keeping the
    corrected scan."""

    attenuation: Callable[[int, int], npt.NDArray[np.float64]] | None
    corrected: int = 0
    counts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(_ERROR_BINS + 1, np.int64))

    def add(self, block: ProcessedBlock) -> None:
        """One block of corrected projections (frame indices, ``(n, rows, cols)``)."""
        self.corrected += len(block.indices)
        if self.attenuation is None:
            return
        for index, frame in zip(block.indices.tolist(), block.data, strict=True):
            error = np.abs(frame - self.attenuation(index, index + 1)[0]).ravel() / ERROR_BIN
            finite = np.isfinite(error)  # a NaN or inf counts as the largest error
            bins = np.full(error.shape, _ERROR_BINS, np.int64)
            bins[finite] = np.minimum(error[finite], _ERROR_BINS).astype(np.int64)
            self.counts += np.bincount(bins, minlength=_ERROR_BINS + 1)

    def median(self) -> float | None:
        """The median error (the middle of its bin), None when nothing was compared."""
        total = int(self.counts.sum())
        if total == 0:
            return None
        middle = int(np.searchsorted(np.cumsum(self.counts), (total + 1) // 2))
        return (middle + 0.5) * ERROR_BIN


class WatchingObserver(RankObserver, Protocol):
    """``run``'s observer, which also reads ingest's state (the feed's counters)."""

    def watch(self, state: IngestState) -> None:
        """Read duplicates, out-of-range and rejected counts from ingest's state."""


@dataclass
class CheckingObserver:
    """The runner's observer for the demo: every hook goes to ``inner`` (``run``'s own
    observer, :class:`~streamer.live.relay.FeedRelay`, which serves the feed and gives
    the latency figures), and each corrected block also goes to ``check``."""

    check: ProjectionCheck
    inner: RankObserver | None = None

    def serve(self) -> None:
        if self.inner is not None:
            self.inner.serve()

    def scan_opened(self, serial: int, start: StartHeader) -> None:
        if self.inner is not None:
            self.inner.scan_opened(serial, start)

    def frames_accepted(self, event: FramesAccepted) -> None:
        if self.inner is not None:
            self.inner.frames_accepted(event)

    def projections(self, block: ProcessedBlock) -> None:
        self.check.add(block)
        if self.inner is not None:
            self.inner.projections(block)

    def scan_closing(self, serial: int) -> None:
        if self.inner is not None:
            self.inner.scan_closing(serial)

    def viewer_center(self, serial: int, serve: Callable[[], None] | None = None
                      ) -> float | None:
        return None if self.inner is None else self.inner.viewer_center(serial, serve)

    def center_settled(self, serial: int, center: float, method: str) -> None:
        if self.inner is not None:
            self.inner.center_settled(serial, center, method)

    def slices(self, serial: int, indices: npt.NDArray[np.int64],
               data: npt.NDArray[np.float32]) -> None:
        if self.inner is not None:
            self.inner.slices(serial, indices, data)

    def part_done(self, serial: int, exchange: ExchangeStats | None, *,
                  streamed: bool = False) -> None:
        if self.inner is not None:
            self.inner.part_done(serial, exchange, streamed=streamed)

    def report_merged(self, serial: int, report: ScanReport) -> None:
        if self.inner is not None:
            self.inner.report_merged(serial, report)

    def finish_master(self, serial: int, document: dict[str, Any],
                      serve: Callable[[], None] | None = None,
                      silent: tuple[int, ...] = ()) -> None:
        if self.inner is not None:
            self.inner.finish_master(serial, document, serve, silent)

    def scan_closed(self, serial: int, output: ScanOutput) -> ScanOutput:
        return output if self.inner is None else self.inner.scan_closed(serial, output)


def demo_steps() -> tuple[PipelineStep, ...]:
    """The demo's pipeline, parsed (:data:`DEMO_PIPELINE`)."""
    return parse_pipeline(DEMO_PIPELINE, REGISTRY, source="demo pipeline").steps


def run_demo(
    reader: FrameReader, options: SendOptions, out_dir: Path | None = None,
    *, observer: Callable[[MemoryLink], WatchingObserver] | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Send ``reader`` into ingest and ``run``'s one runner on one rank.

    ``observer`` makes ``run``'s observer on the link it is given (the command passes
    :class:`~streamer.live.relay.FeedRelay`, which serves ``--feed`` and gives the
    latency figures; without one there are no latency figures and nothing is served);
    ``log`` takes the runner's lines (the plan, warnings)."""
    out = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="tomo-streamer-demo-"))
    if options.scan_id is None:
        options = replace(options, scan_id=new_scan_id())
    link = MemoryNetwork(1).link(0)  # one rank, as `run` without mpiexec
    control, band_link = link.duplicate(), link.duplicate()
    check = ProjectionCheck(getattr(reader, "attenuation", None))
    inner = observer(link.duplicate()) if observer is not None else None
    relay = CheckingObserver(check, inner)
    outputs: list[ScanOutput] = []
    runner = RankedReconstruction(demo_steps(), DEMO_PIPELINE, out, control, band_link,
                                  output=out / VOLUME_NAME, overwrite=True,
                                  on_output=outputs.append, log=log, observer=relay,
                                  background=True)
    settings = IngestSettings(idle_timeout_s=10.0)
    reports: list[tuple[ScanReport, Path]] = []
    config: dict[str, Any] = {"demo": True, "pipeline": DEMO_PIPELINE}

    def on_report(report: ScanReport) -> None:
        reports.append((report, write_report(report_document(report, config=config), out)))

    with zmq.Context() as context:
        pull = open_socket(
            context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16,
            max_message_bytes=settings.limits.max_message_bytes,
        )
        config["address"] = bound_address(pull)
        service = IngestService(pull, settings, drain=runner.drain, on_event=runner.on_event,
                                on_report=on_report, log=log, await_downstream=runner.wait,
                                cluster=ClusterIngest(link, settings.idle_timeout_s,
                                                      settings.limits))
        if inner is not None:
            inner.watch(service.state)
        stop = threading.Event()
        worker = threading.Thread(
            target=service.run, kwargs={"max_scans": 1, "stop": stop}, name="ingest"
        )
        worker.start()
        push = open_socket(
            context, "push", Endpoint(config["address"], bind=False), hwm=16,
            send_timeout_ms=30_000, linger_ms=5_000,
        )
        try:
            send_scan(push, reader, options)
            worker.join(DEMO_TIMEOUT_S)
        finally:
            stop.set()
            worker.join()
            runner.wait(DEMO_TIMEOUT_S)  # the reconstruction's worker
            push.close()
            pull.close()
    if not reports:
        raise StreamerError("demo: ingest closed no scan; see the messages above")
    report, report_path = reports[0]
    if not outputs:
        raise StreamerError(f"demo: scan {report.scan} closed but no volume was finished "
                            f"within {DEMO_TIMEOUT_S:g} s")
    output = outputs[-1]
    if output.figures:
        try:
            add_to_report(report_path, output.figures)  # latency: known once the volume is
        except OSError as error:
            raise StreamerError(f"demo: {report_path}: figures not added: "
                                f"{os_reason(error)}") from None
    return DemoResult(
        report_path, report, check.corrected, check.median(), output.path, output.center,
        _volume_error(reader, output.path), output.center_method or "vo",
        output.center_warnings, output.latency, report.complete and output.complete,
        output.error)


def _volume_error(reader: FrameReader, path: Path | None) -> float | None:
    """Relative L2 of the written volume against the phantom inside the field of view,
    read back a few slices at a time."""
    ground_truth = getattr(reader, "ground_truth", None)
    if ground_truth is None or path is None or not path.is_file():
        return None
    truth = ground_truth()
    n = truth.shape[-1]
    axis = np.arange(n) - (n - 1) / 2
    inside = np.hypot(*np.meshgrid(axis, axis)) < 0.42 * n
    difference = reference = 0.0
    with h5py.File(path, "r") as file:
        volume = file[VOLUME_PATH]
        if volume.shape != truth.shape:
            raise StreamerError(f"demo: {path}: expected a volume of shape {truth.shape}, "
                                f"got {volume.shape}")
        for first in range(0, volume.shape[0], _SLICES_READ):
            slices = np.asarray(volume[first:first + _SLICES_READ], np.float64)
            expected = truth[first:first + _SLICES_READ]
            difference += float(np.sum((slices - expected)[:, inside] ** 2))
            reference += float(np.sum(expected[:, inside].astype(np.float64) ** 2))
    return float(np.sqrt(difference / reference)) if reference > 0 else None

"""``tomo-streamer demo``: a simulated detector streaming into ingest, in one process.

The ingest service binds a random loopback port and runs in a thread; the simulated scan
is sent from the calling thread over TCP, the same path a real detector takes. Frames are
corrected as they arrive (flat/dark and −log, the pipeline's projection section) and
compared with the phantom's exact line integrals; when the scan is in, it is
reconstructed (``fourier_fbp``, CoR found by Vo's method) into ``demo.h5`` and compared with the
phantom. The run report and the volume go to ``out_dir`` (a fresh temporary folder by
default).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from stages.registry import REGISTRY
from streamer.errors import StreamerError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.report import report_document, write_report
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import FramesAccepted
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.run.from_file import auto_center, center_label, open_volume
from streamer.sources.scan import FrameReader
from streamer.sources.sender import SendOptions, new_scan_id, send_scan, start_header
from streamer.wire.transport import Endpoint, bound_address, open_socket

if TYPE_CHECKING:
    from streamer.live.feed import LiveFeed

DEMO_TIMEOUT_S = 120.0
DEMO_PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fourier_fbp
    parameters: {filter_name: shepp}  # a mild window: the simulated scan has photon noise
"""


@dataclass(frozen=True)
class DemoResult:
    report_path: Path
    report: ScanReport
    corrected: int
    median_abs_error: float | None  # against the phantom, when the source knows it
    volume_path: Path | None
    center: float | None
    volume_error: float | None  # relative L2 against the phantom inside the field of view
    center_method: str = "vo"  # "vo" (Vo's method) or "user (viewer)"


def run_demo(
    reader: FrameReader, options: SendOptions, out_dir: Path | None = None,
    *, feed: LiveFeed | None = None,
) -> DemoResult:
    """Stream ``reader`` through ingest and correct the frames as they arrive; ``feed``
    publishes previews, slices and counters for viewers."""
    out = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="tomo-streamer-demo-"))
    if options.scan_id is None:
        options = replace(options, scan_id=new_scan_id())
    steps = parse_pipeline(DEMO_PIPELINE, REGISTRY, source="demo pipeline").steps
    corrected: list[ProcessedBlock] = []
    slices: list[ProcessedBlock] = []
    start = start_header(reader.layout, str(options.scan_id))
    processor = ScanProcessor(
        steps, start, block_frames=16, resolve_center=auto_center,
        on_projections=_both(corrected.append, feed.projections if feed else None),
        on_sinograms=_both(slices.append, feed.slices if feed else None))
    if feed is not None:
        feed.scan_opened(start, target=processor)
    settings = IngestSettings(idle_timeout_s=10.0)
    with zmq.Context() as context:
        pull = open_socket(
            context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16,
            max_message_bytes=settings.limits.max_message_bytes,
        )
        address = bound_address(pull)
        service = IngestService(pull, settings, drain=processor.drain,
                                on_event=_counting(feed) if feed is not None else None)
        if feed is not None:
            feed.watch(service.state)
        stop = threading.Event()
        worker = threading.Thread(
            target=service.run, kwargs={"max_scans": 1, "stop": stop}, name="ingest"
        )
        worker.start()
        push = open_socket(
            context, "push", Endpoint(address, bind=False), hwm=16, send_timeout_ms=30_000,
            linger_ms=5_000,
        )
        try:
            send_scan(push, reader, options)
            worker.join(DEMO_TIMEOUT_S)
        finally:
            stop.set()
            worker.join()
            push.close()
            pull.close()
    if not service.reports:
        raise StreamerError("demo: ingest closed no scan; see the messages above")
    report = service.reports[0]
    if feed is not None:
        feed.scan_closing()
    processor.finish()
    path = write_report(
        report_document(report, config={"demo": True, "address": address,
                                        "pipeline": DEMO_PIPELINE}), out
    )
    volume_path = _write_volume(out / "demo.h5", slices, processor, report)
    if feed is not None:
        feed.scan_closed(report, center=processor.center, center_method=_method(processor),
                         output=str(volume_path) if volume_path else None)
    return DemoResult(path, report, sum(len(b.indices) for b in corrected),
                      _error_against_truth(reader, corrected), volume_path,
                      processor.center, _volume_error(reader, slices), _method(processor))


def _write_volume(path: Path, slices: list[ProcessedBlock], processor: ScanProcessor,
                  report: ScanReport) -> Path | None:
    if not slices:
        return None
    first = slices[0]
    rows = sum(block.data.shape[0] for block in slices)
    writer = open_volume(path, first, output_format="hdf5",
                         detector_rows=list(range(rows)),
                         center=float(processor.center or 0.0), method=_method(processor),
                         pipeline_text=DEMO_PIPELINE, scan=report.scan, overwrite=True)
    try:
        for block in slices:
            writer.write(int(block.indices[0]), block.data)
    finally:
        writer.close(complete=report.complete and processor.complete,
                     report=report.as_dict())
    return path


def _method(processor: ScanProcessor) -> str:
    """How the CoR was found: Vo's method, or the value a viewer set."""
    return center_label(processor.center_method, "vo")


def _both(first: Callable[[ProcessedBlock], Any],
          second: Callable[[ProcessedBlock], Any] | None) -> Callable[[ProcessedBlock], None]:
    """One processor callback that calls two (the demo's lists and the live feed)."""
    def call(block: ProcessedBlock) -> None:
        first(block)
        if second is not None:
            second(block)
    return call


def _counting(feed: LiveFeed) -> Callable[[Any], None]:
    """An ingest ``on_event`` that counts accepted frames for the feed."""
    def on_event(event: Any) -> None:
        if isinstance(event, FramesAccepted):
            feed.frames_accepted(event)
    return on_event


def _volume_error(reader: FrameReader, slices: list[ProcessedBlock]) -> float | None:
    """Relative L2 of the reconstruction against the phantom, inside the field of view."""
    ground_truth = getattr(reader, "ground_truth", None)
    if ground_truth is None or not slices:
        return None
    volume = np.concatenate([block.data for block in slices])
    truth = ground_truth()
    n = volume.shape[-1]
    axis = np.arange(n) - (n - 1) / 2
    inside = np.hypot(*np.meshgrid(axis, axis)) < 0.42 * n
    return float(np.linalg.norm((volume - truth)[:, inside])
                 / np.linalg.norm(truth[:, inside]))


def _error_against_truth(reader: FrameReader, blocks: list[ProcessedBlock]) -> float | None:
    """Median |corrected − exact line integral| when the source can say the truth."""
    attenuation = getattr(reader, "attenuation", None)
    if attenuation is None or not blocks:
        return None
    errors = []
    for block in blocks:
        for index, frame in zip(block.indices.tolist(), block.data, strict=True):
            errors.append(np.abs(frame - attenuation(index, index + 1)[0]).ravel())
    return float(np.median(np.concatenate(errors)))

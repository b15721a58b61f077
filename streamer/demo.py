"""``tomo-streamer demo``: a simulated detector streaming into ingest, in one process.

The ingest service binds a random loopback port and runs in a thread; the simulated scan
is sent from the calling thread over TCP, the same path a real detector takes. Frames are
corrected as they arrive (flat/dark and −log, the pipeline's projection section) and
compared with the phantom's exact line integrals. The run report is written to
``out_dir`` (a fresh temporary folder by default).
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zmq

from stages.registry import REGISTRY
from streamer.errors import StreamerError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.report import report_document, write_report
from streamer.ingest.service import IngestService, IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.sources.scan import FrameReader
from streamer.sources.sender import SendOptions, new_scan_id, send_scan, start_header
from streamer.transport import Endpoint, bound_address, open_socket

DEMO_TIMEOUT_S = 120.0
DEMO_PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
"""


@dataclass(frozen=True)
class DemoResult:
    report_path: Path
    report: ScanReport
    corrected: int
    median_abs_error: float | None  # against the phantom, when the source knows it


def run_demo(
    reader: FrameReader, options: SendOptions, out_dir: Path | None = None
) -> DemoResult:
    """Stream ``reader`` through ingest and correct the frames as they arrive."""
    out = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="tomo-streamer-demo-"))
    if options.scan_id is None:
        options = replace(options, scan_id=new_scan_id())
    steps = parse_pipeline(DEMO_PIPELINE, REGISTRY, source="demo pipeline").steps
    corrected: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(reader.layout, str(options.scan_id)),
                              block_frames=16, on_projections=corrected.append)
    settings = IngestSettings(idle_timeout_s=10.0)
    with zmq.Context() as context:
        pull = open_socket(
            context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16,
            max_message_bytes=settings.limits.max_message_bytes,
        )
        address = bound_address(pull)
        service = IngestService(pull, settings, drain=processor.drain)
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
    processor.finish()
    path = write_report(
        report_document(report, config={"demo": True, "address": address,
                                        "pipeline": DEMO_PIPELINE}), out
    )
    return DemoResult(path, report, sum(len(b.indices) for b in corrected),
                      _error_against_truth(reader, corrected))


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

"""``tomo-streamer demo``: a simulated detector streaming into ingest, in one process.

The ingest service binds a random loopback port and runs in a thread; the simulated scan
is sent from the calling thread over TCP, the same path a real detector takes. The run
report is written to ``out_dir`` (a fresh temporary folder by default).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import zmq

from streamer.errors import StreamerError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.report import report_document, write_report
from streamer.ingest.service import IngestService, IngestSettings
from streamer.sources.scan import FrameReader
from streamer.sources.sender import SendOptions, send_scan
from streamer.transport import Endpoint, bound_address, open_socket

DEMO_TIMEOUT_S = 120.0


def run_demo(
    reader: FrameReader, options: SendOptions, out_dir: Path | None = None
) -> tuple[Path, ScanReport]:
    """Stream ``reader`` through ingest; return the report's path and the report."""
    out = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="tomo-streamer-demo-"))
    settings = IngestSettings(idle_timeout_s=10.0)
    with zmq.Context() as context:
        pull = open_socket(
            context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16,
            max_message_bytes=settings.limits.max_message_bytes,
        )
        address = bound_address(pull)
        service = IngestService(pull, settings)
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
    path = write_report(
        report_document(report, config={"demo": True, "address": address}), out
    )
    return path, report

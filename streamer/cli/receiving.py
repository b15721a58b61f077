"""Receiving scans (``run``, ``ingest``, ``record``): the PULL socket, the ingest limits,
the progress of the open scan and the report written at its end."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import zmq

from streamer.errors import ConfigError
from streamer.ingest.peers import PeerGate, PeerPolicy
from streamer.run.progress import Progress
from streamer.wire.protocol import Limits
from streamer.wire.transport import DEFAULT_SOURCE_ADDRESS, Endpoint, bound_address, open_socket

if TYPE_CHECKING:
    from streamer.ingest.accounting import Rejections, ScanReport
    from streamer.ingest.service import IngestSettings

#: Reports kept waiting for their volume's figures (a scan whose volume never comes
#: must not grow the service).
MAX_PENDING_REPORTS: Final = 64


def consumer_socket(
    context: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace, max_bytes: int | None,
    *, announce: str | None,
) -> tuple[Any, PeerGate | None]:
    """Open the PULL socket, and with ``--listen`` its peer gate (``--max-peers``,
    ``--allow``: connecting, the socket has one peer, the source); ``announce`` names the
    command in the line that says where it receives (with a ``*`` port resolved, so
    scripts and tests can read it). Close both with :func:`close_consumer`."""
    policy = PeerPolicy.parse(args.max_peers, args.allow)
    if args.listen:
        endpoint = Endpoint.parse(args.listen, bind=True)
    else:
        if args.allow:
            raise ConfigError("--allow: only with --listen (with --from this socket "
                              "connects to one source and nothing connects to it)")
        endpoint = Endpoint.parse(args.from_address or DEFAULT_SOURCE_ADDRESS, bind=False)
    gate = PeerGate(context, policy) if endpoint.bind else None
    try:
        socket = open_socket(
            context, "pull", endpoint, hwm=args.hwm, allow_remote=args.allow_remote,
            max_message_bytes=max_bytes, prepare=None if gate is None else gate.attach,
        )
    except BaseException:
        if gate is not None:
            gate.close()
        raise
    if announce is not None:
        where = bound_address(socket) if endpoint.bind else endpoint.address
        how = "listening on" if endpoint.bind else "receiving from"
        print(f"{announce}: {how} {where}; Ctrl-C to stop", file=sys.stderr, flush=True)
    return socket, gate


def close_consumer(socket: Any, gate: PeerGate | None) -> None:
    """Close the PULL socket, then its peer gate (which serves until the socket is gone)."""
    socket.close()
    if gate is not None:
        gate.close()


def ingest_settings(args: argparse.Namespace) -> tuple[Limits, IngestSettings]:
    """Limits and ingest settings from the options shared by ``ingest`` and ``run``."""
    from streamer.ingest.service import IngestSettings

    try:
        limits = Limits(
            max_header_bytes=args.max_header_bytes, max_frame_bytes=args.max_frame_bytes,
            max_message_bytes=args.max_message_bytes,
            max_metadata_bytes=args.max_metadata_bytes,
            max_frames_per_message=args.max_frames_per_message,
        )
        return limits, IngestSettings(limits=limits, idle_timeout_s=args.idle_timeout)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def receiving_progress(progress: Progress) -> Callable[[Any], None]:
    """An ingest ``on_event`` that shows frames received for the open scan."""
    from streamer.ingest.state import FramesAccepted, ScanOpened

    received = 0

    def watch(event: Any) -> None:
        nonlocal received
        if isinstance(event, ScanOpened):
            received = 0
        elif isinstance(event, FramesAccepted):
            received += int(event.accepted.sum())
            progress.update(received, event.start.frames, f"scan {event.start.scan}")

    return watch


def print_and_write_report(report: ScanReport, between_scans: Rejections | None,
                            config: dict[str, Any], report_dir: Path) -> Path | None:
    """The service's end of a scan: the accounting on stdout, the JSON report on disk (a
    full or read-only disk is reported, never allowed to stop the service); returns the
    report's path (None if it could not be written)."""
    from streamer.ingest.report import format_report, report_document, write_report
    from streamer.sinks.disk import os_reason

    document = report_document(report, config=config, between_scans=between_scans)
    print(format_report(report), flush=True)  # on screen before its JSON file appears
    try:
        path = write_report(document, report_dir)
    except OSError as error:
        print(f"  report: not written to {report_dir}: {os_reason(error)}", flush=True)
        return None
    print(f"  report: {path}", flush=True)
    return path


@dataclass
class ReportFiles:
    """The JSON report of each scan, written when ingest closed it, completed with the
    figures known only once its volume is (``latency``, ``transfers``): the report is
    rewritten then. Thread-safe (the volume may complete in the worker thread)."""

    _paths: dict[str, Path] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def written(self, scan: str, path: Path | None) -> None:
        with self._lock:
            if path is not None:
                self._paths[scan] = path
            while len(self._paths) > MAX_PENDING_REPORTS:  # scans that never completed
                del self._paths[next(iter(self._paths))]

    def complete(self, scan: str, figures: dict[str, Any]) -> None:
        """Add ``figures`` to scan ``scan``'s report (a disk error is printed)."""
        from streamer.ingest.report import add_to_report
        from streamer.sinks.disk import os_reason

        with self._lock:
            path = self._paths.pop(scan, None)
        if path is None or not figures:
            return
        try:
            add_to_report(path, figures)
        except (OSError, ValueError) as error:
            reason = os_reason(error) if isinstance(error, OSError) else str(error)
            print(f"  report: {path}: figures not added: {reason}", flush=True)

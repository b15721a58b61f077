"""``tomo-streamer ingest``: receive scans, account for every frame, write reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import zmq

from streamer.cli.options import add_command, add_consumer_endpoint_options, add_limit_options
from streamer.cli.receiving import (
    close_consumer,
    consumer_socket,
    ingest_settings,
    receiving_progress,
)
from streamer.cli.shared import log_to_stderr, stop_on_signal
from streamer.errors import ConfigError
from streamer.exchange.links import RankLink, launched_with_ranks
from streamer.run.progress import Progress
from streamer.wire.transport import DEFAULT_SOURCE_ADDRESS

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer ingest --from tcp://127.0.0.1:5555 --scans 1 --report-dir reports\n"
    "  mpiexec -n 4 tomo-streamer ingest --from tcp://127.0.0.1:5555   # every rank pulls"
)


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer ingest`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "ingest", "Receive scans, validate and account for every frame, write "
                         "a JSON report per scan.", run)
    add_consumer_endpoint_options(parser)
    parser.add_argument("--scans", type=int, default=0,
                        help="stop after this many scans (0: serve until interrupted)")
    parser.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                        help="close a scan as incomplete after S s without messages")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"))
    add_limit_options(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--json", action="store_true", help="print each report as JSON")


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer ingest`` with the parsed ``args``; returns the exit status."""
    limits, settings = ingest_settings(args)
    from streamer.ingest.cluster import ClusterIngest
    from streamer.ingest.report import format_report, report_document, write_report
    from streamer.ingest.service import IngestService

    config = {
        "address": args.listen or args.from_address or DEFAULT_SOURCE_ADDRESS,
        "bind": bool(args.listen),
        "idle_timeout_s": args.idle_timeout,
        "limits": limits.__dict__,
    }
    cluster = None
    if launched_with_ranks() > 1:
        if args.listen:
            raise ConfigError(
                "--listen: with several MPI ranks every rank connects to the source; "
                "use --from ADDR (the source binds)"
            )
        cluster = ClusterIngest(RankLink.world(), args.idle_timeout, limits)
        config["ranks"] = cluster.link.size
    speaks = cluster is None or cluster.is_coordinator
    incomplete = 0
    with zmq.Context() as context, stop_on_signal() as stop:
        socket, gate = consumer_socket(
            context, args, limits.max_message_bytes + limits.max_header_bytes,
            announce="ingest" if speaks and not args.quiet else None,
        )
        service: IngestService

        def on_report(report: Any) -> None:
            nonlocal incomplete
            progress.close()
            incomplete += not report.complete
            document = report_document(
                report, config=config, between_scans=service.state.between_scans
            )
            path = write_report(document, args.report_dir)
            if args.json:
                print(json.dumps(document, indent=2), flush=True)
            elif not args.quiet:
                print(format_report(report))
                print(f"  report: {path}", flush=True)

        progress = Progress(sys.stderr, "receiving", quiet=args.quiet or not speaks)
        service = IngestService(socket, settings, on_report=on_report, cluster=cluster,
                                on_event=receiving_progress(progress), gate=gate,
                                log=log_to_stderr(False))
        if cluster is not None and speaks and not args.quiet:
            print(f"ingest: {cluster.link.size} MPI ranks pull from the source",
                  file=sys.stderr, flush=True)
        try:
            service.run(max_scans=args.scans or None, stop=stop)
        finally:
            close_consumer(socket, gate)
    return 1 if incomplete else 0

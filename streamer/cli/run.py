"""``tomo-streamer run``: the service on one rank or on R MPI ranks (a band of rows each)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import zmq

from streamer.cli.options import (
    add_command,
    add_consumer_endpoint_options,
    add_device_option,
    add_feed_options,
    add_format_options,
    add_limit_options,
    chosen_output_format,
    parse_center,
    parse_tolerance,
)
from streamer.cli.receiving import (
    ReportFiles,
    close_consumer,
    consumer_socket,
    ingest_settings,
    print_and_write_report,
    receiving_progress,
)
from streamer.cli.shared import (
    feed_settings,
    log_to_stderr,
    memory_budget,
    open_feed,
    resolve_pipeline,
    stop_on_signal,
    usable_device_bytes,
)
from streamer.errors import ConfigError
from streamer.exchange.links import RankLink, launched_with_ranks
from streamer.run.center_early import EARLY_FRACTION, LATE_FRACTION
from streamer.run.center_streaming import DEFAULT_TOLERANCE_PX
from streamer.run.progress import Progress
from streamer.wire.transport import DEFAULT_SOURCE_ADDRESS

if TYPE_CHECKING:
    from streamer.pipeline.config import Pipeline
    from streamer.run.output import ScanOutput

#: The longest a rank waits at the end of ``run`` for the others (rank 0 writing the
#: master of a stopped scan takes a block's time; a rank that never comes is named).
LEAVE_TOGETHER_S: Final = 60.0

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer run configs/standard.yaml --from tcp://127.0.0.1:5555 --out volumes\n"
    "  tomo-streamer run configs/standard.yaml --listen tcp://127.0.0.1:6000 --scans 1\n"
    "  mpiexec -n 4 tomo-streamer run configs/standard.yaml --from tcp://127.0.0.1:5555"
    "   # a band of rows per rank"
)


def parse_early_center(text: str) -> float | None:
    """``--early-center``: a fraction of the scan in (0, LATE_FRACTION], or ``off``."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction of the scan in (0, {LATE_FRACTION:g}] or off, "
            f"got {text!r}") from None
    if not 0 < value <= LATE_FRACTION:  # later, the estimate would never be tried
        raise argparse.ArgumentTypeError(
            f"expected a fraction of the scan in (0, {LATE_FRACTION:g}] or off, got {text!r}")
    return value


def parse_interrupt_after(text: str) -> float | None:
    """``--interrupt-after``: seconds (>= 0) a reconstruction may go on after the next
    scan's ``start`` before it is cut, or ``off``."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected seconds (a number >= 0) or off, got {text!r}")
    return value


def load_run_pipeline(pipeline: Path | None, sweep_value: str | None) -> Pipeline | None:
    """The pipeline file parsed, once for the whole run (None: no file, the default
    pipeline). The service reconstructs one variant of a swept pipeline per scan: without
    ``--sweep-value`` a one-line error naming the variants (not the first one silently)."""
    if pipeline is None:
        return None
    from stages.registry import REGISTRY  # (heavy: only when needed)
    from streamer.pipeline.config import load_pipeline

    loaded = load_pipeline(pipeline, REGISTRY)
    if loaded.sweep is None or sweep_value is not None:
        return loaded
    labels = [label for label, _ in loaded.variants()]
    raise ConfigError(
        f"{pipeline}: a parameter sweep ({loaded.sweep.where}, {len(labels)} variants): "
        "run reconstructs one variant per scan: expected --sweep-value, one of "
        f"{', '.join(labels)} (recon runs every variant of a stored scan)")


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer run`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "run", "The service: receive scans, correct frames as they arrive, "
                         "reconstruct each scan when it closes, write volumes and reports.", run)
    parser.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml|NAME",
                        help="a YAML file, or the name of a shipped pipeline (standard, …)")
    add_consumer_endpoint_options(parser)
    parser.add_argument("--out", type=Path, default=Path("volumes"),
                        help="one <scan>.h5 per scan here (default: volumes)")
    parser.add_argument("--center", type=parse_center, default=None, metavar="VALUE|auto",
                        help="CoR for every scan (default: the pipeline's, else auto)")
    parser.add_argument("--center-tolerance", type=parse_tolerance,
                        default=DEFAULT_TOLERANCE_PX, metavar="PX",
                        help="a CoR estimated while the scan streams (opposite pair, or "
                             "carried from the sample's previous scan) may differ from the "
                             "final estimate by PX before the volume is redone (default: "
                             f"{DEFAULT_TOLERANCE_PX:g})")
    parser.add_argument("--early-center", type=parse_early_center, default=EARLY_FRACTION,
                        metavar="FRACTION|off",
                        help="a scan whose opposite pair comes last (180°) with no CoR "
                             "carried: estimate it from the projections in once this "
                             "fraction of the scan is, and stream with it when sure "
                             f"(default: {EARLY_FRACTION:g}; off: reconstruct at close)")
    parser.add_argument("--interrupt-after", type=parse_interrupt_after, default=None,
                        metavar="S|off",
                        help="a new scan's start cuts the previous scan's reconstruction "
                             "still running S s later (its volume keeps the slices written, "
                             "marked interrupted; default: off, every scan is finished: a "
                             "series of scans keeps every volume; ADR 0024)")
    parser.add_argument("--sweep-value", default=None, metavar="LABEL",
                        help="a pipeline with a parameter sweep: the variant to run on every "
                             "scan (e.g. center=80; `check` lists them); `recon` runs them all")
    parser.add_argument("--scans", type=int, default=0,
                        help="stop after this many scans (0: serve until interrupted)")
    parser.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                        help="close a scan as incomplete after S s without messages")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="JSON run reports here (default: the --out folder)")
    parser.add_argument("--block", type=int, default=None,
                        help="projections per block (default: from the memory plan)")
    parser.add_argument("--sinogram-block", type=int, default=None,
                        help="slices per band (default: from the memory plan)")
    parser.add_argument("--memory", type=float, default=None, metavar="GiB",
                        help="host memory budget for blocks (default: half of this machine's)")
    add_format_options(parser, "write TIFF stacks (same as --format tiff)")
    add_device_option(parser)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line, no scan and plan lines (warnings still show)")
    add_limit_options(parser)
    add_feed_options(parser)


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer run`` with the parsed ``args``; returns the exit status."""
    resolve_pipeline(args, "PIPELINE")
    loaded = load_run_pipeline(args.pipeline, args.sweep_value)  # before anything is written
    from streamer.sinks.disk import check_writable

    check_writable(args.out, folder=True, what="--out")  # before any scan is received
    if args.report_dir is not None:
        check_writable(args.report_dir, folder=True, what="--report-dir")
    return _run_on_ranks(args, launched_with_ranks(), loaded)


def _print_output(output: ScanOutput, ranks: int) -> None:
    """The terminal lines of one scan's output."""
    if output.path is None:
        print(f"  volume: none for scan {output.scan}: {output.error}", flush=True)
        return
    state = "complete" if output.complete else "INCOMPLETE"
    error = f": {output.error}" if output.error else ""
    center = "?" if output.center is None else f"{output.center:.2f}"
    repaired = f", {output.repaired} pixel values repaired" if output.repaired else ""
    doubt = ", CoR UNCERTAIN" if output.center_warnings else ""
    spread = f" from {ranks} ranks" if ranks > 1 else ""
    print(f"  volume: {output.path} ({output.slices} slices{spread}, CoR {center}, "
          f"{state}{doubt}{repaired}){error}", flush=True)
    for line in ((output.latency,) if output.latency else ()) + output.notes \
            + output.iterations:
        print(f"  {line}", flush=True)
    for warning in output.center_warnings:
        print(f"  warning: CoR {center}: {warning}", flush=True)


def _run_on_ranks(args: argparse.Namespace, ranks: int, loaded: Pipeline | None) -> int:
    """The service on the one runner: one rank (an in-memory link) or ``mpiexec -n R``
    (every rank pulls, reslices and reconstructs its band; rank 0 reports and writes
    each scan's output; with ``--feed`` rank 0 serves the feed, the others relay to it).
    ``loaded``: the pipeline file as :func:`load_run_pipeline` parsed it."""
    if args.listen and ranks > 1:
        raise ConfigError(
            "--listen: with several MPI ranks every rank connects to the source; "
            "use --from ADDR (the source binds)"
        )
    from streamer.exchange.links import MemoryNetwork
    from streamer.ingest.cluster import ClusterIngest
    from streamer.ingest.service import IngestService
    from streamer.live.relay import FeedRelay
    from streamer.run.from_file import ReconSettings, center_source, pipeline_for
    from streamer.run.ranks import RankedReconstruction

    link: Any = RankLink.world() if ranks > 1 else MemoryNetwork(1).link(0)
    log = log_to_stderr(args.quiet)
    device_bytes = None
    if args.device == "gpu" and ranks > 1:  # one GPU per rank (docs/how-to/gpu-and-backends.md)
        from stages.backends.device import node_local_rank, use_device_for_rank

        node = node_local_rank(getattr(link, "comm", None))  # MPI's split; None: launcher's
        device, device_bytes = use_device_for_rank(link.rank, link.size, node)
        log(f"rank {link.rank}: {device.describe()}, planning {device_bytes / 2**30:.1f} GiB")
    elif args.device == "gpu":
        device_bytes = usable_device_bytes(args.device)
    settings_for_pipeline = ReconSettings(output=args.out, pipeline=args.pipeline,
                                          center=args.center, device=args.device,
                                          device_bytes=device_bytes,
                                          sweep_value=args.sweep_value)
    steps, text = pipeline_for(settings_for_pipeline, "flat_dark", loaded=loaded)
    limits, settings = ingest_settings(args)
    control, band_link = link.duplicate(), link.duplicate()
    relay_link = link.duplicate()  # the feed's relay to rank 0 (one rank: to itself)
    cluster = ClusterIngest(link, args.idle_timeout, limits)
    speaks = cluster.is_coordinator
    report_dir = args.report_dir or args.out
    config: dict[str, Any] = {
        "address": args.listen or args.from_address or DEFAULT_SOURCE_ADDRESS,
        "pipeline": str(args.pipeline), "limits": limits.__dict__}
    if ranks > 1:
        config["ranks"] = link.size
    incomplete = 0
    reports = ReportFiles()
    # Rank 0 alone shows iterations (every rank's reach it): a line of its own, from the
    # reconstruction's thread, ended before the scan's output lines.
    iterating = Progress(sys.stderr, "iterations", quiet=args.quiet or not speaks)

    def on_output(output: ScanOutput) -> None:
        nonlocal incomplete
        incomplete += not output.complete
        iterating.close()
        reports.complete(output.scan, output.figures)  # latency, transfers, iterations
        _print_output(output, link.size)

    # The worker thread reconstructs while ingest reads on: under MPI, MPI is then called
    # from two threads, which needs MPI_THREAD_MULTIPLE (mpi4py asks for it; MPICH grants it).
    background = link.threads_multiple() if ranks > 1 else True
    if not background and speaks:
        log("run: MPI was not initialised with MPI_THREAD_MULTIPLE: each scan is "
            "reconstructed in the ingest thread (the socket is not read meanwhile)")
    ranked = RankedReconstruction(steps, text, args.out, control, band_link,
                                  block_frames=args.block, block_sinograms=args.sinogram_block,
                                  memory_bytes=memory_budget(args.memory),
                                  device_bytes=device_bytes, on_output=on_output,
                                  center_source=center_source(args.center), log=log,
                                  output_format=chosen_output_format(args, None),
                                  background=background, estimate_center=True,
                                  save_results=True,  # save_result: per scan (ADR 0029)
                                  center_tolerance=args.center_tolerance,
                                  early_center_fraction=args.early_center,
                                  interrupt_after_s=args.interrupt_after,
                                  on_iteration=iterating.iteration if speaks else None)
    wanted_feed = feed_settings(args)  # checked before any socket is bound
    with zmq.Context() as context, stop_on_signal() as stop:
        ranked.stop = stop  # Ctrl-C/SIGTERM: every rank stops between blocks
        socket, gate = consumer_socket(context, args,
                                        limits.max_message_bytes + limits.max_header_bytes,
                                        announce="run" if speaks else None)
        # --feed: rank 0 serves the feed (and the viewer's control), announced after the
        # source socket; the other ranks relay to it. Without --feed the relay still
        # carries the transfers and latency to rank 0.
        feed = open_feed(args) if wanted_feed is not None and link.rank == 0 else None
        relay = ranked.observer = FeedRelay(relay_link, wanted_feed, feed=feed, steps=steps,
                                            log=log)
        service: IngestService
        progress = Progress(sys.stderr, "receiving", quiet=args.quiet or not speaks)
        watch = receiving_progress(progress)

        def on_event(event: Any) -> None:
            watch(event)
            ranked.on_event(event)

        def on_report(report: Any) -> None:
            progress.close()
            reports.written(report.scan, print_and_write_report(
                report, service.state.between_scans, config, report_dir))

        service = IngestService(socket, settings, drain=ranked.drain, on_report=on_report,
                                on_event=on_event, cluster=cluster, gate=gate, log=log,
                                await_downstream=ranked.wait)
        relay.watch(service.state)
        if ranks > 1:
            if speaks and not args.quiet:
                print(f"run: {link.size} MPI ranks pull from the source and reconstruct "
                      "a band of rows each", file=sys.stderr, flush=True)
            # One line per rank, so that a launcher's report of a dead process (by pid)
            # can be read as a rank.
            print(f"run: rank {link.rank} is pid {os.getpid()}", file=sys.stderr, flush=True)
        try:
            service.run(max_scans=args.scans or None, stop=stop)
        finally:
            ranked.wait()  # the last scan's output (stopped between blocks on a signal)
            close_consumer(socket, gate)
            if feed is not None:
                feed.close()
        # A rank that exits 1 first would make mpiexec kill rank 0 before its master is
        # written (seen after Ctrl-C under load): every rank leaves together, bounded.
        if ranks > 1 and not link.leave_together(LEAVE_TOGETHER_S):
            print(f"run: rank {link.rank}: the other ranks did not finish within "
                  f"{LEAVE_TOGETHER_S:g} s; leaving", file=sys.stderr, flush=True)
    return 1 if incomplete or ranked.incomplete_parts else 0


"""``tomo-streamer recon``: reconstruct a stored scan on one rank or on R MPI ranks."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.cli.options import (
    add_command,
    add_device_option,
    add_format_options,
    add_load_options,
    chosen_output_format,
    parse_center,
)
from streamer.cli.shared import (
    check_scan_argument,
    load_options_from,
    log_to_stderr,
    memory_budget,
    resolve_pipeline,
    stop_on_signal,
    usable_device_bytes,
)
from streamer.errors import SinkError, StageError, StreamerError
from streamer.exchange.links import RankLink, launched_with_ranks
from streamer.run.progress import Progress

if TYPE_CHECKING:
    from streamer.run.from_file import ReconSettings
    from streamer.sources.formats import LoadOptions

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer recon tooth.h5 -o tooth_recon.h5\n"
    "  tomo-streamer recon k11-18014.nxs -o diad.h5 --center 12.5 --rows 5:15\n"
    "  tomo-streamer recon scan.nxs -o out.h5 --pipeline configs/standard.yaml "
    "--center auto\n"
    "  mpiexec -n 4 tomo-streamer recon tooth.h5 -o tooth_recon.h5   # parts + master file\n"
    "  mpiexec -n 2 tomo-streamer recon tooth.h5 -o tooth_stack --tiff   # one shared stack"
)


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer recon`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "recon", "Reconstruct a stored scan (one process, or a band of rows per "
                         "MPI rank): replay + pipeline + reconstruction, slices to HDF5 (or "
                         "TIFF).", run)
    parser.add_argument("scan", type=Path, metavar="SCAN",
                        help="a scan file, a folder of TIFFs or a quoted glob such as "
                        "'tiffs/raw_*.tiff'")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.h5",
                        help="HDF5 file (or folder with --tiff)")
    parser.add_argument("--pipeline", type=Path, default=None, metavar="PIPELINE.yaml|NAME",
                        help="a YAML file or a shipped pipeline's name (default: flat/dark "
                        "(or air) correction and -log, then fourier_fbp)")
    parser.add_argument("--center", type=parse_center, default=None, metavar="VALUE|auto",
                        help="CoR, 0-based detector column; auto: Vo's method (default: the "
                        "pipeline's, else auto)")
    parser.add_argument("--block", type=int, default=None,
                        help="projections per block (default: from the memory plan)")
    parser.add_argument("--sinogram-block", type=int, default=None,
                        help="slices per band (default: from the memory plan)")
    parser.add_argument("--memory", type=float, default=None, metavar="GiB",
                        help="host memory budget for blocks (default: half of this machine's)")
    add_format_options(parser, "write a TIFF stack (same as --format tiff; default: from the "
                     "output's suffix)")
    add_device_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line, no scan and plan lines (warnings still show)")
    add_load_options(parser)


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer recon`` with the parsed ``args``; returns the exit status."""
    check_scan_argument(args.scan)
    resolve_pipeline(args, "--pipeline")

    from stages.registry import REGISTRY
    from streamer.pipeline.config import load_pipeline
    from streamer.pipeline.httomo_loader import with_loader
    from streamer.run.from_file import ReconSettings
    from streamer.sinks.registry import check_output

    # The output is written after the whole scan is read: check it can be, first. On R
    # ranks every rank checks, before MPI starts; rank 0's in-progress placeholder comes
    # only after recon_on_ranks' Comm.Dup, which no rank leaves before all have entered,
    # so no rank's check can see it (tests/run/test_ranks_output_startup.py).
    output_format = chosen_output_format(args, args.output)
    check_output(args.output, output_format, overwrite=args.overwrite)
    if output_format == "tiff" and not args.overwrite:
        from streamer.sinks.tiff import previous_stack

        old = previous_stack(args.output)
        if old:  # on R ranks rank 0 clears the folder when the scan opens
            raise SinkError(f"{args.output}: -o/--output: expected no previous stack, got "
                            f"{len(old)} file(s) such as {old[0].name} (pass --overwrite "
                            "to replace them)")
    options = load_options_from(args)
    if args.pipeline is not None:  # an HTTomo loader entry fills what the options leave
        options = with_loader(options, load_pipeline(args.pipeline, REGISTRY).loader)
    settings = ReconSettings(
        output=args.output, pipeline=args.pipeline, center=args.center,
        first_row=options.rows[0] if options.rows else 0, block_frames=args.block,
        block_sinograms=args.sinogram_block, output_format=output_format,
        overwrite=args.overwrite, memory_bytes=memory_budget(args.memory),
        device=args.device, device_bytes=usable_device_bytes(args.device),
    )
    recon_one = _run_recon_ranks if launched_with_ranks() > 1 else _recon_one
    sweep = (load_pipeline(args.pipeline, REGISTRY).variants()
             if args.pipeline is not None else [("", ())])
    if len(sweep) > 1 or sweep[0][0]:  # one output per sweep value, named by it (any ranks)
        return max([recon_one(args, options, replace(
            settings, sweep_value=label, output=_sweep_output(args.output, label)))
            for label, _ in sweep])
    return recon_one(args, options, settings)


def _sweep_output(output: Path, label: str) -> Path:
    """``out.h5`` → ``out_center=80.5.h5`` (a TIFF folder gets the suffix too)."""
    safe = "".join(c if c.isalnum() or c in "=.-_" else "_" for c in label)
    return output.with_name(f"{output.stem}_{safe}{output.suffix}")


def _recon_one(args: argparse.Namespace, options: LoadOptions,
               settings: ReconSettings) -> int:
    if settings.output_format != "tiff" and settings.output.exists() and not args.overwrite:
        raise SinkError(f"{settings.output}: -o/--output: expected a new file, got an "
                        "existing one (pass --overwrite to replace it)")
    from streamer.run.center_check import check_center
    from streamer.run.from_file import pipeline_for, run_recon
    from streamer.sources.formats import open_scan

    log = log_to_stderr(args.quiet)
    with open_scan(args.scan, options) as reader:
        layout = reader.layout
        # A fixed CoR off the detector is refused before a frame is read.
        check_center(pipeline_for(settings, layout.normalisation)[0], layout.cols,
                     f"{args.scan}")
        log(f"scan: {layout.projections} projections of {layout.rows}x{layout.cols}, "
            f"{layout.flats} flats, {layout.darks} darks ({layout.normalisation})")
        progress = Progress(sys.stderr, "reading", quiet=args.quiet)
        try:
            result = run_recon(reader, settings, log=log, on_read=progress.update,
                               on_iteration=progress.iteration)
        except StageError as error:  # say which scan the data problem is in
            raise StageError(f"{args.scan}: {error}") from None
        finally:
            progress.close()
    for warning in result.center_warnings:
        print(f"warning: CoR {result.center:.2f}: {warning}", file=sys.stderr)
    state = "complete" if result.complete else "INCOMPLETE"
    if result.center_warnings:
        state += ", CoR UNCERTAIN"
    sure = ("" if result.center_confidence is None
            else f", confidence {result.center_confidence:.2f}")
    print(f"wrote {result.slices} slices to {result.output} ({state}) in {result.seconds:.1f} s; "
          f"CoR {result.center:.2f} ({result.center_method}{sure})")
    repairs = result.repairs
    if repairs.total:
        print(f"  repaired {repairs.total} pixel values ({100 * repairs.fraction:.3f} % of the "
              f"projections: {repairs.describe()})")
    if result.images is not None:
        print(f"save_to_images: {result.images[1]} TIFFs in {result.images[0]}")
    for line in (*result.iterations, *result.notes):
        print(f"  {line}")
    return 0 if result.complete else 1


def _run_recon_ranks(args: argparse.Namespace, options: LoadOptions,
                     settings: ReconSettings) -> int:
    """``mpiexec -n R tomo-streamer recon``: each rank reads and corrects a share of the
    projections and reconstructs a band of rows; rank 0 writes the master file (HDF5) or
    finishes the one store (OME-Zarr)."""
    from streamer.cli.run import LEAVE_TOGETHER_S
    from streamer.run.center_check import check_center
    from streamer.run.from_file import pipeline_for
    from streamer.run.ranks import recon_on_ranks
    from streamer.sources.formats import open_scan

    link = RankLink.world()
    began = time.perf_counter()
    with open_scan(args.scan, options) as reader:
        layout = reader.layout
        check_center(pipeline_for(settings, layout.normalisation)[0], layout.cols,
                     f"{args.scan}")  # every rank: all stop before reading
        if link.rank == 0 and not args.quiet:
            print(f"scan: {layout.projections} projections of {layout.rows}x{layout.cols}, "
                  f"{layout.flats} flats, {layout.darks} darks ({layout.normalisation}); "
                  f"{link.size} MPI ranks", file=sys.stderr, flush=True)
        # Ctrl-C/SIGTERM: every rank stops between blocks (rank 0 still writes the master
        # of what was done), and no rank leaves before the others: under mpiexec one that
        # exits first with an error would get rank 0 killed before its master is written.
        with stop_on_signal() as stop:
            try:
                output = recon_on_ranks(reader, settings, link,
                                        log=log_to_stderr(args.quiet), stop=stop)
            finally:
                if not link.leave_together(LEAVE_TOGETHER_S):
                    print(f"recon: rank {link.rank}: the other ranks did not finish within "
                          f"{LEAVE_TOGETHER_S:g} s; leaving", file=sys.stderr, flush=True)
    if output is None:  # not rank 0
        return 0
    if output.path is None:
        raise StreamerError(f"recon: nothing was written: {output.error}")
    state = "complete" if output.complete else "INCOMPLETE"
    center = "?" if output.center is None else f"{output.center:.2f}"
    print(f"wrote {output.slices} slices to {output.path} ({state}, from {link.size} ranks) "
          f"in {time.perf_counter() - began:.1f} s; CoR {center}")
    if output.repaired:
        print(f"  repaired {output.repaired} pixel values (see the report in the output)")
    if output.images is not None:
        print(f"save_to_images: {output.images[1]} TIFFs in {output.images[0]} (each rank "
              "its band's)")
    for line in output.notes:
        print(f"  {line}")
    if output.error:
        print(f"  errors: {output.error}", file=sys.stderr)
    return 0 if output.complete else 1

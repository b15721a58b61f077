"""``tomo-streamer check``: validate a pipeline and print its host (and device) memory plan."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from streamer.cli.options import add_command, parse_frame_shape
from streamer.cli.shared import memory_budget, resolve_pipeline
from streamer.errors import ConfigError

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer check configs/standard.yaml\n"
    "  tomo-streamer check standard --frame 135x160 --projections 91   # a shipped one\n"
    "  tomo-streamer check configs/httomo_standard.yaml --frame 2048x2560 --projections 3600 "
    "--memory 16"
)


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer check`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "check", "Validate a YAML pipeline and print its memory plan (no data "
                         "needed).", run)
    parser.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml|NAME",
                        help="a YAML file, or the name of a shipped pipeline (standard, …)")
    parser.add_argument("--frame", type=parse_frame_shape, default=(2048, 2048),
                        metavar="ROWSxCOLS",
                        help="detector frame to plan for (default 2048x2048)")
    parser.add_argument("--projections", type=int, default=1800,
                        help="projections in the scan (default 1800)")
    parser.add_argument("--dtype", choices=("uint8", "uint16", "uint32", "float32"),
                        default="uint16", help="pixel type of the incoming frames")
    parser.add_argument("--memory", type=float, default=None, metavar="GiB",
                        help="host memory budget (default: half of this machine's memory)")
    parser.add_argument("--device", nargs="?", const="auto", default=None,
                        metavar="GiB|auto", help="also plan for a CUDA device of this size, "
                        "or the one cupy detects (auto), as --device gpu would run")


def run(args: argparse.Namespace) -> int:
    """Validate a pipeline and print what ``recon``/``run`` will run: its stages, the
    reconstruction they append when it has none, and the memory plan of the whole."""
    resolve_pipeline(args, "PIPELINE")
    from stages.registry import REGISTRY
    from streamer.pipeline.config import load_pipeline
    from streamer.pipeline.plan import default_budget_bytes, plan_blocks
    from streamer.pipeline.sections import (
        halo_refusal_on_ranks,
        ranks_reslices,
        refuse_row_change,
        sections_of,
    )
    from streamer.pipeline.streaming import streaming_kind
    from streamer.run.from_file import ReconSettings, pipeline_for

    pipeline = load_pipeline(args.pipeline, REGISTRY)
    if args.projections < 1:
        raise ConfigError(f"--projections: expected at least 1, got {args.projections}")
    budget = memory_budget(args.memory) or default_budget_bytes()
    rows, cols = args.frame
    device = None if args.device is None else _planned_device(args.device)
    steps, _text = pipeline_for(ReconSettings(output=Path(), pipeline=args.pipeline,
                                              device="cpu" if device is None else "gpu"),
                                "flat_dark", loaded=pipeline)  # parsed once
    appended = len(steps) - len(pipeline.steps)
    refuse_row_change(steps)  # no rank count runs it: refused as recon and run would
    plans = plan_blocks(steps, rows=rows, cols=cols, angles=args.projections,
                        dtype=np.dtype(args.dtype), budget_bytes=budget)
    device_lines = ([] if device is None else  # refused here, before any output
                    _device_plan_lines(steps, device, rows=rows, cols=cols,
                                       angles=args.projections, dtype=np.dtype(args.dtype)))
    extra = f" (+{appended} appended by recon/run)" if appended else ""
    print(f"{args.pipeline}: valid, {len(pipeline.steps)} stages{extra}")
    for number, step in enumerate(steps, 1):
        params = ", ".join(f"{key}={value!r}" for key, value in dict(step.params).items())
        print(f"  {number}. {step.name:<30s} {step.spec.pattern.value:<10s} {step.backend:<8s} "
              f"{params}")
    if appended:
        print(f"  note: the pipeline has no reconstruction stage: recon and run append "
              f"{', '.join(step.name for step in steps[-appended:])} (shown above)")
    for note in pipeline.notes:
        print(f"  note: {note}")
    for number, step in enumerate(steps, 1):  # kernels across the block axis (ADR 0019)
        if step.spec.reach(step.params) and step.spec.finds_center is None:
            print(f"  note: step {number} {step.name} reaches {step.spec.reach(step.params)} "
                  "entries across its blocks: each block gets its real neighbours (R "
                  "ranks: overlapping bands of rows, the band reconstructed at close)")
    first_section = sections_of(steps)[0].steps  # (a sinogram section's raised above)
    for number, step in enumerate(steps, 1):
        if (step in first_section and step.spec.changes_rows is not None
                and step.spec.changes_rows(step.params)):
            print(f"  note: step {number} {step.name} changes the number of detector rows: "
                  "the bands and the volume take the corrected frame's rows (every "
                  "rank count)")
    refusal = halo_refusal_on_ranks(steps)
    if refusal is not None:
        print(f"  note: R ranks refuse it: {refusal}")
    elif ranks_reslices(steps) != max(len(sections_of(steps)) - 1, 0):
        print(f"  note: R ranks: {ranks_reslices(steps)} reslices (a step that needs whole "
              "frames after a halo step runs after a reslice to ranges of whole frames, "
              "and back to bands: ADR 0019)")
    if pipeline.sweep is not None:
        variants = pipeline.variants()  # validates every value
        print(f"  sweep: {pipeline.sweep.where}: {len(variants)} variants, one output each: "
              f"{', '.join(label for label, _ in variants)}")
    print(streaming_kind(steps).describe())
    print(f"memory plan: {args.projections} projections of {rows}x{cols} {args.dtype}, "
          f"budget {budget / 2**30:.1f} GiB")
    for plan in plans:
        print(f"  {plan.describe()}")
    if device_lines:
        print("\n".join(device_lines))
    return 0


def _planned_device(text: str) -> Any:
    """``check --device``: the device detected by cupy (``auto``) or one of a stated size."""
    from stages.backends.device import detect_device, stated_device

    if text == "auto":
        info = detect_device()
        if info is None:
            raise ConfigError("--device auto: expected a CUDA device detected by cupy, got "
                              "none; state its size instead, e.g. --device 80")
        return info
    try:
        size = float(text)
    except ValueError:
        raise ConfigError(f"--device: expected a size in GiB or 'auto', got {text!r}") from None
    return stated_device(size)


def _device_plan_lines(steps: Any, device: Any, *, rows: int, cols: int, angles: int,
                       dtype: np.dtype[Any]) -> list[str]:
    from stages.backends.device import DEVICE_HEADROOM, device_budget_bytes
    from streamer.pipeline.plan import on_device, plan_device_blocks

    usable = device_budget_bytes(device.free_bytes)
    plans = plan_device_blocks(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                               device_bytes=usable)
    lines = [f"device plan ({device.describe()}; usable {usable / 2**30:.1f} GiB after "
             f"{DEVICE_HEADROOM:.0%} headroom, one device per rank):"]
    lines += [f"  {plan.describe()}" for plan in plans]
    host = [step.name for step in steps if not on_device(step)]
    if not plans:
        lines.append("  no stage runs on the device (none is device-ready or has a GPU "
                     "backend)")
    if host:
        lines.append(f"  on the host (not device-ready): {', '.join(host)}")
    return lines

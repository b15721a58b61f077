"""``tomo-streamer demo``: a simulated scan through ingest, correction and
reconstruction in one process, with the accounting printed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.cli.options import (
    add_command,
    add_feed_options,
    add_send_options,
    add_simulation_options,
)
from streamer.cli.sending import send_options_from, simulated_scan
from streamer.cli.shared import hold_feed, log_to_stderr, open_feed

if TYPE_CHECKING:
    from streamer.live.feed import LiveFeed

EXAMPLE = "example:\n  tomo-streamer demo --projections 360 --order shuffle"


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer demo`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "demo", "Stream a simulated scan through ingest and print the accounting.",
                         run)
    add_simulation_options(parser, projections=180)
    add_send_options(parser)
    parser.add_argument("--out", type=Path, help="folder for the run report (default: a temp dir)")
    add_feed_options(parser)
    parser.add_argument("--hold", type=float, default=0.0, metavar="S",
                        help="with --feed: keep the feed up S s after the scan, for viewers")


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer demo`` with the parsed ``args``; returns the exit status."""
    feed = open_feed(args)
    try:
        return _demo(args, feed)
    finally:
        if feed is not None:
            feed.close()


def _demo(args: argparse.Namespace, feed: LiveFeed | None) -> int:
    from streamer.ingest.report import format_report
    from streamer.live.relay import FeedRelay
    from streamer.run.demo import demo_steps, run_demo

    log = log_to_stderr(quiet=False)  # the runner's plan and warnings, as `run` prints them
    steps = demo_steps()

    def observer(link: Any) -> FeedRelay:
        """``run``'s observer: the feed (``--feed``) and the latency figures."""
        return FeedRelay(link, feed.settings if feed is not None else None, feed=feed,
                         steps=steps, log=log)

    result = run_demo(simulated_scan(args), send_options_from(args), args.out,
                      observer=observer, log=log)
    print(format_report(result.report))
    print(f"corrected {result.corrected} projections as they arrived (flat/dark, -log)")
    if result.median_abs_error is not None:
        print(f"  median |corrected - phantom line integral| = {result.median_abs_error:.4f}")
    if result.volume_path is not None:
        center = f"{result.center:.2f}" if result.center is not None else "?"
        how = "found by Vo's method" if result.center_method.startswith("vo") else (
            f"set by {result.center_method}")
        print(f"reconstructed {result.report.start['rows']} slices (Fourier-domain FBP, CoR "
              f"{center} {how}): {result.volume_path}")
        if result.volume_error is not None:
            print(f"  relative L2 error against the phantom: {result.volume_error:.3f}")
        for warning in result.center_warnings:
            print(f"  warning: CoR {center}: {warning}")
    if result.error is not None:
        print(f"volume: {'INCOMPLETE' if result.volume_path else 'none'}: {result.error}")
    if result.latency is not None:
        print(f"  {result.latency}")
    print(f"run report: {result.report_path}")
    hold_feed(feed, args.hold)
    return 0 if result.complete else 1

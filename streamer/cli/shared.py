"""What several commands do with their parsed options: stop on a signal, open and hold
the live feed, memory and device budgets, resolve a pipeline, the log lines, check a
SCAN argument and read its load options."""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.errors import ConfigError
from streamer.shipped import pipeline_file

if TYPE_CHECKING:
    from streamer.live.feed import FeedSettings, LiveFeed
    from streamer.sources.formats import LoadOptions


@contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """A stop event set by SIGINT/SIGTERM so services shut down cleanly (reports written)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def feed_settings(args: argparse.Namespace) -> FeedSettings | None:
    """The live feed's settings asked for with ``--feed`` (the same on every MPI rank:
    rank 0 serves the feed, the others relay to it), or ``None``."""
    if args.feed is None:
        if args.control is not None:
            raise ConfigError("--control: the control socket belongs to a feed; give --feed too")
        return None
    from streamer.live.feed import DEFAULT_FEED_ADDRESS, FeedSettings

    token = args.feed_token or os.environ.get("TOMO_STREAMER_FEED_TOKEN") or None
    return FeedSettings(
        address=args.feed, control=args.control or DEFAULT_FEED_ADDRESS,
        allow_remote=args.feed_allow_remote, token=token, preview_rows=args.preview_rows,
    )


def open_feed(args: argparse.Namespace) -> LiveFeed | None:
    """The live feed asked for with ``--feed`` (its addresses printed), or ``None``."""
    settings = feed_settings(args)
    if settings is None:
        return None
    from streamer.live.feed import LiveFeed

    feed = LiveFeed(settings)
    print(f"feed: publishing on {feed.address}, control on {feed.control_address}; watch with "
          f"tomo-streamer view --feed {feed.address} --control {feed.control_address}",
          file=sys.stderr, flush=True)
    return feed


def hold_feed(feed: LiveFeed | None, seconds: float) -> None:
    """Keep the feed up ``seconds`` after the scan (viewers can still ask for slices)."""
    if feed is None or not seconds > 0:
        return
    print(f"feed: held for {seconds:g} s (Ctrl-C to stop)", file=sys.stderr, flush=True)
    with stop_on_signal() as stop:
        stop.wait(seconds)


def usable_device_bytes(device: str) -> int | None:
    """Usable bytes of this process's CUDA device for ``--device gpu`` (``None`` for cpu);
    refused in one line where there is no device."""
    if device != "gpu":
        return None
    from stages.backends.device import detect_device, device_budget_bytes
    from stages.backends.xp import GPU_EXTRA_HINT, gpu_available

    info = detect_device() if gpu_available() else None
    if info is None:
        raise ConfigError("--device gpu: expected a usable CUDA device, got none (cupy is "
                          f"absent or cupy.is_available() is False; {GPU_EXTRA_HINT}); use "
                          "--device cpu")
    return device_budget_bytes(info.free_bytes)


def memory_budget(memory_gib: float | None) -> int | None:
    if memory_gib is None:
        return None
    if not memory_gib > 0:
        raise ConfigError(f"--memory: expected GiB > 0, got {memory_gib}")
    return int(memory_gib * 2**30)


def resolve_pipeline(args: argparse.Namespace, what: str) -> None:
    """Replace ``args.pipeline`` (a path or a shipped pipeline's name) by its file, before
    anything else is done; a note says when a shipped one stands in for a missing path."""
    if args.pipeline is None:
        return
    args.pipeline, note = pipeline_file(args.pipeline, what)
    if note is not None:
        print(f"note: {note}", file=sys.stderr, flush=True)


def log_to_stderr(quiet: bool) -> Callable[[str], None]:
    """Where ``recon``/``run`` send their lines (stderr). ``--quiet`` keeps warnings and
    drops the informational ``scan:`` and ``plan:`` lines."""

    def log(line: str) -> None:
        informational = line.startswith(("scan: ", "plan: ")) or ": plan: " in line
        if not (quiet and informational):
            print(line, file=sys.stderr, flush=True)

    return log


def check_scan_argument(scan: Path) -> None:
    """Refuse a SCAN that is neither a file, a folder nor a glob that matches files."""
    if scan.exists():
        return
    text = str(scan)
    if glob.has_magic(text):
        if not any(Path(match).is_file() for match in glob.glob(text)):
            raise ConfigError(f"SCAN: no file matches the pattern {text!r}")
        return
    raise ConfigError(f"SCAN: no such file or folder: {scan}")


def load_options_from(args: argparse.Namespace) -> LoadOptions:
    """The stored-scan options shared by ``replay`` and ``recon``."""
    from streamer.sources.formats import LoadOptions

    return LoadOptions(
        format=args.format, data_path=args.data_path, image_key_path=args.image_key_path,
        angles_path=args.angles_path, darks=tuple(args.darks), flats=tuple(args.flats),
        rows=args.rows, angles=args.angles, normalised=args.normalised, counts=args.counts,
        scale=args.scale,
    )

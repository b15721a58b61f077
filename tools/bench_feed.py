"""Benchmark: live-feed latency, from a projection's arrival to the feed.

A simulated scan is streamed at a detector-like rate (``--rate`` frames/s) over TCP
loopback into the ``run`` service's components (ingest → the runner on one rank,
:class:`~streamer.run.ranks.RankedReconstruction`, whose relay serves a
:class:`~streamer.live.feed.LiveFeed`), and a subscriber records every feed message. Measured,
per scan, with wall clocks of the same process:

* **preview**: for every projection, from its arrival at ingest (the ``FramesAccepted``
  event) to the ``t`` (send time) of the first preview that includes it; and per preview,
  from the arrival of its newest projection to its send time;
* **final slice**: from the arrival of the scan's last projection to the send time of the
  last ``slice`` message (the last band of the reconstruction), of the ``cuts`` and of
  ``scan_end``; and, to tell the reconstruction's share from the feed's, from the moment
  the pipeline hands the last band to the feed to that band's ``slice`` message.

Figures are medians and 95th percentiles over all projections / previews / scans.

Usage::

    python tools/bench_feed.py                               # 16x512, 720 proj, 100 f/s, 3 scans
    python tools/bench_feed.py --cols 2048 --rate 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryNetwork
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.ingest.state import FramesAccepted
from streamer.live.client import ScanEnd, Subscription
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.live.relay import FeedRelay
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock
from streamer.run.ranks import RankedReconstruction
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket

PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: {}\n"


class TimedFeed(LiveFeed):
    """A feed that records the order in which projections are handed to it."""

    def __init__(self, settings: FeedSettings) -> None:
        super().__init__(settings)
        self.handed: dict[str, list[int]] = {}
        self.band_handed: dict[str, float] = {}
        self.current: str | None = None

    def scan_opened(self, start: Any, **kwargs: Any) -> None:
        self.current = start.scan
        self.handed[start.scan] = []
        super().scan_opened(start, **kwargs)

    def projections(self, block: ProcessedBlock) -> None:
        if self.current is not None:
            self.handed[self.current].extend(int(i) for i in block.indices)
        super().projections(block)

    def slices(self, block: ProcessedBlock) -> None:
        if self.current is not None:
            self.band_handed[self.current] = time.time()  # the last call: the last band
        super().slices(block)


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"median_ms": None, "p95_ms": None, "n": 0}
    array = np.asarray(values) * 1e3
    return {"median_ms": float(np.median(array)), "p95_ms": float(np.percentile(array, 95)),
            "n": len(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    text = PIPELINE.replace("{}", args.reconstruction)
    steps = parse_pipeline(text, REGISTRY, source="bench_feed").steps
    feed = TimedFeed(FeedSettings(preview_size=args.preview_size,
                                  preview_interval_s=args.preview_interval))
    arrival: dict[str, dict[int, float]] = {}
    messages: list[tuple[str, Any, float]] = []
    subscription = Subscription(feed.address, timeout_s=120.0, hwm=100_000)
    out = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    link = MemoryNetwork(1).link(0)  # the `run` service's runner on one rank
    live = RankedReconstruction(steps, text, out, link.duplicate(), link.duplicate(),
                                block_frames=args.block_frames)
    relay = live.observer = FeedRelay(link.duplicate(), feed.settings, feed=feed, steps=steps)

    def on_event(event: Any) -> None:
        if isinstance(event, FramesAccepted):
            now = time.time()
            header = event.message.header
            times = arrival.setdefault(header.scan, {})
            for n, (key, ok) in enumerate(zip(header.keys, event.accepted, strict=True)):
                if key == 0 and ok:
                    times[header.first + n] = now
        live.on_event(event)

    ends = [threading.Event() for _ in range(args.scans)]

    def listen() -> None:
        ended: set[str] = set()
        while len(ended) < args.scans:
            message = subscription.receive()
            messages.append((message.header.type, message.header, time.time()))
            scan = message.header.scan
            if isinstance(message, ScanEnd) and scan is not None and scan not in ended:
                ended.add(scan)  # (scan_end is repeated every counters period)
                ends[len(ended) - 1].set()

    listener = threading.Thread(target=listen, name="subscriber")
    listener.start()
    with zmq.Context() as context:
        pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16)
        push = open_socket(context, "push", Endpoint(bound_address(pull), bind=False), hwm=16,
                           send_timeout_ms=60_000, linger_ms=5_000)
        service = IngestService(pull, IngestSettings(idle_timeout_s=30.0), drain=live.drain,
                                on_event=on_event, cluster=ClusterIngest(link, 30.0))
        relay.watch(service.state)
        worker = threading.Thread(target=service.run, kwargs={"max_scans": args.scans},
                                  name="ingest")
        worker.start()
        try:
            for number in range(args.scans):
                scan = SimulatedScan(SimulationConfig(rows=args.rows, cols=args.cols,
                                                      projections=args.projections,
                                                      seed=number))
                send_scan(push, scan, SendOptions(block=args.block, rate_fps=args.rate,
                                                  scan_id=f"bench-{number}"))
                # Like a beamline: the next scan starts after this one is reconstructed
                # (else its frames pile up behind the reconstruction and arrive in a burst).
                ends[number].wait(600)
            worker.join(600)
            listener.join(120)
        finally:
            push.close()
            pull.close()
            subscription.close()
            feed.close()
    return _figures(args, feed, arrival, messages)


def _figures(args: argparse.Namespace, feed: TimedFeed, arrival: dict[str, dict[int, float]],
             messages: list[tuple[str, Any, float]]) -> dict[str, Any]:
    per_projection: list[float] = []
    per_preview: list[float] = []
    to_slice: list[float] = []
    to_cuts: list[float] = []
    to_end: list[float] = []
    band_to_slice: list[float] = []
    for scan, times in arrival.items():
        previews = [h for kind, h, _ in messages if kind == "preview" and h.scan == scan]
        handed = feed.handed.get(scan, [])
        # The k-th projection handed to the feed is in every preview of >= k projections.
        included = np.array([h.projections for h in previews])
        sent = np.array([h.t for h in previews])
        for k, index in enumerate(handed, start=1):
            first = np.flatnonzero(included >= k)
            if first.size and index in times:
                per_projection.append(float(sent[first[0]] - times[index]))
        for h in previews:
            if h.newest_frame is not None and h.newest_frame in times:
                per_preview.append(h.t - times[h.newest_frame])
        last = max(times.values())
        slices = [h.t for kind, h, _ in messages if kind == "slice" and h.scan == scan]
        cuts = [h.t for kind, h, _ in messages if kind == "cuts" and h.scan == scan]
        ends = [h.t for kind, h, _ in messages if kind == "scan_end" and h.scan == scan]
        if slices:
            to_slice.append(max(slices) - last)
            if scan in feed.band_handed:
                band_to_slice.append(max(slices) - feed.band_handed[scan])
        if cuts:
            to_cuts.append(cuts[0] - last)
        if ends:
            to_end.append(ends[0] - last)
    counters = [h for kind, h, _ in messages if kind == "counters"]
    previewed_fps = [h.rates.previewed_fps for h in counters if h.state == "open"
                     and h.rates.previewed_fps > 0]
    return {
        "config": vars(args),
        "preview_per_projection": _stats(per_projection),
        "preview_newest": _stats(per_preview),
        "last_projection_to_last_slice": _stats(to_slice),
        "last_projection_to_cuts": _stats(to_cuts),
        "last_projection_to_scan_end": _stats(to_end),
        "last_band_handed_to_slice_sent": _stats(band_to_slice),
        "previews_sent": sum(1 for kind, _, _ in messages if kind == "preview"),
        "previews_superseded": feed.stats["dropped_previews"],
        "previewed_fps_median": float(np.median(previewed_fps)) if previewed_fps else None,
    }


def _row(label: str, stats: dict[str, Any]) -> str:
    median, p95 = stats["median_ms"], stats["p95_ms"]
    if median is None:
        return f"| {label} | – | – | 0 |"
    return f"| {label} | {median:.0f} | {p95:.0f} | {stats['n']} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--projections", type=int, default=720)
    parser.add_argument("--rate", type=float, default=100.0, help="frames/s sent")
    parser.add_argument("--block", type=int, default=4, help="frames per message")
    parser.add_argument("--block-frames", type=int, default=8,
                        help="projections per correction block of the pipeline")
    parser.add_argument("--preview-size", type=int, default=512)
    parser.add_argument("--reconstruction", choices=("fourier_fbp", "fbp"),
                        default="fourier_fbp", help="the pipeline's reconstruction stage")
    parser.add_argument("--preview-interval", type=float, default=0.1, metavar="S")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    print(f"live feed latency: {args.scans} scans of {args.projections} projections "
          f"{args.rows}x{args.cols} at {args.rate:g} f/s, pipeline blocks of "
          f"{args.block_frames}, previews every >= {args.preview_interval:g} s, "
          f"reconstruction {args.reconstruction}")
    print("| from → to | median (ms) | p95 (ms) | samples |")
    print("|---|---|---|---|")
    print(_row("projection arrives → first preview with it sent",
               result["preview_per_projection"]))
    print(_row("newest projection of a preview arrives → preview sent",
               result["preview_newest"]))
    print(_row("last projection arrives → last final slice sent",
               result["last_projection_to_last_slice"]))
    print(_row("last projection arrives → cuts sent", result["last_projection_to_cuts"]))
    print(_row("last projection arrives → scan_end sent",
               result["last_projection_to_scan_end"]))
    print(_row("last band reconstructed → its slice sent (the feed's share)",
               result["last_band_handed_to_slice_sent"]))
    fps = result["previewed_fps_median"]
    print(f"previews sent: {result['previews_sent']}, superseded before sending: "
          f"{result['previews_superseded']}; preview back-projection "
          f"{'–' if fps is None else f'{fps:.0f}'} projections/s (median of counters)")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

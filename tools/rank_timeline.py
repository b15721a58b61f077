"""What each rank of a ``tomo-streamer run`` does after its last projection frame.

Runs the CLI with timers around the steps that can hold the volume back on R ranks —
the streaming accumulators' adds (frames per add), the projection blocks (frames
asked), the cluster's close (``end`` noted by rank 0, the close decided, each rank's
ingest closing the scan, the accounts merged), the close's preparation (references
settled, last block corrected), the band's close (the band's last pieces landed, the
part reconstructed and written) and rank 0's master — and prints at exit, per rank
(``PMI_RANK``), the adds made before the last frame and every timed step that ended
after it, relative to that frame, and that frame's wall-clock time (to align the ranks).
A benchmark aid (the timers wrap methods of this process only), not a product path.

Usage: ``mpiexec -n 2 python tools/rank_timeline.py run PIPELINE --from ADDR ...``
(``TIMELINE=1 tools/bench_run_streaming.sh ...`` runs the ranks this way).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from streamer.cli import main
from streamer.ingest import cluster, state
from streamer.pipeline import executor
from streamer.run import ranks, streaming

#: (what, started, ended, detail), in the wall clock (``time.time``: the same on every
#: rank of one node, so the ranks' lines can be put on one time axis).
Event = tuple[str, float, float, str]


def _timed(owner: type, name: str, label: str, events: list[Event],
           detail: Callable[[tuple[Any, ...]], str]) -> None:
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            events.append((label, started, time.time(), detail(args)))

    setattr(owner, name, timed)


def _install(events: list[Event], last_frame: list[float]) -> None:
    add_frames = executor.ScanProcessor.add

    def add(self: executor.ScanProcessor, frames: Any) -> None:
        frames = list(frames)
        if any(frame.key == executor.IMAGE_KEY_PROJECTION for frame in frames):
            last_frame[:] = [time.time()]
        add_frames(self, frames)

    executor.ScanProcessor.add = add  # type: ignore[method-assign]
    _timed(streaming.StreamingSection, "_accumulate", "add", events,
           lambda args: f"{args[1].shape[1]} frames")
    _timed(executor.ScanProcessor, "_process_projections", "correct", events,
           lambda args: f"up to {args[1]} frames")
    _timed(ranks.RankedReconstruction, "_close", "close", events, lambda args: "")
    _timed(ranks.RankedReconstruction, "_prepare_close", "prepare close", events,
           lambda args: "")
    _timed(ranks.RankedReconstruction, "_band", "band landed", events, lambda args: "")
    _timed(ranks.RankedReconstruction, "_write_part", "part written", events,
           lambda args: "")
    _timed(ranks.RankedReconstruction, "write_master", "master", events, lambda args: "")
    _timed(cluster.ClusterIngest, "_note_end", "end noted", events,
           lambda args: type(args[1]).__name__)
    _timed(cluster.ClusterIngest, "_close_everywhere", "close decided", events,
           lambda args: str(args[2]))
    _timed(state.IngestState, "close_scan", "ingest closes", events, lambda args: "")
    _timed(cluster.ClusterIngest, "_merge", "accounts merged", events, lambda args: "")


def _report(events: list[Event], last_frame: list[float]) -> None:
    if not last_frame:
        return
    last, rank = last_frame[0], os.environ.get("PMI_RANK", "0")
    before = [e for e in events if e[0] == "add" and e[2] <= last]
    lines = [f"rank {rank}: {len(before)} adds before the last frame "
             f"({sum(e[2] - e[1] for e in before):.2f} s)"]
    lines += [f"rank {rank}: {what} ({detail}) from {started - last:+.3f} s for "
              f"{ended - started:.3f} s" for what, started, ended, detail in events
              if ended > last]
    lines.append(f"rank {rank}: its last frame at {last % 1000:.3f} s (wall clock mod 1000)")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    timeline: list[Event] = []
    frame_at: list[float] = []
    _install(timeline, frame_at)
    atexit.register(_report, timeline, frame_at)
    sys.argv[0] = "tomo-streamer"
    sys.exit(main())

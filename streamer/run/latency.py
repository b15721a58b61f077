"""Latency of one scan as a product figure: how old the live view is, how soon the volume.

Two figures, both in seconds of one injected monotonic clock (``time.monotonic`` in the
service, a counter in tests):

* **frame → preview**: for every published preview, its time minus the time the newest
  frame it shows was received (p50, p95, max over the scan's previews): how far the live
  view trails the detector;
* **last frame → volume**: the time the volume was complete (written and closed) minus
  the time the scan's last frame was received: what streaming reconstruction shortens.

On several MPI ranks, rank 0's recorder also learns when the other ranks received their
frames (:meth:`LatencyRecorder.frames_received_at`, times on their clocks): the clock is
then the wall clock (``time.time``), the same on every rank of one node and as close as the
nodes' clock synchronisation across nodes.

The recorder is sans-IO (no sockets or sleeps; a lock, since the live feed's thread
reports previews while the ingest thread reports frames): the runner calls
:meth:`LatencyRecorder.frames_received`, :meth:`~LatencyRecorder.preview_published` and
:meth:`~LatencyRecorder.volume_complete`; :meth:`~LatencyRecorder.summary` is JSON-able
for the run report and :meth:`LatencySummary.line` is the terminal line.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.errors import StreamerError

__all__ = ["Distribution", "LatencyRecorder", "LatencySummary", "percentile"]

#: Previews kept for the distribution: a day-long scan must not grow the recorder
#: without bound; beyond this, the oldest sample is replaced (the count stays exact).
MAX_SAMPLES = 100_000


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``ordered`` (sorted, non-empty): the smallest value
    with at least ``fraction`` of the samples at or below it."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Distribution:
    """p50/p95/max of a set of latencies (seconds) and how many there were."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, samples: Iterable[float], count: int | None = None) -> Distribution:
        """The distribution of ``samples`` (``count`` overrides their number)."""
        ordered = sorted(samples)
        number = len(ordered) if count is None else count
        if not ordered:
            return cls(number, None, None, None)
        return cls(number, percentile(ordered, 0.50), percentile(ordered, 0.95), ordered[-1])

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "p50_s": self.p50, "p95_s": self.p95, "max_s": self.max}


@dataclass(frozen=True)
class LatencySummary:
    """The two latency figures of one scan (``None`` where not measured)."""

    frame_to_preview: Distribution
    last_frame_to_volume: float | None
    streaming: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for the run report (``latency``)."""
        return {
            "frame_to_preview": self.frame_to_preview.as_dict(),
            "last_frame_to_volume_s": self.last_frame_to_volume,
            "reconstruction": "streaming" if self.streaming else "at close",
        }

    def line(self) -> str:
        """One terminal line: ``latency: frame→preview p50 0.21 s, p95 0.40 s, max 0.52 s
        (118 previews); last frame→volume 3.10 s (streaming)``."""
        spread = self.frame_to_preview
        if spread.p50 is None or spread.p95 is None or spread.max is None:
            preview = "frame→preview: no preview published"
        else:
            preview = (f"frame→preview p50 {spread.p50:.2f} s, p95 {spread.p95:.2f} s, "
                       f"max {spread.max:.2f} s ({spread.count} previews)")
        kind = "streaming" if self.streaming else "at close"
        volume = ("last frame→volume: not complete" if self.last_frame_to_volume is None
                  else f"last frame→volume {self.last_frame_to_volume:.2f} s ({kind})")
        return f"latency: {preview}; {volume}"


@dataclass
class LatencyRecorder:
    """Collects one scan's latencies; see the module docstring.

    Parameters
    ----------
    clock : callable
        Monotonic seconds (``time.monotonic``); injected in tests.
    streaming : bool
        Whether the scan is reconstructed while it arrives (reported beside the figure).
    """

    clock: Callable[[], float] = time.monotonic
    streaming: bool = False
    _received: dict[int, float] = field(default_factory=dict)
    _last_received: float | None = None
    _samples: list[float] = field(default_factory=list)
    _previews: int = 0
    _volume: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def frames_received(self, indices: Iterable[int]) -> None:
        """Frames (scan indices) received now; a frame received twice keeps its first time."""
        self.frames_received_at(indices, self.clock())

    def frames_received_at(self, indices: Iterable[int], at: float) -> None:
        """Frames received at ``at`` (this recorder's clock): another rank's frames, with
        the time that rank received them. The last frame is the latest of all times."""
        with self._lock:
            for index in indices:
                self._received.setdefault(int(index), at)
            if self._last_received is None or at > self._last_received:
                self._last_received = at

    def received_at(self, index: int) -> float | None:
        """When frame ``index`` was received (None: not received, or already shown)."""
        with self._lock:
            return self._received.get(int(index))

    @property
    def last_received(self) -> float | None:
        """When the latest frame was received (None: no frame yet)."""
        return self._last_received

    def preview_published(self, newest_frame: int) -> None:
        """A preview showing frames up to ``newest_frame`` was published now.

        Raises
        ------
        StreamerError
            If that frame was never received (a preview cannot show it).
        """
        now = self.clock()
        with self._lock:
            received = self._received.get(int(newest_frame))
            if received is None:
                raise StreamerError(
                    f"latency: preview_published: expected a received frame, got "
                    f"{newest_frame}")
            # Frames at or before the one shown can no longer be the newest of a preview.
            for index in [i for i in self._received if i < newest_frame]:
                del self._received[index]
            sample = now - received
            if len(self._samples) < MAX_SAMPLES:
                self._samples.append(sample)
            else:
                self._samples[self._previews % MAX_SAMPLES] = sample
            self._previews += 1

    def volume_complete(self) -> None:
        """The volume is written and closed now (after the last frame).

        Raises
        ------
        StreamerError
            If no frame was received.
        """
        if self._last_received is None:
            raise StreamerError("latency: volume_complete: expected frames first, got none")
        self._volume = self.clock() - self._last_received

    def summary(self) -> LatencySummary:
        """The scan's figures so far."""
        with self._lock:
            return LatencySummary(
                frame_to_preview=Distribution.of(list(self._samples), self._previews),
                last_frame_to_volume=self._volume,
                streaming=self.streaming,
            )

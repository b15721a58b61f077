"""One status line for long commands, rewritten in place on a terminal.

Quiet when asked (``--quiet``) or when the stream is not a terminal (logs, pipes, CI), so
scripts get only the final summaries. Updates are rate-limited (a few per second), so
progress costs nothing measurable in a hot loop.

Iterations of an iterative stage on R ranks reach rank 0, the one writer
(:mod:`streamer.run.rank_iterations`), and show as one summed line:
``sirt on 4 ranks: 187/240 band iterations (78 %), residual 0.0123 (rank 2)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TextIO


class IterationEvent(Protocol):
    """An iteration of an iterative stage (``streamer.pipeline.iterations.BandIteration``)."""

    @property
    def stage(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def band(self) -> int: ...
    @property
    def bands(self) -> int: ...
    @property
    def rank(self) -> int: ...
    @property
    def ranks(self) -> int: ...
    @property
    def residual(self) -> float | None: ...
    @property
    def change(self) -> float | None: ...

    def describe(self) -> str:
        """The whole status line."""
        ...


class Progress:
    """A status line: ``label: 1,234/2,000 frames (61 %), 812 frames/s``.

    Parameters
    ----------
    stream : TextIO
        Where to write (usually ``sys.stderr``).
    label : str
        What is progressing.
    unit : str
        What is counted.
    quiet : bool
        Never print.
    interval_s : float
        Least time between two updates.
    clock : callable
        Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        unit: str = "frames",
        *,
        quiet: bool = False,
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.unit = unit
        self.enabled = not quiet and _is_terminal(stream)
        self.interval_s = interval_s
        self.clock = clock
        self.began = clock()
        self.last_shown = float("-inf")
        self.shown = False
        #: The latest iteration event of each rank (the current stage's).
        self.latest: dict[int, IterationEvent] = {}

    def update(self, done: int, total: int | None = None, extra: str = "") -> None:
        """Show ``done`` (of ``total``) if enough time has passed since the last update."""
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last_shown < self.interval_s and (total is None or done < total):
            return
        self.last_shown = now
        elapsed = max(now - self.began, 1e-9)
        of = f"/{total:,}" if total else ""
        percent = f" ({100 * done / total:.0f} %)" if total else ""
        tail = f", {extra}" if extra else ""
        line = f"{self.label}: {done:,}{of} {self.unit}{percent}, {done / elapsed:,.0f} " \
               f"{self.unit}/s{tail}"
        self._write(line)

    def iteration(self, event: IterationEvent) -> None:
        """Show an iterative stage's iteration (``sirt band 2/4 (rows 16-31): iteration
        12/20, residual 0.0123``; on R ranks the summed line of :func:`ranks_line`),
        rate-limited like :meth:`update`; the last iteration of a band is always shown.
        A new stage starts a new line."""
        if not self.enabled:
            return
        if event.stage != self.label:
            self.close()
            self.label, self.last_shown = event.stage, float("-inf")  # shown at once
            self.latest = {}
        self.latest[event.rank] = event
        now = self.clock()
        if now - self.last_shown < self.interval_s and event.done < event.total:
            return
        self.last_shown = now
        self._write(event.describe() if event.ranks == 1 else ranks_line(event, self.latest))

    def _write(self, line: str) -> None:
        self.stream.write("\r" + line.ljust(79))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """End the line (if one was shown) so that what follows starts cleanly."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def ranks_line(event: IterationEvent, latest: dict[int, IterationEvent]) -> str:
    """``sirt on 4 ranks: 187/240 band iterations (78 %), residual 0.0123 (rank 2)``: the
    iterations done and to do over the ranks heard from (each rank's bands run one after
    the other), ``3/4 ranks heard`` until all are, and the newest event's measure."""
    done = sum(e.band * e.total + e.done for e in latest.values())
    total = sum(e.bands * e.total for e in latest.values())
    line = (f"{event.stage} on {event.ranks} ranks: {done:,}/{total:,} band iterations "
            f"({100 * done / max(total, 1):.0f} %)")
    if len(latest) < event.ranks:
        line += f", {len(latest)}/{event.ranks} ranks heard"
    for name in ("residual", "change"):
        value = getattr(event, name)
        if value is not None:
            line += f", {name} {value:.3g} (rank {event.rank})"
    return line


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())

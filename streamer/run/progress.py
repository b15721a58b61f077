"""One status line for long commands, rewritten in place on a terminal.

Quiet when asked (``--quiet``) or when the stream is not a terminal (logs, pipes, CI), so
scripts get only the final summaries. Updates are rate-limited (a few per second), so
progress costs nothing measurable in a hot loop.
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
        12/20, residual 0.0123``), rate-limited like :meth:`update`; the last iteration
        of a band is always shown. A new stage starts a new line."""
        if not self.enabled:
            return
        if event.stage != self.label:
            self.close()
            self.label, self.last_shown = event.stage, float("-inf")  # shown at once
        now = self.clock()
        if now - self.last_shown < self.interval_s and event.done < event.total:
            return
        self.last_shown = now
        self._write(event.describe())

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


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())

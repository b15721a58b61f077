"""The close of one scan between ranks, as a state machine without any I/O.

When a scan closes, the ranks agree on these, in this order (see
:mod:`streamer.run.ranks` and ADR 0003):

0. **Path known**: rank 0 names the scan's output when it opens and tells the others.
1. **References settled**: every rank announces how many darks and flats it forwarded;
   a rank goes on once it has received, from every peer, as many as that peer announced
   (so every rank normalises with the same references).
2. **CoR agreed**: the rank that owns the finder's row finds the CoR and sends it; the
   others wait for it.
3. **Parts written** (rank 0): every rank reports the part it wrote; rank 0 writes the
   master once all have (or once the wait ran out: the master then says who is missing).

The driver owns the link and the clock: it feeds what arrived (``reference_received``,
``references_announced``, ``center_agreed``, ``part_written``), calls :meth:`begin` when
it starts waiting for a step with the current time, and asks :meth:`check` with the
current time whether to go on (:class:`Ready`), keep serving the link
(:class:`Waiting`, naming the ranks it waits for) or give up (:class:`TimedOut`, whose
``message`` names the silent ranks). Nothing here sleeps, reads a clock or touches a
socket, so every path is tested by stepping it (``tests/run/test_close.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from streamer.errors import ExchangeError

Part = TypeVar("Part")


class Step(Enum):
    """What a rank waits for during a scan's close."""

    PATH = "the output path from rank"
    REFERENCES = "the darks and flats forwarded by ranks"
    CENTER = "the CoR from rank"
    PARTS = "the parts written by ranks"


@dataclass(frozen=True)
class Ready:
    """The awaited step is complete: go on."""


@dataclass(frozen=True)
class Waiting:
    """Still waiting for these ranks: keep serving the link."""

    ranks: tuple[int, ...]


@dataclass(frozen=True)
class TimedOut:
    """The wait ran out; ``ranks`` never answered."""

    ranks: tuple[int, ...]
    message: str


Outcome = Ready | Waiting | TimedOut


@dataclass(frozen=True)
class CenterAgreed:
    """The CoR found by its owner rank (``center`` None when it could not be found)."""

    center: float | None
    method: str | None
    error: str | None


@dataclass
class CloseHandshake(Generic[Part]):
    """One rank's view of one scan's close.

    Parameters
    ----------
    scan : str
        The scan id (for messages).
    rank, size : int
        This rank and the number of ranks.
    timeout_s : float
        How long each step may wait for the peers.
    center_owner : int or None
        The rank that finds the CoR (None: the pipeline's CoR is fixed; nothing to agree).
    """

    scan: str
    rank: int
    size: int
    timeout_s: float
    center_owner: int | None = None
    forwarded: int = 0
    received: dict[int, int] = field(default_factory=dict)  # rank -> references from it
    announced: dict[int, int] = field(default_factory=dict)  # rank -> announced count
    path_known: bool = False  # rank 0 names the output; the others are told
    center: CenterAgreed | None = None
    parts: dict[int, Part] = field(default_factory=dict)  # rank -> its part (rank 0)
    _waiting: tuple[Step, float] | None = None  # the step and its deadline

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ExchangeError(f"scan {self.scan!r}: rank: expected one in [0, "
                                f"{self.size}), got {self.rank}")
        if self.center_owner is not None and not 0 <= self.center_owner < self.size:
            raise ExchangeError(f"scan {self.scan!r}: CoR owner: expected a rank in [0, "
                                f"{self.size}), got {self.center_owner}")

    # --- what arrived ------------------------------------------------------------------

    def path_received(self) -> None:
        """Rank 0 told this rank the scan's output path."""
        self.path_known = True

    def reference_forwarded(self) -> None:
        """This rank sent one dark or flat to every peer."""
        self.forwarded += 1

    def reference_received(self, source: int) -> None:
        self.received[source] = self.received.get(source, 0) + 1

    def references_announced(self, source: int, count: int) -> None:
        """``source`` forwarded ``count`` references in all for this scan."""
        if count < 0:
            raise ExchangeError(f"scan {self.scan!r}: rank {source} announced {count} "
                                "references: expected a count >= 0")
        self.announced[source] = count

    def center_agreed(self, agreed: CenterAgreed) -> None:
        self.center = agreed

    def part_written(self, source: int, part: Part) -> None:
        self.parts[source] = part

    @property
    def references(self) -> int:
        """References received from the peers (those that reached this rank directly
        are counted by the driver)."""
        return sum(self.received.values())

    # --- waiting -----------------------------------------------------------------------

    def begin(self, step: Step, now: float) -> None:
        """Start waiting for ``step``; its deadline is ``now + timeout_s``."""
        self._waiting = (step, now + self.timeout_s)

    def missing(self, step: Step) -> tuple[int, ...]:
        """The ranks ``step`` still waits for (empty: the step is complete)."""
        peers = [r for r in range(self.size) if r != self.rank]
        if step is Step.PATH:
            return () if self.rank == 0 or self.path_known else (0,)
        if step is Step.REFERENCES:
            return tuple(r for r in peers if r not in self.announced
                         or self.received.get(r, 0) < self.announced[r])
        if step is Step.CENTER:
            if self.center_owner is None or self.center is not None:
                return ()
            return (self.center_owner,)
        return tuple(r for r in range(self.size) if r not in self.parts)

    def check(self, now: float) -> Outcome:
        """Whether the step begun last is complete, still waiting or out of time."""
        if self._waiting is None:
            raise ExchangeError(f"scan {self.scan!r}: check() before begin()")
        step, deadline = self._waiting
        missing = self.missing(step)
        if not missing:
            self._waiting = None
            return Ready()
        if now > deadline:
            self._waiting = None
            return TimedOut(missing, (
                f"scan {self.scan!r}: rank {self.rank} waited {self.timeout_s:g} s for "
                f"{step.value} {list(missing)}: none came (a rank died or is stuck)"))
        return Waiting(missing)


__all__ = ["CenterAgreed", "CloseHandshake", "Outcome", "Ready", "Step", "TimedOut",
           "Waiting"]

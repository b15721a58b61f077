"""Iterations of iterative stages on R ranks: every rank's events reach rank 0.

Each rank reconstructs its own band of rows, so the iterations of SIRT, CGLS, … happen on
every rank. The report and the terminal are rank 0's: a rank other than 0 tells its own
listener (if any) and sends each event to rank 0 on the control link
(:data:`streamer.run.ranks.TAG_ITERATION`); rank 0 counts its own and its peers' events
in one :class:`~streamer.pipeline.iterations.IterationLog` per scan, which forwards them
to its listener (the progress line: one writer, so R ranks never interleave on the
terminal) and gives the scan's summary lines and the JSON report's ``iterations``.

A rank sends its iteration messages before its part-written message on the same link, and
a link delivers one sender's messages in order, so when rank 0 has every part it has every
iteration too. Rank 0 also takes its peers' messages after each of its own iterations
(``serve``), so the progress line follows all ranks, not only between rank 0's blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgpack

from streamer.pipeline.iterations import BandIteration, IterationLog


@dataclass
class ScanIterations:
    """One scan's iterations on one rank.

    Parameters
    ----------
    serial : int
        The scan's serial (the same on every rank).
    rank, ranks : int
        This rank and how many there are.
    send_to_root : callable
        ``send_to_root(payload)``: a msgpack map to rank 0 (unused on rank 0).
    listener : callable, optional
        Told each event: on rank 0 every rank's, elsewhere this rank's own.
    """

    serial: int
    rank: int
    ranks: int
    send_to_root: Callable[[bytes], None]
    listener: Callable[[BandIteration], None] | None = None
    #: Rank 0: take the peers' messages now (set once the scan's state exists).
    serve: Callable[[], None] | None = None
    #: Rank 0: every rank's events of this scan.
    log: IterationLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = IterationLog(self.listener if self.rank == 0 else None)

    def own(self, event: BandIteration) -> None:
        """An event of this rank's band (the processor's listener)."""
        event = replace(event, rank=self.rank, ranks=self.ranks)
        if self.rank == 0:
            self.log.add(event)
            if self.serve is not None:
                self.serve()
            return
        if self.listener is not None:
            self.listener(event)
        self.send_to_root(msgpack.packb({"serial": self.serial, **event.as_message()}))

    def peer(self, message: dict[str, object], source: int) -> None:
        """Rank 0: a peer's event, as it sent it (refused with an
        :class:`~streamer.errors.ExchangeError` when malformed)."""
        self.log.add(BandIteration.from_message(message, source))


__all__ = ["ScanIterations"]

"""What a scan run on R ranks tells an observer (the live feed's relay, reports).

:class:`~streamer.run.ranks.RankedReconstruction` calls these hooks, on every rank in
the same order of scans, at fixed points of a scan; it knows nothing of what the
observer does with them. :class:`streamer.live.relay.FeedRelay` is the observer that
serves the live feed, the viewer's CoR, the transfer counts and the latency figures on
several ranks. ``serial`` numbers the scans the same way on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from streamer.exchange.reslice import ExchangeStats
    from streamer.ingest.accounting import ScanReport
    from streamer.ingest.state import FramesAccepted
    from streamer.pipeline.executor import ProcessedBlock
    from streamer.run.output import ScanOutput
    from streamer.wire.protocol import StartHeader


class RankObserver(Protocol):
    """Hooks of one rank's scan run (see the module docstring)."""

    def serve(self) -> None:
        """Take what arrived on the observer's own link (called wherever the rank waits
        or between blocks; never waits)."""

    def scan_opened(self, serial: int, start: StartHeader) -> None:
        """The scan opened on this rank."""

    def frames_accepted(self, event: FramesAccepted) -> None:
        """This rank's ingest accepted frames of the open scan."""

    def projections(self, block: ProcessedBlock) -> None:
        """A block of this rank's projections is corrected (all detector rows)."""

    def scan_closing(self, serial: int) -> None:
        """Ingest closed the scan; its last projections are corrected next. Called again
        when the rank's close begins (once per scan matters; later calls do nothing)."""

    def viewer_center(self, serial: int, serve: Callable[[], None] | None = None
                      ) -> float | None:
        """The CoR set from a viewer (the same on every rank), or None; may wait
        (bounded), calling ``serve`` meanwhile."""

    def center_settled(self, serial: int, center: float, method: str) -> None:
        """The CoR this scan is reconstructed at, and how it was decided."""

    def slices(self, serial: int, indices: npt.NDArray[np.int64],
               data: npt.NDArray[np.float32]) -> None:
        """Final slices ``(n, N, N)`` of scan rows ``indices`` written to this rank's part."""

    def part_done(self, serial: int, exchange: ExchangeStats | None, *,
                  streamed: bool = False) -> None:
        """This rank's part is written (or failed); ``exchange``: what its reslice moved;
        ``streamed``: its slices came from the streaming reconstruction (rank 0's is the
        scan's latency label)."""

    def report_merged(self, serial: int, report: ScanReport) -> None:
        """Rank 0: the scan's merged accounting."""

    def finish_master(self, serial: int, document: dict[str, Any],
                      serve: Callable[[], None] | None = None,
                      silent: tuple[int, ...] = ()) -> None:
        """Rank 0, every part in (but the ``silent`` ranks'), before the master is
        written: add to its report."""

    def scan_closed(self, serial: int, output: ScanOutput) -> ScanOutput:
        """Rank 0: the master is written (or failed); returns the output to publish."""

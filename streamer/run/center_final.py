"""The final CoR estimate of a scan streamed with an estimated CoR: checked near it first.

A streamed scan whose CoR was estimated during the scan (early, pair, carried:
:mod:`streamer.run.center_streaming`) is checked at close by the CoR policy
(:func:`stages.recon.center_policy.find_center`). That check runs after the last frame,
so its time is latency, and Vo's coarse search over the whole reliable range (one metric
per column over half the detector) is most of it. :func:`final_estimate_near` searches
near the estimate in use first and the whole range only when the minimum is not there.
(Its own module: it loads the CoR policy, which ``run``'s command line must not import
before it is needed.)

:class:`CheckInThread` runs that check beside the close's other work (the accumulators'
finish and the write, ADR 0033): NumPy's and scipy's transforms release the GIL, so on
two cores the check costs little or nothing after the last frame when it agrees.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from stages.recon.center_policy import CorEstimate, find_center

__all__ = ["CHECK_RADIUS_PX", "CHECK_WINDOW_PX", "CheckInThread", "final_estimate_near",
           "search_label"]

#: Columns either side of an estimated CoR in use that the final estimate searches first
#: (:func:`final_estimate_near`): eight tolerances, so a centre off by more than the
#: tolerance is still inside the window and found there.
CHECK_WINDOW_PX: Final = 4.0
#: Vo's fine search radius of that check (the whole search's is 6 px): the coarse minimum
#: is a whole column and the centre lies within half a column of it (``vo_search`` widens
#: the radius to its downsampling step on detectors wider than 1280 columns).
CHECK_RADIUS_PX: Final = 1.0


def final_estimate_near(
    projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64], used: float,
    search_all: Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64]], CorEstimate],
) -> tuple[CorEstimate, bool]:
    """The CoR policy's final estimate of a scan that streamed with the estimate ``used``,
    and whether the whole range was searched.

    The check comes after the last frame, so its time is latency: Vo's coarse search over
    the whole reliable range (half the detector, one metric per column) is most of it
    (12 s of the 15 s after the last frame at N = 512 on a busy 2-core machine). Here the
    coarse search covers :data:`CHECK_WINDOW_PX` either side of ``used`` and the fine one
    :data:`CHECK_RADIUS_PX`: a minimum inside says where the centre is as the whole search
    would (the same metric, the same fine step); one within a pixel of the window's
    edge says the centre may lie outside, and ``search_all`` (the CoR policy with its
    defaults) searches the whole range."""
    near = find_center(projections, angles_deg, around=used, smin=-CHECK_WINDOW_PX,
                       smax=CHECK_WINDOW_PX, srad=CHECK_RADIUS_PX)
    if abs(near.center - used) <= CHECK_WINDOW_PX - 1:
        return near, False
    return search_all(projections, angles_deg), True


def search_label(used: float, whole: bool) -> str:
    """How :func:`final_estimate_near` searched, for the report's ``final_search``."""
    if whole:
        return f"whole range (none within {CHECK_WINDOW_PX:g} px of {used:.2f})"
    return f"within {CHECK_WINDOW_PX:g} px of {used:.2f}"


class CheckInThread:
    """A CoR check (``search``: :func:`final_estimate_near` on the CoR row, returning the
    estimate and whether the whole range was searched) in a thread of its own, started
    at once; the caller polls :meth:`wait` (serving its links meanwhile) and takes
    :meth:`result`. ``used``: the CoR the scan streamed with (for the report).

    ``before``: called in the thread before the search (tests: hold the check until the
    write has begun, to show that the two overlap). The thread is a daemon: a close that
    gives up on it (a stop, a timeout) leaves it to finish on its own.
    """

    def __init__(self, search: Callable[[], tuple[CorEstimate, bool]], used: float, *,
                 before: Callable[[], None] | None = None) -> None:
        self.used = used
        self._found: tuple[CorEstimate, bool] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()

        def check() -> None:
            try:
                if before is not None:
                    before()
                self._found = search()
            except BaseException as error:  # handed to the caller by result()
                self._error = error
            finally:
                self._done.set()

        self._thread = threading.Thread(target=check, name="cor-check", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the check; True once it has ended."""
        return self._done.wait(timeout_s)

    def result(self) -> tuple[CorEstimate, bool]:
        """The check's estimate and whether the whole range was searched (once
        :meth:`wait` said it ended); re-raises what the check raised."""
        if not self._done.is_set():
            raise RuntimeError("CheckInThread.result() before the check ended")
        if self._error is not None:
            raise self._error
        assert self._found is not None
        return self._found

"""The final CoR estimate of a scan streamed with an estimated CoR: checked near it first.

A streamed scan whose CoR was estimated during the scan (early, pair, carried:
:mod:`streamer.run.center_streaming`) is checked at close by the CoR policy
(:func:`stages.recon.center_policy.find_center`). That check runs after the last frame,
so its time is latency, and Vo's coarse search over the whole reliable range (one metric
per column over half the detector) is most of it. :func:`final_estimate_near` searches
near the estimate in use first and the whole range only when the minimum is not there.
(Its own module: it loads the CoR policy, which ``run``'s command line must not import
before it is needed.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from stages.recon.center_policy import CorEstimate, find_center

__all__ = ["CHECK_RADIUS_PX", "CHECK_WINDOW_PX", "final_estimate_near"]

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

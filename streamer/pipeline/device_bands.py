"""Bands of a sinogram section, through the device queue when the section runs wholly on
the device: the one rule the one-rank executor and the R-rank runner share (ADR 0018).

A section whose every step is on a device backend and none saves its output
(:func:`runs_on_device`) streams its bands through a
:class:`~stages.backends.device_queue.DeviceQueue`: a band goes up from a pinned buffer
while the one before computes, the steps run back to back on the device
(``run(..., queued=True)`` keeps the result there), and the result comes back while the
next band computes; every copy is counted and timed in the caller's
:class:`~stages.backends.xp.TransferStats`. Any other section runs band by band, each
``run(..., queued=False)`` moving its band itself (``apply_steps``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from stages.backends.device_queue import DeviceQueue, StreamDevice
from stages.backends.xp import TransferStats
from streamer.pipeline.config import PipelineStep

__all__ = ["DEVICE_BACKENDS", "BandRunner", "band_outputs", "runs_on_device"]

#: The backends whose stages run on the device (blocks in the device's array module).
DEVICE_BACKENDS = frozenset({"httomolibgpu", "cupy"})


class BandRunner(Protocol):
    """Runs the section's steps on one band (rows ``first:last`` of the section's input);
    ``queued``: the band is already on the device and its result stays there."""

    def __call__(self, block: Any, first: int, last: int, /, *, queued: bool) -> Any: ...


def runs_on_device(steps: tuple[PipelineStep, ...]) -> bool:
    """Whether a section streams through a :class:`DeviceQueue`: every step on the device
    and none saving its output on the way (that would copy to the host mid-block)."""
    return bool(steps) and all(step.backend in DEVICE_BACKENDS and not step.save_result
                               for step in steps)


def band_outputs(
    steps: tuple[PipelineStep, ...], spans: Sequence[tuple[int, int]],
    block_of: Callable[[int, int], npt.NDArray[np.float32]], run: BandRunner, *,
    device: Callable[[], StreamDevice], transfers: TransferStats,
    stopping: Callable[[], bool] = lambda: False,
) -> Iterator[npt.NDArray[np.float32]]:
    """``run``'s output for each span of rows, in order, on the host; ``block_of(first,
    last)`` is the host input of a span (with the neighbour rows its steps need, ADR
    0019). Stops before a band when ``stopping()`` says so. ``device()`` is called only when the
    section is queued (on a GPU it makes CuPy's streams)."""
    if not runs_on_device(steps):
        for first, last in spans:
            if stopping():
                return
            result: npt.NDArray[np.float32] = run(block_of(first, last), first, last,
                                                  queued=False)
            yield result
        return
    issued = iter(spans)  # DeviceQueue calls the work in the order it takes blocks

    def blocks() -> Iterator[npt.NDArray[np.float32]]:
        for first, last in spans:
            if stopping():
                return
            yield block_of(first, last)

    def work(block: Any) -> Any:
        first, last = next(issued)
        return run(block, first, last, queued=True)

    yield from DeviceQueue(device(), transfers).map(blocks(), work)

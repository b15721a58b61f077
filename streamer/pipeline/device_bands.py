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

Each rank's copies reach rank 0 with its part, summed there into the run report's
``device`` entry (:func:`device_document`) and one terminal line (:func:`device_line`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from stages.backends.device_queue import DeviceQueue, StreamDevice
from stages.backends.xp import TransferStats
from streamer.pipeline.config import PipelineStep

__all__ = ["DEVICE_BACKENDS", "BandRunner", "band_outputs", "device_document", "device_line",
           "runs_on_device", "transfer_figures"]

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


def transfer_figures(stats: TransferStats) -> dict[str, float]:
    """One rank's host↔device copies as plain numbers (the part message to rank 0)."""
    return {name: value for name, value in asdict(stats).items()}


def device_document(per_rank: Mapping[int, Mapping[str, float]]) -> dict[str, Any] | None:
    """The run report's ``device`` entry: each rank's host↔device copies (counts, bytes,
    seconds each way) and their sum; ``None`` when no rank made a copy."""
    ranks = {rank: _stats(figures) for rank, figures in per_rank.items()}
    if not any(stats.transfers for stats in ranks.values()):
        return None
    total = TransferStats()
    for stats in ranks.values():
        for name in (field.name for field in fields(TransferStats)):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
    return {"per_rank": {str(rank): asdict(stats) for rank, stats in sorted(ranks.items())},
            "total": asdict(total)}


def device_line(document: Mapping[str, Any]) -> str:
    """The terminal line of a :func:`device_document`: the sum, and over how many ranks."""
    total = _stats(document["total"])
    ranks = len(document["per_rank"])
    return f"device transfers: {total.describe()}" + (f" ({ranks} ranks)" if ranks > 1 else "")


def _stats(figures: Mapping[str, float]) -> TransferStats:
    """A :class:`TransferStats` from :func:`transfer_figures` (missing names: 0)."""
    stats = TransferStats()
    for field in fields(TransferStats):
        value = figures.get(field.name, 0)
        setattr(stats, field.name, type(getattr(stats, field.name))(value))
    return stats

"""Host↔device copies that overlap the compute: pinned staging buffers, two CUDA streams
for the copies and one for the work, two blocks in flight.

A block that goes to the GPU, is processed there and comes back costs upload + compute +
download when done in turn. With page-locked (pinned) host buffers the copies are
asynchronous DMA, so they can run on their own streams while the device computes:
:class:`DeviceQueue` stages block ``k + 1`` into a pinned buffer and uploads it while block
``k`` is computed, and downloads block ``k`` while block ``k + 1`` is computed. Two slots
of each buffer suffice (double buffering): a slot is written again only after the block
that used it was handed back.

Per block, in issue order::

    host copy → pinned_in[k % 2]           (host, overlaps the device's work on k - 1)
    upload      on the copy-in stream       → event uploaded[k]
    compute     on the compute stream, after uploaded[k]   → event computed[k]
    download    on the copy-out stream, after computed[k]  → pinned_out[k % 2]
    hand back block k - 1 (wait for its download, copy it out of the pinned slot)

Every copy is counted in a :class:`~stages.backends.xp.TransferStats`, and timed with
device events around it (the copy's own duration on its stream, not the host's wait).

The device is an interface (:class:`StreamDevice`): :class:`CupyStreams` is CuPy's (used
on a GPU), and tests drive the same queue with a fake that records the order of the
calls, so the double-buffer order is checked on any machine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from stages.backends.xp import TransferStats, require_gpu

#: Blocks in flight (and slots of each pinned buffer): one computing, one copying.
SLOTS = 2


class StreamDevice(Protocol):
    """What :class:`DeviceQueue` needs from a device (CuPy's in :class:`CupyStreams`)."""

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """A page-locked host array (asynchronous copies need one)."""

    def stream(self, name: str) -> Any:
        """A new non-blocking stream."""

    def upload(self, host: npt.NDArray[Any], stream: Any) -> Any:
        """Start copying ``host`` (pinned) to a new device array on ``stream``."""

    def download(self, device: Any, host: npt.NDArray[Any], stream: Any) -> None:
        """Start copying ``device`` into ``host`` (pinned) on ``stream``."""

    def compute(self, work: Callable[[Any], Any], block: Any, stream: Any) -> Any:
        """Run ``work(block)`` with its kernels queued on ``stream``."""

    def record(self, stream: Any) -> Any:
        """An event marking everything queued on ``stream`` so far."""

    def wait(self, stream: Any, event: Any) -> None:
        """Make ``stream`` wait for ``event`` (the host does not wait)."""

    def synchronize(self, event: Any) -> None:
        """Make the host wait for ``event``."""

    def seconds(self, start: Any, end: Any) -> float:
        """Device time between two finished events."""


@dataclass
class _InFlight:
    index: int
    out: npt.NDArray[Any]  # the pinned slot the result is downloaded into
    upload: tuple[Any, Any]  # events around the upload
    download: tuple[Any, Any]  # events around the download
    keep: Any  # the device arrays, alive until the download is done


class DeviceQueue:
    """Runs ``work`` on the device over a stream of host blocks, copies overlapped.

    Parameters
    ----------
    device : StreamDevice
        The device (:class:`CupyStreams` on a GPU; a fake in tests).
    stats : TransferStats
        Counts and times every copy (the run's report).
    """

    def __init__(self, device: StreamDevice, stats: TransferStats) -> None:
        self.device = device
        self.stats = stats
        self._copy_in = device.stream("copy-in")
        self._copy_out = device.stream("copy-out")
        self._compute = device.stream("compute")
        self._pinned_in: dict[tuple[int, tuple[int, ...], str], npt.NDArray[Any]] = {}
        self._pinned_out: dict[tuple[int, tuple[int, ...], str], npt.NDArray[Any]] = {}

    def _buffer(self, pool: dict[tuple[int, tuple[int, ...], str], npt.NDArray[Any]],
                slot: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        key = (slot, shape, dtype.str)
        if key not in pool:  # one per slot and block shape: allocated once, reused
            pool[key] = self.device.pinned(shape, dtype)
        return pool[key]

    def map(self, blocks: Iterable[npt.NDArray[Any]],
            work: Callable[[Any], Any]) -> Iterator[npt.NDArray[Any]]:
        """``work(block)`` on the device for each host block, results on the host in
        order; at most :data:`SLOTS` blocks in flight."""
        flight: deque[_InFlight] = deque()
        for index, block in enumerate(blocks):
            flight.append(self._issue(index, block, work))
            if len(flight) == SLOTS:
                yield self._finish(flight.popleft())
        while flight:
            yield self._finish(flight.popleft())

    def _issue(self, index: int, block: npt.NDArray[Any],
               work: Callable[[Any], Any]) -> _InFlight:
        device, slot = self.device, index % SLOTS
        staged = self._buffer(self._pinned_in, slot, block.shape, block.dtype)
        np.copyto(staged, block)  # host work; the device is busy with the block before
        up_start = device.record(self._copy_in)
        on_device = device.upload(staged, self._copy_in)
        up_end = device.record(self._copy_in)
        device.wait(self._compute, up_end)
        result = device.compute(work, on_device, self._compute)
        computed = device.record(self._compute)
        device.wait(self._copy_out, computed)
        shape, dtype = tuple(result.shape), np.dtype(result.dtype)
        out = self._buffer(self._pinned_out, slot, shape, dtype)
        down_start = device.record(self._copy_out)
        device.download(result, out, self._copy_out)
        down_end = device.record(self._copy_out)
        self.stats.to_device += 1
        self.stats.bytes_to_device += int(block.nbytes)
        return _InFlight(index, out, (up_start, up_end), (down_start, down_end),
                         keep=(on_device, result))

    def _finish(self, item: _InFlight) -> npt.NDArray[Any]:
        device = self.device
        device.synchronize(item.download[1])
        out = item.out
        self.stats.to_host += 1
        self.stats.bytes_to_host += int(out.nbytes)
        self.stats.seconds_to_device += device.seconds(*item.upload)
        self.stats.seconds_to_host += device.seconds(*item.download)
        return out.copy()  # the slot is reused two blocks later


class CupyStreams:
    """:class:`StreamDevice` on CuPy: pinned memory from ``cupy.cuda.alloc_pinned_memory``,
    non-blocking streams for the copies, ``ndarray.set``/``get`` with a stream, CUDA
    events.

    The compute runs on the legacy default (null) stream: libraries called by the stages
    (cufinufft, httomolibgpu) launch there unless told otherwise, and a compute stream of
    our own would not be ordered with them (a non-blocking stream does not wait for the
    null stream). The copy streams are non-blocking, so they still overlap the compute,
    ordered by the events :class:`DeviceQueue` records."""

    def __init__(self) -> None:
        self._cupy = require_gpu("cupy")
        self._keep: list[Any] = []  # the pinned allocations behind the arrays

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        count = int(np.prod(shape))
        memory = self._cupy.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
        self._keep.append(memory)
        array: npt.NDArray[Any] = np.frombuffer(memory, dtype, count).reshape(shape)
        return array

    def stream(self, name: str) -> Any:
        if name == "compute":
            return self._cupy.cuda.Stream.null
        return self._cupy.cuda.Stream(non_blocking=True)

    def upload(self, host: npt.NDArray[Any], stream: Any) -> Any:
        with stream:
            device = self._cupy.empty(host.shape, host.dtype)
        device.set(host, stream=stream)
        return device

    def download(self, device: Any, host: npt.NDArray[Any], stream: Any) -> None:
        device.get(stream=stream, out=host)

    def compute(self, work: Callable[[Any], Any], block: Any, stream: Any) -> Any:
        with stream:
            return work(block)

    def record(self, stream: Any) -> Any:
        event = self._cupy.cuda.Event()
        event.record(stream)
        return event

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def synchronize(self, event: Any) -> None:
        event.synchronize()

    def seconds(self, start: Any, end: Any) -> float:
        return float(self._cupy.cuda.get_elapsed_time(start, end)) / 1000.0

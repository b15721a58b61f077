"""The overlapped host↔device copies (:mod:`stages.backends.device_queue`) and the rank →
device map, on a fake device that records the order of the calls: the double-buffer
order, the counts and times of the copies, the slots' reuse. The CuPy streams run in the
``gpu`` test at the end (skipped without a device)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stages.backends.device import device_for_rank, local_rank, node_local_rank
from stages.backends.device_queue import SLOTS, CupyStreams, DeviceQueue
from stages.backends.xp import TransferStats, gpu_available


class FakeDevice:
    """Executes each call at once (numpy arrays stand for device ones) and logs it;
    every copy "takes" 2 ms on the device clock, every kernel run 5 ms."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.pinned_buffers: list[npt.NDArray[Any]] = []
        self.clock = 0.0

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        buffer = np.zeros(shape, dtype)
        self.pinned_buffers.append(buffer)
        self.log.append(f"pinned {shape}")
        return buffer

    def stream(self, name: str) -> str:
        return name

    def upload(self, host: npt.NDArray[Any], stream: str) -> npt.NDArray[Any]:
        assert any(host is buffer for buffer in self.pinned_buffers), "upload from pinned"
        self.clock += 0.002
        self.log.append(f"upload {int(host.flat[0])} on {stream}")
        return host.copy()

    def download(self, device: Any, host: npt.NDArray[Any], stream: str) -> None:
        assert any(host is buffer for buffer in self.pinned_buffers), "download to pinned"
        self.clock += 0.002
        np.copyto(host, device)
        self.log.append(f"download {int(device.flat[0])} on {stream}")

    def compute(self, work: Callable[[Any], Any], block: Any, stream: str) -> Any:
        self.clock += 0.005
        self.log.append(f"compute {int(block.flat[0])} on {stream}")
        return work(block)

    def record(self, stream: str) -> tuple[str, float]:
        return (stream, self.clock)

    def wait(self, stream: str, event: tuple[str, float]) -> None:
        self.log.append(f"{stream} waits for {event[0]}")

    def synchronize(self, event: tuple[str, float]) -> None:
        self.log.append(f"host waits for {event[0]}")

    def seconds(self, start: tuple[str, float], end: tuple[str, float]) -> float:
        return end[1] - start[1]


def _blocks(count: int) -> list[npt.NDArray[np.float32]]:
    return [np.full((3, 4, 5), float(k), dtype=np.float32) for k in range(count)]


def test_results_come_back_in_order_and_equal_the_work_done_in_turn() -> None:
    device, stats = FakeDevice(), TransferStats()
    queue = DeviceQueue(device, stats)
    blocks = _blocks(5)
    results = list(queue.map(blocks, lambda block: block * 2 + 1))
    for block, result in zip(blocks, results, strict=True):
        np.testing.assert_array_equal(result, block * 2 + 1)
    assert all(result.base is None for result in results), "handed back as copies"


def test_the_next_block_is_uploaded_before_the_previous_one_is_handed_back() -> None:
    device = FakeDevice()
    queue = DeviceQueue(device, TransferStats())
    list(queue.map(_blocks(3), lambda block: block + 100))
    events = [line for line in device.log if not line.startswith("pinned")]
    assert events[:6] == [
        "upload 0 on copy-in", "compute waits for copy-in", "compute 0 on compute",
        "copy-out waits for compute", "download 100 on copy-out",
        "upload 1 on copy-in"]  # block 1 goes up before anyone waits for block 0
    first_wait = events.index("host waits for copy-out")
    assert first_wait > events.index("download 101 on copy-out")
    assert events.count("host waits for copy-out") == 3


def test_two_pinned_slots_each_way_are_allocated_once_and_reused() -> None:
    device = FakeDevice()
    list(DeviceQueue(device, TransferStats()).map(_blocks(6), lambda block: block))
    assert sum(line.startswith("pinned") for line in device.log) == 2 * SLOTS


def test_every_copy_is_counted_and_timed_on_the_device_clock() -> None:
    device, stats = FakeDevice(), TransferStats()
    blocks = _blocks(4)
    list(DeviceQueue(device, stats).map(blocks, lambda block: block[:, :2]))
    assert (stats.to_device, stats.to_host) == (4, 4)
    assert stats.bytes_to_device == sum(block.nbytes for block in blocks)
    assert stats.bytes_to_host == sum(block[:, :2].nbytes for block in blocks)
    assert stats.seconds_to_device == pytest.approx(4 * 0.002)
    assert stats.seconds_to_host == pytest.approx(4 * 0.002)


def test_an_empty_stream_of_blocks_gives_nothing() -> None:
    assert list(DeviceQueue(FakeDevice(), TransferStats()).map([], lambda b: b)) == []


def test_local_rank_prefers_mpi_s_split_then_the_launcher_variables() -> None:
    assert local_rank({"PMI_LOCAL_RANK": "2"}, 7) == 2
    assert local_rank({"MPI_LOCALRANKID": "1", "PMI_LOCAL_RANK": "3"}, 7) == 1
    assert local_rank({"MV2_COMM_WORLD_LOCAL_RANK": "3"}, 7) == 3
    assert local_rank({"PMI_LOCAL_RANK": "2"}, 7, node_rank=0) == 0
    assert local_rank({}, 5) == 5
    assert device_for_rank(9, {"CUDA_VISIBLE_DEVICES": "4,5"}, 8, node_rank=3) == 1


class _Comm:
    """A communicator whose shared-memory split puts this rank 2nd of 3 on its node."""

    def __init__(self) -> None:
        self.freed = False
        self.split_with: Any = None

    def Split_type(self, kind: Any) -> _Comm:
        self.split_with = kind
        return self

    def Get_rank(self) -> int:
        return 1

    def Get_size(self) -> int:
        return 3

    def Free(self) -> None:
        self.freed = True


def test_the_node_local_rank_comes_from_the_shared_memory_split() -> None:
    from mpi4py import MPI

    comm = _Comm()
    assert node_local_rank(comm) == (1, 3)
    assert comm.split_with == MPI.COMM_TYPE_SHARED and comm.freed
    assert node_local_rank(None) is None


@pytest.mark.gpu
def test_the_queue_on_cupy_streams_equals_the_work_done_in_turn() -> None:
    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    import cupy

    stats = TransferStats()
    blocks = [np.random.default_rng(k).random((8, 64, 96), dtype=np.float32)
              for k in range(5)]
    results = list(DeviceQueue(CupyStreams(), stats).map(
        blocks, lambda block: cupy.sqrt(block) * 2))
    for block, result in zip(blocks, results, strict=True):
        np.testing.assert_allclose(result, np.sqrt(block) * 2, rtol=1e-6)
    assert (stats.to_device, stats.to_host) == (5, 5)
    assert stats.seconds_to_device > 0 and stats.seconds_to_host > 0

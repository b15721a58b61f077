"""On 1, 2 and 3 ranks (in-memory link, ranks in threads) a sinogram section wholly on
the device streams each rank's band through the same
:class:`~stages.backends.device_queue.DeviceQueue` as the one-rank executor
(:func:`streamer.pipeline.device_bands.band_outputs`): every band block goes up once and
comes back once, the copies are counted per rank and logged with the rank, and the
volume equals the host run's bit for bit.

No GPU: each rank's stream device is the fake of ``test_executor_device_queue``, whose
"device" arrays are device-like (CuPy's manners over numpy), so the device stages really
run on device arrays."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from stages import spec as stage_spec
from streamer.exchange.links import MemoryLink
from streamer.exchange.reslice import row_bands
from streamer.pipeline import executor
from streamer.run import streaming as run_streaming
from streamer.run.from_file import ReconSettings
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.pipeline.test_executor_device_queue import DEVICE, HOST, FakeStreams
from tests.run.ranks import run_ranks
from tests.stages import device_like

ROWS, COLS, PROJECTIONS, BLOCK = 9, 32, 36, 2
CONFIG = SimulationConfig(rows=ROWS, cols=COLS, projections=PROJECTIONS, flats=4, darks=2,
                          seed=3)
_COPIES = re.compile(r"rank (\d+): device transfers: host->device (\d+) copies, .* "
                     r"device->host (\d+) copies")


@pytest.fixture
def device_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``cupy`` backend without a GPU: the fake device stands in for it."""
    monkeypatch.setattr(stage_spec, "require_gpu", lambda backend="cupy": None)


def _recon(tmp_path: Path, text: str, ranks: int,
           ) -> tuple[npt.NDArray[np.float32], list[str]]:
    pipeline = tmp_path / f"{ranks}-{len(text)}.yaml"
    pipeline.write_text(text)
    output = tmp_path / f"{ranks}-{len(text)}.h5"
    lines: list[str] = []

    def rank(link: MemoryLink) -> Any:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=8,
                                 block_sinograms=BLOCK)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link, log=lines.append)

    result = run_ranks(ranks, rank)[0]
    assert result is not None and result.complete, result
    with h5py.File(output) as file:
        volume: npt.NDArray[np.float32] = file["/entry/reconstruction/data"][...]
    return volume, lines


@pytest.mark.usefixtures("device_backend")
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_each_ranks_band_streams_through_the_queue_and_equals_the_host_run(
        tmp_path: Path, ranks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    host, host_lines = _recon(tmp_path, HOST, ranks)
    assert not any(_COPIES.search(line) for line in host_lines)  # nothing on a device
    devices: list[FakeStreams] = []

    def streams() -> FakeStreams:  # CuPy's streams on a GPU: one per rank's scan
        devices.append(FakeStreams())
        return devices[-1]

    monkeypatch.setattr(executor, "CupyStreams", streams)
    queued, lines = _recon(tmp_path, DEVICE, ranks)
    np.testing.assert_array_equal(queued, host)
    assert len(devices) == ranks
    counted = {int(m[1]): (int(m[2]), int(m[3]))
               for m in map(_COPIES.search, lines) if m is not None}
    blocks = {rank: -(-(stop - first) // BLOCK)
              for rank, (first, stop) in enumerate(row_bands(ROWS, ranks))}
    assert counted == {rank: (count, count) for rank, count in blocks.items()}
    uploads = sorted(device.log.count("upload") for device in devices)
    assert uploads == sorted(blocks.values())
    assert all(device.log.count("download") == device.log.count("upload")
               for device in devices)


STREAMED_HOST = """pipeline:
  - method: normalize
  - method: minus_log
  - method: fourier_fbp
    parameters: {threads: 1, center: 15.5}
"""
STREAMED_DEVICE = STREAMED_HOST.replace("  - method: fourier_fbp\n",
                                        "  - method: fourier_fbp\n    backend: cupy\n")


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_device_reconstructor_streams_on_each_rank(
        tmp_path: Path, ranks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank's accumulators are on its device: the pieces that land are uploaded
    as they come, each band's slices come back once; the volume is the host stream's
    (bit for bit on one rank; to float32 summation order on two, where the pieces land
    in any order)."""
    host, host_lines = _recon(tmp_path, STREAMED_HOST, ranks)
    assert any("reconstruction: streaming" in line for line in host_lines), host_lines
    monkeypatch.setattr(run_streaming, "require_gpu",
                        lambda backend: device_like.DeviceLikeNamespace())
    device, lines = _recon(tmp_path, STREAMED_DEVICE, ranks)
    assert not any("back to reconstruction at close" in line for line in lines), lines
    if ranks == 1:
        np.testing.assert_array_equal(device, host)
    else:  # pieces land in any order on R ranks: the sums' order differs run to run
        error = float(np.linalg.norm(device - host) / np.linalg.norm(host))
        assert error < 1e-6, error
    counted = {int(m[1]): (int(m[2]), int(m[3]))
               for m in map(_COPIES.search, lines) if m is not None}
    assert sorted(counted) == list(range(ranks))
    for rank, (first, stop) in enumerate(row_bands(ROWS, ranks)):
        bands = -(-(stop - first) // max(BLOCK, -(-(stop - first) // 4)))
        uploads, downloads = counted[rank]
        assert uploads > 0 and downloads == bands


def _needs_gpu() -> None:
    from stages.backends.xp import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")


def _tight(text: str) -> str:
    """NUFFT tolerance 1e-4: the device's kernel (cufinufft) and the host's differ."""
    tight = text.replace("threads: 1,", "threads: 1, eps: 0.0001,")
    assert tight != text
    return tight


@pytest.mark.gpu
def test_on_a_gpu_two_ranks_share_the_device_through_the_queue(tmp_path: Path) -> None:
    """Two in-process ranks on one GPU (CuPy's streams and pinned buffers each): the
    volume agrees with the host run to the NUFFT tolerance, every band block moved once
    each way, per rank."""
    _needs_gpu()
    host, _ = _recon(tmp_path, _tight(HOST), 2)
    device, lines = _recon(tmp_path, _tight(DEVICE), 2)
    assert np.linalg.norm(device - host) < 1e-3 * np.linalg.norm(host)
    counted = {int(m[1]): (int(m[2]), int(m[3]))
               for m in map(_COPIES.search, lines) if m is not None}
    blocks = {rank: -(-(stop - first) // BLOCK)
              for rank, (first, stop) in enumerate(row_bands(ROWS, 2))}
    assert counted == {rank: (count, count) for rank, count in blocks.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [1, 2])
def test_on_a_gpu_a_cupy_reconstructor_streams(tmp_path: Path, ranks: int) -> None:
    """cufinufft's accumulators on the device while the scan arrives (both ranks on one
    GPU): no fallback to the batch path, the volume agrees with the host stream to the
    NUFFT tolerance, each band's slices downloaded once."""
    _needs_gpu()
    host, _ = _recon(tmp_path, _tight(STREAMED_HOST), ranks)
    device, lines = _recon(tmp_path, _tight(STREAMED_DEVICE), ranks)
    assert any("reconstruction: streaming" in line for line in lines), lines
    assert not any("back to reconstruction at close" in line for line in lines), lines
    assert np.linalg.norm(device - host) < 1e-3 * np.linalg.norm(host)
    counted = {int(m[1]) for m in map(_COPIES.search, lines) if m is not None}
    assert counted == set(range(ranks))

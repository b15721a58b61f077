"""The executor streams a sinogram section that runs wholly on the device through a
:class:`~stages.backends.device_queue.DeviceQueue`: host bands in through pinned buffers,
the section's stages back to back on the device, results out, copies overlapping the
compute, counted and timed in the scan's transfers.

No GPU here: a fake stream device holds its "device" arrays in
:mod:`tests.stages.device_like` (CuPy's manners over numpy), so the device stages really
run on device-like arrays, and the result must equal the host run's bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stages import spec as stage_spec
from stages.registry import REGISTRY
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.device_bands import runs_on_device
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor, feed_reader
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.stages import device_like

#: fourier_fbp on one thread: the device path spreads on one, so the numbers are equal.
HOST = """pipeline:
  - method: normalize
  - method: minus_log
  - method: remove_stripe_based_fitting
    parameters: {order: 2, sigma: 5}
  - method: fourier_fbp
    parameters: {threads: 1, filter_name: hann}
  - method: circular_mask
    parameters: {ratio: 0.9}
"""
DEVICE = HOST.replace("    parameters: {", "    backend: cupy\n    parameters: {")
BANDS = 4  # 10 rows in bands of 3


class FakeStreams:
    """A stream device whose arrays are device-like: every call runs at once and is
    logged; a copy "takes" 1 ms on its clock."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.clock = 0.0

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        self.log.append("pinned")
        return np.zeros(shape, dtype)

    def stream(self, name: str) -> str:
        return name

    def upload(self, host: npt.NDArray[Any], stream: str) -> Any:
        self.clock += 0.001
        self.log.append("upload")
        return device_like.DeviceLikeArray(host.copy())

    def download(self, device: Any, host: npt.NDArray[Any], stream: str) -> None:
        assert isinstance(device, device_like.DeviceLikeArray), "the result left the device"
        self.clock += 0.001
        np.copyto(host, device.get())
        self.log.append("download")

    def compute(self, work: Callable[[Any], Any], block: Any, stream: str) -> Any:
        self.log.append("compute")
        return work(block)

    def record(self, stream: str) -> float:
        return self.clock

    def wait(self, stream: str, event: float) -> None:
        pass

    def synchronize(self, event: float) -> None:
        self.log.append("host waits")

    def seconds(self, start: float, end: float) -> float:
        return end - start


def _run(text: str, device: FakeStreams | None = None) -> tuple[ScanProcessor, list[Any]]:
    scan = SimulatedScan(SimulationConfig(rows=10, cols=32, projections=36, flats=4, darks=2,
                                          seed=3))
    steps = parse_pipeline(text, REGISTRY, source="d.yaml").steps
    blocks: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "q"), block_frames=8,
                              block_sinograms=3, on_sinograms=blocks.append)
    processor.stream_device = device
    feed_reader(processor, scan, 8)
    return processor, blocks


@pytest.fixture
def device_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``cupy`` backend without a GPU: the fake device stands in for it."""
    monkeypatch.setattr(stage_spec, "require_gpu", lambda backend="cupy": None)


@pytest.mark.usefixtures("device_backend")
def test_a_device_section_streams_through_the_queue_and_equals_the_host_run() -> None:
    _, host = _run(HOST)
    device = FakeStreams()
    processor, queued = _run(DEVICE, device)
    assert [b.indices.tolist() for b in queued] == [b.indices.tolist() for b in host]
    for ours, theirs in zip(queued, host, strict=True):
        assert isinstance(ours.data, np.ndarray) and ours.data.dtype == np.float32
        np.testing.assert_array_equal(ours.data, theirs.data)
    stats = processor.transfers
    assert (stats.to_device, stats.to_host) == (BANDS, BANDS)
    assert stats.bytes_to_device == 10 * 36 * 32 * 4
    assert stats.bytes_to_host == 10 * 32 * 32 * 4
    assert stats.seconds_to_device == pytest.approx(BANDS * 0.001)
    assert stats.seconds_to_host == pytest.approx(BANDS * 0.001)


@pytest.mark.usefixtures("device_backend")
def test_the_next_band_goes_up_before_the_previous_one_comes_back() -> None:
    device = FakeStreams()
    _run(DEVICE, device)
    events = [line for line in device.log if line != "pinned"]
    assert events[:4] == ["upload", "compute", "download", "upload"]
    assert events.count("upload") == events.count("host waits") == BANDS
    assert device.log.count("pinned") == 2 * 2 + 2  # two slots each way; the short band


def test_only_a_section_wholly_on_the_device_is_queued() -> None:
    steps = parse_pipeline(DEVICE, REGISTRY, source="d.yaml").steps
    assert runs_on_device(steps[2:]) and not runs_on_device(steps[1:])
    saving = parse_pipeline(DEVICE.replace("method: circular_mask",
                                           "method: circular_mask\n    save_result: true"),
                            REGISTRY, source="d.yaml").steps
    assert not runs_on_device(saving[2:])  # a save copies to the host mid-band
    device = FakeStreams()
    _, host = _run(HOST, device)  # all on numpy: the queue is not used
    assert device.log == [] and len(host) == BANDS


@pytest.mark.gpu
def test_on_a_gpu_the_queued_section_agrees_with_the_host_run() -> None:
    """CuPy's streams and pinned buffers, cufinufft's spreading: the volume agrees with
    the host run to the NUFFT tolerance, every band moved once each way."""
    from stages.backends.xp import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    tight = "threads: 1, filter_name: hann, eps: 0.0001"
    _, host = _run(HOST.replace("threads: 1, filter_name: hann", tight))
    processor, queued = _run(DEVICE.replace("threads: 1, filter_name: hann", tight))
    ours = np.concatenate([b.data for b in queued])
    theirs = np.concatenate([b.data for b in host])
    assert np.linalg.norm(ours - theirs) < 1e-3 * np.linalg.norm(theirs)
    assert (processor.transfers.to_device, processor.transfers.to_host) == (BANDS, BANDS)
    assert processor.transfers.seconds_to_device > 0

"""A reconstructor on a device backend streams: the scan's accumulators live in the
device's array module, each corrected projection block is uploaded once as it arrives
(every band adds its rows there), and each band's slices come back once at finish.

No GPU: the section's array module is :mod:`tests.stages.device_like` (CuPy's manners
over numpy), so the volume must equal the host streaming run bit for bit (one host
thread) and the batch reconstruction within 1e-5."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.xp import TransferStats
from stages.registry import REGISTRY
from streamer.ingest.store import HeldFrame
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.run.streaming import plan_streaming
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.pipeline.test_executor_taper import finish_streaming
from tests.stages import device_like

ROWS, COLS, PROJECTIONS, BLOCK_FRAMES = 4, 64, 100, 16
HOST = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
        "  - method: fourier_fbp\n    parameters: {center: 31.5, threads: 1}\n")
DEVICE = HOST.replace("  - method: fourier_fbp\n", "  - method: fourier_fbp\n    backend: cupy\n")


def _run(text: str, *, streaming: bool, xp: Any = None,
         ) -> tuple[npt.NDArray[np.float32], TransferStats, int]:
    """The volume, the section's transfers and the projection blocks added."""
    scan = SimulatedScan(SimulationConfig(rows=ROWS, cols=COLS, projections=PROJECTIONS,
                                          cor_px=31.5))
    steps = parse_pipeline(text, REGISTRY, source="device.yaml").steps
    slices: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "d"),
                              block_frames=BLOCK_FRAMES, block_sinograms=2,
                              on_sinograms=slices.append)
    transfers, added = TransferStats(), 0
    if streaming:
        plan = plan_streaming(steps, rows=ROWS, cols=COLS, projections=PROJECTIONS,
                              block_sinograms=2, memory_left=2**30)
        assert plan.section is not None, plan.reason
        plan.section.xp, transfers = xp, plan.section.transfers
        processor.streaming = plan.section
    frames = scan.read(0, scan.layout.frames)
    keys, angles = scan.layout.image_keys, scan.layout.angles_deg
    for index in range(scan.layout.frames):
        processor.add([HeldFrame(index, int(keys[index]), float(angles[index]),
                                 frames[index])])
    if streaming:
        assert plan.section.fallback is None, plan.section.fallback
        slices = finish_streaming(processor, plan.section)
        added = plan.section.blocks_added
    else:
        processor.finish()
    volume = np.concatenate([b.data for b in sorted(slices, key=lambda b: int(b.indices[0]))])
    return volume, transfers, added


def test_a_device_reconstructor_streams_and_equals_the_host_stream_and_batch() -> None:
    host, host_moved, _ = _run(HOST, streaming=True)
    assert host_moved.transfers == 0
    device, moved, blocks = _run(DEVICE, streaming=True, xp=device_like.DeviceLikeNamespace())
    assert isinstance(device, np.ndarray) and device.dtype == np.float32
    np.testing.assert_array_equal(device, host)
    batch, _, _ = _run(HOST, streaming=False)
    error = float(np.linalg.norm(device - batch) / np.linalg.norm(batch))
    assert 0 < error < 1e-5, error
    bands = 2  # ROWS in bands of two rows
    assert blocks > 1
    assert (moved.to_device, moved.to_host) == (blocks, bands)
    assert moved.bytes_to_device == ROWS * PROJECTIONS * COLS * 4
    assert moved.bytes_to_host == device.nbytes

"""A streaming scan's projection blocks shrink toward its end (the last one is what is
left after the last frame); a scan reconstructed at close keeps its blocks whole."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from stages.recon.streaming import tapered_block
from stages.registry import REGISTRY
from streamer.ingest.store import HeldFrame
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.run.streaming import StreamingSection, plan_streaming
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig

GIVEN = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
         "  - method: fourier_fbp\n    parameters: {center: 31.5}\n")


def _run(streaming: bool) -> tuple[list[int], npt.NDArray[np.float32]]:
    """Block sizes of the projection section and the volume, frames fed one by one."""
    scan = SimulatedScan(SimulationConfig(rows=4, cols=64, projections=100, cor_px=31.5))
    steps = parse_pipeline(GIVEN, REGISTRY, source="taper.yaml").steps
    sizes: list[int] = []
    slices: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "t"), block_frames=16,
                              block_sinograms=2, on_projections=lambda b: sizes.append(
                                  b.indices.size), on_sinograms=slices.append)
    if streaming:
        plan = plan_streaming(steps, rows=4, cols=64, projections=100, block_sinograms=2,
                              memory_left=2**30)
        assert plan.section is not None, plan.reason
        processor.streaming = plan.section
    frames = scan.read(0, scan.layout.frames)
    keys, angles = scan.layout.image_keys, scan.layout.angles_deg
    for index in range(scan.layout.frames):
        processor.add([HeldFrame(index, int(keys[index]), float(angles[index]),
                                 frames[index])])
    if streaming:
        slices = finish_streaming(processor, plan.section)
    else:
        processor.finish()
    volume = np.concatenate([b.data for b in sorted(slices, key=lambda b: int(b.indices[0]))])
    return sizes, volume


def finish_streaming(processor: ScanProcessor, section: StreamingSection,
                     ) -> list[ProcessedBlock]:
    """The scan is over: the last projections corrected (and added), the volume from the
    streaming section's accumulators, as the runner takes it on one rank."""
    processor.finish_projections()
    assert processor.band is not None
    blocks = section.finish(processor.band.assemble().angles_deg, processor.complete,
                            center_override=None, should_stop=lambda: False)
    assert blocks is not None, section.fallback
    return list(blocks)


def test_streaming_blocks_taper_to_a_small_last_block_and_equal_batch() -> None:
    tapered, streamed = _run(streaming=True)
    whole, batch = _run(streaming=False)
    expected, remaining = [], 100
    while remaining:
        expected.append(tapered_block(remaining, 16, 2))
        remaining -= expected[-1]
    assert tapered == expected and 2 <= tapered[-1] < 4  # 16 // 8 … 2·2 - 1
    assert whole == [16] * 6 + [4]  # at close: every block whole, the rest at the end
    error = np.linalg.norm(streamed - batch) / np.linalg.norm(batch)
    assert 0 < error < 1e-5, error

"""Projections corrected without all their halo neighbours (a frame lost or late, ADR 0019)
are counted only around the gap, and the count reaches the run's report, the terminal
lines and the feed's ``scan_end`` (summed over the ranks).

The one-rank ``run`` service is driven as in ``test_feature_matrix.py`` (its harness),
with a projection lost on the way: the scan then has a gap that a 3-D kernel across
frames would have reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from stages.registry import REGISTRY
from streamer.live.client import Control, ScanEnd, Subscription
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.pipeline.halo import WITHOUT_NEIGHBOURS
from streamer.run.output import ScanOutput
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan
from streamer.wire.protocol import EndHeader, FramesHeader, encode_frames, encode_header
from tests.pipeline.test_halo_blocks import PIPELINES, _frames
from tests.run.test_feature_matrix import CONFIG, TIMEOUT_S, Dealt, Ranks, read_until

HALO_PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: median_filter3d
    parameters: {kernel_size: 5}
  - method: fbp
    parameters: {filter_name: hann}
"""
HALO, BLOCK = 2, 8  # median_filter3d's reach; the harness's block_frames


def _processed(frames: list[Any], block: int) -> tuple[ScanProcessor, np.ndarray]:
    scan = SimulatedScan(CONFIG)
    steps = parse_pipeline(PIPELINES["projection"], REGISTRY, source="halo.yaml").steps
    blocks: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "gap"), block_frames=block,
                              block_sinograms=2, on_sinograms=blocks.append)
    for first in range(0, len(frames), 2):  # two frames per message batch
        processor.add(frames[first:first + 2])
    processor.finish()
    return processor, np.concatenate([b.data for b in blocks])


@pytest.mark.parametrize("lost", [0, 1, 20, 41])  # projection numbers (of 60)
def test_a_lost_frame_counts_only_the_blocks_whose_windows_reach_it(lost: int) -> None:
    """Before, every block after a lost frame waited two blocks and was counted (a frame
    lost early made the whole scan "without neighbours" and late by two blocks)."""
    refs = CONFIG.flats + CONFIG.darks
    frames = _frames(SimulatedScan(CONFIG))
    frames.pop(refs + lost)
    block = 3
    processor, volume = _processed(frames, block)
    # The windows that reach the gap: at most the blocks within a halo of it on each side.
    most = (2 * processor.halo // block + 2) * block
    assert 0 < processor.corrected_without_neighbours <= most
    # Every block saw the frames at hand as its neighbours, as the whole scan does.
    whole, expected = _processed(frames, 1000)
    assert whole.corrected_without_neighbours == 0
    np.testing.assert_allclose(volume, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def deal_with_a_gap(scan: SimulatedScan, scan_id: str, lost: int | None) -> Dealt:
    """The scan in messages of up to 6 frames to one rank, frame ``lost`` never sent."""
    layout = scan.layout
    messages: list[list[Any]] = [[encode_header(start_header(layout, scan_id))]]
    sent = [index for index in range(layout.frames) if index != lost]
    runs: list[list[int]] = []
    for index in sent:
        if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < 6:
            runs[-1].append(index)
        else:
            runs.append([index])
    for run in runs:
        first, last = run[0], run[-1] + 1
        header = FramesHeader(scan=scan_id, first=first, count=last - first,
                              keys=layout.image_keys[first:last].tolist(),
                              angles=layout.angles_deg[first:last].tolist(),
                              dtype=layout.dtype_name, shape=(layout.rows, layout.cols))
        messages.append(encode_frames(header, scan.read(first, last)))
    end = [encode_header(EndHeader(scan=scan_id, sent=len(sent)))]
    return Dealt([messages], (0, end), [len(sent) - layout.flats - layout.darks])


def run_one_rank(tmp_path: Path, context: zmq.Context[Any], lost: int | None,
                 ) -> tuple[ScanOutput, ScanEnd]:
    scan = SimulatedScan(CONFIG)
    dealt = deal_with_a_gap(scan, "gap", lost)
    feed = LiveFeed(FeedSettings(sndhwm=100_000, sndbuf_bytes=1 << 24))
    run = Ranks(1, tmp_path / "volumes", feed, context, pipeline=HALO_PIPELINE)
    try:
        with Subscription(feed.address, timeout_s=TIMEOUT_S, hwm=100_000) as sub, \
                Control(str(feed.control_address), timeout_s=TIMEOUT_S):
            sub.wait_connected()
            run.start()
            run.send(dealt)
            run.end(dealt)
            end = read_until(sub, lambda m: isinstance(m, ScanEnd))[-1]
            output = run.join()
    finally:
        run.close()
        feed.close()
    return output, end


@pytest.fixture
def context() -> Any:
    with zmq.Context() as context:
        yield context


@pytest.mark.parametrize("lost", [None, 30])
def test_the_count_is_in_the_report_the_terminal_and_scan_end(
        tmp_path: Path, context: zmq.Context[Any], lost: int | None) -> None:
    output, end = run_one_rank(tmp_path, context, lost)
    count = output.figures[WITHOUT_NEIGHBOURS]
    if lost is None:
        assert output.complete and count == 0
        assert not any("neighbours" in note for note in output.notes)
    else:
        assert not output.complete  # a frame is missing
        assert 0 < count <= (2 * HALO // BLOCK + 2) * BLOCK
        (line,) = [note for note in output.notes if "neighbours" in note]
        assert line.startswith(f"{count} projections corrected before all their neighbours")
    assert end.header.corrected_without_neighbours == count
    assert output.path is not None
    with h5py.File(output.path) as file:
        assert json.loads(file["/entry/process/report"][()])[WITHOUT_NEIGHBOURS] == count


def test_a_pipeline_without_a_halo_has_no_such_entry(
        tmp_path: Path, context: zmq.Context[Any]) -> None:
    scan = SimulatedScan(CONFIG)
    dealt = deal_with_a_gap(scan, "plain", None)
    feed = LiveFeed(FeedSettings(sndhwm=100_000, sndbuf_bytes=1 << 24))
    run = Ranks(1, tmp_path / "volumes", feed, context)  # normalize + fbp
    try:
        with Subscription(feed.address, timeout_s=TIMEOUT_S, hwm=100_000) as sub:
            sub.wait_connected()
            run.start()
            run.send(dealt)
            run.end(dealt)
            end = read_until(sub, lambda m: isinstance(m, ScanEnd))[-1]
            output = run.join()
    finally:
        run.close()
        feed.close()
    assert WITHOUT_NEIGHBOURS not in output.figures
    assert end.header.corrected_without_neighbours is None

"""Streaming on R ranks: each rank tapers its projection blocks by its own share of the
scan (it sees about 1/R of the frames), and a band's streaming section adds a round of
landed reslice pieces at once (one add's fixed passes per round, not per piece) while
the set it adds with the last piece stays small. Both keep the volume equal to batch."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from stages.recon.streaming import tapered_block
from stages.registry import REGISTRY
from stages.spec import Pattern
from streamer.ingest.store import HeldFrame
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor
from streamer.run.streaming import StreamingSection, plan_streaming
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig

GIVEN = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
         "  - method: fourier_fbp\n    parameters: {center: 31.5}\n")
CONFIG = SimulationConfig(rows=4, cols=64, projections=120, cor_px=31.5)


def _share_blocks(rank: int, ranks: int, *, taper: bool) -> tuple[list[int], int]:
    """Block sizes of one rank's projection section fed every ``ranks``-th projection
    (the references all), one by one; and how many were left for ``finish``."""
    scan = SimulatedScan(CONFIG)
    steps = parse_pipeline(GIVEN, REGISTRY, source="taper.yaml").steps
    sizes: list[int] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "t"), block_frames=16,
                              block_sinograms=2, keep_sinogram_section=False,
                              on_projections=lambda b: sizes.append(b.indices.size))
    processor.taper_share = taper
    frames = scan.read(0, scan.layout.frames)
    keys, angles = scan.layout.image_keys, scan.layout.angles_deg
    projection = 0
    for index in range(scan.layout.frames):
        if int(keys[index]) == 0:
            projection += 1
            if (projection - 1) % ranks != rank:
                continue
        processor.add([HeldFrame(index, int(keys[index]), float(angles[index]),
                                 frames[index])])
    before = sum(sizes)
    processor.finish()
    return sizes, sum(sizes) - before


@pytest.mark.parametrize(("rank", "ranks"), [(0, 2), (1, 2), (2, 3)])
def test_a_rank_tapers_by_its_share_of_the_scan(rank: int, ranks: int) -> None:
    sizes, left = _share_blocks(rank, ranks, taper=True)
    share = len(range(rank, CONFIG.projections, ranks))
    assert sum(sizes) == share
    assert sizes[0] == 16 and sizes[-1] < 4  # 16 // 8 = 2 … 2·2 - 1
    assert left < 4, sizes  # little waits for the close
    expected, remaining = [], share
    while remaining:
        expected.append(tapered_block(remaining, 16, 2))
        remaining -= expected[-1]
    # the share is estimated from the frames so far: within a block or two of exact
    assert abs(len(sizes) - len(expected)) <= 2, (sizes, expected)


def test_without_the_share_the_rank_never_tapers() -> None:
    sizes, left = _share_blocks(0, 2, taper=False)
    assert sizes == [16, 16, 16, 12] and left == 12  # the old behaviour: a whole block at close


def _pieces(order: npt.NDArray[np.int64], sizes: list[int]) -> list[ProcessedBlock]:
    """The scan's corrected projections cut into pieces of ``sizes`` in ``order``."""
    scan = SimulatedScan(CONFIG)
    steps = parse_pipeline(GIVEN, REGISTRY, source="taper.yaml").steps
    corrected: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "t"), block_frames=1,
                              block_sinograms=2, keep_sinogram_section=False,
                              on_projections=corrected.append)
    frames = scan.read(0, scan.layout.frames)
    keys, angles = scan.layout.image_keys, scan.layout.angles_deg
    processor.add([HeldFrame(i, int(keys[i]), float(angles[i]), frames[i])
                   for i in range(scan.layout.frames)])
    processor.finish()
    by_number = {int(b.indices[0]): b for b in corrected}
    numbers = sorted(by_number)
    pieces, start = [], 0
    for size in sizes:
        chosen = [by_number[numbers[int(k)]] for k in order[start:start + size]]
        start += size
        pieces.append(ProcessedBlock(Pattern.PROJECTION,
                                     np.concatenate([b.indices for b in chosen]),
                                     np.concatenate([b.angles_deg for b in chosen]),
                                     np.concatenate([b.data for b in chosen]), True))
    return pieces


def _section(coalesce: int) -> StreamingSection:
    steps = parse_pipeline(GIVEN, REGISTRY, source="taper.yaml").steps
    plan = plan_streaming(steps, rows=CONFIG.rows, cols=CONFIG.cols,
                          projections=CONFIG.projections, block_sinograms=2,
                          memory_left=2**30)
    assert plan.section is not None, plan.reason
    plan.section.coalesce_frames = coalesce
    return plan.section


def _volume(section: StreamingSection) -> npt.NDArray[np.float32]:
    angles = np.linspace(0, 180, CONFIG.projections, endpoint=False)
    blocks = section.finish(angles, True, center_override=None, should_stop=lambda: False)
    assert blocks is not None, section.fallback
    return np.concatenate([b.data for b in blocks])


def test_gathered_pieces_add_once_per_round_and_equal_piece_by_piece() -> None:
    # two ranks' pieces of 16 interleaved (in any order: round robin, shuffled), tapering
    sizes = [16] * 6 + [8, 8, 4, 2, 1, 1]
    assert sum(sizes) == CONFIG.projections
    order = np.random.default_rng(3).permutation(CONFIG.projections)
    pieces = _pieces(order, sizes)
    gathered, single = _section(32), _section(0)
    adds_at_last_piece = 0
    for piece in pieces:
        gathered.add(piece)
        single.add(piece)
        adds_at_last_piece = gathered.adds
    assert single.adds == len(pieces)
    # 3 rounds of two 16-frame pieces, the two 8s together (16 >= 8 still to come),
    # then each tail piece alone (each is at least what is still to come)
    assert gathered.adds == 3 + 1 + 4, gathered.adds
    # the last piece came with everything: nothing is left pending for finish
    assert gathered._pending_frames == 0 and adds_at_last_piece == gathered.adds
    a, b = _volume(gathered), _volume(single)
    error = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert error < 1e-5, error


def test_a_scan_missing_pieces_adds_what_gathered_at_finish() -> None:
    order = np.arange(CONFIG.projections)
    pieces = _pieces(order, [16] * 5 + [40])
    section = _section(64)
    for piece in pieces[:-1]:  # the last piece never lands
        section.add(piece)
    assert section._pending_frames == 16 and section.adds == 1  # 64 added, 16 wait
    angles = np.linspace(0, 180, CONFIG.projections, endpoint=False)
    assert section.finish(angles, False, center_override=None,
                          should_stop=lambda: False) is None
    assert section.adds == 2  # the pending 16 were added before the check
    assert section.fallback is not None and "40 planned projections never arrived" in (
        section.fallback)

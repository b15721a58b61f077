"""Repairs inside a haloed window are counted once per entry, whatever the block size.

A section with a kernel across the block axis runs each block on a window widened by its
halo (ADR 0019); a step in that window that repairs values (``normalize``'s pixels without
signal) or counts them (``data_checker``) used to count the halo entries again in every
window they were part of. The expected counts here come from the scan itself (the dead
pixels put into it), not from the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stages.prep.repair import CHECKED, NO_SIGNAL, RepairCounts
from stages.registry import REGISTRY
from stages.spec import StageSpec
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ScanProcessor, process_reader
from streamer.pipeline.halo import counted_apart, window
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.scan import ScanLayout
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import IMAGE_KEY_PROJECTION

#: Pixels dead in every frame (darks and flats too: flat <= dark, repaired in every
#: projection) and pixels dead in the projections only (zero counts: below the dark).
DEAD_EVERYWHERE = ((1, 3), (6, 30))
DEAD_IN = {5: (2, 7), 11: (0, 0), 12: (8, 39), 29: (4, 20)}  # projection number: pixel

ROWS, COLS, PROJECTIONS = 9, 40, 30

PIPELINE = (
    "pipeline:\n"
    "  - method: normalize\n    parameters: {minus_log: true}\n"
    "  - method: remove_outlier3d\n    parameters: {kernel_size: 5, dif: 0.05}\n"
    "  - method: remove_all_stripe\n"  # the reslice: the rest is the sinogram section
    "  - method: median_filter3d\n    parameters: {kernel_size: 3, dif: 0.02}\n"
    "  - method: data_checker\n    parameters: {zeros_warning: true}\n"
    "  - method: fbp\n    parameters: {center: 19.5}\n"
)


class DeadPixels:
    """A simulated scan with the dead pixels above (a :class:`FrameReader`)."""

    def __init__(self) -> None:
        self.scan = SimulatedScan(SimulationConfig(rows=ROWS, cols=COLS,
                                                   projections=PROJECTIONS, flats=4, darks=2,
                                                   seed=5))
        keys = self.scan.layout.image_keys
        self.projection_frames = np.flatnonzero(keys == IMAGE_KEY_PROJECTION)

    @property
    def layout(self) -> ScanLayout:
        return self.scan.layout

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        data = np.array(self.scan.read(start, stop), copy=True)
        for row, col in DEAD_EVERYWHERE:
            data[:, row, col] = 0
        for number, (row, col) in DEAD_IN.items():
            frame = int(self.projection_frames[number])
            if start <= frame < stop:
                data[frame - start, row, col] = 0
        return data

    def close(self) -> None:
        self.scan.close()


def _counts(block_frames: int, block_sinograms: int) -> RepairCounts:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="dead.yaml").steps
    reader = DeadPixels()
    processor: ScanProcessor = process_reader(
        steps, reader, start_header(reader.layout, "dead"), block_frames=block_frames,
        block_sinograms=block_sinograms)
    return processor.repairs


def test_the_scan_has_the_halo_this_test_needs() -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="dead.yaml").steps
    processor = ScanProcessor(steps, start_header(DeadPixels().layout, "dead"))
    assert processor.halo == 2  # remove_outlier3d's kernel 5 reaches 2 frames each side


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_repair_counts_do_not_depend_on_the_block_size(size: int) -> None:
    expected = len(DEAD_EVERYWHERE) * PROJECTIONS + len(DEAD_IN)
    whole = _counts(1000, 1000)
    assert whole.counts.get(NO_SIGNAL) == expected
    assert whole.observed[CHECKED] == ROWS * PROJECTIONS * COLS
    blocked = _counts(size, size)
    assert blocked.counts == whole.counts, f"blocks of {size}"
    assert blocked.observed == whole.observed, f"blocks of {size}"
    assert blocked.pixels == whole.pixels == ROWS * PROJECTIONS * COLS


def test_counted_apart_counts_the_own_entries_and_joins_every_piece() -> None:
    data = np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3)
    data[[0, 2, 3, 6, 7], 0, 0] = np.nan  # entries 0, 2 and 7 lie in the halo
    where = window(3, 6, 8, 2)  # block [3, 6), window [1, 8)
    spec: StageSpec = REGISTRY["data_checker"]
    params = spec.params()
    part = data[where.low:where.high]

    def run(entries: slice, counts: RepairCounts) -> npt.NDArray[np.float32]:
        return spec.run(part[entries], params, darks=None, flats=None, repairs=counts)

    repairs = RepairCounts()
    out = counted_apart(run, where, repairs)
    assert repairs.total == 1  # entry 3 only: 2, 6 and 7 are halo entries
    np.testing.assert_array_equal(out, np.nan_to_num(part, nan=0.0))
    whole = RepairCounts()
    spec.run(part, params, darks=None, flats=None, repairs=whole)
    assert whole.total == 4  # what the window alone counts: its halo entries too


def test_no_repairing_stage_reaches_across_the_block_axis() -> None:
    """:func:`counted_apart` splits a repairing step's window into pieces, right only for a
    step that works entry by entry: one with a halo of its own would need another way."""
    for name, spec in REGISTRY.items():
        if spec.counts_repairs:
            assert not callable(spec.halo) and spec.halo == 0, name


@pytest.mark.parametrize("size", [1, 3])
def test_recon_counts_the_same_for_any_block_size(tmp_path: Path, size: int) -> None:
    """``recon`` (the runner on one rank: its own sinogram blocks) counts as one block."""
    pipeline = tmp_path / "dead.yaml"
    pipeline.write_text(PIPELINE)
    counts = []
    for block in (1000, size):
        result = run_recon(DeadPixels(), ReconSettings(
            tmp_path / f"dead{block}.h5", pipeline=pipeline, block_frames=block,
            block_sinograms=block))
        counts.append((result.repairs.counts, result.repairs.observed))
    assert counts[0][0].get(NO_SIGNAL) == len(DEAD_EVERYWHERE) * PROJECTIONS + len(DEAD_IN)
    assert counts[0][1][CHECKED] == ROWS * PROJECTIONS * COLS
    assert counts[1] == counts[0], f"blocks of {size}"

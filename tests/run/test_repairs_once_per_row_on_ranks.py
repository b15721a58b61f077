"""Repairs counted once per pixel on R ranks whose bands overlap (issue 16, ADR 0029).

On R ranks a projection section's steps from its first halo step on run after the
reslice on each rank's *widened* band (its own rows and the overlap rows of its
neighbours, ADR 0019's addendum). A step there that repairs or counts values
(``normalize``'s pixels without signal, ``data_checker``'s checked values) used to count
the overlap rows on both ranks that hold them, and the halo frames of each window of
frames again in the next window. The expected counts come from the scan itself (the dead
pixels put into it) and equal the one-rank counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.prep.repair import CHECKED, NO_SIGNAL
from stages.registry import REGISTRY
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.halo import ranks_halo, split_at_halo
from streamer.pipeline.sections import sections_of
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import recon_on_ranks
from tests.pipeline.test_halo_repair_counts import (
    COLS,
    DEAD_EVERYWHERE,
    DEAD_IN,
    PROJECTIONS,
    ROWS,
    DeadPixels,
)
from tests.run.ranks import run_ranks

#: The halo step first (a ``dif`` no value reaches: it changes nothing, it only moves
#: what follows after the reslice on R ranks), so ``normalize`` and ``data_checker`` run
#: on the widened bands; a second ``data_checker`` in the sinogram section's row windows.
PIPELINE = (
    "pipeline:\n"
    "  - method: remove_outlier3d\n    parameters: {kernel_size: 3, dif: 1.0e+30}\n"
    "  - method: normalize\n    parameters: {minus_log: true}\n"
    "  - method: data_checker\n    parameters: {zeros_warning: true}\n"
    "  - method: remove_all_stripe\n"
    "  - method: median_filter3d\n    parameters: {kernel_size: 3, dif: 0.02}\n"
    "  - method: data_checker\n    parameters: {zeros_warning: true}\n"
    "  - method: fbp\n    parameters: {center: 19.5}\n"
)


def _output(ranks: int, tmp_path: Path, block_frames: int) -> ScanOutput:
    pipeline = tmp_path / "dead.yaml"
    pipeline.write_text(PIPELINE)
    out = tmp_path / f"ranks{ranks}-{block_frames}.h5"
    found = run_ranks(ranks, lambda link: recon_on_ranks(
        DeadPixels(), ReconSettings(out, pipeline=pipeline, block_frames=block_frames,
                                    block_sinograms=2), link))
    output = found[0]
    assert isinstance(output, ScanOutput) and output.complete
    return output


def test_the_repairing_steps_run_on_the_widened_bands() -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="dead.yaml").steps
    found = sections_of(steps)
    tail = split_at_halo(found[0].steps)[1]
    assert [step.name for step in tail] == ["remove_outlier3d", "normalize", "data_checker"]
    assert ranks_halo((found[0].steps, found[1].steps)) == 2  # rows of overlap per side


@pytest.mark.parametrize(("ranks", "block_frames"), [(1, 4), (2, 4), (3, 4), (3, 1)])
def test_repair_counts_on_ranks_equal_the_scans_dead_pixels(
        tmp_path: Path, ranks: int, block_frames: int) -> None:
    output = _output(ranks, tmp_path, block_frames)
    assert output.repairs is not None
    assert output.repairs.counts.get(NO_SIGNAL) == (
        len(DEAD_EVERYWHERE) * PROJECTIONS + len(DEAD_IN))
    # each data_checker looks at every value once
    assert output.repairs.observed[CHECKED] == 2 * ROWS * PROJECTIONS * COLS
    assert output.repaired == output.repairs.total

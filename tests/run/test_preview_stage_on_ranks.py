"""The live preview says how far its projections are corrected, on 1 and 2 ranks.

One rank previews the frames after the whole first projection section. R ranks correct a
frame on the rank it reached, without its neighbouring frames: a halo step (here
``remove_outlier3d``, a 3-D median across frames) and the steps after it run on each
rank's band after the exchange, so R ranks preview the frames after ``normalize`` and the
feed labels it (``scan_start.preview_stage``, ``preview.stage`` and the steps not
applied). The runners are the ``run`` service's components, rank 0 serving a real feed
(:func:`tests.run.test_feature_matrix.run_scan`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from stages.registry import REGISTRY
from streamer.live.client import Preview, ScanStart
from streamer.live.preview_stage import AS_RECEIVED, preview_stage, previewed_steps
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ScanProcessor
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan
from tests.run.test_feature_matrix import CONFIG, run_scan

HALO_FIRST = """\
pipeline:
  - method: normalize
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.05}
  - method: minus_log
  - method: fbp
    parameters: {filter_name: hann}
"""
#: What the preview's frames went through, by rank count.
EXPECTED = {1: ("after minus_log", []),
            2: ("after normalize", ["remove_outlier3d", "minus_log"])}


@pytest.fixture
def context() -> Any:
    with zmq.Context() as context:
        yield context


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_label_names_the_steps_the_processor_ran_on_the_frames(ranks: int) -> None:
    """The label's rule is the processor's own split (``defer_halo`` on R ranks)."""
    steps = parse_pipeline(HALO_FIRST, REGISTRY, source="p.yaml").steps
    start = start_header(SimulatedScan(CONFIG).layout, "s")
    processor = ScanProcessor(steps, start, block_frames=4, block_sinograms=2,
                              defer_halo=ranks > 1)
    applied, deferred = previewed_steps(steps, ranks=ranks)
    assert applied == processor.projection_steps
    assert deferred == processor.band_steps  # (no whole-frame rest here)
    label, missing = EXPECTED[ranks]
    assert preview_stage(steps, ranks=ranks).label == label
    assert list(preview_stage(steps, ranks=ranks).not_applied) == missing


def test_without_a_halo_step_every_rank_count_previews_the_same_frames() -> None:
    steps = parse_pipeline(HALO_FIRST.replace(
        "  - method: remove_outlier3d\n    parameters: {kernel_size: 3, dif: 0.05}\n", ""),
        REGISTRY, source="p.yaml").steps
    assert preview_stage(steps, ranks=1) == preview_stage(steps, ranks=3)
    assert preview_stage(steps, ranks=3).label == "after minus_log"
    sinogram_first = parse_pipeline("pipeline:\n  - method: fbp\n", REGISTRY,
                                    source="p.yaml").steps
    assert preview_stage(sinogram_first, ranks=2).label == AS_RECEIVED


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_feed_labels_what_its_previews_show(
        tmp_path: Path, context: zmq.Context[Any], ranks: int) -> None:
    output, seen, _, _, _ = run_scan(ranks, tmp_path, context, pipeline=HALO_FIRST)
    assert output.complete, output
    label, missing = EXPECTED[ranks]
    (opened,) = [m.header for m in seen if isinstance(m, ScanStart)]
    assert (opened.preview_stage, opened.preview_not_applied) == (label, missing)
    previews = [m.header for m in seen if isinstance(m, Preview)]
    assert previews and previews[-1].projections == CONFIG.projections
    assert {(p.stage, tuple(p.not_applied)) for p in previews} == {(label, tuple(missing))}

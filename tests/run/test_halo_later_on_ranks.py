"""Kernels across the block axis in every section of a pipeline that reslices three
times, on R in-process ranks: the band exchange and each later reslice deliver
overlapping parts (rows, then angles, then rows again; ADR 0019's addendum), and the
volume equals the one-rank volume (whose processor cuts its windows from the whole scan)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import streamer.run.later_sections as later_module
from stages.registry import REGISTRY
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.sections import beyond_one_band, refuse_on_ranks, sections_of
from streamer.run.from_file import ReconSettings
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks

CONFIG = SimulationConfig(rows=9, cols=40, projections=30, flats=4, darks=2,
                          zinger_rate=1.0, seed=3)
PIPELINE = """\
pipeline:
  - method: normalize
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.05}
  - method: remove_all_stripe
  - method: median_filter3d
    parameters: {kernel_size: 3}
  - method: median_filter
    parameters: {axis: 1, size: 5}
  - method: remove_stripe_based_sorting
    parameters: {size: 5}
  - method: median_filter3d
    parameters: {kernel_size: 5}
  - method: fbp
    parameters: {center: 19.5}
"""


def _volume(ranks: int, pipeline: Path, out: Path) -> np.ndarray:
    run_ranks(ranks, lambda link: recon_on_ranks(
        SimulatedScan(CONFIG), ReconSettings(out, pipeline=pipeline, block_frames=4,
                                             block_sinograms=2), link))
    with h5py.File(out) as file:
        assert bool(file["/entry"].attrs["complete"])
        return np.asarray(file["/entry/reconstruction/data"][...])


def test_every_section_has_a_halo_step() -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="later.yaml").steps
    found = sections_of(steps)
    assert [s.pattern.value for s in found] == ["projection", "sinogram", "projection",
                                                "sinogram"]
    assert all(any(s.spec.reach(s.params) for s in section.steps) for section in found)
    assert beyond_one_band(steps)
    refuse_on_ranks(steps)  # nothing refused


@pytest.mark.parametrize("ranks", [2, 3])
def test_halo_steps_in_later_sections_on_ranks_equal_one_rank(
        tmp_path: Path, ranks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = tmp_path / "later.yaml"
    pipeline.write_text(PIPELINE)
    one = _volume(1, pipeline, tmp_path / "one.h5")
    found = _volume(ranks, pipeline, tmp_path / f"ranks{ranks}.h5")
    np.testing.assert_allclose(found, one, rtol=0, atol=1e-6 * np.abs(one).max())
    # the test can fail: without the overlap of the later reslices (each rank's part
    # alone, as before) the volume differs
    monkeypatch.setattr(later_module, "section_halo", lambda steps: 0)
    bare = _volume(ranks, pipeline, tmp_path / f"bare{ranks}.h5")
    assert np.abs(bare - one).max() > 1e-3 * np.abs(one).max()

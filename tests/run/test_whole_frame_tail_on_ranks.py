"""A step that needs whole frames after a halo step in the first section on R ranks
(HTTomo's ``remove_outlier`` (3-D) → ``normalize`` → ``minus_log`` → Paganin → FBP, ADR
0019's addendum): the head and the row-by-row band tail run as before (dealt frames, the
band exchange's overlapping band), the rest runs as a later projection section on ranges
of whole frames (every row: the Paganin filter sees whole frames) and is resliced back to
bands. The volume equals one rank's on a real scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.pipeline import executor, halo, sections
from streamer.pipeline.config import PipelineStep, parse_pipeline
from streamer.pipeline.halo import split_band_tail
from streamer.pipeline.plan import plan_scan
from streamer.pipeline.sections import rank_sections, ranks_reslices, sections_of
from streamer.run.from_file import ReconSettings, run_recon
from tests.run.test_halo_on_real_scans import complete_volume, i13_reader
from tests.run.test_later_reslices_on_ranks import on_ranks

#: HTTomo's order: the 3-D median on the raw frames, then the corrections (row by row, on
#: the band), then tomopy's Paganin filter (whole frames).
PAGANIN = """\
pipeline:
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 500.0}
  - method: normalize
  - method: minus_log
  - method: paganin
    parameters: {pixel_size: 0.0001, dist: 50.0, energy: 20.0, alpha: 0.001}
  - method: fbp
    parameters: {center: 85.5}
"""

#: A temporal dezinger (a halo along the angles), then a binning of the rows (whole
#: frames, changes the rows: the later projection section follows it).
BINNING = """\
pipeline:
  - method: normalize
  - method: dezinger_temporal
    parameters: {dif: 0.1}
  - method: binning
    parameters: {factor_rows: 2}
  - method: fbp
    parameters: {center: 85.5}
"""


def test_the_rank_sections_cut_before_the_whole_frame_step() -> None:
    steps = parse_pipeline(PAGANIN, REGISTRY, source="p.yaml").steps
    head, tail, rest = split_band_tail(sections_of(steps)[0].steps)
    assert [s.name for s in head] == []
    assert [s.name for s in tail] == ["remove_outlier3d", "normalize", "minus_log"]
    assert [s.name for s in rest] == ["paganin"]
    found = rank_sections(steps)
    assert [[s.name for s in section.steps] for section in found] == [
        ["remove_outlier3d", "normalize", "minus_log"], [], ["paganin"], ["fbp"]]
    assert ranks_reslices(steps) == 3 and len(sections_of(steps)) == 2
    # without a whole-frame step after the halo step R ranks section as one rank
    plain = parse_pipeline(PAGANIN.replace("  - method: paganin\n    parameters: {pixel_size:"
                                           " 0.0001, dist: 50.0, energy: 20.0, alpha: 0.001}\n",
                                           ""), REGISTRY, source="q.yaml").steps
    assert rank_sections(plain) == sections_of(plain) and ranks_reslices(plain) == 1


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("text", [PAGANIN, BINNING], ids=["paganin", "binning"])
def test_i13_whole_frame_step_after_a_halo_step_on_ranks_equals_one_rank(
        shared_data: Path, tmp_path: Path, ranks: int, text: str) -> None:
    pipeline = tmp_path / "tail.yaml"
    pipeline.write_text(text)
    one_out = tmp_path / "one.h5"
    with i13_reader(shared_data) as reader:
        run_recon(reader, ReconSettings(one_out, pipeline=pipeline))
    one = complete_volume(one_out)
    out = tmp_path / f"ranks{ranks}.h5"
    on_ranks(ranks, lambda: i13_reader(shared_data), ReconSettings(out, pipeline=pipeline))
    found = complete_volume(out)
    assert found.shape == one.shape
    np.testing.assert_allclose(found, one, rtol=0, atol=1e-5 * float(np.abs(one).max()))


def test_paganin_on_the_bands_would_differ(shared_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above can fail: run on each rank's band of rows (as the row-by-row tail
    runs), the Paganin filter differs from one rank's by far more than its tolerance."""
    pipeline = tmp_path / "tail.yaml"
    pipeline.write_text(PAGANIN)
    one_out = tmp_path / "one.h5"
    with i13_reader(shared_data) as reader:
        run_recon(reader, ReconSettings(one_out, pipeline=pipeline))
    one = complete_volume(one_out)

    def on_the_band(projection: tuple[PipelineStep, ...]) -> tuple[
            tuple[PipelineStep, ...], tuple[PipelineStep, ...], tuple[PipelineStep, ...]]:
        head, tail, rest = split_band_tail(projection)
        return head, tail + rest, ()

    for module in (halo, sections, executor):
        monkeypatch.setattr(module, "split_band_tail", on_the_band)
    out = tmp_path / "band.h5"
    on_ranks(2, lambda: i13_reader(shared_data), ReconSettings(out, pipeline=pipeline))
    assert np.abs(complete_volume(out) - one).max() > 1e-3 * np.abs(one).max()


def test_the_memory_plan_on_ranks_counts_the_two_more_reslices() -> None:
    """R ranks hold the scan's part twice more (a range of whole frames and the band it
    is resliced back to): their plan's sinogram buffer counts it, one rank's does not."""
    steps = parse_pipeline(PAGANIN, REGISTRY, source="p.yaml").steps

    def buffer(on_ranks: bool) -> int:
        memory = plan_scan(steps, rows=135, cols=160, angles=91, references=2,
                           dtype=np.dtype("float32"), budget_bytes=1 << 30, band_rows=70,
                           on_ranks=on_ranks)[3]
        return int(memory.sinogram_buffer)

    band = 70 * 91 * 160 * 4
    assert buffer(False) == band
    assert buffer(True) == 3 * band

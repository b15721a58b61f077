"""Binning or cropping the frames before the first reslice, on R ranks (issue 16, ADR 0029).

A fast live preview bins the projections 2× before the reslice. One rank shapes its band
from the first corrected block; R ranks cut every corrected frame into bands before any
block is corrected, so every rank first works out the corrected frame's rows and columns
(:func:`streamer.pipeline.frame_shape.corrected_frame`: the steps on a block of no
frames), a rank dealt no frame too. Each volume here equals the one-rank volume of the
same pipeline, whose processor takes the shape from the data itself; before, R ranks
refused the step (and before the refusal they failed at the first reslice and hung).
"""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.exchange.links import MemoryLink
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.frame_shape import corrected_frame, may_change_frame
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction, recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks, serve_scans
from tests.run.test_later_reslices_on_ranks import assert_same_volume
from tests.run.test_service_on_ranks import CONFIG as SERVICE_CONFIG
from tests.run.test_service_on_ranks import JOIN_S
from tests.run.test_service_on_ranks import _source as service_source

CONFIG = SimulationConfig(rows=9, cols=48, projections=20, flats=2, darks=2, seed=2,
                          zinger_rate=1.0)

HEAD = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
BINNING = "  - method: binning\n"  # 2 x 2 (HTTomo's default)
CROP = "  - method: crop\n    parameters: {rows: [1, 8], cols: [2, 46]}\n"
FBP = "  - method: fbp\n    parameters: {center: CENTER}\n"

#: name -> (pipeline, the corrected frame of a 9 x 48 frame, expected volume shape)
CASES = {
    "binning": (HEAD + BINNING + FBP.replace("CENTER", "11.5"), (4, 24), (4, 24, 24)),
    "crop": (HEAD + CROP + FBP.replace("CENTER", "21.5"), (7, 44), (7, 44, 44)),
    # a halo step after the binning: overlapping bands of the binned rows
    "binning-halo": (HEAD + BINNING
                     + "  - method: remove_outlier3d\n    parameters: {kernel_size: 3, "
                       "dif: 0.05}\n  - method: remove_all_stripe\n"
                       "  - method: median_filter3d\n    parameters: {kernel_size: 3}\n"
                     + FBP.replace("CENTER", "11.5"), (4, 24), (4, 24, 24)),
    # the CoR found on the binned sinograms (the finder's row among the binned rows)
    "binning-cor": (HEAD + BINNING + "  - method: find_center_vo\n  - method: fbp\n",
                    (4, 24), (4, 24, 24)),
    # a second reslice after it (Paganin on the binned projections)
    "binning-later": (HEAD + BINNING + "  - method: remove_all_stripe\n"
                      "  - method: paganin_filter\n" + FBP.replace("CENTER", "11.5"),
                      (4, 24), (4, 24, 24)),
}


def _recon(ranks: int, text: str, out: Path, config: SimulationConfig = CONFIG,
           block_frames: int = 3) -> Path:
    pipeline = out.parent / "p.yaml"
    pipeline.write_text(text)
    settings = ReconSettings(out, pipeline=pipeline, block_frames=block_frames)
    if ranks == 1:
        run_recon(SimulatedScan(config), settings)
    else:
        run_ranks(ranks, lambda link: recon_on_ranks(SimulatedScan(config), settings, link))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_corrected_frame_is_the_steps_own_rule(name: str) -> None:
    text, frame, _ = CASES[name]
    steps = parse_pipeline(text, REGISTRY, source="p.yaml").steps
    assert may_change_frame(steps)
    assert corrected_frame(steps, CONFIG.rows, CONFIG.cols) == frame


def test_a_frame_no_step_reshapes_is_not_probed() -> None:
    steps = parse_pipeline(HEAD + FBP.replace("CENTER", "23.5"), REGISTRY,
                           source="p.yaml").steps
    assert not may_change_frame(steps)
    assert corrected_frame(steps, 9, 48) == (9, 48)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_row_change_in_the_first_section_on_ranks_equals_one_rank(
        tmp_path: Path, name: str, ranks: int) -> None:
    text, _, shape = CASES[name]
    (tmp_path / "one").mkdir()
    (tmp_path / "ranks").mkdir()
    one = _recon(1, text, tmp_path / "one" / "v.h5")
    found = _recon(ranks, text, tmp_path / "ranks" / "v.h5")
    with h5py.File(found) as file:
        assert file["/entry/reconstruction/data"].shape == shape
    assert_same_volume(one, found)


def test_a_rank_dealt_no_frame_still_cuts_the_binned_bands(tmp_path: Path) -> None:
    """4 projections in blocks of 2 on 3 ranks: rank 2 corrects nothing, yet its band of
    the binned rows and its part of the volume have the shape the others reslice."""
    config = SimulationConfig(rows=9, cols=48, projections=4, flats=2, darks=2, seed=4)
    text = CASES["binning"][0]
    (tmp_path / "one").mkdir()
    (tmp_path / "ranks").mkdir()
    one = _recon(1, text, tmp_path / "one" / "v.h5", config, block_frames=2)
    found = _recon(3, text, tmp_path / "ranks" / "v.h5", config, block_frames=2)
    assert_same_volume(one, found)


def test_check_says_every_rank_count_follows_the_binning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(CASES["binning"][0])
    assert main(["check", str(pipeline), "--frame", "9x48", "--projections", "20"]) == 0
    out = capsys.readouterr().out
    assert "binning changes the number of detector rows: the bands and the volume take " \
           "the corrected frame's rows (every rank count)" in out
    assert "refuse" not in out


def test_run_service_on_two_ranks_with_binning_first(tmp_path: Path) -> None:
    """``run`` on 2 ranks (the worker thread, the streaming reconstruction of each band):
    two scans binned before the reslice, each equal to the one-rank volume."""
    text = HEAD + BINNING + FBP.replace("CENTER", "7.75")
    steps = parse_pipeline(text, REGISTRY, source="service.yaml").steps
    ready, address = threading.Event(), []
    source = service_source(2, ready, address)
    assert ready.wait(JOIN_S)
    out = tmp_path / "volumes"

    def rank(link: MemoryLink) -> list[ScanOutput]:
        ranked = RankedReconstruction(steps, text, out, link.duplicate(), link.duplicate(),
                                      block_frames=8, block_sinograms=3,
                                      memory_bytes=1 << 28, background=True)
        return serve_scans(link, ranked, address[0], scans=2, wait_s=JOIN_S)

    results = run_ranks(2, rank)
    source.join(JOIN_S)
    one = _recon(1, text, tmp_path / "one.h5", SERVICE_CONFIG, block_frames=8)
    outputs = {output.scan: output for output in results[0]}
    assert sorted(outputs) == ["a", "b"]
    for output in outputs.values():
        assert output.complete and output.path is not None, output
        assert output.slices == SERVICE_CONFIG.rows // 2
        assert_same_volume(one, output.path)
    assert np.isfinite(h5py.File(one)["/entry/reconstruction/data"][...]).all()

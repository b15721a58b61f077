"""A CoR finder sees the data at its place (HTTomo's centering wrapper gathers its
sinogram where the finder stands), on one rank and on R ranks: in ``normalize →
find_center_vo → paganin_filter → fbp`` its rows are tapped before the Paganin filter
(:mod:`streamer.pipeline.finder_tap`). On the I13 scan the finder's input equals the
flat-field-corrected row computed here by hand, and the CoR equals Vo's method run by hand
on it (85.5, the scan's truth); on the post-Paganin row, where the finder stood before,
it finds 101.5 with a low confidence. The pipeline R ranks refused
(``remove_outlier3d → normalize → find_center_vo → paganin → fbp``) equals one rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from stages.recon import centering
from stages.recon.center_policy import find_center
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.pipeline import executor
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import process_reader
from streamer.pipeline.finder_tap import finder_tap
from streamer.pipeline.sections import refuse_on_ranks
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.sender import start_header
from tests.run.test_halo_on_real_scans import i13_reader
from tests.run.test_later_reslices_on_ranks import on_ranks, read

PAGANIN = "    parameters: {pixel_size: 0.0001, distance: 50.0, energy: 20.0}\n"
#: The finder before a whole-frame step (HTTomo's sweep_paganin order).
BEFORE_PAGANIN = ("pipeline:\n  - method: normalize\n  - method: find_center_vo\n"
                  "  - method: paganin_filter\n" + PAGANIN + "  - method: fbp\n")
#: R ranks refused it before: a halo step, then the finder, then the whole-frame step.
AFTER_HALO = ("pipeline:\n  - method: remove_outlier3d\n    parameters: {kernel_size: 3, "
              "dif: 500.0}\n  - method: normalize\n  - method: find_center_vo\n"
              "  - method: paganin_filter\n" + PAGANIN + "  - method: fbp\n")


def _steps(text: str) -> Any:
    return parse_pipeline(text, REGISTRY, source="f.yaml").steps


def test_the_tap_lies_before_the_first_whole_frame_step_after_the_finder() -> None:
    tap = finder_tap(_steps(BEFORE_PAGANIN))
    assert tap is not None and (tap.at, tap.before.name) == (1, "paganin_filter")
    tap = finder_tap(_steps(AFTER_HALO))
    assert tap is not None and (tap.at, tap.before.name) == (2, "paganin_filter")
    # a row-by-row step after it (minus_log) is applied first, as before: no tap
    assert finder_tap(_steps("pipeline:\n  - method: normalize\n  - method: find_center_vo"
                             "\n  - method: minus_log\n  - method: fbp\n")) is None
    # the finder after the whole-frame step: the corrected frames are its data
    assert finder_tap(_steps("pipeline:\n  - method: normalize\n  - method: paganin_filter\n"
                             + PAGANIN + "  - method: find_center_vo\n  - method: fbp\n")) \
        is None
    # a binning after it would move the CoR's columns: the frames after it, as before
    assert finder_tap(_steps("pipeline:\n  - method: normalize\n  - method: find_center_vo\n"
                             "  - method: binning\n    parameters: {factor_rows: 2}\n"
                             "  - method: fbp\n")) is None
    # the pair finder correlates whole frames (a known limit)
    assert finder_tap(_steps(BEFORE_PAGANIN.replace("find_center_vo", "find_center_pc"))) \
        is None


def test_ranks_take_a_finder_before_the_whole_frame_rest_not_after_it() -> None:
    refuse_on_ranks(_steps(AFTER_HALO))  # refused before; the finder is tapped now
    after = AFTER_HALO.replace("  - method: find_center_vo\n", "").replace(
        "  - method: fbp\n", "  - method: find_center_vo\n  - method: fbp\n")
    with pytest.raises(ConfigError, match=r"find_center_vo.*before 'paganin_filter'.*stands "
                       "after it") as error:
        refuse_on_ranks(_steps(after))
    assert "\n" not in str(error.value)
    # one rank's finder sees the frames after the rest there: R ranks still refuse them
    pair = AFTER_HALO.replace("find_center_vo", "find_center_pc")
    binned = AFTER_HALO.replace("  - method: paganin_filter\n" + PAGANIN,
                                "  - method: binning\n    parameters: {factor_rows: 2}\n")
    for text, name, before in ((pair, "find_center_pc", "paganin_filter"),
                               (binned, "find_center_vo", "binning")):
        with pytest.raises(ConfigError, match=rf"{name}.*before '{before}'.*one rank's "
                           "finder sees the frames after it"):
            refuse_on_ranks(_steps(text))


def _normalized_row(shared_data: Path, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The I13 scan's flat-field-corrected sinogram of ``row``, by hand from its files."""
    base = shared_data / "real/dls_i13_24737"
    dark, flat = (np.asarray(tifffile.imread(base / name), np.float64).reshape(
        -1, *tifffile.imread(base / name).shape[-2:]).mean(axis=0)
        for name in ("dark_00001.tiff", "flat_00001.tiff"))
    with i13_reader(shared_data) as reader:
        layout = reader.layout
        keep = layout.image_keys == 0
        frames = reader.read(0, layout.frames)[keep].astype(np.float64)
        angles = np.asarray(layout.angles_deg, dtype=np.float64)[keep]
    corrected = (frames[:, row] - dark[row]) / (flat[row] - dark[row])
    return corrected.astype(np.float32), angles


@pytest.fixture
def finder_inputs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The sinogram row ``find_center_vo`` is given, each time (its CoR policy call,
    spied on)."""
    seen: list[np.ndarray] = []

    def spy(projections: np.ndarray, angles: np.ndarray, *, row: int | None,
            **options: Any) -> Any:
        seen.append(np.array(projections[:, row]))
        return find_center(projections, angles, row=row, **options)

    monkeypatch.setattr(centering, "find_center", spy)
    return seen


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_i13_finder_before_paganin_sees_the_normalized_row(
        shared_data: Path, tmp_path: Path, ranks: int, finder_inputs: list[np.ndarray],
) -> None:
    pipeline = tmp_path / "paganin.yaml"
    pipeline.write_text(BEFORE_PAGANIN)
    out = tmp_path / "v.h5"
    if ranks == 1:
        with i13_reader(shared_data) as reader:
            run_recon(reader, ReconSettings(out, pipeline=pipeline))
    else:
        on_ranks(ranks, lambda: i13_reader(shared_data), ReconSettings(out, pipeline=pipeline))
    _, center, method, complete, _ = read(out)
    assert complete and method == "find_center_vo (pipeline)"
    row, angles = _normalized_row(shared_data, 135 // 2)
    assert len(finder_inputs) == 1
    np.testing.assert_allclose(finder_inputs[0], row, rtol=1e-5, atol=1e-6)
    by_hand = find_center(row[:, None, :], angles, smin=-50, smax=50)
    assert center == pytest.approx(float(by_hand)) and center == pytest.approx(85.5)


def test_i13_the_post_paganin_row_finds_another_center(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above can fail: with the tap off the finder sees the post-Paganin row
    (as before) and finds another CoR."""
    monkeypatch.setattr(executor, "finder_tap", lambda steps: None)
    pipeline = tmp_path / "paganin.yaml"
    pipeline.write_text(BEFORE_PAGANIN)
    with i13_reader(shared_data) as reader:
        run_recon(reader, ReconSettings(tmp_path / "v.h5", pipeline=pipeline))
    assert abs(read(tmp_path / "v.h5")[1] - 85.5) > 5


@pytest.mark.parametrize("ranks", [2, 3])
def test_i13_halo_then_finder_then_paganin_on_ranks_equals_one_rank(
        shared_data: Path, tmp_path: Path, ranks: int) -> None:
    pipeline = tmp_path / "halo.yaml"
    pipeline.write_text(AFTER_HALO)
    with i13_reader(shared_data) as reader:
        run_recon(reader, ReconSettings(tmp_path / "one.h5", pipeline=pipeline))
    on_ranks(ranks, lambda: i13_reader(shared_data),
             ReconSettings(tmp_path / "r.h5", pipeline=pipeline))
    one, center, method, complete, angles = read(tmp_path / "one.h5")
    found, found_center, found_method, found_complete, found_angles = read(tmp_path / "r.h5")
    assert complete and found_complete
    assert (found_center, found_method) == (center, method) and center == pytest.approx(85.5)
    np.testing.assert_array_equal(found_angles, angles)
    np.testing.assert_allclose(found, one, rtol=0, atol=1e-5 * float(np.abs(one).max()))


def test_check_says_where_the_finder_takes_its_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "paganin.yaml"
    pipeline.write_text(AFTER_HALO)
    assert main(["check", str(pipeline), "--frame", "64x64", "--projections", "90"]) == 0
    out = capsys.readouterr().out
    assert ("note: step 3 find_center_vo sees the data at its place: its rows are taken "
            "before step 4 paganin_filter (a whole-frame step), as HTTomo's centering "
            "does") in out
    assert "R ranks refuse it" not in out
    pipeline.write_text(BEFORE_PAGANIN.replace("  - method: find_center_vo\n", "").replace(
        "  - method: fbp\n", "  - method: find_center_vo\n  - method: fbp\n"))
    assert main(["check", str(pipeline), "--frame", "64x64", "--projections", "90"]) == 0
    assert "sees the data at its place" not in capsys.readouterr().out


@pytest.mark.parametrize("tapped", [True, False])
def test_i13_the_processor_of_several_reslices_finds_it_where_it_stands(
        shared_data: Path, monkeypatch: pytest.MonkeyPatch, tapped: bool) -> None:
    """The one-rank processor's own later sections (a second reslice: the path of
    ``recon`` for a pipeline beyond one band) take the tapped rows too."""
    if not tapped:
        monkeypatch.setattr(executor, "finder_tap", lambda steps: None)
    steps = _steps(BEFORE_PAGANIN.replace(
        "  - method: fbp\n", "  - method: remove_outlier1d\n    parameters: {dif: 0.1}\n"
        "  - method: median_filter\n"
        "    parameters: {axis: 1, size: 3}\n  - method: fbp\n"))
    with i13_reader(shared_data) as reader:
        processor = process_reader(steps, reader, start_header(reader.layout, "i13"),
                                   block_frames=16, block_sinograms=32)
    assert len(processor.later_sections) == 3 and processor.center is not None
    assert (abs(processor.center - 85.5) < 0.3) == tapped

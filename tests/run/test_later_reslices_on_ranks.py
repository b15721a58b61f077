"""Several reslices on R ranks (in-memory link, ranks in threads): pipelines that go
projection → sinogram → projection → sinogram, or change the angles or the width, give
the one-rank volume within 1e-5, with the same CoR, CoR method and angles; a later
projection section that bins or crops the rows gives the volume of the same steps with
the rows changed first, on 1 to 4 ranks; a row change where no runner follows it (a
sinogram section) is refused before a frame is read, one in the first section runs on R
ranks too; the ``run``
service reslices again for every scan. (The image tail on R ranks:
tests/run/test_image_tail_on_ranks.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.exchange.links import MemoryLink, MemoryNetwork
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.sections import beyond_one_band, sections_of
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction, recon_on_ranks
from streamer.sources.formats import LoadOptions, open_scan
from streamer.sources.scan import FrameReader
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.pipeline.test_httomo_full_pipelines import FULL, _offset_axis_scan
from tests.run.ranks import one_rank, run_ranks, serve_scans
from tests.run.test_service_on_ranks import CONFIG as SERVICE_CONFIG
from tests.run.test_service_on_ranks import JOIN_S
from tests.run.test_service_on_ranks import _source as service_source


def read(path: Path) -> tuple[np.ndarray, float, str, bool, np.ndarray]:
    with h5py.File(path) as file:
        center = file["/entry/process/center_of_rotation"]
        return (file["/entry/reconstruction/data"][...], float(center[()]),
                str(center.attrs["method"]), bool(file["/entry"].attrs["complete"]),
                file["/entry/process/angles_deg"][...])


def on_ranks(ranks: int, reader_for: object, settings: ReconSettings) -> list[object]:
    def rank(link: MemoryLink) -> ScanOutput | None:
        assert callable(reader_for)
        with reader_for() as reader:  # a reader each, as every MPI rank opens the file
            return recon_on_ranks(reader, settings, link)
    return run_ranks(ranks, rank)


def assert_same_volume(one: Path, ranks: Path) -> None:
    expected, center, method, complete, angles = read(one)
    data, found, found_method, found_complete, found_angles = read(ranks)
    assert complete and found_complete
    assert (found, found_method) == (center, method)
    np.testing.assert_array_equal(found_angles, angles)
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def without_image_tail(text: str) -> str:
    """HTTomo's pipeline less its output tail (``calculate_stats`` → ``save_to_images``),
    for the tests of the volume alone."""
    return text[:text.index("- method: calculate_stats")]


@pytest.mark.parametrize("ranks", [2, 3])
def test_deg360_paganin_on_ranks_equals_one_rank(tmp_path: Path, ranks: int) -> None:
    """find_center_360 (side outputs shared) → sino_360_to_180 (angles and width change)
    → stripes → Paganin (the reverse reslice, then forward again) → FBP3d_tomobar at the
    stitched middle: three reslices on R ranks."""
    _offset_axis_scan(tmp_path / "offset360.h5")
    pipeline = tmp_path / "deg360.yaml"
    pipeline.write_text(without_image_tail(
        (FULL / "deg360_paganin_FBP3d_tomobar.yaml").read_text()))
    assert len(sections_of(parse_pipeline(pipeline.read_text(), REGISTRY,
                                          source="x").steps)) == 4

    def reader() -> FrameReader:
        return open_scan(tmp_path / "offset360.h5", LoadOptions())

    with reader() as one:
        run_recon(one, ReconSettings(tmp_path / "one.h5", pipeline=pipeline, block_frames=16))
    results = on_ranks(ranks, reader, ReconSettings(tmp_path / "ranks.h5", pipeline=pipeline,
                                                    block_frames=16, block_sinograms=3))
    assert isinstance(results[0], ScanOutput) and results[0].complete, results[0]
    assert_same_volume(tmp_path / "one.h5", tmp_path / "ranks.h5")
    _, center, method, _, angles = read(tmp_path / "ranks.h5")
    assert center == (2 * 156 - 1) / 2 and "before the 360° fold" in method
    assert angles.size == 180


AVERAGED = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: average_projection_frames
  - method: PROJECTION_STEP
  - method: fbp
    parameters: {center: CENTER}
"""


@pytest.mark.parametrize(("ranks", "rows"), [(2, 4), (3, 4), (3, 2)],
                         ids=["2-ranks", "3-ranks", "3-ranks-one-empty-band"])
@pytest.mark.parametrize(("projection_step", "center"), [
    ("gaussian_filter\n    parameters: {sigma: 1.0}", 23.5),
    ("binning\n    parameters: {factor_rows: 1, factor_cols: 2}", 11.5),  # the width halves
], ids=["gaussian", "binned-columns"])
def test_averaged_angles_and_a_second_projection_section_on_ranks(
        tmp_path: Path, ranks: int, rows: int, projection_step: str, center: float) -> None:
    """tests/pipeline/test_executor.py's projection → sinogram → projection → sinogram
    pipeline (the angles halved in the first sinogram section): R ranks, bands of
    unequal height and a rank without rows, the same volume as one rank."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(AVERAGED.replace("PROJECTION_STEP", projection_step)
                        .replace("CENTER", str(center)))
    config = SimulationConfig(rows=rows, cols=48, projections=40, flats=4, darks=2)

    def reader() -> SimulatedScan:
        return SimulatedScan(config)

    run_recon(reader(), ReconSettings(tmp_path / "one.h5", pipeline=pipeline, block_frames=7))
    results = on_ranks(ranks, reader, ReconSettings(tmp_path / "ranks.h5", pipeline=pipeline,
                                                    block_frames=7, block_sinograms=1))
    assert isinstance(results[0], ScanOutput) and results[0].complete, results[0]
    assert_same_volume(tmp_path / "one.h5", tmp_path / "ranks.h5")
    assert read(tmp_path / "ranks.h5")[4].size == 20  # the averaged angles


def test_angles_averaging_on_a_real_scan_on_two_ranks(shared_data: Path,
                                                      tmp_path: Path) -> None:
    """httomo-backends' ``angles_averaging`` (a geometry change, no second reslice) on
    the tooth (two rows, one per rank): find_center_vo on its owner's row, the averaged
    angles on every band."""
    text = without_image_tail((FULL / "angles_averaging.yaml").read_text())
    # remove_outlier's 3-D kernel spans neighbouring projections, and a rank's blocks of
    # projections are not the one rank's (frames are dealt in blocks that include the
    # references): it differs at block edges on the plain band path too (not a reslice)
    text = (text[:text.index("- method: remove_outlier")]
            + text[text.index("- method: dark_flat_field_correction"):])
    pipeline = tmp_path / "angles_averaging.yaml"
    pipeline.write_text(text)
    steps = parse_pipeline(pipeline.read_text(), REGISTRY, source="x").steps
    assert beyond_one_band(steps) and len(sections_of(steps)) == 2
    scan = shared_data / "real/aps_tooth/tooth.h5"

    def reader() -> FrameReader:
        return open_scan(scan, LoadOptions())

    with reader() as one:
        run_recon(one, ReconSettings(tmp_path / "one.h5", pipeline=pipeline))
    results = on_ranks(2, reader, ReconSettings(tmp_path / "ranks.h5", pipeline=pipeline))
    assert isinstance(results[0], ScanOutput) and results[0].complete, results[0]
    assert_same_volume(tmp_path / "one.h5", tmp_path / "ranks.h5")


class UnreadScan(SimulatedScan):
    """A scan whose frames must not be read (a refusal comes before)."""

    def read(self, first: int, last: int) -> np.ndarray:
        raise AssertionError(f"frames {first}..{last} were read before the refusal")


BINNED_FIRST = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: ROW_STEP
  - method: average_projection_frames
  - method: fbp
    save_result: true
    parameters: {center: CENTER}
"""


@pytest.mark.parametrize(("ranks", "projections"), [(1, 40), (2, 40), (3, 40), (4, 6)],
                         ids=["1-rank", "2-ranks", "3-ranks", "4-ranks-one-without-angles"])
@pytest.mark.parametrize("case", [
    ("binning", 11.5, 3),  # rows 7 -> 3 (the last row dropped), columns 48 -> 24
    ("crop\n    parameters: {rows: [1, 6]}", 23.5, 5),
], ids=["binning", "crop"])
def test_a_row_change_after_the_first_reslice_is_followed(
        tmp_path: Path, ranks: int, projections: int, case: tuple[str, float, int]) -> None:
    """Binning or cropping the rows in a later projection section (after the reslice
    back from sinograms): the bands of the last section are cut from the new rows, on 1
    to 4 ranks (a rank without rows, a rank without angles); the volume equals the one
    of the same steps with the rows changed before the first reslice, on one rank (they
    commute: binning or cropping the rows and averaging pairs of angles act on other
    axes); the reconstruction's save_result file has the new rows."""
    row_step, center, slices = case
    later = tmp_path / "later.yaml"
    later.write_text(AVERAGED.replace("PROJECTION_STEP", row_step).replace(
        "- method: fbp", "- method: fbp\n    save_result: true").replace("CENTER", str(center)))
    first = tmp_path / "first.yaml"
    first.write_text(BINNED_FIRST.replace("ROW_STEP", row_step).replace("CENTER", str(center)))
    config = SimulationConfig(rows=7, cols=48, projections=projections, flats=4, darks=2)
    (tmp_path / "ref").mkdir()
    (tmp_path / "later").mkdir()
    run_recon(SimulatedScan(config), ReconSettings(tmp_path / "ref" / "v.h5", pipeline=first,
                                                   block_frames=7))
    results = on_ranks(ranks, lambda: SimulatedScan(config),
                       ReconSettings(tmp_path / "later" / "v.h5", pipeline=later,
                                     block_frames=7, block_sinograms=1))
    assert isinstance(results[0], ScanOutput) and results[0].complete, results[0]
    assert results[0].slices == slices
    assert_same_volume(tmp_path / "ref" / "v.h5", tmp_path / "later" / "v.h5")
    with h5py.File(tmp_path / "later" / "v.h5") as file:
        assert list(file["/entry/reconstruction/slice_written"][()]) == [True] * slices
    saved = "task_4-stages-fbp.h5"
    with h5py.File(tmp_path / "ref" / saved) as expected, \
            h5py.File(tmp_path / "later" / saved) as found:
        assert found["data"].shape == expected["data"].shape
        assert found["data"].shape[1] == slices and bool(found.attrs["complete"])
        scale = float(np.abs(expected["data"][()]).max())
        np.testing.assert_allclose(found["data"][()], expected["data"][()], rtol=1e-5,
                                   atol=1e-5 * scale)


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_row_change_in_a_sinogram_section_is_refused_before_the_scan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ranks: int) -> None:
    """data_resampler across the slices (HTTomo's axis 0) after the reconstruction: the
    volume's slices are its bands' rows (one rank wrote a broken volume): ``check``
    and every runner refuse it at its start, one line that names the step, before a
    frame is read."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(RESAMPLED)
    config = SimulationConfig(rows=4, cols=48, projections=40, flats=4, darks=2)
    settings = ReconSettings(tmp_path / "v.h5", pipeline=pipeline)
    refused: list[str] = []

    def rank(link: MemoryLink) -> None:
        with pytest.raises(ConfigError) as error:
            recon_on_ranks(UnreadScan(config), settings, link)
        refused.append(str(error.value))

    run_ranks(ranks, rank)
    assert len(refused) == ranks and len(set(refused)) == 1
    assert "\n" not in refused[0]
    assert refused[0].startswith(f"stage 'data_resampler' ({pipeline}:5): it changes the "
                                 "number of detector rows in the sinogram section after "
                                 "reslice 1")
    assert not (tmp_path / "v.h5").exists()
    assert main(["check", str(pipeline), "--frame", "4x48", "--projections", "40"]) == 2
    assert f"stage 'data_resampler' ({pipeline}:5)" in capsys.readouterr().err
    steps = parse_pipeline(pipeline.read_text(), REGISTRY, source="p.yaml").steps
    with pytest.raises(ConfigError, match="data_resampler"):
        one_rank(steps, pipeline.read_text(), tmp_path)  # the `run` service's runner
    within = tmp_path / "within.yaml"  # each slice resampled on its own: valid
    within.write_text(RESAMPLED.replace("axis: 0", "axis: auto"))
    assert main(["check", str(within), "--frame", "4x48", "--projections", "40"]) == 0


RESAMPLED = """\
pipeline:
  - method: normalize
  - method: fbp
    parameters: {center: 23.5}
  - method: data_resampler
    parameters: {newshape: [24, 24], axis: 0}
"""


def test_a_row_change_before_the_first_reslice_runs_on_every_rank_count(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Binning in the first projection section: one rank's band takes the binned rows;
    R ranks agree on the binned frame before the exchange (they refused it, and before
    that failed at the reslice and waited out its timeout: ADR 0029), ``check`` says so.
    (More cases: tests/run/test_row_change_first_section_on_ranks.py.)"""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(FIRST_SECTION_BINNING)
    config = SimulationConfig(rows=4, cols=48, projections=20, flats=2, darks=2)
    one = run_recon(SimulatedScan(config), ReconSettings(tmp_path / "one.h5",
                                                         pipeline=pipeline))
    assert one.complete and one.slices == 2
    on_ranks(2, lambda: SimulatedScan(config), ReconSettings(tmp_path / "r.h5",
                                                             pipeline=pipeline))
    assert_same_volume(tmp_path / "one.h5", tmp_path / "r.h5")
    assert main(["check", str(pipeline), "--frame", "4x48", "--projections", "20"]) == 0
    assert "binning changes the number of detector rows: the bands and the volume take " \
           "the corrected frame's rows (every rank count)" in capsys.readouterr().out


FIRST_SECTION_BINNING = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: binning
  - method: fbp
    parameters: {center: 11.5}
"""


def test_run_service_on_two_ranks_reslices_again_for_every_scan(tmp_path: Path) -> None:
    """``run`` on 2 ranks (the reconstruction in the worker thread): two scans, each with
    its later reslices (tags and serials per scan), both equal to the one-rank volume."""
    text = (AVERAGED.replace("PROJECTION_STEP", "gaussian_filter\n    parameters: {sigma: 1.0}")
            .replace("CENTER", "16.0"))
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
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    run_recon(SimulatedScan(SERVICE_CONFIG), ReconSettings(tmp_path / "one.h5",
                                                           pipeline=pipeline))
    outputs = {output.scan: output for output in results[0]}
    assert sorted(outputs) == ["a", "b"]
    for output in outputs.values():
        assert output.complete and output.path is not None, output
        assert_same_volume(tmp_path / "one.h5", output.path)


@pytest.mark.parametrize(("ind", "owner"), [("null", 0), ("mid", 1), ("5", 2)])
def test_the_cor_is_found_on_the_row_the_finder_picks(tmp_path: Path, ind: str,
                                                      owner: int) -> None:
    """find_center_360 looks at row 0 when ``ind`` is unset (as upstream and as one rank
    does), the middle row for ``mid``: the rank owning that row finds it (6 rows on 3
    ranks: bands of 2)."""
    text = without_image_tail((FULL / "deg360_paganin_FBP3d_tomobar.yaml").read_text())
    text = text.replace("ind: null", f"ind: {ind}")
    steps = parse_pipeline(text, REGISTRY, source="x").steps
    start = start_header(SimulatedScan(SimulationConfig(rows=6, cols=16, projections=8))
                         .layout, "s")
    ranked = RankedReconstruction(steps, text, tmp_path, MemoryNetwork(3).link(0), None)
    assert ranked._center_owner(start) == owner

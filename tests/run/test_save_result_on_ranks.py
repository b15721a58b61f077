"""HTTomo's ``save_result: true`` on R ranks (ranks in threads on an in-memory link): each
rank writes a part of every intermediate file and rank 0 the file over them (an HDF5
virtual dataset); read through h5py it equals the one-rank file (values, shape,
attributes, angles) for a projection-section step (dealt frames), a sinogram-section step
(bands of rows), the reconstruction, and a later projection section (ranges of angles)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stages.registry import REGISTRY
from stages.spec import Pattern
from streamer.errors import ConfigError
from streamer.exchange.links import MemoryLink
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.intermediate import IntermediateResults
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import recon_on_ranks
from streamer.sinks.master import part_path
from streamer.sources.formats import LoadOptions, open_scan
from streamer.sources.scan import FrameReader
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.pipeline.test_intermediate import FULL, _saving
from tests.run.ranks import run_ranks
from tests.run.test_later_reslices_on_ranks import AVERAGED

TOOTH_FILES = ("task_1-httomolibgpu-dark_flat_field_correction.h5",
               "task_3-httomolibgpu-remove_all_stripe.h5",
               "task_5-httomolibgpu-FBP3d_tomobar.h5")


def on_ranks(ranks: int, reader_for: Any, settings: ReconSettings,
             log: Any = lambda line: None) -> list[Any]:
    def rank(link: MemoryLink) -> ScanOutput | None:
        with reader_for() as reader:  # a reader each, as every MPI rank opens the file
            return recon_on_ranks(reader, settings, link, log)
    return run_ranks(ranks, rank)


def read_result(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as file:
        return {"data": file["data"][()], "data_attrs": dict(file["data"].attrs),
                "angles": file["angles"][()], "dims": file["data_dims/detector_x_y"][()],
                "complete": bool(file.attrs["complete"]),
                "virtual": file["data"].is_virtual}


def assert_same_result(one: Path, ranks: Path) -> None:
    expected, found = read_result(one), read_result(ranks)
    assert found["virtual"] and not expected["virtual"]
    assert expected["complete"] and found["complete"]
    assert found["data"].shape == expected["data"].shape
    assert found["data_attrs"] == expected["data_attrs"]
    np.testing.assert_array_equal(found["angles"], expected["angles"])
    np.testing.assert_array_equal(found["dims"], expected["dims"])
    scale = float(np.abs(expected["data"]).max())
    np.testing.assert_allclose(found["data"], expected["data"], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("ranks", [2, 3])
def test_save_result_on_ranks_equals_one_rank_on_the_tooth(
        shared_data: Path, tmp_path: Path, ranks: int) -> None:
    """The tooth's two rows on 3 ranks leave one rank without a band: it writes no part
    of the sinogram steps, and the files are still whole."""
    tooth = shared_data / "real/aps_tooth/tooth.h5"
    pipeline = tmp_path / "saving.yaml"
    text = _saving((FULL / "FBP3d_tomobar.yaml").read_text())
    pipeline.write_text(text[:text.index("- method: calculate_stats")])
    (tmp_path / "one").mkdir()
    (tmp_path / "ranks").mkdir()

    def reader() -> FrameReader:
        return open_scan(tooth, LoadOptions())

    with reader() as one:
        run_recon(one, ReconSettings(tmp_path / "one" / "rec.h5", pipeline=pipeline,
                                     block_frames=16))
    lines: list[str] = []
    results = on_ranks(ranks, reader, ReconSettings(tmp_path / "ranks" / "rec.h5",
                                                    pipeline=pipeline, block_frames=16),
                       log=lines.append)
    assert isinstance(results[0], ScanOutput) and results[0].complete, results[0]
    for name in TOOTH_FILES:
        assert_same_result(tmp_path / "one" / name, tmp_path / "ranks" / name)
        # the run says each file once (rank 0), never its parts
        assert lines.count(f"save_result: {tmp_path / 'ranks' / name}") == 1
    assert not [line for line in lines if "save_result" in line and ".part" in line]
    parts = sorted(p.name for p in (tmp_path / "ranks").glob("task_*.part*.h5"))
    # every rank holds frames; only ranks with a band hold rows
    assert len(parts) == ranks + 2 * min(ranks, 2)


@pytest.mark.parametrize("ranks", [2, 3])
def test_save_result_in_a_later_projection_section_on_ranks(tmp_path: Path,
                                                            ranks: int) -> None:
    """projection → sinogram (angles averaged) → projection → sinogram: the later
    projection step's file (each rank a range of angles) and the first sinogram step's
    (bands, after the angles changed) equal one rank's."""
    text = (AVERAGED.replace("PROJECTION_STEP", "gaussian_filter\n    save_result: true\n"
                             "    parameters: {sigma: 1.0}")
            .replace("- method: average_projection_frames",
                     "- method: average_projection_frames\n    save_result: true")
            .replace("CENTER", "23.5"))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    config = SimulationConfig(rows=5, cols=48, projections=40, flats=4, darks=2)
    (tmp_path / "one").mkdir()
    (tmp_path / "ranks").mkdir()
    run_recon(SimulatedScan(config), ReconSettings(tmp_path / "one" / "v.h5",
                                                   pipeline=pipeline, block_frames=7))
    results = on_ranks(ranks, lambda: SimulatedScan(config),
                       ReconSettings(tmp_path / "ranks" / "v.h5", pipeline=pipeline,
                                     block_frames=7, block_sinograms=1))
    assert isinstance(results[0], ScanOutput) and results[0].complete, results[0]
    names = sorted(p.name for p in (tmp_path / "one").glob("task_*.h5"))
    assert names == ["task_2-stages-average_projection_frames.h5",
                     "task_3-stages-gaussian_filter.h5"]
    for name in names:
        assert_same_result(tmp_path / "one" / name, tmp_path / "ranks" / name)


def test_existing_parts_are_refused_before_the_scan_on_every_rank(tmp_path: Path) -> None:
    """A second run into the same folder: every rank refuses (rank 0 sees the file and
    every part, the others their own) before anything is read, unless --overwrite."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(AVERAGED.replace("PROJECTION_STEP", "gaussian_filter\n    save_result: "
                                         "true").replace("CENTER", "23.5"))
    config = SimulationConfig(rows=4, cols=48, projections=20, flats=2, darks=2)
    settings = ReconSettings(tmp_path / "v.h5", pipeline=pipeline, block_frames=7)
    on_ranks(2, lambda: SimulatedScan(config), settings)
    (tmp_path / "task_3-stages-gaussian_filter.h5").unlink()  # the parts are left
    refused: list[str] = []

    def rank(link: MemoryLink) -> None:
        with pytest.raises(ConfigError, match=r"part\dof2\.h5 exists") as error:
            recon_on_ranks(SimulatedScan(config), replace(settings, output=tmp_path / "w.h5"),
                           link)
        refused.append(str(error.value))

    run_ranks(2, rank)
    assert len(refused) == 2
    again = on_ranks(2, lambda: SimulatedScan(config),
                     replace(settings, output=tmp_path / "w.h5", overwrite=True))
    assert isinstance(again[0], ScanOutput) and again[0].complete


def test_a_place_no_part_holds_reads_nan_and_the_file_says_incomplete(tmp_path: Path) -> None:
    """Rank 1's part gone: the file is still written over rank 0's, its rows read as
    NaN, and ``complete`` is false with the reason."""
    steps = parse_pipeline(AVERAGED.replace("PROJECTION_STEP", "gaussian_filter").replace(
        "- method: average_projection_frames",
        "- method: average_projection_frames\n    save_result: true").replace("CENTER", "1.5"),
        REGISTRY, source="p.yaml").steps
    step = next(s for s in steps if s.save_result)
    angles = np.linspace(0.0, 180.0, 6, endpoint=False)
    block = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)  # (rows, angles, cols)
    for rank, first in ((0, 0), (1, 2)):
        results = IntermediateResults(tmp_path, 4, 5, rank=rank, ranks=2)
        results.add(step, Pattern.SINOGRAM, indices=np.arange(first, first + 2), total=4,
                    angles=angles, data=block + first)
        results.close(complete=True)
    part_path(tmp_path / f"{step.result_name}.h5", 1, 2).unlink()
    written = IntermediateResults(tmp_path, 4, 5, rank=0, ranks=2).write_masters(
        steps, complete=True)
    assert [(path.name, whole) for path, whole, _ in written] == [
        (f"{step.result_name}.h5", False)]
    assert "2 of 4 rows are in no part (first: 2)" in written[0][2]
    with h5py.File(written[0][0], "r") as file:
        data = file["data"][()]
        assert data.shape == (6, 4, 5) and not file.attrs["complete"]
        np.testing.assert_array_equal(data[:, :2], block.transpose(1, 0, 2))
        assert np.isnan(data[:, 2:]).all()
        np.testing.assert_allclose(file["angles"][()], np.deg2rad(angles))

"""httomo-backends' full pipelines under ``mpiexec -n R tomo-streamer recon`` for real, as an
HTTomo user runs them: FBP3d_tomobar on I13 rows (find_center_vo, the stripe filter on
sinogram blocks, the image tail: every rank its band's TIFFs, rescaled with the merged
statistics), titaren_center_pc_FBP3d_resample on I13 rows (find_center_pc given the
whole 0°/180° pair) and the centre sweep on the tooth (one output per value, on every rank
count). Rank 0 compares with one rank (``recon``'s batch path in this process): the same
CoR and method, the volume bit for bit, the images file by file.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.pipeline.config import load_pipeline
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan
from tests.mpi.test_mpi_ingest import link, shared_dir
from tests.pipeline.test_httomo_full_on_ranks import _pipeline, assert_same_tail
from tests.pipeline.test_httomo_full_pipelines import FULL, _scan
from tests.run.test_later_reslices_on_ranks import read

__all__ = ["link", "shared_dir"]  # fixtures used by the tests below
pytestmark = pytest.mark.mpi


def test_fbp3d_tomobar_on_i13_rows_equals_one_rank(
        link: RankLink, shared_dir: Path, shared_data: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, options, args = _scan(shared_data, "i13")
    if link.rank == 0:
        (shared_dir / "ranks").mkdir()
        (shared_dir / "one").mkdir()
    link.comm.Barrier()
    out = shared_dir / "ranks" / "rec.h5"
    assert main(["recon", str(path), "-o", str(out), "--pipeline",
                 str(FULL / "FBP3d_tomobar.yaml"), *args, "--quiet"]) == 0
    said = capsys.readouterr().out
    link.comm.Barrier()
    if link.rank != 0:
        assert "wrote" not in said  # rank 0 speaks for all
        return
    assert f"from {link.size} ranks" in said
    assert f"save_to_images: 4 TIFFs in {shared_dir / 'ranks' / 'images'}" in said
    with open_scan(path, options) as reader:
        one = run_recon(reader, ReconSettings(shared_dir / "one" / "rec.h5",
                                              pipeline=FULL / "FBP3d_tomobar.yaml",
                                              first_row=60))
    expected, center, method, complete, angles = read(shared_dir / "one" / "rec.h5")
    data, found, found_method, found_complete, found_angles = read(out)
    assert complete and found_complete
    assert (found, found_method) == (center, method) and found == pytest.approx(85.5, abs=0.5)
    np.testing.assert_array_equal(found_angles, angles)
    np.testing.assert_array_equal(data, expected)
    folder = shared_dir / "ranks" / "images"
    assert_same_tail(one.images, (folder, len(list(folder.glob("*.tif")))), exact=True)


def test_centre_sweep_writes_every_value_on_ranks(
        link: RankLink, shared_dir: Path, shared_data: Path) -> None:
    """Before, ``mpiexec`` ran only the sweep's first value, silently."""
    tooth = shared_data / "real/aps_tooth/tooth.h5"
    if link.rank == 0:
        for where in ("ranks", "one"):
            (shared_dir / where).mkdir()
        _pipeline(shared_dir, "sweep_center_FBP3d_tomobar.yaml")  # two values, on the tooth
    link.comm.Barrier()
    pipeline = shared_dir / "sweep_center_FBP3d_tomobar.yaml"
    assert main(["recon", str(tooth), "-o", str(shared_dir / "ranks" / "rec.h5"),
                 "--pipeline", str(pipeline), "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    labels = [label for label, _ in load_pipeline(pipeline, REGISTRY).variants()]
    assert labels == ["center=293.0", "center=295.0"]
    masters = [p.name for p in (shared_dir / "ranks").glob("rec*.h5") if ".part" not in p.name]
    assert sorted(masters) == [f"rec_{label}.h5" for label in labels]  # over each's parts
    for label in labels:
        with open_scan(tooth, LoadOptions()) as reader:
            run_recon(reader, ReconSettings(shared_dir / "one" / f"rec_{label}.h5",
                                            pipeline=pipeline, sweep_value=label))
        expected, center, *_ = read(shared_dir / "one" / f"rec_{label}.h5")
        data, found, *_ = read(shared_dir / "ranks" / f"rec_{label}.h5")
        assert found == center == float(label.split("=")[1])
        np.testing.assert_array_equal(data, expected)


def test_pair_finder_on_i13_rows_equals_one_rank(
        link: RankLink, shared_dir: Path, shared_data: Path) -> None:
    """titaren_center_pc_FBP3d_resample: ``find_center_pc`` gets the whole 0°/180° pair
    on R ranks too (every rank sends the CoR owner its rows of the two over MPI), so the
    CoR and the volume are one rank's (before: 85.883 against 85.870)."""
    name = "titaren_center_pc_FBP3d_resample.yaml"
    path, options, args = _scan(shared_data, "i13")
    if link.rank == 0:
        for where in ("pc_ranks", "pc_one"):
            (shared_dir / where).mkdir()
        _pipeline(shared_dir, name)  # newshape: [80, 80] (left REQUIRED upstream)
    link.comm.Barrier()
    pipeline = shared_dir / name
    out = shared_dir / "pc_ranks" / "rec.h5"
    assert main(["recon", str(path), "-o", str(out), "--pipeline", str(pipeline), *args,
                 "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    with open_scan(path, options) as reader:
        run_recon(reader, ReconSettings(shared_dir / "pc_one" / "rec.h5", pipeline=pipeline,
                                        first_row=60))
    expected, center, method, complete, _ = read(shared_dir / "pc_one" / "rec.h5")
    data, found, found_method, found_complete, _ = read(out)
    assert complete and found_complete
    assert (found, found_method) == (center, method) and found == pytest.approx(85.5, abs=0.5)
    np.testing.assert_array_equal(data, expected)

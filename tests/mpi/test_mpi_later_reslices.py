"""Several reslices under ``mpiexec -n R`` for real: the later reslices' strided pieces
go through MPI derived datatypes, and ``recon`` of HTTomo's ``deg360_paganin`` (three
reslices, the 360° fold's side outputs shared) equals the one-rank volume, and its image
tail the one-rank images.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from streamer.cli import main
from streamer.exchange import transpose as transpose_module
from streamer.exchange.links import RankLink
from streamer.exchange.reslice import row_bands
from streamer.exchange.transpose import Shape, transpose
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan
from tests.mpi.test_mpi_ingest import link, shared_dir
from tests.pipeline.test_httomo_full_pipelines import FULL, _offset_axis_scan

__all__ = ["link", "shared_dir"]  # fixtures used by the tests below
pytestmark = pytest.mark.mpi


def test_bands_to_angles_and_back_over_mpi(link: RankLink,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transpose_module, "PIECE_BYTES", 2 * 5 * 4)  # several pieces
    ranks, rows, angles, cols = link.size, 7, 11, 5
    scan = np.random.default_rng(3).random((rows, angles, cols), dtype=np.float32)
    reslice = link.duplicate()
    try:
        first, stop = row_bands(rows, ranks)[link.rank]
        there = transpose(reslice, np.ascontiguousarray(scan[first:stop]),
                          Shape(rows, angles, cols), serial=1, number=2, timeout_s=60)
        low, high = row_bands(angles, ranks)[link.rank]
        assert there.data is not None and there.failed_ranks == ()
        np.testing.assert_array_equal(there.data, scan[:, low:high].transpose(1, 0, 2))
        back = transpose(reslice, there.data, Shape(angles, rows, cols), serial=1, number=3,
                         timeout_s=60)
        assert back.data is not None
        np.testing.assert_array_equal(back.data, scan[first:stop])
    finally:
        reslice.free()


def test_recon_of_deg360_paganin_on_ranks_equals_one_rank(link: RankLink,
                                                          shared_dir: Path) -> None:
    stored, pipeline = shared_dir / "offset360.h5", shared_dir / "deg360.yaml"
    if link.rank == 0:
        _offset_axis_scan(stored)
        text = (FULL / "deg360_paganin_FBP3d_tomobar.yaml").read_text()
        pipeline.write_text(text[:text.index("- method: calculate_stats")])  # no image tail
    link.comm.Barrier()
    out = shared_dir / "ranks.h5"
    assert main(["recon", str(stored), "-o", str(out), "--pipeline", str(pipeline),
                 "--block", "16", "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    single = shared_dir / "single.h5"
    with open_scan(stored, LoadOptions()) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline, block_frames=16))
    with h5py.File(out, "r") as master, h5py.File(single, "r") as one:
        assert bool(master["/entry"].attrs["complete"])
        cor = "/entry/process/center_of_rotation"
        assert float(master[cor][()]) == float(one[cor][()]) == (2 * 156 - 1) / 2
        assert master[cor].attrs["method"] == one[cor].attrs["method"]
        expected = one["/entry/reconstruction/data"][()]
        np.testing.assert_allclose(master["/entry/reconstruction/data"][()], expected,
                                   rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_recon_writes_the_image_tail_on_ranks_as_one_rank(link: RankLink,
                                                          shared_dir: Path) -> None:
    """HTTomo's deg360_paganin as it ships (its image tail by reference): every rank
    writes the images of its band with the statistics merged over MPI; the folder
    equals one rank's, file by file."""
    stored = shared_dir / "offset360.h5"
    if link.rank == 0:
        _offset_axis_scan(stored)
        (shared_dir / "ranks").mkdir()
        (shared_dir / "one").mkdir()
    link.comm.Barrier()
    pipeline = FULL / "deg360_paganin_FBP3d_tomobar.yaml"
    assert main(["recon", str(stored), "-o", str(shared_dir / "ranks" / "v.h5"),
                 "--pipeline", str(pipeline), "--block", "16", "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    with open_scan(stored, LoadOptions()) as reader:
        one = run_recon(reader, ReconSettings(output=shared_dir / "one" / "v.h5",
                                              pipeline=pipeline, block_frames=16))
    assert one.images is not None and one.images[1] > 0
    expected = sorted(one.images[0].glob("*.tif"))
    found = sorted((shared_dir / "ranks" / "images").glob("*.tif"))
    assert [path.name for path in found] == [path.name for path in expected]
    for mine, theirs in zip(found, expected, strict=True):
        np.testing.assert_array_equal(tifffile.imread(mine), tifffile.imread(theirs))

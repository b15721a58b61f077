"""``remove_outlier`` (httomolibgpu's 3-D median, ``remove_outlier3d``) through ``recon``
on a real scan: the volume does not depend on the block sizes (every block gets its real
neighbour projections and rows, ADR 0019), nor on the rank count (overlapping bands,
ADR 0019's addendum: H38 measured ~5 % of the volume max on 2 ranks without them). A
whole-frame step after a halo step: tests/run/test_whole_frame_tail_on_ranks.py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import streamer.run.ranks as ranks_module
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan
from streamer.sources.scan import FrameReader
from tests.run.test_later_reslices_on_ranks import on_ranks

PIPELINE = """\
pipeline:
  - method: normalize
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.05}
  - method: median_filter3d
    parameters: {kernel_size: 3}
  - method: fbp
    parameters: {center: 85.5}
"""


def i13_reader(shared_data: Path) -> FrameReader:
    """The I13 scan (darks, flats and angles from its files), as a frame reader."""
    base = shared_data / "real/dls_i13_24737"
    return open_scan(base / "tiffs", LoadOptions(
        darks=(str(base / "dark_00001.tiff"),), flats=(str(base / "flat_00001.tiff"),),
        angles_path=f"{base / '24737_processed.nxs'}:/entry/input_data/tomo/rotation_angle"))


def complete_volume(path: Path) -> np.ndarray:
    """The reconstruction stored at ``path``, which must be marked complete."""
    with h5py.File(path) as file:
        assert bool(file["/entry"].attrs["complete"])
        return np.asarray(file["/entry/reconstruction/data"][...])


def test_i13_volume_does_not_depend_on_block_sizes(shared_data: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "outliers.yaml"
    pipeline.write_text(PIPELINE)
    volumes = {}
    for frames, sinograms in ((200, 200), (2, 3)):
        out = tmp_path / f"v{frames}-{sinograms}.h5"
        with i13_reader(shared_data) as reader:
            run_recon(reader, ReconSettings(out, pipeline=pipeline, block_frames=frames,
                                            block_sinograms=sinograms))
        volumes[frames, sinograms] = complete_volume(out)
    whole = volumes.pop((200, 200))
    for sizes, volume in volumes.items():
        np.testing.assert_allclose(volume, whole, rtol=0, atol=1e-6 * np.abs(whole).max(),
                                   err_msg=f"blocks of {sizes} frames/sinograms")


#: A 3-D median in the projection section (after normalize: the frames get the head, the
#: band the tail) and one in the sinogram section (after a sinogram step).
MIXED = """\
pipeline:
  - method: normalize
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.02}
  - method: minus_log
  - method: remove_stripe_based_sorting
    parameters: {size: 5}
  - method: median_filter3d
    parameters: {kernel_size: 5}
  - method: fbp
    parameters: {center: CENTER}
"""


def _tooth(shared_data: Path) -> FrameReader:
    return open_scan(shared_data / "real/aps_tooth/tooth.h5", LoadOptions())


def _mixed(tmp_path: Path, center: float) -> Path:
    pipeline = tmp_path / "mixed.yaml"
    pipeline.write_text(MIXED.replace("CENTER", str(center)))
    return pipeline


def _one_rank(reader_for: object, pipeline: Path, out: Path) -> np.ndarray:
    assert callable(reader_for)
    with reader_for() as reader:
        run_recon(reader, ReconSettings(out, pipeline=pipeline))
    return complete_volume(out)


def _assert_close(found: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(found, expected, rtol=0,
                               atol=1e-6 * float(np.abs(expected).max()))


@pytest.mark.parametrize("ranks", [2, 3])
def test_i13_halo_steps_on_ranks_equal_one_rank(shared_data: Path, tmp_path: Path,
                                                ranks: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = _mixed(tmp_path, 85.5)
    one = _one_rank(lambda: i13_reader(shared_data), pipeline, tmp_path / "one.h5")
    out = tmp_path / f"ranks{ranks}.h5"
    on_ranks(ranks, lambda: i13_reader(shared_data), ReconSettings(out, pipeline=pipeline))
    _assert_close(complete_volume(out), one)
    # the test can fail: without the overlap (each rank's band alone) the band edges
    # differ, by far more than the tolerance
    monkeypatch.setattr(ranks_module, "ranks_halo", lambda sections: 0)
    bare = tmp_path / f"bare{ranks}.h5"
    on_ranks(ranks, lambda: i13_reader(shared_data), ReconSettings(bare, pipeline=pipeline))
    assert np.abs(complete_volume(bare) - one).max() > 1e-3 * np.abs(one).max()


@pytest.mark.parametrize("ranks", [2, 3])
def test_bands_narrower_than_the_halo(shared_data: Path, tmp_path: Path, ranks: int) -> None:
    # the tooth has 2 rows: bands of 1 row (2 ranks; 3 ranks: one empty band) against a
    # halo of 1 + 2 rows: each rank needs every row of the others
    pipeline = _mixed(tmp_path, 295.0)
    one = _one_rank(lambda: _tooth(shared_data), pipeline, tmp_path / "one.h5")
    out = tmp_path / f"ranks{ranks}.h5"
    on_ranks(ranks, lambda: _tooth(shared_data), ReconSettings(out, pipeline=pipeline))
    _assert_close(complete_volume(out), one)

"""``remove_outlier`` (httomolibgpu's 3-D median, ``remove_outlier3d``) through ``recon``
on a real scan: the volume does not depend on the block sizes (every block gets its real
neighbour projections and rows, ADR 0019), and R ranks, which cannot give them yet,
refuse it with one line instead of computing a different volume (H38 measured ~5 % of
the volume max on 2 ranks)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.errors import ConfigError
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


def _i13(shared_data: Path) -> FrameReader:
    base = shared_data / "real/dls_i13_24737"
    return open_scan(base / "tiffs", LoadOptions(
        darks=(str(base / "dark_00001.tiff"),), flats=(str(base / "flat_00001.tiff"),),
        angles_path=f"{base / '24737_processed.nxs'}:/entry/input_data/tomo/rotation_angle"))


def _volume(path: Path) -> np.ndarray:
    with h5py.File(path) as file:
        assert bool(file["/entry"].attrs["complete"])
        return np.asarray(file["/entry/reconstruction/data"][...])


def test_i13_volume_does_not_depend_on_block_sizes(shared_data: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "outliers.yaml"
    pipeline.write_text(PIPELINE)
    volumes = {}
    for frames, sinograms in ((200, 200), (2, 3)):
        out = tmp_path / f"v{frames}-{sinograms}.h5"
        with _i13(shared_data) as reader:
            run_recon(reader, ReconSettings(out, pipeline=pipeline, block_frames=frames,
                                            block_sinograms=sinograms))
        volumes[frames, sinograms] = _volume(out)
    whole = volumes.pop((200, 200))
    for sizes, volume in volumes.items():
        np.testing.assert_allclose(volume, whole, rtol=0, atol=1e-6 * np.abs(whole).max(),
                                   err_msg=f"blocks of {sizes} frames/sinograms")


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_refuse_remove_outlier_with_one_line(shared_data: Path, tmp_path: Path,
                                                   ranks: int) -> None:
    pipeline = tmp_path / "outliers.yaml"
    pipeline.write_text(PIPELINE)
    with pytest.raises(ConfigError, match=r"remove_outlier3d.*reaches 1 .*one rank") as error:
        on_ranks(ranks, lambda: _i13(shared_data),
                 ReconSettings(tmp_path / "ranks.h5", pipeline=pipeline))
    assert "\n" not in str(error.value)

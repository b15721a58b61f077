"""``recon`` on 1, 2 and 3 ranks (in-memory link, ranks in threads) against the one-rank
``recon``: the same volume within 1e-5, the same CoR and the CoR method in every output."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.one_rank import ScanOutput
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks


def read(path: Path) -> tuple[np.ndarray, float, str, bool]:
    with h5py.File(path) as file:
        center = file["/entry/process/center_of_rotation"]
        return (file["/entry/reconstruction/data"][...], float(center[()]),
                str(center.attrs["method"]), bool(file["/entry"].attrs["complete"]))


CONFIG = SimulationConfig.from_kwargs(rows=7, cols=64, projections=90, cor_px=33.0)
# ``fbp``: each slice on its own. ``fourier_fbp`` reconstructs slices in pairs; a slice
# alone at a band's edge equals the same slice in a pair to float32 rounding (it used to
# differ by ~1e-3 of the volume's maximum, which showed at the band edges of R ranks).
PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: RECONSTRUCTOR
    parameters: {filter_name: hann}
"""


@pytest.mark.parametrize("reconstructor", ["fbp", "fourier_fbp"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("center", [None, 31.5])
def test_recon_on_ranks_equals_the_one_rank_volume(
        tmp_path: Path, ranks: int, center: float | None, reconstructor: str) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.replace("RECONSTRUCTOR", reconstructor))
    reference = tmp_path / "one.h5"
    run_recon(SimulatedScan(CONFIG), ReconSettings(reference, pipeline=pipeline,
                                                    center=center, block_frames=16))
    expected, expected_center, expected_method, _ = read(reference)
    output = tmp_path / "ranks.h5"

    def rank(link: MemoryLink) -> ScanOutput | None:
        settings = ReconSettings(output, pipeline=pipeline, center=center, block_frames=16)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link)  # a reader each

    results = run_ranks(ranks, rank)
    assert all(result is None for result in results[1:])
    assert results[0] is not None and results[0].complete, results[0]
    data, found, method, complete = read(output)
    assert complete and found == expected_center
    assert method == expected_method == ("given" if center is not None else "vo")
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

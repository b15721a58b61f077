"""``recon`` into one OME-Zarr store on 1, 2 and 3 ranks (in-memory link, ranks in
threads): level 0 equals the one-rank HDF5 volume within 1e-5, every pyramid level is the
NumPy 2× mean of the level above (the slices across band edges included, built by rank 0
at the finish), the NGFF metadata is valid, and the store read after a rank's first band
gives those slices and marks the rest missing."""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from streamer.cli import main
from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import recon_on_ranks
from streamer.sinks.omezarr import read_written
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.conftest import start_consumer_cli
from tests.run.ranks import run_ranks
from tests.sinks.ngff import validate_image
from tests.sinks.test_omezarr import mean_of_blocks

REPO = Path(__file__).resolve().parents[2]
JOIN_S = 60.0
# 13 rows: bands 7+6 on 2 ranks and 5+4+4 on 3 (odd band edges: coarse slices straddle).
CONFIG = SimulationConfig.from_kwargs(rows=13, cols=64, projections=90, cor_px=33.0)
PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann}
"""


def reference_volume(tmp_path: Path, pipeline: Path) -> tuple[np.ndarray, float]:
    reference = tmp_path / "one.h5"
    run_recon(SimulatedScan(CONFIG), ReconSettings(reference, pipeline=pipeline,
                                                    block_frames=16))
    with h5py.File(reference) as file:
        return (file["/entry/reconstruction/data"][...],
                float(file["/entry/process/center_of_rotation"][()]))


def check_store(store: Path, expected: np.ndarray, center: float) -> None:
    group = zarr.open_group(store=str(store), mode="r")
    attributes = group.attrs["tomo_streamer"]
    assert attributes["complete"] is True, attributes.get("incomplete_reasons")
    assert attributes["center_of_rotation"] == center
    assert attributes["center_method"] == "vo"
    assert attributes["detector_rows"] == list(range(13))
    levels = [np.asarray(group[str(level)][:]) for level in range(attributes["levels"])]
    assert len(levels) == 3
    np.testing.assert_allclose(levels[0], expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    for finer, coarser in itertools.pairwise(levels):
        np.testing.assert_allclose(coarser, mean_of_blocks(finer), rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())
    assert all(read_written(store, level).all() for level in range(len(levels)))
    assert validate_image(store) == []


def test_one_rank_recon_writes_the_same_volume_as_hdf5(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    expected, center = reference_volume(tmp_path, pipeline)
    store = tmp_path / "one.ome.zarr"
    result = run_recon(SimulatedScan(CONFIG), ReconSettings(
        store, pipeline=pipeline, block_frames=16, block_sinograms=4,
        output_format="zarr"))
    assert result.complete
    check_store(store, expected, center)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_recon_on_ranks_writes_one_store_equal_to_the_one_rank_volume(
        tmp_path: Path, ranks: int) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    expected, center = reference_volume(tmp_path, pipeline)
    store = tmp_path / "ranks.ome.zarr"
    seen: list[tuple[np.ndarray, np.ndarray, bool]] = []

    def on_block(scan: str, written: int, band_rows: int) -> None:
        if not seen:  # rank 0, after its first block: read the store as a viewer would
            marks = read_written(store)  # marks first: a marked slice has its data
            group = zarr.open_group(store=str(store), mode="r")
            seen.append((marks, np.asarray(group["0"][:]),
                         group.attrs["tomo_streamer"]["complete"]))

    def rank(link: MemoryLink) -> ScanOutput | None:
        settings = ReconSettings(store, pipeline=pipeline, block_frames=16,
                                 block_sinograms=2, output_format="zarr")
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link,
                              on_block=on_block if link.rank == 0 else None)

    results = run_ranks(ranks, rank)
    assert all(result is None for result in results[1:])
    output = results[0]
    assert output is not None and output.complete, output
    assert output.path == store and output.slices == 13 and output.center == center
    assert not list(tmp_path.glob("ranks.part*"))  # one store: no part files, no master
    check_store(store, expected, center)
    (marks, level0, complete), = seen
    assert complete is False and marks[:2].all()  # rank 0's first block: slices 0 and 1
    np.testing.assert_allclose(level0[marks], expected[marks], rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    if ranks == 1:  # no other writer: exactly the first block, the rest missing
        np.testing.assert_array_equal(marks, np.arange(13) < 2)
        assert np.isnan(level0[2:]).all()


def test_run_writes_an_ome_zarr_store_per_scan(
        tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    """``run --output-format zarr`` (one rank): a store named by the scan-id rule."""
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(REPO / "configs/standard.yaml"), "--scans", "1",
        "--out", str(out), "--center", "23.5", "--output-format", "zarr")
    try:
        assert main(["simulate", "--connect", address, "--rows", "3", "--cols", "48",
                     "--projections", "90", "--scan-id", "a:scan@1"]) == 0
        _, stderr = process.communicate(timeout=JOIN_S)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    store = out / "a_scan_1.ome.zarr"
    attributes = zarr.open_group(store=str(store), mode="r").attrs["tomo_streamer"]
    assert attributes["complete"] is True and attributes["slices_written"] == 3
    assert attributes["center_of_rotation"] == 23.5
    assert attributes["center_method"] == "given"
    assert attributes["report"]["scan"] == "a:scan@1"  # the run report, stored at close
    assert validate_image(store) == []

"""``recon`` on 1, 2 and 3 ranks (in-memory link, ranks in threads) against the one-rank
``recon``: the same volume within 1e-5, the same CoR and the CoR method in every output.
(Every output format on 1, 2 and 3 ranks, the same runner serving ``run``:
``test_feature_matrix.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.errors import SinkError
from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
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


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_on_one_rank_the_output_is_the_volume_itself(tmp_path: Path, ranks: int) -> None:
    """One rank writes the volume (no part file, no master), with the report inside;
    R ranks write parts and a master. Both read the same within 1e-5."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.replace("RECONSTRUCTOR", "fbp"))
    reference = tmp_path / "one.h5"
    run_recon(SimulatedScan(CONFIG), ReconSettings(reference, pipeline=pipeline,
                                                    center=31.5, block_frames=16))
    expected, *_ = read(reference)
    output = tmp_path / "ranks.h5"
    settings = ReconSettings(output, pipeline=pipeline, center=31.5, block_frames=16)
    results = run_ranks(ranks, lambda link: recon_on_ranks(SimulatedScan(CONFIG), settings,
                                                           link))
    assert results[0] is not None and results[0].complete and results[0].path == output
    parts = sorted(p.name for p in tmp_path.glob("ranks.part*of*.h5"))
    assert parts == ([] if ranks == 1 else
                     [f"ranks.part{r}of{ranks}.h5" for r in range(ranks)])
    with h5py.File(output) as file:
        virtual = file["/entry/reconstruction/data"].is_virtual
    assert virtual == (ranks > 1)
    data, *_ = read(output)
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_a_tiff_stack_missing_a_band_is_incomplete_and_says_which(tmp_path: Path) -> None:
    """A rank whose slices never came: rank 0's volume.json counts the files present."""
    from streamer.sinks.ranked import TiffStack

    stack = tmp_path / "stack"
    tiff = TiffStack()
    tiff.mark_in_progress(stack, scan="s", ranks=2)
    assert json.loads((stack / "volume.json").read_text())["complete"] is False
    geometry = {"slice_shape": (4, 4), "angles_deg": np.arange(3.0),
                "center_of_rotation": 1.5, "center_method": "given",
                "pipeline_yaml": "pipeline: []", "scan": "s"}
    _, first = tiff.open_band(stack, rank=0, ranks=2, band=(0, 2), first_row=10,
                              volume_slices=4, overwrite=False, **geometry)
    with pytest.raises(SinkError, match=r"this rank's \[0, 2\], got \[1, 3\)"):
        first.write(1, np.ones((2, 4, 4), np.float32))  # past its band
    first.write(0, np.ones((2, 4, 4), np.float32))
    first.close(complete=True)
    _, second = tiff.open_band(stack, rank=1, ranks=2, band=(2, 4), first_row=10,
                               volume_slices=4, overwrite=False, **geometry)
    second.write(0, np.ones((1, 4, 4), np.float32))  # band-relative: detector row 12
    finished = tiff.finish(stack, ranks=2, bands=[(0, 2), (2, 4)], first_row=10,
                           complete=True, report={}, errors=["rank 1: stopped"])
    assert finished.path == stack and finished.center == 1.5
    document = json.loads((stack / "volume.json").read_text())
    assert document["complete"] is False and document["slices_written"] == 3
    assert document["written_ranges"] == [[0, 3]]
    assert document["incomplete_reasons"][0] == "rank 1: stopped"
    assert sorted(p.name for p in stack.glob("slice_*.tif")) == [
        "slice_00010.tif", "slice_00011.tif", "slice_00012.tif"]


def test_every_block_of_a_band_shares_the_scans_stage_caches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R ranks reconstruct their band in blocks with the processor's per-scan
    ``StageCaches`` (ADR 0010): one cache object per rank for all its blocks, so
    ``fourier_fbp`` makes its plan once per scan, not once per block."""
    import threading

    from streamer.pipeline.executor import StageCaches
    from streamer.run import ranks as runner

    seen: dict[str, list[StageCaches | None]] = {}
    real = runner.apply_steps

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        caches = kwargs.get("caches")
        assert caches is None or isinstance(caches, StageCaches)
        seen.setdefault(threading.current_thread().name, []).append(caches)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "apply_steps", spy)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.replace("RECONSTRUCTOR", "fourier_fbp"))
    settings = ReconSettings(tmp_path / "ranks.h5", pipeline=pipeline, center=31.5,
                             block_frames=16, block_sinograms=2)
    results = run_ranks(2, lambda link: recon_on_ranks(SimulatedScan(CONFIG), settings,
                                                       link, stream=False))
    assert results[0] is not None and results[0].complete
    assert sorted(seen) == ["rank 0", "rank 1"]
    for rank, caches in seen.items():
        assert len(caches) == 2, rank  # bands of 4 and 3 rows in blocks of 2
        assert caches[0] is not None and all(c is caches[0] for c in caches), rank
        assert any("fourier_fbp" in key for key in caches[0].made), caches[0].made

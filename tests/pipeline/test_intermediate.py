"""HTTomo's ``save_result: true``: intermediate files beside `recon`'s output, named
and laid out as HTTomo's ``save_intermediate_data`` writes them."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.sections import refuse_on_ranks
from streamer.sources.formats import LoadOptions, open_scan
from tests.run.ranks import one_rank

FULL = Path(__file__).parent / "httomo_full"
SAVED = ("dark_flat_field_correction", "remove_all_stripe", "FBP3d_tomobar")


def _saving(text: str) -> str:
    """``save_result: true`` on three entries: a projection, a sinogram and the
    reconstruction step (the outlier removal dropped, to compare the first with a plain
    flat/dark correction)."""
    start = text.index("- method: remove_outlier\n")
    text = text[:start] + text[text.index("- method: dark_flat_field_correction"):]
    for method in SAVED:
        text = text.replace(f"- method: {method}\n", f"- method: {method}\n  save_result: true\n")
    return text


def test_save_result_writes_httomo_named_files(shared_data: Path, tmp_path: Path) -> None:
    tooth = shared_data / "real/aps_tooth/tooth.h5"
    pipeline = tmp_path / "saving.yaml"
    pipeline.write_text(_saving((FULL / "FBP3d_tomobar.yaml").read_text()))
    out = tmp_path / "rec.h5"
    assert main(["recon", str(tooth), "-o", str(out), "--pipeline", str(pipeline)]) == 0
    # HTTomo's task numbers count the methods after the loader from 1
    corrected = tmp_path / "task_1-httomolibgpu-dark_flat_field_correction.h5"
    stripes = tmp_path / "task_3-httomolibgpu-remove_all_stripe.h5"
    volume = tmp_path / "task_5-httomolibgpu-FBP3d_tomobar.h5"
    assert sorted(p.name for p in tmp_path.glob("task_*.h5")) == sorted(
        p.name for p in (corrected, stripes, volume))
    with open_scan(tooth, LoadOptions()) as reader:
        layout = reader.layout
        frames = reader.read(0, layout.frames).astype(np.float64)
    keys = np.asarray(layout.image_keys)
    dark, flat = frames[keys == 2].mean(axis=0), frames[keys == 1].mean(axis=0)
    expected = (frames[keys == 0] - dark) / (flat - dark)
    angles = np.asarray(layout.angles_deg)[keys == 0]
    with h5py.File(corrected, "r") as handle:
        assert handle.attrs["complete"]
        np.testing.assert_allclose(handle["data"][()], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(handle["angles"][()], np.deg2rad(angles))
        assert list(handle["data_dims/detector_x_y"][()]) == [640, 2]
    with h5py.File(stripes, "r") as handle:  # (angles, rows, cols) whatever the section
        assert handle["data"].shape == (181, 2, 640)
        assert np.all(np.isfinite(handle["data"][()]))
    with h5py.File(volume, "r") as handle, h5py.File(out, "r") as result:
        ours = result["/entry/reconstruction/data"][()]
        np.testing.assert_array_equal(handle["data"][()], ours.transpose(1, 0, 2))
    # a second run would overwrite them: refused before the scan, unless --overwrite
    assert main(["recon", str(tooth), "-o", str(tmp_path / "again.h5"), "--pipeline",
                 str(pipeline)]) == 2
    assert main(["recon", str(tooth), "-o", str(tmp_path / "again.h5"), "--pipeline",
                 str(pipeline), "--overwrite"]) == 0


def test_save_result_is_refused_where_it_is_not_written(tmp_path: Path) -> None:
    steps = parse_pipeline(_saving((FULL / "FBP3d_tomobar.yaml").read_text()), REGISTRY,
                           source="saving.yaml").steps
    assert [s.result_name for s in steps if s.save_result] == [
        "task_1-httomolibgpu-dark_flat_field_correction",
        "task_3-httomolibgpu-remove_all_stripe", "task_5-httomolibgpu-FBP3d_tomobar"]
    with pytest.raises(ConfigError, match=r"save_result: true .* `RankedReconstruction "
                       "without save_results` does not"):
        one_rank(steps, "", tmp_path)  # the `run` service's runner, not as `run` wires it
    one_rank(steps, "", tmp_path, save_results=True)  # as `run` wires it: written per scan
    refuse_on_ranks(steps)  # R ranks write it too (tests/run/test_save_result_on_ranks.py)
    with pytest.raises(ConfigError, match="save_result: expected true or false"):
        parse_pipeline((FULL / "FBP3d_tomobar.yaml").read_text().replace(
            "- method: minus_log\n", "- method: minus_log\n  save_result: 3\n"), REGISTRY,
            source="bad.yaml")


def test_save_result_with_a_sweep_is_refused() -> None:
    text = (FULL / "sweep_paganin_FBP3d_tomobar.yaml").read_text().replace(
        "- method: dark_flat_field_correction\n",
        "- method: dark_flat_field_correction\n  save_result: true\n")
    with pytest.raises(ConfigError, match="save_result: true with a parameter sweep"):
        parse_pipeline(text, REGISTRY, source="sweep.yaml")

"""Pipelines written for older httomolibgpu/HTTomo releases (tests/pipeline/httomo_old/,
provenance beside them): old names whose maths a current method computes are translated
(`check` says so), give the same volume as the pipeline written with the current names
on the tooth, bit for bit; old names without an equivalent are refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from stages.prep.phase import paganin_filter, paganin_filter_httomolib
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.pipeline import old_names
from streamer.pipeline.config import parse_pipeline

OLD = Path(__file__).parent / "httomo_old"
HTTOMO2 = sorted(p.name for p in OLD.glob("httomo-2*.yaml"))
AUTO_LOADER = """- method: standard_tomo
  module_path: httomo.data.hdf.loaders
  parameters: {data_path: auto, image_key_path: auto, rotation_angles: auto}
"""


def _on_the_tooth(text: str) -> str:
    """The pipeline with its loader replaced by one that detects the tooth's layout (the
    samples name HTTomo's test file's paths)."""
    assert text.startswith("- method: standard_tomo")
    return AUTO_LOADER + text[text.index("\n- method:") + 1:]


def _volume(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        assert bool(handle["/entry"].attrs["complete"])
        return np.asarray(handle["/entry/reconstruction/data"][()])


def _recon(shared_data: Path, folder: Path, text: str) -> np.ndarray:
    folder.mkdir()
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(text)
    out = folder / "rec.h5"
    assert main(["recon", str(shared_data / "real/aps_tooth/tooth.h5"), "-o", str(out),
                 "--pipeline", str(pipeline)]) == 0
    return _volume(out)


@pytest.mark.parametrize("name", HTTOMO2)
def test_httomo2_samples_pass_check_with_a_note(name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(OLD / name), "--memory", "4"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert re.search(r"httomolibgpu\.\S+ \(httomolibgpu [0-9.–]+\) translated to ", out)
    if name == "httomo-2.1_pipeline_gpu1.yaml":  # the example in docs/reference/pipeline.md
        assert ("note: pipeline[5]: httomolibgpu.recon.algorithm.FBP (httomolibgpu 2.0–2.4) "
                "translated to httomolibgpu.recon.algorithm.FBP3d_tomobar: renamed "
                "FBP3d_tomobar in 2.5") in out


HTTOMO12_GPU = OLD / "httomo-1.2_03_basic_gpu_pipeline_tomo_standard.yaml"
AUTO_LOADER_1X = """- httomo.data.hdf.loaders:
    standard_tomo:
      name: tomo
      data_path: auto
      image_key_path: auto
      rotation_angles: auto
"""


def _projections_only(text: str) -> str:
    """HTTomo 1.2's sample with its outlier filter on the projections only (what the
    refusal asks for)."""
    out = text.replace("data_in_multi: [tomo, flats, darks]", "data_in: tomo").replace(
        "data_out_multi: [tomo, flats, darks]", "data_out: tomo")
    assert "_multi" not in out
    return out


def test_httomo1_filter_of_the_references_is_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(HTTOMO12_GPU)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "HTTomo 1.x layout: data_in_multi" in err
    assert "write data_in: tomo, data_out: tomo" in err


@pytest.mark.parametrize("name", ["httomo-1.0_04_basic_gpu_pipeline_tomo_standard.yaml",
                                  "httomo-1.2_03_basic_gpu_pipeline_tomo_standard.yaml"])
def test_httomo1_layout_passes_check(name: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    path.write_text(_projections_only((OLD / name).read_text()))
    assert main(["check", str(path), "--memory", "4"]) == 0
    out = capsys.readouterr().out
    assert "HTTomo 1.x layout read as HTTomo 2.0's entries" in out
    assert "translated to httomolibgpu.recon.algorithm.FBP3d_tomobar" in out
    assert "FBP3d_tomobar" in out and "filter_freq_cutoff=1.1" in out


def test_httomo1_layout_keeps_the_files_lines() -> None:
    text = _projections_only(HTTOMO12_GPU.read_text()).replace("kernel_size: 3",
                                                               "kernel_size: 4")
    with pytest.raises(ConfigError, match=r"^old\.yaml:16: pipeline\[1\] "
                       r"\(stage remove_outlier3d\)\.parameters\.kernel_size"):
        parse_pipeline(text, REGISTRY, source="old.yaml")


def test_httomo12_gpu_sample_equals_todays_names_on_the_tooth(shared_data: Path,
                                                              tmp_path: Path) -> None:
    # httomolibgpu 1.x: remove_outlier3d, normalize, find_center_vo (data_out: cor),
    # remove_stripe_based_sorting, FBP(center: cor, objsize), save_to_images
    text = _projections_only(HTTOMO12_GPU.read_text())
    old = AUTO_LOADER_1X + text[text.index("\n- httomolibgpu") + 1:]
    new = AUTO_LOADER + """- method: remove_outlier
  module_path: httomolibgpu.misc.corr
  parameters: {kernel_size: 3, dif: 0.1}
- method: normalize
  module_path: httomolibgpu.prep.normalize
  parameters: {cutoff: 10.0, minus_log: true, nonnegativity: false}
- method: find_center_vo
  module_path: httomolibgpu.recon.rotation
  parameters: {ind: mid, smin: -50, smax: 50, srad: 6.0, step: 0.25, ratio: 0.5, drop: 20}
  id: centering
  side_outputs: {cor: cor}
- method: remove_stripe_based_sorting
  module_path: httomolibgpu.prep.stripe
  parameters: {size: 11, dim: 1}
- method: FBP3d_tomobar
  module_path: httomolibgpu.recon.algorithm
  parameters: {center: "${{centering.side_outputs.cor}}", recon_size: null,
               filter_freq_cutoff: 1.1, recon_mask_radius: null}
- method: save_to_images
  module_path: httomolib.misc.images
  parameters: {subfolder_name: images, axis: 0, file_format: tif, bits: 8,
               perc_range_min: 0.0, perc_range_max: 100.0, jpeg_quality: 95}
"""
    volume = _recon(shared_data, tmp_path / "old", old)
    np.testing.assert_array_equal(volume, _recon(shared_data, tmp_path / "new", new))
    assert sorted(p.name for p in (tmp_path / "old/images").glob("*.tif")) == sorted(
        p.name for p in (tmp_path / "new/images").glob("*.tif"))


def test_httomo21_fbp_equals_fbp3d_tomobar_on_the_tooth(shared_data: Path,
                                                         tmp_path: Path) -> None:
    # httomolibgpu 2.1's FBP (filter_freq_cutoff 0.6, no mask), remove_outlier, normalize,
    # sorting, the image tail: the same volume as the pipeline with today's names
    old = _on_the_tooth((OLD / "httomo-2.1_pipeline_gpu1.yaml").read_text())
    new = old.replace("- method: FBP\n", "- method: FBP3d_tomobar\n")
    assert new != old
    np.testing.assert_array_equal(_recon(shared_data, tmp_path / "old", old),
                                  _recon(shared_data, tmp_path / "new", new))


def test_httomo23_paganin_tomopy_equals_httomolib_paganin_on_the_tooth(
        shared_data: Path, tmp_path: Path) -> None:
    # httomo 2.3's Paganin sweep sample, on the tooth's two rows at its CoR, two values
    text = _on_the_tooth((OLD / "httomo-2.3_parameter-sweep-paganin.yaml").read_text())
    text = re.sub(r"alpha: !SweepRange\n(\s+\w+: [0-9.]+ *\n){3}", "alpha: 0.011\n", text)
    old = text.replace("center: 80", "center: 295.0")
    assert "alpha: 0.011" in old and "center: 295.0" in old
    new = old.replace("method: paganin_filter_tomopy\n  module_path: httomolibgpu.prep.phase",
                      "method: paganin_filter\n  module_path: httomolib.prep.phase").replace(
        "- method: FBP\n", "- method: FBP3d_tomobar\n")
    assert "paganin_filter_tomopy" not in new
    volume = _recon(shared_data, tmp_path / "old", old)
    np.testing.assert_array_equal(volume, _recon(shared_data, tmp_path / "new", new))
    assert np.isfinite(volume).all() and volume.std() > 0


def test_paganin_filter_tomopy_is_todays_paganin_filter_in_other_units() -> None:
    # what the table's note says: paganin_filter (µm, m, δ/β) at pixel_size = 1e4 · cm,
    # distance = cm / 100, ratio_delta_beta = 1 / alpha is the same filter
    rng = np.random.default_rng(3)
    frames = (1.0 + 0.2 * rng.random((3, 24, 40))).astype(np.float32)
    old = paganin_filter_httomolib(frames, pixel_size=4e-4, dist=50.0, energy=53.0,
                                   alpha=0.011)
    new = paganin_filter(frames, pixel_size_um=4.0, distance_m=0.5, energy_kev=53.0,
                         ratio_delta_beta=1 / 0.011)
    np.testing.assert_allclose(old, new, rtol=0, atol=1e-5 * float(np.abs(old).max()))


def _entry(method: str, module: str, parameters: str) -> str:
    return (AUTO_LOADER + f"- method: {method}\n  module_path: {module}\n"
            f"  parameters: {parameters}\n")


def _steps(text: str) -> tuple[str, dict[str, object], tuple[str, ...]]:
    pipeline = parse_pipeline(text, REGISTRY, source="old.yaml")
    step = pipeline.steps[0]
    translated = tuple(note for note in pipeline.notes if "translated to" in note)
    return step.name, dict(step.params), translated


def test_fbp_translation_keeps_what_was_given() -> None:
    name, params, notes = _steps(_entry(
        "FBP", "httomolibgpu.recon.algorithm",
        "{center: 295.0, recon_size: 600, filter_freq_cutoff: 0.6, recon_mask_radius: null, "
        "neglog: false, gpu_id: 0}"))
    assert name == "FBP3d_tomobar"
    assert params["recon_size"] == 600 and params["filter_freq_cutoff"] == 0.6
    assert params["recon_mask_radius"] is None and params["center"] == 295.0
    assert any("httomolibgpu 2.0–2.4" in note for note in notes)


def test_fbp_of_httomolibgpu_1_is_tomobars_fixed_sinc() -> None:
    name, params, notes = _steps(_entry("FBP", "httomolibgpu.recon.algorithm",
                                        "{center: 295.0, objsize: null}"))
    assert name == "FBP3d_tomobar" and params["recon_size"] is None
    assert params["filter_freq_cutoff"] == 1.1 and params["recon_mask_radius"] is None
    assert any("objsize → recon_size" in note and "httomolibgpu 1.0–1.2" in note
               for note in notes)


@pytest.mark.parametrize(("parameters", "said"), [
    ("{center: 10.0}", "expected a value for filter_freq_cutoff"),
    ("{filter_freq_cutoff: 0.35}", "expected a value for recon_mask_radius"),
    ("{filter_freq_cutoff: 0.35, recon_mask_radius: 0.95, neglog: true}",
     "put a minus_log step"),
])
def test_fbp_translation_refuses_what_it_cannot_know(parameters: str, said: str,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(_entry("FBP", "httomolibgpu.recon.algorithm", parameters))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_iterative_and_lprec_take_the_old_releases_behaviour() -> None:
    name, params, _ = _steps(_entry("CGLS", "httomolibgpu.recon.algorithm",
                                    "{iterations: 3, objsize: 64}"))
    assert name == "cgls" and params["recon_mask_radius"] == 2.0  # no mask, as ToMoBAR's
    assert params["recon_size"] == 64 and params["iterations"] == 3
    name, params, _ = _steps(_entry("SIRT", "httomolibgpu.recon.algorithm", "{}"))
    assert name == "sirt" and params["recon_mask_radius"] == 2.0
    name, params, notes = _steps(_entry("LPRec", "httomolibgpu.recon.algorithm",
                                        "{recon_mask_radius: 0.95}"))
    assert name == "LPRec3d_tomobar"
    assert params["filter_type"] == "ramp" and params["filter_freq_cutoff"] == 0.5
    assert any("LPRec3d_tomobar" in note for note in notes)


def test_filters_of_httomolibgpu_1_and_2() -> None:
    name, params, _ = _steps(_entry("remove_outlier3d", "httomolibgpu.misc.corr",
                                    "{kernel_size: 5}"))
    assert name == "remove_outlier3d" and params["dif"] == 0.1  # 1.x's default
    name, params, _ = _steps(_entry("median_filter3d", "httomolibgpu.misc.corr",
                                    "{kernel_size: 3, dif: 0.0}"))
    assert name == "median_filter3d"
    name, _, notes = _steps(_entry("median_filter", "httomolibgpu.misc.corr",
                                   "{kernel_size: 3, axis: null}"))
    assert name == "median_filter3d"  # 2.0's 3-D form
    assert any("axis: None dropped" in note for note in notes)
    with pytest.raises(ConfigError, match="2-D slices"):
        parse_pipeline(_entry("remove_outlier", "httomolibgpu.misc.corr",
                              "{dif: 0.1, kernel_size: 3, axis: auto}"), REGISTRY,
                       source="old.yaml")


def test_360_spellings_of_httomolibgpu_2() -> None:
    text = (AUTO_LOADER + "- method: find_center_360\n  module_path: httomolibgpu.recon."
            "rotation\n  parameters: {ind: mid, win_width: 10, side: 0, denoise: true, "
            "norm: false, use_overlap: false}\n")
    name, params, notes = _steps(text)
    assert name == "find_center_360" and params["side"] == "left"
    assert any("side: 0 → 'left'" in note for note in notes)
    name, params, notes = _steps(_entry("sino_360_to_180", "httomolibgpu.misc.morph",
                                        "{overlap: 20, rotation: right}"))
    assert name == "sino_360_to_180_tomopy" and params["rotation"] == "right"
    with pytest.raises(ConfigError, match="side: expected one of 0, 1"):
        parse_pipeline(text.replace("side: 0", "side: 2"), REGISTRY, source="old.yaml")


def test_neglog_of_httomolibgpu_2_4_to_4() -> None:
    name, params, notes = _steps(_entry("FISTA3d_tomobar", "httomolibgpu.recon.algorithm",
                                        "{iterations: 2, neglog: false}"))
    assert name == "fista" and params["iterations"] == 2
    assert any("neglog: False dropped" in note for note in notes)
    with pytest.raises(ConfigError, match="put a minus_log step"):
        parse_pipeline(_entry("LPRec3d_tomobar", "httomolibgpu.recon.algorithm",
                              "{neglog: true}"), REGISTRY, source="old.yaml")


def test_current_names_are_not_touched() -> None:
    text = (AUTO_LOADER + "- method: find_center_360\n  module_path: httomolibgpu.recon."
            "rotation\n  parameters: {side: left}\n")
    assert _steps(text)[2] == ()
    name, _, notes = _steps(_entry("paganin_filter", "httomolibgpu.prep.phase",
                                   "{pixel_size: 1.28, distance: 1.0}"))
    assert name == "paganin_filter" and notes == ()


@pytest.mark.parametrize(("dotted", "parameters", "current"), [
    ("httomolibgpu.prep.phase.paganin_filter_savu", "{ratio: 250.0, resolution: 1.28}",
     "paganin_filter_savu_legacy"),
    ("httomolibgpu.prep.phase.paganin_filter", "{ratio: 250.0, resolution: 1.28}",
     "ratio_delta_beta"),
    ("httomolibgpu.prep.phase.paganin_filter2", "{alpha: 0.001}",
     "httomolib.prep.phase.paganin_filter"),
    ("httomolibgpu.prep.phase.fresnel_filter", "{pattern: PROJECTION, ratio: 100.0}",
     "httomolibgpu.prep.phase.paganin_filter"),
    ("httomolibgpu.prep.alignment.distortion_correction_proj", "{crop: 0}",
     "distortion_correction_proj_discorpy"),
    ("httomolibgpu.prep.alignment.distortion_correction_proj_discorpy",
     "{metadata_path: coefficients.txt, preview: null, order: 1, mode: reflect}",
     "order: 1, mode: reflect"),
    ("httomolib.misc.corr.inpainting_filter3d", "{iter: 3}", "median_filter_nonfinite"),
])
def test_old_names_without_an_equivalent_are_one_line(
        dotted: str, parameters: str, current: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    module, _, method = dotted.rpartition(".")
    path = tmp_path / "old.yaml"
    path.write_text(_entry(method, module, parameters))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and dotted in err and current in err
    assert "expected a method of the current API" in err


def test_every_translation_lands_on_a_registered_stage() -> None:
    aliases = {alias for spec in REGISTRY.values() for alias in spec.aliases}
    renamed = [entry for entry in old_names.TABLE if isinstance(entry, old_names.Renamed)]
    assert len(renamed) >= 10
    for entry in renamed:
        assert entry.current in aliases, entry.old
        spec = next(s for s in REGISTRY.values() if entry.current in s.aliases)
        fields = spec.params.model_fields
        for new in (*entry.renames.values(), *entry.fixed, *entry.defaults, *entry.required):
            assert new in fields, (entry.old, new)
    for entry in old_names.TABLE:
        if isinstance(entry, old_names.Removed):
            assert entry.old not in aliases or entry.only_with, entry.old

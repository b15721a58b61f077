"""HTTomo's pipeline language in our loader: ids, side outputs and references, sweeps,
duplicate keys, required values, the loader entry (streamer/pipeline/config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from pydantic import Field

from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.cli import main
from streamer.errors import ConfigError, StageError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.sections import split_sections


class SizeParams(StageParams):
    size: int = Field(default=3, ge=1)
    axis: int = 0


class ReconParams(StageParams):
    center: float | None = None


class FinderParams(StageParams):
    ind: int | str | None = None


def _same(block: np.ndarray, **params: Any) -> np.ndarray:
    return block


def _spec(name: str, pattern: Pattern, params: type[StageParams], *aliases: str,
          **extra: Any) -> StageSpec:
    return StageSpec(name, _same, pattern, params, scaled_memory(1), name, aliases=aliases,
                     **extra)


REGISTRY = {
    "median_filter": _spec("median_filter", Pattern.PROJECTION, SizeParams,
                           "tomopy.misc.corr.median_filter"),
    "minus_log": _spec("minus_log", Pattern.ALL, StageParams, "tomopy.prep.normalize.minus_log"),
    "smooth_sino": _spec("smooth_sino", Pattern.SINOGRAM, SizeParams, "lib.smooth_sino"),
    "find_center_vo": _spec("find_center_vo", Pattern.SINOGRAM, FinderParams,
                            "tomopy.recon.rotation.find_center_vo",
                            finds_center=lambda p, a, q: 1.0),
    "recon": _spec("recon", Pattern.SINOGRAM, ReconParams, "tomopy.recon.algorithm.recon",
                   needs_angles=True),
    "save_to_images": _spec("save_to_images", Pattern.ALL, StageParams,
                            "httomolib.misc.images.save_to_images"),
}
LOADER = ("- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n"
          "  parameters: {data_path: auto, image_key_path: auto, rotation_angles: auto}\n")
FINDER = ("- method: find_center_vo\n  module_path: tomopy.recon.rotation\n"
          "  parameters: {ind: mid}\n  id: centering\n"
          "  side_outputs: {cor: centre_of_rotation}\n")


def entry(method: str, module: str, parameters: str = "{}", extra: str = "") -> str:
    return f"- method: {method}\n  module_path: {module}\n  parameters: {parameters}\n{extra}"


RECON = entry("recon", "tomopy.recon.algorithm",
              "{center: '${{centering.side_outputs.centre_of_rotation}}'}")


def parse(text: str) -> Any:
    return parse_pipeline(text, REGISTRY, source="p.yaml")


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as error:
        parse(text)
    return str(error.value)


def test_a_reference_to_the_finder_leaves_center_for_the_finder() -> None:
    pipeline = parse(LOADER + FINDER + RECON)
    recon = pipeline.steps[-1]
    assert recon.params == ReconParams(center=None)
    assert recon.linked == (("center", "centering.cor"),)


@pytest.mark.parametrize(("text", "expected"), [
    (LOADER + RECON + FINDER, "reference to unknown id 'centering' (it is defined later"),
    (LOADER + FINDER + entry("recon", "tomopy.recon.algorithm",
                             "{center: '${{centerin.side_outputs.centre_of_rotation}}'}"),
     "reference to unknown id 'centerin'; known ids: centering"),
    (LOADER + FINDER + entry("recon", "tomopy.recon.algorithm",
                             "{center: '${{centering.side_outputs.cor}}'}"),
     "'centering' has no side output named 'cor'; it names centre_of_rotation"),
    (LOADER + FINDER + entry("recon", "tomopy.recon.algorithm",
                             "{center: '${{centering.side_ou.centre_of_rotation}}'}"),
     "expected a reference ${{ID.side_outputs.NAME}}"),
    (LOADER + FINDER + entry("median_filter", "tomopy.misc.corr",
                             "{size: '${{centering.side_outputs.centre_of_rotation}}'}"),
     "side output 'cor' of find_center_vo cannot set parameter 'size'"),
    (LOADER + FINDER + FINDER, "duplicate id 'centering' (already pipeline[1])"),
    (LOADER + FINDER.replace("  side_outputs: {cor: centre_of_rotation}\n", ""),
     "id 'centering' has no side_outputs"),
    (LOADER + FINDER.replace("{cor: centre", "{overlap: centre"),
     "find_center_vo has side outputs cor, got 'overlap'"),
])
def test_bad_references_are_refused(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_duplicate_keys_are_refused_anywhere() -> None:
    assert "p.yaml:7: module_path: duplicated key (first at line 5)" in refused(
        LOADER + entry("minus_log", "tomopy.prep.normalize")
        + "  module_path: tomopy.prep.normalize\n")
    assert "size: duplicated key" in refused(
        LOADER + entry("median_filter", "tomopy.misc.corr", "{size: 3, size: 5}"))


def test_sweeps_expand_to_one_pipeline_per_value() -> None:
    manual = parse(LOADER + entry("median_filter", "tomopy.misc.corr", "!Sweep [3, 5]")
                   .replace("parameters: !Sweep [3, 5]", "parameters: {size: !Sweep [3, 5]}"))
    assert manual.sweep is not None and manual.sweep.values == (3, 5)
    assert [(label, steps[0].params.size) for label, steps in manual.variants()] == [
        ("size=3", 3), ("size=5", 5)]
    ranged = parse(LOADER + FINDER + entry(
        "recon", "tomopy.recon.algorithm", "{center: !SweepRange {start: 10, stop: 12, "
        "step: 0.5}}"))
    assert [label for label, _ in ranged.variants()] == [
        "center=10.0", "center=10.5", "center=11.0", "center=11.5"]  # stop excluded


@pytest.mark.parametrize(("parameters", "expected"), [
    ("{size: !SweepRange {start: 3, stop: 9}}", "expected exactly start, stop and step"),
    ("{size: !Sweep [3, 0]}", "sweep value 0: Input should be greater than or equal to 1"),
    ("{size: !Sweep [3, 5], axis: !Sweep [0, 1]}", "one parameter sweep per pipeline"),
    ("{size: !Sweep []}", "expected at least one value"),
    ("{size: !!python/object/apply:os.system [true]}", "unsupported YAML"),
])
def test_bad_sweeps_are_refused(parameters: str, expected: str) -> None:
    assert expected in refused(LOADER + entry("median_filter", "tomopy.misc.corr", parameters))


def test_no_image_saver_after_a_sweep() -> None:
    text = (LOADER + entry("median_filter", "tomopy.misc.corr", "{size: !Sweep [3, 5]}")
            + entry("save_to_images", "httomolib.misc.images"))
    assert "save_to_images after a parameter sweep" in refused(text)


def test_httomo_rules_loader_first_required_keys_required_values() -> None:
    assert "starts with its loader" in refused(entry("minus_log", "tomopy.prep.normalize"))
    assert "module_path, parameters missing" in refused(LOADER + "- method: minus_log\n")
    assert "left as REQUIRED" in refused(
        LOADER + entry("median_filter", "tomopy.misc.corr", "{size: REQUIRED}"))
    assert "parameter names are text, got 67" in refused(
        LOADER + entry("median_filter", "tomopy.misc.corr", "{67: 0.0}"))
    # our own format keeps its freedoms: no loader, no module_path
    assert parse("pipeline:\n  - method: minus_log\n").steps[0].name == "minus_log"


def test_the_loader_entry_becomes_load_options() -> None:
    text = ("- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n  parameters:\n"
            "    data_path: entry1/tomo_entry/data/data\n    image_key_path: auto\n"
            "    rotation_angles: {user_defined: {start_angle: 0, stop_angle: 180, "
            "angles_total: 91}}\n"
            "    preview: {detector_y: {start: 10, stop: 17}, "
            "detector_x: {start: null, stop: null}}\n"
            "    darks: {file: d.h5, data_path: /d}\n    flats: null\n"
            + entry("minus_log", "tomopy.prep.normalize"))
    loader = parse(text).loader
    assert loader.given() == {"data_path": "/entry1/tomo_entry/data/data",
                              "angles": (0.0, 180.0, 91), "rows": (10, 17),
                              "darks": ("d.h5:/d",)}


@pytest.mark.parametrize(("parameters", "expected"), [
    ("{preview: {detector_x: {start: 5, stop: 50}}}", "preview.detector_x: cropping detector "
     "columns is not supported"),
    ("{continuous_scan_subset: {start: 90, stop: 180}}", "continuous_scan_subset"),
    ("{rotation_angles: {data_path: /a, extra: 1}}", "rotation_angles: expected auto"),
    ("{preview: {detector_y: {start: 5}}}", "expected both start and stop"),
    ("{flats: {file: f.h5, data_path: /f, image_key_path: /k}}", "flats.image_key_path"),
    ("{colour: red}", "unknown loader parameter"),
])
def test_loader_entries_we_cannot_honour_are_refused(parameters: str, expected: str) -> None:
    text = ("- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n"
            f"  parameters: {parameters}\n" + entry("minus_log", "tomopy.prep.normalize"))
    assert expected in refused(text)


def test_one_sectionizer_all_steps_and_finders_do_not_cut() -> None:
    # HTTomo's order: a finder and an `all` step between projection steps
    pipeline = parse(LOADER + entry("median_filter", "tomopy.misc.corr") + FINDER
                     + entry("minus_log", "tomopy.prep.normalize") + RECON
                     + entry("minus_log", "tomopy.prep.normalize"))
    projection, sinogram = split_sections(pipeline.steps)
    assert [s.name for s in projection] == ["median_filter", "minus_log"]
    assert [s.name for s in sinogram] == ["find_center_vo", "recon", "minus_log"]
    twice = parse(LOADER + entry("smooth_sino", "lib") + entry("median_filter",
                                                                "tomopy.misc.corr"))
    with pytest.raises(StageError, match="needs a second reslice"):
        split_sections(twice.steps)


DIAD_LOADER = """\
- method: standard_tomo
  module_path: httomo.data.hdf.loaders
  parameters:
    data_path: %s
    image_key_path: /entry/instrument/imaging/image_key
    rotation_angles: {data_path: /entry/imaging_sum/gts_theta_value}
    preview: {detector_y: {start: 9, stop: 12}, detector_x: {start: null, stop: null}}
- method: normalize
  module_path: tomopy.prep.normalize
  parameters: {cutoff: null, averaging: mean}
- method: minus_log
  module_path: tomopy.prep.normalize
  parameters: {}
"""


def test_recon_reads_the_scan_where_the_loader_says(shared_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    scan = shared_data / "real/diad_k11-18014/k11-18014.nxs"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(DIAD_LOADER % "/entry/imaging/data")
    bad.write_text(DIAD_LOADER % "/entry/imaging/nothing_here")
    out = tmp_path / "diad.h5"
    assert main(["recon", str(scan), "-o", str(out), "--pipeline", str(good),
                 "--center", "12.5"]) == 0
    with h5py.File(out) as handle:
        assert handle["/entry/reconstruction/detector_row"][()].tolist() == [9, 10, 11]
    assert main(["recon", str(scan), "-o", str(tmp_path / "x.h5"), "--pipeline",
                 str(bad)]) == 2
    assert "/entry/imaging/nothing_here" in capsys.readouterr().err

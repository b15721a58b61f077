"""The one CoR policy (stages/recon/center_policy.py) on the three real scans with
HTTomo's template parameters, and its warnings.

httomo-backends 1.3.1's template for ``find_center_vo`` (``yaml_templates/httomolibgpu/
httomolibgpu.recon.rotation/find_center_vo.yaml``) sets ``ind: null, average_radius: 0,
smin: -50, smax: 50, srad: 6.0, step: 0.5, ratio: 0.5, drop: 20``; the HTTomo checker's
samples use ``ind: mid`` and ``step: 0.25``. httomolibgpu finds 27.75 on I13 24737 and
24.75 on DIAD k11-18014 with them; the truths are 85.5, 12.5 and 295.0 (tooth), from
/work/shared/data/README.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from algotom.prep.calculation import find_center_vo as algotom_find_center_vo

from stages.recon.center_policy import LOW_CONFIDENCE, find_center, reliable_window
from stages.recon.centering import FindCenterVoParams, center_of_scan
from streamer.cli import main
from streamer.errors import StageError
from streamer.sources.formats import LoadOptions
from tests.test_recon_real import corrected_sinograms, i13_options

TEMPLATE = {"ind": None, "average_radius": 0, "cor_initialisation_value": None,
            "smin": -50, "smax": 50, "srad": 6.0, "step": 0.5, "ratio": 0.5, "drop": 20}
CHECKER_SAMPLE = {"ind": "mid", "smin": -50, "smax": 50, "srad": 6, "step": 0.25,
                  "ratio": 0.5, "drop": 20}
TRUTH = {"tooth": 295.0, "i13": 85.5, "diad": 12.5}


def projections(shared_data: Path, scan: str) -> tuple[np.ndarray, np.ndarray]:
    real = shared_data / "real"
    if scan == "tooth":
        path, options = real / "aps_tooth/tooth.h5", LoadOptions()
    elif scan == "i13":
        path = real / "dls_i13_24737/tiffs"
        options = i13_options(real / "dls_i13_24737", (0, 135))[0]
    else:
        path, options = real / "diad_k11-18014/k11-18014.nxs", LoadOptions()
    sinograms, angles = corrected_sinograms(path, options)
    return np.ascontiguousarray(sinograms.transpose(1, 0, 2), dtype=np.float32), angles


@pytest.mark.parametrize("parameters", [TEMPLATE, CHECKER_SAMPLE], ids=["template", "checker"])
@pytest.mark.parametrize("scan", ["tooth", "i13", "diad"])
def test_httomo_parameters_find_the_true_centre(shared_data: Path, scan: str,
                                                parameters: dict[str, object]) -> None:
    data, angles = projections(shared_data, scan)
    estimate = center_of_scan(data, angles, FindCenterVoParams.model_validate(parameters))
    assert estimate.center == pytest.approx(TRUTH[scan], abs=0.5)
    assert estimate.warnings == ()
    assert estimate.confidence >= LOW_CONFIDENCE
    # I13 and DIAD have an exact 0°/180° pair, the tooth's last projection is 179.0°
    assert estimate.method == ("vo" if scan == "tooth" else "vo+pair")


@pytest.mark.parametrize("scan", ["i13", "diad"])
def test_unclamped_window_is_the_failure_being_fixed(shared_data: Path, scan: str) -> None:
    # The same window clamped only to the detector (what httomolibgpu does) lands on a
    # detector edge: the minimum of a tiny overlap, with algotom's own warning.
    data, angles = projections(shared_data, scan)
    sinogram = data[angles - angles[0] <= 180 + 1e-6, data.shape[1] // 2, :]
    cols = sinogram.shape[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edge = algotom_find_center_vo(sinogram.astype(np.float64), start=0, stop=cols - 1,
                                      step=0.5, radius=6, ncore=1, hor_drop=20)
    assert abs(edge - TRUTH[scan]) > 10
    assert any("out of the searching range" in str(w.message) for w in caught)
    lo, hi = reliable_window(cols)
    assert lo <= TRUTH[scan] <= hi


def test_window_is_clamped_and_reported(shared_data: Path) -> None:
    data, angles = projections(shared_data, "diad")
    estimate = find_center(data, angles, smin=-50, smax=50, step=0.5)
    assert estimate.window == reliable_window(26) == (6.0, 19.0)
    assert any("clamped to [6.0, 19.0]" in note for note in estimate.notes)


def test_minimum_on_the_window_edge_is_a_warning(shared_data: Path) -> None:
    # tooth: middle 319.5, truth 295.0 = middle - 24.5, outside ±10
    data, angles = projections(shared_data, "tooth")
    estimate = center_of_scan(data, angles, FindCenterVoParams(smin=-10, smax=10))
    assert estimate.center > 300  # the fine search (± srad) ends near the edge, not at 295
    assert estimate.confidence <= 0.3
    assert any("edge of the search window" in w for w in estimate.warnings)
    assert any("low confidence" in w for w in estimate.warnings)


def test_window_around_an_initial_value(shared_data: Path) -> None:
    data, angles = projections(shared_data, "tooth")
    estimate = center_of_scan(data, angles, FindCenterVoParams(
        cor_initialisation_value=290, smin=-10, smax=10))
    assert estimate.center == pytest.approx(295.0, abs=0.5)
    assert estimate.warnings == ()


def test_disagreement_with_the_pair_is_a_warning(shared_data: Path) -> None:
    # Displace the 180° projection by 10 columns: the pair then says 85.5 + 5.
    data, angles = projections(shared_data, "i13")
    last = int(np.argmin(np.abs(angles - angles[0] - 180)))
    data[last] = np.roll(data[last], 10, axis=1)
    estimate = find_center(data, angles)
    assert abs(estimate.center - 85.5) < 2  # Vo's (moved by the one bad row), not the pair's
    assert estimate.confidence <= 0.2
    assert any("disagree" in w for w in estimate.warnings)


def test_bad_input_is_refused_with_one_line() -> None:
    angles = np.linspace(0, 180, 20)
    with pytest.raises(StageError, match="ind: expected a row below 4, got 9"):
        find_center(np.ones((20, 4, 32), np.float32), angles, row=9)
    with pytest.raises(StageError, match="at least 8 projections within 180"):
        find_center(np.ones((4, 4, 32), np.float32), np.linspace(0, 90, 4))
    with pytest.raises(StageError, match="NaN or inf"):
        find_center(np.full((20, 4, 32), np.nan, np.float32), angles)


HTTOMO_VO_PIPELINE = """\
- method: standard_tomo
  module_path: httomo.data.hdf.loaders
  parameters: {data_path: auto, image_key_path: auto, rotation_angles: auto,
               preview: {detector_y: {start: %s, stop: %s}}}
- method: normalize
  module_path: tomopy.prep.normalize
  parameters: {cutoff: null, averaging: mean}
- method: minus_log
  module_path: tomopy.prep.normalize
  parameters: {}
- method: find_center_vo
  module_path: httomolibgpu.recon.rotation
  parameters: {ind: null, average_radius: 0, cor_initialisation_value: null,
               smin: %s, smax: %s, srad: 6.0, step: 0.5, ratio: 0.5, drop: 20}
  id: centering
  side_outputs: {cor: centre_of_rotation}
"""


def test_recon_with_httomo_template_finds_diad_centre(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(HTTOMO_VO_PIPELINE % (4, 18, -50, 50))  # rows 4 … 17
    out = tmp_path / "diad.h5"
    scan = shared_data / "real/diad_k11-18014/k11-18014.nxs"
    assert main(["recon", str(scan), "-o", str(out), "--pipeline", str(pipeline)]) == 0
    captured = capsys.readouterr()
    assert "warning: CoR" not in captured.err and "(complete)" in captured.out
    with h5py.File(out) as handle:
        cor = handle["/entry/process/center_of_rotation"]
        assert float(cor[()]) == pytest.approx(12.5, abs=0.25)
        assert "WARNING" not in cor.attrs["method"]
        # the loader's preview crop was honoured
        assert handle["/entry/reconstruction/detector_row"][()].tolist() == list(range(4, 18))


def test_recon_warns_in_terminal_and_output_when_unsure(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(HTTOMO_VO_PIPELINE % ("null", "null", -10, 10))
    out = tmp_path / "tooth.h5"
    scan = shared_data / "real/aps_tooth/tooth.h5"
    assert main(["recon", str(scan), "-o", str(out), "--pipeline", str(pipeline)]) == 0
    captured = capsys.readouterr()
    assert "warning: CoR" in captured.err and "edge of the search window" in captured.err
    assert "CoR UNCERTAIN" in captured.out
    with h5py.File(out) as handle:
        assert "WARNING: Vo's minimum lies on the edge" in (
            handle["/entry/process/center_of_rotation"].attrs["method"])

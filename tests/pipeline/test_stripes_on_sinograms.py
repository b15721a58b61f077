"""TomoPy's whole-axis stripe filters run where every angle is at hand (ADR 0023).

``remove_stripe_fw`` and ``remove_stripe_ti`` filter along every angle of a sinogram, so
they are sinogram-pattern stages (HTTomo's method database has them so): a block of a
few rows holds all angles, and the result equals the filter on the whole scan for any
sinogram block size, on 1 and R in-process ranks, and where a projection-only step comes
after them (a second reslice). References: TomoPy's own outputs
(``tomopy_test_data``) and the filter in TomoPy's layout on the whole scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stages.prep import stripe
from stages.registry import REGISTRY
from stages.spec import Pattern
from streamer.cli import main
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.sections import sections_of
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.sources.formats import LoadOptions, open_scan
from tests.run.test_later_reslices_on_ranks import on_ranks
from tests.test_recon_real import i13_options

#: Measured against TomoPy's outputs: fw 1.0e-6 (float32 round-off), ti 7.0e-5 (we solve
#: in float64, TomoPy partly in float32); see tests/stages/test_stripe.py.
TOMOPY_RTOL = {"remove_stripe_fw": 1e-5, "remove_stripe_ti": 1e-3}

I13_ROWS = (60, 64)
CENTER = 85.5


def _tomopy(shared_data: Path, name: str) -> np.ndarray:
    return np.asarray(np.load(shared_data / "tomopy_test_data" / f"{name}.npy"))


@pytest.mark.parametrize("name", sorted(TOMOPY_RTOL))
def test_the_stages_take_sinogram_blocks_as_httomo_has_them(name: str) -> None:
    assert REGISTRY[name].pattern is Pattern.SINOGRAM
    assert REGISTRY[name].reach(REGISTRY[name].params()) == 0  # rows are independent


@pytest.mark.parametrize("name", sorted(TOMOPY_RTOL))
def test_sinogram_blocks_of_1_2_3_rows_give_tomopys_whole_scan_result(
        shared_data: Path, name: str) -> None:
    """TomoPy filtered its 16 x 8 x 48 test scan at once; the stage on blocks of 1, 2, 3
    rows (each with all 16 angles) gives that, and the same bits as on all 8 rows."""
    spec = REGISTRY[name]
    sinograms = np.ascontiguousarray(_tomopy(shared_data, "proj").transpose(1, 0, 2))
    expected = _tomopy(shared_data, name).transpose(1, 0, 2)
    whole = spec.run(sinograms, spec.params())
    np.testing.assert_allclose(whole, expected, rtol=TOMOPY_RTOL[name])
    for size in (1, 2, 3):
        parts = [spec.run(np.ascontiguousarray(sinograms[first:first + size]), spec.params())
                 for first in range(0, sinograms.shape[0], size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=f"rows {size}")
    assert not np.allclose(whole, sinograms, rtol=1e-3)  # the filter did something


def test_tomopys_layout_is_the_same_filter(shared_data: Path) -> None:
    """``stripe.remove_stripe_fw`` / ``_ti`` (TomoPy's call, (angles, rows, cols)) are the
    sinogram stages transposed: the same bits."""
    projections = _tomopy(shared_data, "proj")
    sinograms = np.ascontiguousarray(projections.transpose(1, 0, 2))
    for name, projection_form in (("remove_stripe_fw", stripe.remove_stripe_fw),
                                  ("remove_stripe_ti", stripe.remove_stripe_ti)):
        on_sinograms = REGISTRY[name].run(sinograms, REGISTRY[name].params())
        np.testing.assert_array_equal(projection_form(projections),
                                      on_sinograms.transpose(1, 0, 2), err_msg=name)


# ------------------------------------------------------------------ I13 through recon


def _i13(shared_data: Path) -> tuple[Path, LoadOptions, list[str]]:
    base = shared_data / "real" / "dls_i13_24737"
    options, args = i13_options(base, I13_ROWS)
    return base / "tiffs", options, args


PIPELINE = """pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: STRIPE
  - method: fbp
    parameters: {center: CENTER}
"""

#: A projection-only step after the stripe filter: HTTomo users place Paganin there; the
#: sectionizer reslices back to projections after the filter, and forward again.
PAGANIN = """pipeline:
  - method: normalize
  - method: STRIPE
  - method: paganin
    parameters: {pixel_size: 1.0e-4, dist: 30.0, energy: 20.0, alpha: 1.0e-3}
  - method: minus_log
  - method: fbp
    parameters: {center: CENTER}
"""

NORMALIZE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: MINUS_LOG}\n"


def _text(template: str, name: str) -> str:
    return template.replace("STRIPE", name).replace("CENTER", str(CENTER))


def _run(spec_name: str, block: np.ndarray, **kwargs: Any) -> np.ndarray:
    spec = REGISTRY[spec_name]
    return spec.run(block, spec.params(**kwargs.pop("params", {})), **kwargs)


def _whole_scan_reference(path: Path, options: LoadOptions, name: str,
                          paganin: bool) -> np.ndarray:
    """The pipeline's steps, each on the whole scan at once: our normalize, the stripe
    filter in TomoPy's layout on every projection, (Paganin, -log,) then the FBP."""
    with open_scan(path, options) as reader:
        layout = reader.layout
        frames = reader.read(0, layout.frames)
    keys = np.asarray(layout.image_keys)
    refs = {"darks": frames[keys == 2], "flats": frames[keys == 1]}
    projections = np.ascontiguousarray(frames[keys == 0])
    corrected = _run("normalize", projections, params={"minus_log": not paganin}, **refs)
    filtered = getattr(stripe, name)(corrected)  # TomoPy's layout and call, whole scan
    if paganin:
        filtered = _run("paganin", filtered, params={
            "pixel_size": 1.0e-4, "dist": 30.0, "energy": 20.0, "alpha": 1.0e-3})
        filtered = _run("minus_log", filtered)
    sinograms = np.ascontiguousarray(filtered.transpose(1, 0, 2))
    return _run("fbp", sinograms, params={"center": CENTER},
                angles_deg=np.asarray(layout.angles_deg)[keys == 0])


def _volume(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        assert bool(handle["/entry"].attrs["complete"])
        assert float(handle["/entry/process/center_of_rotation"][()]) == CENTER
        return np.asarray(handle["/entry/reconstruction/data"][()])


def _assert_same(found: np.ndarray, expected: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(found, expected, rtol=0,
                               atol=1e-6 * float(np.abs(expected).max()), err_msg=what)


@pytest.mark.parametrize("name", ["remove_stripe_fw", "remove_stripe_ti"])
@pytest.mark.parametrize("template", ["stripe-fbp", "stripe-paganin-fbp"])
def test_i13_through_recon_equals_the_whole_scan_filter(
        shared_data: Path, tmp_path: Path, name: str, template: str) -> None:
    """``recon`` of the I13 scan (4 rows x 181 angles), projection blocks of 7 frames,
    sinogram blocks of 1, 2 and 3 rows: the volume equals the filter on the whole scan
    (1e-6 of its range), and differs from the volume without the filter."""
    paganin = template.endswith("paganin-fbp")
    path, options, args = _i13(shared_data)
    text = _text(PAGANIN if paganin else PIPELINE, name)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    steps = parse_pipeline(text, REGISTRY, source="p.yaml").steps
    assert len(sections_of(steps)) == (4 if paganin else 2)
    assert main(["check", str(pipeline), "--frame", "4x160", "--projections", "181"]) == 0
    expected = _whole_scan_reference(path, options, name, paganin)
    for rows in (1, 2, 3):
        out = tmp_path / f"rec{rows}.h5"
        assert main(["recon", str(path), "-o", str(out), "--pipeline", str(pipeline),
                     "--block", "7", "--sinogram-block", str(rows), "--quiet", *args]) == 0
        _assert_same(_volume(out), expected, f"{name}, sinogram blocks of {rows}")
    unfiltered = tmp_path / "plain.yaml"
    unfiltered.write_text(text.replace(f"  - method: {name}\n", ""))
    out = tmp_path / "plain.h5"
    assert main(["recon", str(path), "-o", str(out), "--pipeline", str(unfiltered),
                 "--block", "7", "--quiet", *args]) == 0
    assert np.abs(_volume(out) - expected).max() > 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("template", ["stripe-fbp", "stripe-paganin-fbp"])
def test_i13_on_ranks_equals_the_whole_scan_filter(shared_data: Path, tmp_path: Path,
                                                   ranks: int, template: str) -> None:
    """R in-process ranks (each with a band of rows, every angle): the same volume."""
    paganin = template.endswith("paganin-fbp")
    path, options, _ = _i13(shared_data)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(_text(PAGANIN if paganin else PIPELINE, "remove_stripe_fw"))
    results = on_ranks(ranks, lambda: open_scan(path, options), ReconSettings(
        tmp_path / "rec.h5", pipeline=pipeline, block_frames=7, block_sinograms=1))
    output = results[0]
    assert isinstance(output, ScanOutput) and output.complete, output
    _assert_same(_volume(tmp_path / "rec.h5"),
                 _whole_scan_reference(path, options, "remove_stripe_fw", paganin),
                 f"{ranks} ranks")

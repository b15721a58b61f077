"""Radial distortion correction against NumPy ports of httomolibgpu's
``distortion_correction_proj_discorpy`` and tomopy's ``distortion_correction_proj``, and
on a grid distorted with a known polynomial (``data/distortion_coefficients.txt``, in
discorpy's text format) and corrected back.

The ports follow httomolibgpu ``httomolibgpu/prep/alignment.py`` (commit 2ec6a929, Aug
2026; cupy/cupyx replaced by numpy/scipy) and tomopy ``source/tomopy/prep/alignment.py``
(``_unwarp_image_backward``, ``distortion_correction_sino``, ``load_distortion_coefs``;
commit 2c94ed18, Dec 2024).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from scipy.ndimage import map_coordinates

from stages.prep.distortion import (
    DiscorpyParams,
    TomopySinoDistortionParams,
    distortion_correction_proj,
    distortion_correction_proj_discorpy,
    distortion_correction_sino,
    read_coefficients,
)
from stages.recon.fbp import fbp
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError, StageError
from streamer.pipeline.config import load_pipeline, parse_pipeline
from streamer.sources.simulate import SimulatedScan, SimulationConfig

COEFFICIENTS = Path(__file__).parent / "data/distortion_coefficients.txt"
XCENTER, YCENTER, FACTORS = 81.25, 58.5, (1.0, -1.0e-4, -3.0e-6)
Array = npt.NDArray[np.float32]


# ------------------------------------------------------------------ upstream ports
def upstream_load_metadata_txt(file_path: Path) -> tuple[float, float, list[float]]:
    with open(file_path) as f:
        list_data = [float(i.split()[-1]) for i in f.read().splitlines()]
    return list_data[0], list_data[1], list_data[2:]


def upstream_discorpy(data: Array, metadata_path: Path, shift_xy: tuple[int, int] = (0, 0),
                      order: int = 3, mode: str = "constant") -> Array:
    data = data.copy()
    xcenter, ycenter, list_fact = upstream_load_metadata_txt(metadata_path)
    xcenter = xcenter - shift_xy[0]
    ycenter = ycenter - shift_xy[1]
    height, width = data.shape[1], data.shape[2]
    xu_mat, yu_mat = np.meshgrid(np.arange(width) - xcenter, np.arange(height) - ycenter)
    ru_mat = np.sqrt(xu_mat**2 + yu_mat**2)
    fact_mat = np.sum(np.asarray([factor * ru_mat**i for i, factor in enumerate(list_fact)]),
                      axis=0)
    xd_mat = np.asarray(np.clip(xcenter + fact_mat * xu_mat, 0, width - 1), dtype=np.float32)
    yd_mat = np.asarray(np.clip(ycenter + fact_mat * yu_mat, 0, height - 1), dtype=np.float32)
    indices = np.asarray([np.reshape(yd_mat, (-1, 1)), np.reshape(xd_mat, (-1, 1))],
                         dtype=np.float32)
    for i in range(data.shape[0]):
        mat = map_coordinates(data[i], indices, order=order, mode=mode)
        data[i] = np.reshape(mat, (height, width))
    return data


def upstream_tomopy_unwarp(mat: Array, xcenter: float, ycenter: float,
                           list_fact: list[float]) -> Array:
    (height, width) = mat.shape
    xu_mat, yu_mat = np.meshgrid(np.arange(width) - xcenter, np.arange(height) - ycenter)
    ru_mat = np.sqrt(xu_mat**2 + yu_mat**2)
    fact_mat = np.sum(np.asarray([factor * ru_mat**i for i, factor in enumerate(list_fact)]),
                      axis=0)
    xd_mat = np.float32(np.clip(xcenter + fact_mat * xu_mat, 0, width - 1))
    yd_mat = np.float32(np.clip(ycenter + fact_mat * yu_mat, 0, height - 1))
    indices = np.reshape(yd_mat, (-1, 1)), np.reshape(xd_mat, (-1, 1))
    out: Array = map_coordinates(mat, indices, order=1, mode="reflect")
    return out.reshape((height, width))


def upstream_tomopy_sino(tomo: Array, ind: int, xcenter: float, ycenter: float,
                         list_fact: list[float]) -> Array:
    (depth, height, width) = tomo.shape
    xu_list = np.arange(0, width) - xcenter
    yu = ind - ycenter
    ru_list = np.sqrt(xu_list**2 + yu**2)
    flist = np.sum(np.asarray([factor * ru_list**i for i, factor in enumerate(list_fact)]),
                   axis=0)
    xd_list = np.clip(xcenter + flist * xu_list, 0, width - 1)
    yd_list = np.clip(ycenter + flist * yu, 0, height - 1)
    yd_min = np.int16(np.floor(np.amin(yd_list)))
    yd_max = np.int16(np.ceil(np.amax(yd_list))) + 1
    yd_list = yd_list - yd_min
    sino = np.zeros((depth, width), dtype=np.float32)
    indices = yd_list, xd_list
    for i in np.arange(depth):
        sino[i] = map_coordinates(tomo[i, yd_min:yd_max, :], indices, order=1, mode="reflect")
    return sino


# ------------------------------------------------------------------ a known distortion
def grid(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A smooth grid of lines every 12 px (exact at any point, so the distorted image is
    sampled without interpolation error)."""
    return (np.cos(np.pi * x / 12) ** 8 + np.cos(np.pi * y / 12) ** 8) / 2


def distorted_grid(height: int, width: int) -> npt.NDArray[np.float64]:
    """The grid as a lens with the fixture's backward model ``ru → F(ru)·ru`` shows it:
    each distorted pixel at radius ``rd`` shows the undistorted point at the ``ru``
    with ``F(ru)·ru = rd`` (found by bisection: ``F(r)·r`` increases over the image)."""
    xd, yd = np.meshgrid(np.arange(width) - XCENTER, np.arange(height) - YCENTER)
    rd = np.hypot(xd, yd)
    low, high = np.zeros_like(rd), np.full_like(rd, 4 * rd.max() + 1)
    for _ in range(60):
        middle = (low + high) / 2
        forward = middle * sum(c * middle**i for i, c in enumerate(FACTORS))
        low, high = np.where(forward < rd, middle, low), np.where(forward < rd, high, middle)
    ru = (low + high) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(rd > 0, ru / rd, 1.0)
    return grid(XCENTER + xd * scale, YCENTER + yd * scale)


# ------------------------------------------------------------------ tests
def test_the_coefficients_file_is_read_as_upstream() -> None:
    assert read_coefficients(COEFFICIENTS) == (XCENTER, YCENTER, FACTORS)
    x, y, factors = upstream_load_metadata_txt(COEFFICIENTS)
    assert (x, y, tuple(factors)) == read_coefficients(COEFFICIENTS)


@pytest.mark.parametrize(("order", "mode", "shift"), [(3, "constant", (0, 0)),
                                                      (1, "reflect", (0, 20)),
                                                      (0, "nearest", (5, 3))])
def test_matches_httomolibgpu(order: int, mode: str, shift: tuple[int, int]) -> None:
    block = np.random.default_rng(0).random((3, 90, 150), dtype=np.float32)
    expected = upstream_discorpy(block, COEFFICIENTS, shift, order, mode)
    ours = distortion_correction_proj_discorpy(block, metadata_path=str(COEFFICIENTS),
                                               order=order, mode=mode,  # type: ignore[arg-type]
                                               shift_xy=shift)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    given = distortion_correction_proj_discorpy(block, xcenter=XCENTER, ycenter=YCENTER,
                                                list_fact=FACTORS, order=order,
                                                mode=mode,  # type: ignore[arg-type]
                                                shift_xy=shift)
    np.testing.assert_array_equal(given, ours)


def test_tomopy_form_matches_tomopy() -> None:
    block = np.random.default_rng(1).random((2, 90, 150), dtype=np.float32)
    ours = distortion_correction_proj(block, xcenter=XCENTER, ycenter=YCENTER,
                                      list_fact=FACTORS)
    for frame in range(2):
        np.testing.assert_allclose(ours[frame], upstream_tomopy_unwarp(
            block[frame], XCENTER, YCENTER, list(FACTORS)), rtol=0, atol=1e-6)


def test_a_distorted_grid_is_corrected_back() -> None:
    height, width = 120, 160
    distorted = distorted_grid(height, width).astype(np.float32)[None]
    truth = grid(*np.meshgrid(np.arange(width, dtype=np.float64),
                              np.arange(height, dtype=np.float64)))
    spec = REGISTRY["distortion_correction_proj_discorpy"]
    params = spec.params.model_validate({"metadata_path": str(COEFFICIENTS)})
    corrected = spec.run(distorted, params)[0]
    inner = (slice(6, height - 6), slice(6, width - 6))  # constant mode fills outside
    before = np.abs(distorted[0] - truth)[inner].max()
    after = np.abs(corrected - truth)[inner].max()
    assert before > 0.5  # the lens moves the lines by up to ~4 px at the corners
    assert after < 0.02, after  # cubic interpolation of the sampled grid: measured 0.0044


def test_bad_coefficients_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("xcenter = 10\nycenter = twelve\nfactor0 = 1\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: expected a number .* 'ycenter = twelve'"):
        read_coefficients(bad)
    bad.write_text("xcenter = 10\nycenter = 12\n")
    with pytest.raises(ConfigError, match="expected xcenter, ycenter and at least one factor"):
        read_coefficients(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_coefficients(tmp_path / "missing.txt")
    # refused when the pipeline is validated, not when the scan is half done
    with pytest.raises(ValidationError, match="cannot read"):
        DiscorpyParams(metadata_path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValidationError, match="expected metadata_path"):
        DiscorpyParams()  # the template as generated: every value null
    with pytest.raises(StageError, match="expected metadata_path"):
        distortion_correction_proj_discorpy(np.zeros((1, 4, 4), np.float32))


# ------------------------------------------------------------------ the sinogram form
def test_sinogram_form_matches_tomopy_on_every_row() -> None:
    """Every row of our output is tomopy's corrected sinogram of that row (rows where the
    curve reaches the top and bottom edges included); measured max difference 0."""
    block = np.random.default_rng(2).random((4, 90, 150), dtype=np.float32)
    ours = distortion_correction_sino(block, ind="all", xcenter=XCENTER, ycenter=YCENTER,
                                      list_fact=FACTORS)
    assert ours.shape == block.shape
    for row in (0, 1, 17, 58, 59, 89):
        expected = upstream_tomopy_sino(block, row, XCENTER, YCENTER, list(FACTORS))
        np.testing.assert_allclose(ours[:, row], expected, rtol=0, atol=1e-6)
    every = np.stack([upstream_tomopy_sino(block, row, XCENTER, YCENTER, list(FACTORS))
                      for row in range(90)], axis=1)
    np.testing.assert_allclose(ours, every, rtol=0, atol=1e-6)
    # and it is the projection form's model, up to that form's float32 coordinates
    proj = distortion_correction_proj(block, xcenter=XCENTER, ycenter=YCENTER,
                                      list_fact=FACTORS)
    np.testing.assert_allclose(ours, proj, rtol=0, atol=1e-5)  # measured 7.3e-6


def test_one_sinogram_by_index_mid_and_crop() -> None:
    block = np.random.default_rng(3).random((3, 60, 100), dtype=np.float32)
    one = distortion_correction_sino(block, ind=41, xcenter=50.2, ycenter=20.5,
                                     list_fact=(1.0, 0.0, -2e-5))
    assert one.shape == (3, 1, 100)
    np.testing.assert_allclose(one[:, 0], upstream_tomopy_sino(
        block, 41, 50.2, 20.5, [1.0, 0.0, -2e-5]), rtol=0, atol=1e-6)
    mid = distortion_correction_sino(block, ind="mid", xcenter=50.2, ycenter=20.5,
                                     list_fact=(1.0, 0.0, -2e-5))
    np.testing.assert_allclose(mid[:, 0], upstream_tomopy_sino(
        block, 30, 50.2, 20.5, [1.0, 0.0, -2e-5]), rtol=0, atol=1e-6)
    # rows 10..59 read (a crop): ind and the centre stay in the detector's numbering
    cropped = distortion_correction_sino(block[:, 10:], ind=41, xcenter=50.2, ycenter=20.5,
                                         list_fact=(1.0, 0.0, -2e-5), shift_xy=(0, 10))
    np.testing.assert_allclose(cropped[:, 0], upstream_tomopy_sino(
        block[:, 10:], 31, 50.2, 10.5, [1.0, 0.0, -2e-5]), rtol=0, atol=1e-6)
    with pytest.raises(StageError, match=r"ind: expected a detector row in 10..59 .* got 5"):
        distortion_correction_sino(block[:, 10:], ind=5, xcenter=50.2, ycenter=20.5,
                                   list_fact=(1.0,), shift_xy=(0, 10))


def test_sinogram_form_takes_discorpys_file_and_refuses_the_bare_template() -> None:
    block = np.random.default_rng(4).random((2, 90, 150), dtype=np.float32)
    given = distortion_correction_sino(block, ind=None, xcenter=XCENTER, ycenter=YCENTER,
                                       list_fact=FACTORS)
    from_file = distortion_correction_sino(block, ind=None, metadata_path=str(COEFFICIENTS))
    np.testing.assert_array_equal(given, from_file)
    template = (Path(__file__).parents[1] / "pipeline/httomo_templates"
                / "tomopy.prep.alignment.distortion_correction_sino.yaml").read_text()
    loader = "- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n  parameters: {}\n"
    with pytest.raises(ConfigError, match=r"parameters.ind.*\n.*parameters.xcenter"):
        parse_pipeline(loader + template, REGISTRY, source="template")
    filled = (template.replace("ind: REQUIRED", "ind: all")
              .replace("xcenter: REQUIRED", f"xcenter: {XCENTER}")
              .replace("ycenter: REQUIRED", f"ycenter: {YCENTER}")
              .replace("list_fact: REQUIRED", f"list_fact: {list(FACTORS)}"))
    (step,) = parse_pipeline(loader + filled, REGISTRY, source="filled").steps
    assert step.name == "distortion_correction_sino"
    np.testing.assert_array_equal(step.spec.run(block, step.params), given)
    with pytest.raises(ValidationError, match="expected xcenter, ycenter and list_fact"):
        TomopySinoDistortionParams(ind="all", xcenter=1.0)
    with pytest.raises(ValidationError, match="ind"):
        TomopySinoDistortionParams(ind=-1, metadata_path=str(COEFFICIENTS))


def test_sinogram_form_corrects_a_distorted_grid_back() -> None:
    height, width = 120, 160
    distorted = distorted_grid(height, width).astype(np.float32)[None]
    truth = grid(*np.meshgrid(np.arange(width, dtype=np.float64),
                              np.arange(height, dtype=np.float64)))
    corrected = distortion_correction_sino(distorted, ind="all",
                                           metadata_path=str(COEFFICIENTS))[0]
    inner = (slice(6, height - 6), slice(6, width - 6))
    before = np.abs(distorted[0] - truth)[inner].max()
    after = np.abs(corrected - truth)[inner].max()
    assert before > 0.5
    assert after < 0.1, after  # linear interpolation of the sampled grid: measured 0.070


# ------------------------------------------------------------------ in a recon run
def _seen_through_lens(frames: npt.NDArray[np.float32], xcenter: float, ycenter: float,
                       factors: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """What a camera with the lens records: the pixel at radius ``rd`` shows the point at
    the ``ru`` with ``F(ru)·ru = rd`` (bisection), cubic-interpolated."""
    height, width = frames.shape[1:]
    xd, yd = np.meshgrid(np.arange(width) - xcenter, np.arange(height) - ycenter)
    rd = np.hypot(xd, yd)
    low, high = np.zeros_like(rd), np.full_like(rd, 2 * rd.max() + 1)
    for _ in range(60):
        middle = (low + high) / 2
        below = middle * sum(c * middle**i for i, c in enumerate(factors)) < rd
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    scale = np.divide((low + high) / 2, rd, out=np.ones_like(rd), where=rd > 0)
    where = np.stack([(ycenter + yd * scale).ravel(), (xcenter + xd * scale).ravel()])
    out = np.empty(frames.shape, np.float32)
    for index, frame in enumerate(frames.astype(np.float32)):
        out[index] = map_coordinates(frame, where, order=3, mode="nearest").reshape(
            height, width)
    return out


def test_sinogram_form_in_a_recon_run_undoes_a_lens(tmp_path: Path) -> None:
    """A simulated scan recorded through a lens (4 px inwards at the detector's ends):
    ``recon`` with the pipeline's ``distortion_correction_sino`` (every row) gives the
    volume of the undistorted scan, as the projection form does; with ``ind: 3``, that
    one slice."""
    scan = SimulatedScan(SimulationConfig(rows=6, cols=128, projections=180, flats=6,
                                          darks=4, seed=7))
    layout = scan.layout
    keys = np.asarray(layout.image_keys)
    clean = scan.read(0, layout.frames).astype(np.float32)
    lens = (63.5, 2.5, (1.0, 0.0, -1.2e-5))
    frames = _seen_through_lens(clean, *lens)
    with h5py.File(tmp_path / "lens.h5", "w") as handle:
        handle["/exchange/data"] = frames[keys == 0]
        handle["/exchange/data_white"] = frames[keys == 1]
        handle["/exchange/data_dark"] = frames[keys == 2]
        theta = handle.create_dataset("/exchange/theta",
                                      data=np.asarray(layout.angles_deg)[keys == 0])
        theta.attrs["units"] = "degrees"
    coefficients = (f"xcenter: {lens[0]}\n      ycenter: {lens[1]}\n"
                    f"      list_fact: {list(lens[2])}\n")
    correction = {
        "sino": "  - method: distortion_correction_sino\n    parameters:\n      ind: all\n"
                f"      {coefficients}",
        "proj": "  - method: distortion_correction_proj\n    parameters:\n"
                f"      {coefficients}",
        "none": "",
        "one": "  - method: distortion_correction_sino\n    parameters:\n      ind: 3\n"
               f"      {coefficients}",
    }
    volumes = {}
    for label, step in correction.items():
        pipeline = tmp_path / f"{label}.yaml"
        pipeline.write_text("pipeline:\n  - method: normalize\n    parameters: "
                            "{minus_log: true}\n" + step
                            + "  - method: fbp\n    parameters: {center: 63.5}\n")
        out = tmp_path / f"{label}.h5"
        assert main(["recon", str(tmp_path / "lens.h5"), "-o", str(out), "--pipeline",
                     str(pipeline), "--quiet"]) == 0
        with h5py.File(out, "r") as handle:
            volumes[label] = handle["/entry/reconstruction/data"][()]
    dark, flat = clean[keys == 2].mean(axis=0), clean[keys == 1].mean(axis=0)
    line_integrals = -np.log(np.clip((clean[keys == 0] - dark) / (flat - dark), 1e-6, None))
    reference = fbp(np.ascontiguousarray(line_integrals.transpose(1, 0, 2), np.float32),
                    angles_deg=np.asarray(layout.angles_deg)[keys == 0], center=63.5,
                    output_size=128)
    axis = np.arange(128) - 63.5
    inside = np.hypot(*np.meshgrid(axis, axis)) < 0.45 * 128
    # tomopy's one sinogram (ind: 3): a one-slice volume, that row of the whole one
    assert volumes["one"].shape == (1, 128, 128)
    np.testing.assert_allclose(volumes["one"][0], volumes["sino"][3], rtol=0, atol=1e-6)
    del volumes["one"]
    for row in range(1, 5):
        r = {label: np.corrcoef(volume[row][inside], reference[row][inside])[0, 1]
             for label, volume in volumes.items()}
        # measured: sino 0.991 (rows 1-4), proj the same to 4 digits, none 0.66-0.87
        assert r["sino"] > 0.98 and r["sino"] > r["none"] + 0.1, (row, r)
        assert abs(r["sino"] - r["proj"]) < 1e-3, (row, r)


# ------------------------------------------------------------------ where the file is found
def test_a_relative_metadata_path_is_found_next_to_the_pipeline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A pipeline and its coefficients file sit together: a relative ``metadata_path`` is
    taken from the pipeline's folder whatever the current directory; absolute as given."""
    folder = tmp_path / "setup"
    folder.mkdir()
    (folder / "coefficients.txt").write_text(COEFFICIENTS.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for method in ("distortion_correction_proj_discorpy", "distortion_correction_sino"):
        extra = "ind: null, " if method == "distortion_correction_sino" else ""
        pipeline = folder / f"{method}.yaml"
        pipeline.write_text(f"pipeline:\n  - method: {method}\n"
                            f"    parameters: {{{extra}metadata_path: coefficients.txt}}\n")
        (step,) = load_pipeline(pipeline, REGISTRY).steps
        assert Path(step.params.metadata_path) == folder / "coefficients.txt"
        assert main(["check", str(pipeline), "--frame", "64x64",
                     "--projections", "90"]) == 0
    # an absolute path is kept as given
    absolute = folder / "absolute.yaml"
    absolute.write_text("pipeline:\n  - method: distortion_correction_proj_discorpy\n"
                        f"    parameters: {{metadata_path: {COEFFICIENTS}}}\n")
    (step,) = load_pipeline(absolute, REGISTRY).steps
    assert step.params.metadata_path == str(COEFFICIENTS)
    # a missing file: one error naming the path it looked at, not the one as written
    missing = folder / "missing.yaml"
    missing.write_text("pipeline:\n  - method: distortion_correction_proj_discorpy\n"
                       "    parameters: {metadata_path: nowhere.txt}\n")
    capsys.readouterr()
    assert main(["check", str(missing), "--frame", "64x64", "--projections", "90"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {folder / 'nowhere.txt'}" in err and "Traceback" not in err
    # text parsed without a file (no folder) keeps the current directory's meaning
    (elsewhere / "coefficients.txt").write_text(COEFFICIENTS.read_text())
    (step,) = parse_pipeline("pipeline:\n  - method: distortion_correction_proj_discorpy\n"
                             "    parameters: {metadata_path: coefficients.txt}\n",
                             REGISTRY, source="text").steps
    assert step.params.metadata_path == "coefficients.txt"

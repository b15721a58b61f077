"""Radial distortion correction against NumPy ports of httomolibgpu's
``distortion_correction_proj_discorpy`` and tomopy's ``distortion_correction_proj``, and
on a grid distorted with a known polynomial (``data/distortion_coefficients.txt``, in
discorpy's text format) and corrected back.

The ports follow httomolibgpu ``httomolibgpu/prep/alignment.py`` (commit 2ec6a929, Aug
2026; cupy/cupyx replaced by numpy/scipy) and tomopy ``source/tomopy/prep/alignment.py``
(``_unwarp_image_backward``, ``load_distortion_coefs``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from scipy.ndimage import map_coordinates

from stages.prep.distortion import (
    DiscorpyParams,
    distortion_correction_proj,
    distortion_correction_proj_discorpy,
    read_coefficients,
)
from stages.registry import REGISTRY
from streamer.errors import ConfigError, StageError

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

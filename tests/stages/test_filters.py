"""median_filter / gaussian_filter against TomoPy's references (README B: 6 decimals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.misc.filters import SPECS, MedianFilterParams, gaussian_filter, median_filter
from streamer.errors import StageError


def _data(shared_data: Path, name: str) -> np.ndarray:
    loaded: np.ndarray = np.load(shared_data / "tomopy_test_data" / f"{name}.npy")
    return loaded


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_median_matches_tomopy(shared_data: Path, axis: int) -> None:
    out = median_filter(_data(shared_data, "cube"), axis=axis)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_almost_equal(out, _data(shared_data, f"median_filter_{axis}"), 6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gaussian_matches_tomopy(shared_data: Path, axis: int) -> None:
    out = gaussian_filter(_data(shared_data, "cube"), axis=axis)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_almost_equal(out, _data(shared_data, f"gaussian_filter_{axis}"), 6)


def test_median_3d_removes_isolated_spike() -> None:
    block = np.zeros((5, 5, 5), dtype=np.float32)
    block[2, 2, 2] = 100.0
    assert not median_filter(block, axis=None).any()
    plane = np.zeros((5, 5, 5), dtype=np.float32)
    plane[:, 2, :] = 1.0  # a plane one pixel thick survives no 3x3 window in 2-D along axis 1
    assert np.array_equal(median_filter(plane, axis=1), plane)
    assert not median_filter(plane, axis=0).any()


def test_kernel_size_alias_and_limits() -> None:
    assert MedianFilterParams.model_validate({"kernel_size": 5}).size == 5
    with pytest.raises(ValueError, match="size"):
        MedianFilterParams.model_validate({"size": 0})
    names = {spec.name: spec for spec in SPECS}
    # httomolibgpu's median_filter is 3-D with a dif: the stage median_filter3d
    assert "httomolibgpu.misc.corr.median_filter" not in names["median_filter"].aliases


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: median_filter(b[0]), "expected a 3-D array"),
        (lambda b: median_filter(b.astype(complex)), "block.dtype"),
        (lambda b: median_filter(b, axis=3), "axis"),
        (lambda b: median_filter(b, size=0), "size"),
        (lambda b: gaussian_filter(b, sigma=0.0), "sigma"),
        (lambda b: gaussian_filter(b, order=4), "order"),
        (lambda b: gaussian_filter(b, axis=None), "axis"),  # type: ignore[arg-type]
    ],
)
def test_errors(call: object, match: str) -> None:
    block = np.ones((3, 4, 5), dtype=np.float32)
    with pytest.raises(StageError, match=match):
        call(block)  # type: ignore[operator]

"""TomoPy's remaining ``misc.corr`` filters against ports of TomoPy's own code.

TomoPy is not installable here (not on PyPI), so each reference below is its source
ported into the test: the C loop of ``libtomo/misc/median_filt3d.c`` (per voxel,
neighbours clamped to the voxel's own coordinate, ``qsort``, the middle element, a
``fabsf(x - median) >= dif`` dezinger), and the Python bodies of ``remove_outlier1d``,
``median_filter_nonfinite`` and ``sobel_filter`` from ``tomopy/misc/corr.py``
(tomopy/tomopy@2c94ed18), in TomoPy's ``(angles, rows, cols)`` layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.ndimage

from stages.misc.tomopy_corr import (
    NONFINITE_MEDIAN,
    median_filter3d_tomopy,
    median_filter_nonfinite,
    remove_outlier3d_tomopy,
    sobel_filter,
)
from stages.prep.repair import RepairCounts
from stages.registry import REGISTRY
from streamer.errors import StageError


def _c_median3d(arr: np.ndarray[Any, Any], size: int, dif: float) -> np.ndarray[Any, Any]:
    """``tomopy.misc.corr.median_filter3d`` / ``remove_outlier3d``: Python wrapper + C."""
    radius = (max(int(size), 3) - 1) // 2
    out = np.empty_like(arr) if dif == 0 else arr.copy()
    dim_z, dim_y, dim_x = arr.shape
    total = (2 * radius + 1) ** 3
    for k in range(dim_z):
        for j in range(dim_y):
            for i in range(dim_x):
                values = []
                for i_m in range(-radius, radius + 1):
                    i1 = i + i_m if 0 <= i + i_m < dim_x else i
                    for j_m in range(-radius, radius + 1):
                        j1 = j + j_m if 0 <= j + j_m < dim_y else j
                        for k_m in range(-radius, radius + 1):
                            k1 = k + k_m if 0 <= k + k_m < dim_z else k
                            values.append(arr[k1, j1, i1])
                middle = sorted(values)[total // 2]
                distance = abs(np.float32(arr[k, j, i]) - np.float32(middle))
                if dif == 0 or distance >= np.float32(dif):  # C: 0 means a plain median
                    out[k, j, i] = middle
    return out


def _volume(shape: tuple[int, int, int], seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    data = rng.random(shape, dtype=np.float32)
    data.flat[7::53] += 4.0  # bright zingers
    data.flat[3::71] -= 4.0  # dark ones
    return data


@pytest.mark.parametrize("size", [3, 4, 5, 2])
def test_median_filter3d_equals_tomopys_c_kernel(size: int) -> None:
    data = _volume((5, 7, 8), size)
    expected = _c_median3d(data, size, 0.0)
    np.testing.assert_array_equal(median_filter3d_tomopy(data, size=size), expected)


@pytest.mark.parametrize(("dif", "size"), [(1.0, 3), (0.5, 5), (0.0, 3)])
def test_remove_outlier3d_equals_tomopys_c_kernel_both_signs(dif: float, size: int) -> None:
    data = _volume((5, 7, 8), 11)
    expected = _c_median3d(data, size, dif)
    result = remove_outlier3d_tomopy(data, dif=dif, size=size)
    np.testing.assert_array_equal(result, expected)
    if dif:
        assert result.max() < 2 and result.min() > -1  # both signs of zinger removed
        changed = result != data
        assert changed.sum() < 0.1 * data.size  # a dezinger, not a smoothing


def _tomopy_outlier1d(arr: np.ndarray[Any, Any], dif: float, size: int,
                      axis: int) -> np.ndarray[Any, Any]:
    """The body of ``tomopy.misc.corr.remove_outlier1d`` (one thread)."""
    filt_size = [1] * arr.ndim
    filt_size[axis] = size
    tmp = scipy.ndimage.median_filter(arr, size=filt_size, mode="mirror")
    return np.where(arr - tmp >= np.float32(dif), tmp, arr)


@pytest.mark.parametrize("axis", [0, 2])
def test_remove_outlier1d_equals_tomopy_on_httomos_axes(axis: int) -> None:
    projections = _volume((9, 4, 11), axis)  # TomoPy's (angles, rows, cols)
    expected = _tomopy_outlier1d(projections, 1.0, 5, axis)
    spec = REGISTRY["remove_outlier1d"]
    sinograms = np.ascontiguousarray(projections.transpose(1, 0, 2))
    result = spec.run(sinograms, spec.params(dif=1.0, size=5, axis=axis))
    np.testing.assert_array_equal(result.transpose(1, 0, 2), expected)
    assert result.min() < -1  # dark outliers are left: TomoPy's bright-only rule


def test_remove_outlier1d_auto_is_the_angles_and_rows_are_refused() -> None:
    spec = REGISTRY["remove_outlier1d"]
    assert spec.params(dif=1.0, axis="auto").axis == 0
    with pytest.raises(ValueError, match="detector rows"):
        spec.params(dif=1.0, axis=1)
    with pytest.raises(ValueError, match="dif"):
        spec.params()


def _tomopy_nonfinite(arr: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    """The body of ``tomopy.misc.corr.median_filter_nonfinite``."""
    arr = arr.copy()
    for projection in arr:
        nonfinite_idx = np.nonzero(~np.isfinite(projection))
        projection_copy = projection.copy()
        for x_idx, y_idx in zip(*nonfinite_idx, strict=True):
            x_lower = max(0, x_idx - (size // 2))
            x_higher = min(arr.shape[1], x_idx + (size // 2) + 1)
            y_lower = max(0, y_idx - (size // 2))
            y_higher = min(arr.shape[2], y_idx + (size // 2) + 1)
            kernel = projection_copy[x_lower:x_higher, y_lower:y_higher]
            if len(kernel[np.isfinite(kernel)]) == 0:
                raise ValueError("Found kernel containing only non-finite values.")
            projection[x_idx, y_idx] = np.median(kernel[np.isfinite(kernel)])
    return arr


@pytest.mark.parametrize("size", [3, 4, 5])
def test_median_filter_nonfinite_equals_tomopy_and_counts(size: int) -> None:
    data = _volume((3, 9, 10), 3)
    data[0, 0, 0] = np.nan
    data[1, 4, 4:6] = np.inf
    data[1, 5, 4] = -np.inf
    data[2, 8, 9] = np.nan
    repairs = RepairCounts()
    result = median_filter_nonfinite(data, size=size, repairs=repairs)
    np.testing.assert_array_equal(result, _tomopy_nonfinite(data, size))
    assert np.isfinite(result).all()
    assert repairs.counts == {NONFINITE_MEDIAN: 5}
    assert np.isnan(data[0, 0, 0]), "input modified"


def test_median_filter_nonfinite_refuses_an_all_nonfinite_window() -> None:
    data = np.ones((1, 6, 6), dtype=np.float32)
    data[0, 1:4, 1:4] = np.nan
    with pytest.raises(StageError, match=r"\(0, 2, 2\) holds no finite value"):
        median_filter_nonfinite(data, size=3)
    assert np.isfinite(median_filter_nonfinite(data, size=5)).all()


def test_sobel_filter_equals_tomopy_and_a_ramp() -> None:
    data = _volume((3, 8, 9), 4)
    expected = np.empty_like(data)
    for i in range(data.shape[0]):  # tomopy: filters.sobel(arr[slc], output=out[slc])
        scipy.ndimage.sobel(data[i], output=expected[i])
    np.testing.assert_array_equal(sobel_filter(data), expected)
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32) * 0.5, (2, 8, 9)).copy()
    # [-1, 0, 1] along the columns times [1, 2, 1] along the rows: 2 · 0.5 · 4 = 4
    np.testing.assert_allclose(sobel_filter(ramp)[:, :, 1:-1], 4.0)
    spec = REGISTRY["sobel_filter"]
    assert spec.params(axis="auto").axis == 0
    with pytest.raises(ValueError, match="each frame"):
        spec.params(axis=2)

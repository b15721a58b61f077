"""``pad``, ``trim_sinogram`` and ``normalize_roi`` against ports of TomoPy's source
(``tomopy/misc/morph.py``, ``tomopy/prep/normalize.py``, tomopy/tomopy@2c94ed18), in
TomoPy's ``(angles, rows, cols)`` layout; TomoPy itself is not installable here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.misc.morph import default_npad, pad, trim_sinogram
from stages.prep.repair import RepairCounts
from stages.prep.tomopy_norm import ROI_MEAN_ZERO, normalize_roi
from stages.registry import REGISTRY
from streamer.errors import StageError


def _tomopy_pad(arr: np.ndarray[Any, Any], axis: int, npad: int | None, mode: str,
                constant_values: float = 0.0) -> np.ndarray[Any, Any]:
    """``tomopy.misc.morph.pad`` with its ``_get_npad`` / ``_get_slices`` (numpy branch)."""
    if npad is None:
        npad = int(np.ceil((arr.shape[axis] * np.sqrt(2) - arr.shape[axis]) / 2))
    newshape = list(arr.shape)
    newshape[axis] += 2 * npad
    slc_in = [slice(None)] * 3
    slc_in[axis] = slice(npad, npad + arr.shape[axis])
    slc_l = [slice(None)] * 3
    slc_l[axis] = slice(0, npad)
    slc_r = [slice(None)] * 3
    slc_r[axis] = slice(npad + arr.shape[axis], None)
    slc_l_v = [slice(None)] * 3
    slc_l_v[axis] = slice(0, 1)
    slc_r_v = [slice(None)] * 3
    slc_r_v[axis] = slice(arr.shape[axis] - 1, arr.shape[axis])
    out = np.empty(newshape, dtype=arr.dtype)
    out[tuple(slc_in)] = arr
    if mode == "constant":
        out[tuple(slc_l)] = constant_values
        out[tuple(slc_r)] = constant_values
    else:
        out[tuple(slc_l)] = arr[tuple(slc_l_v)]
        out[tuple(slc_r)] = arr[tuple(slc_r_v)]
    return out


@pytest.mark.parametrize(("axis", "npad", "mode"), [
    (2, None, "constant"), (2, 3, "edge"), (1, 2, "constant"), (1, None, "edge")])
def test_pad_equals_tomopy(axis: int, npad: int | None, mode: str) -> None:
    data = np.random.default_rng(axis).random((3, 6, 11), dtype=np.float32)
    expected = _tomopy_pad(data, axis, npad, mode, 0.0)
    np.testing.assert_array_equal(pad(data, axis=axis, npad=npad, mode=mode), expected)
    if mode == "constant":
        np.testing.assert_array_equal(
            pad(data, axis=axis, npad=npad, constant_values=-2.5),
            _tomopy_pad(data, axis, npad, mode, -2.5))


def test_pad_default_reaches_the_diagonal_and_refuses_the_angle_axis() -> None:
    assert default_npad(100) == 21  # ceil((141.42 - 100) / 2)
    assert pad(np.ones((2, 3, 100), np.float32), axis=2).shape == (2, 3, 142)
    spec = REGISTRY["pad"]
    with pytest.raises(ValueError, match="projections without angles"):
        spec.params(axis=0)
    with pytest.raises(ValueError, match="axis"):
        spec.params()
    estimate = spec.memory((2, 3, 100), np.dtype(np.float32), spec.params(axis=2))
    assert estimate == 2 * 600 * 4 + 4 * 2 * 3 * 142


def _tomopy_trim(data: np.ndarray[Any, Any], center: float, x: int, y: int,
                 diameter: int) -> np.ndarray[Any, Any]:
    """``tomopy.misc.morph.trim_sinogram``; its float slice bounds as ints (NumPy)."""
    data = data.astype(np.float32)
    dx, dy, dz = data.shape
    rad = np.sqrt(x * x + y * y)
    alpha = np.arctan2(x, y)
    l1 = center - diameter / 2
    l2 = center - diameter / 2 + rad
    roidata = np.ones((dx, dy, diameter), dtype="float32")
    delphi = np.pi / dx
    for m in range(dx):
        ind1 = np.ceil(np.cos(alpha - m * delphi) * (l2 - l1) + l1)
        ind2 = np.floor(np.cos(alpha - m * delphi) * (l2 - l1) + l1 + diameter)
        ind1 = min(max(ind1, 0), dz)
        ind2 = min(max(ind2, 0), dz)
        roidata[m, :, 0:int(ind2 - ind1)] = data[m:m + 1, :, int(ind1):int(ind2)]
    return roidata


@pytest.mark.parametrize(("center", "x", "y", "diameter"), [
    (20.5, 0, 0, 12), (20.0, 7, -4, 10), (19.3, -12, 9, 15), (20.0, 20, 0, 8)])
def test_trim_sinogram_equals_tomopy(center: float, x: int, y: int, diameter: int) -> None:
    projections = np.random.default_rng(diameter).random((30, 3, 41), dtype=np.float32)
    expected = _tomopy_trim(projections, center, x, y, diameter)
    spec = REGISTRY["trim_sinogram"]
    sinograms = np.ascontiguousarray(projections.transpose(1, 0, 2))
    result = spec.run(sinograms, spec.params(center=center, x=x, y=y, diameter=diameter))
    np.testing.assert_array_equal(result.transpose(1, 0, 2), expected)


def test_trim_sinogram_of_a_centred_roi_keeps_the_middle_columns() -> None:
    sinograms = np.arange(2 * 5 * 20, dtype=np.float32).reshape(2, 5, 20)
    result = trim_sinogram(sinograms, center=10.0, x=0, y=0, diameter=6)
    np.testing.assert_array_equal(result, sinograms[:, :, 7:13])
    # a half-integer edge: ceil(6.5) … floor(12.5) keeps 5 columns, the 6th is TomoPy's 1.0
    result = trim_sinogram(sinograms, center=9.5, x=0, y=0, diameter=6)
    np.testing.assert_array_equal(result[:, :, :5], sinograms[:, :, 7:12])
    assert (result[:, :, 5] == 1.0).all()


def _tomopy_normalize_roi(arr: np.ndarray[Any, Any], roi: list[int]) -> np.ndarray[Any, Any]:
    arr = arr.astype(np.float32)
    for proj in arr:
        bg = proj[roi[0]:roi[2], roi[1]:roi[3]].mean()
        if bg != 0:
            np.true_divide(proj, bg, proj)
    return arr


def test_normalize_roi_equals_tomopy_and_counts_zero_windows() -> None:
    data = np.random.default_rng(1).random((4, 12, 15), dtype=np.float32) + 0.5
    data[2, 1:5, 2:9] = 0.0
    roi = [1, 2, 5, 9]
    repairs = RepairCounts()
    result = normalize_roi(data, roi=tuple(roi), repairs=repairs)  # type: ignore[arg-type]
    np.testing.assert_allclose(result, _tomopy_normalize_roi(data, roi), rtol=1e-6)
    np.testing.assert_allclose(result[[0, 1, 3], 1:5, 2:9].mean(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result[2], data[2])
    assert repairs.counts == {ROI_MEAN_ZERO: 12 * 15}


def test_normalize_roi_refuses_a_window_outside_the_frame() -> None:
    spec = REGISTRY["normalize_roi"]
    assert spec.params().roi == (0, 0, 10, 10)
    with pytest.raises(StageError, match=r"inside the 8×9 frame"):
        spec.run(np.ones((1, 8, 9), np.float32), spec.params())
    with pytest.raises(ValueError, match="top < bottom"):
        spec.params(roi=[5, 0, 5, 3])

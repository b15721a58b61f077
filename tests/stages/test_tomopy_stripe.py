"""TomoPy's ``remove_stripe_sf`` and ``remove_stripe_based_interpolation`` against ports
of its source (``libtomo/prep/stripe.c`` ``remove_stripe_sf``; ``tomopy/prep/stripe.py``
``_rs_interpolation`` and ``_detect_stripe``, tomopy/tomopy@2c94ed18), in TomoPy's
``(angles, rows, cols)`` layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import interpolate
from scipy.ndimage import binary_dilation, median_filter

from stages.registry import REGISTRY


def _c_stripe_sf(tomo: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    data = tomo.astype(np.float32).copy()
    dx, dy, dz = data.shape
    for s in range(dy):
        average = np.zeros(dz, np.float32)
        for j in range(dz):
            for p in range(dx):
                average[j] += np.float32(data[p, s, j] / np.float32(dx))
        smooth = np.zeros(dz, np.float32)
        for i in range(dz):
            for j in range(size):
                k = min(max(i + j - size // 2, 0), dz - 1)
                smooth[i] += average[k]
            smooth[i] /= np.float32(size)
        data[:, s, :] -= average - smooth
    return data


def _striped(seed: int, shape: tuple[int, int, int] = (40, 3, 50)) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    angles, _, cols = shape
    x = np.linspace(-1, 1, cols)
    base = np.clip(1 - x**2, 0, None)[None, None, :] * (1 + 0.2 * np.sin(
        np.linspace(0, 3, angles)))[:, None, None]
    data = (base + 0.01 * rng.random(shape)).astype(np.float32) + 0.5
    data[:, :, 17 * cols // 50] *= 1.15  # stripes (17 and 31 of 50 columns)
    data[:, :, 31 * cols // 50] *= 0.85
    return data


@pytest.mark.parametrize("size", [5, 4, 1])
def test_remove_stripe_sf_equals_tomopys_c(size: int) -> None:
    projections = _striped(size, (12, 3, 21))
    spec = REGISTRY["remove_stripe_sf"]
    sinograms = np.ascontiguousarray(projections.transpose(1, 0, 2))
    result = spec.run(sinograms, spec.params(size=size)).transpose(1, 0, 2)
    np.testing.assert_allclose(result, _c_stripe_sf(projections, size), rtol=2e-6, atol=2e-6)


def _tomopy_detect_stripe(listdata: np.ndarray[Any, Any], snr: float) -> np.ndarray[Any, Any]:
    numdata = len(listdata)
    listsorted = np.sort(listdata)[::-1]
    xlist = np.arange(0, numdata, 1.0)
    ndrop = np.int16(0.25 * numdata)
    (_slope, _intercept) = np.polyfit(xlist[ndrop:-ndrop - 1], listsorted[ndrop:-ndrop - 1], 1)
    numt1 = _intercept + _slope * xlist[-1]
    noiselevel = np.clip(np.abs(numt1 - _intercept), 1e-6, None)
    val1 = np.abs(listsorted[0] - _intercept) / noiselevel
    val2 = np.abs(listsorted[-1] - numt1) / noiselevel
    listmask = np.zeros_like(listdata)
    if val1 >= snr:
        listmask[listdata > _intercept + noiselevel * snr * 0.5] = 1.0
    if val2 >= snr:
        listmask[listdata <= numt1 - noiselevel * snr * 0.5] = 1.0
    return listmask


def _tomopy_rs_interpolation(sinogram: np.ndarray[Any, Any], snr: float, size: int,
                             drop_ratio: float, norm: bool) -> np.ndarray[Any, Any]:
    drop_ratio = np.clip(drop_ratio, 0.0, 0.8)
    sinogram = np.copy(sinogram)
    nrow = sinogram.shape[0]
    ndrop = int(0.5 * drop_ratio * nrow)
    sinosort = np.sort(sinogram, axis=0)
    sinosmooth = median_filter(sinosort, (1, size))
    list1 = np.mean(sinosort[ndrop:nrow - ndrop], axis=0)
    list2 = np.mean(sinosmooth[ndrop:nrow - ndrop], axis=0)
    listfact = np.divide(list1, list2, out=np.ones_like(list1), where=list2 != 0)
    listmask = _tomopy_detect_stripe(listfact, snr)
    listmask = np.float32(binary_dilation(listmask, iterations=1))
    matfact = np.tile(listfact, (nrow, 1))
    if norm is True:
        sinogram = sinogram / matfact
    listmask[0:2] = 0.0
    listmask[-2:] = 0.0
    listx = np.where(listmask < 1.0)[0]
    listy = np.arange(nrow)
    finter = interpolate.RectBivariateSpline(listy, listx, sinogram[:, listx], kx=1, ky=1)
    listxmiss = np.where(listmask > 0.0)[0]
    if len(listxmiss) > 0:
        matxmiss, maty = np.meshgrid(listxmiss, listy)
        output = finter.ev(np.ndarray.flatten(maty), np.ndarray.flatten(matxmiss))
        sinogram[:, listxmiss] = output.reshape(matxmiss.shape)
    return sinogram


@pytest.mark.parametrize(("snr", "size", "norm"), [(3.0, 31, True), (2.0, 11, False)])
def test_remove_stripe_based_interpolation_equals_tomopy(snr: float, size: int,
                                                        norm: bool) -> None:
    projections = _striped(int(snr))
    expected = np.stack([_tomopy_rs_interpolation(projections[:, m, :], snr, size, 0.1, norm)
                         for m in range(projections.shape[1])], axis=1)
    spec = REGISTRY["remove_stripe_based_interpolation"]
    sinograms = np.ascontiguousarray(projections.transpose(1, 0, 2))
    params = spec.params(snr=snr, size=size, drop_ratio=0.1, norm=norm)
    result = spec.run(sinograms, params).transpose(1, 0, 2)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    changed = np.flatnonzero(np.abs(result - projections).max(axis=(0, 1)) > 1e-3)
    assert {17, 31} <= set(changed.tolist())  # both stripes were found and replaced
    column_means = result.mean(axis=(0, 1))
    assert abs(column_means[17] - (column_means[16] + column_means[18]) / 2) < 0.02

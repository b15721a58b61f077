"""The device path of Vo's dead-, large- and all-stripe removal
(:mod:`stages.prep.stripe_device`, written from the algorithms) against algotom's CPU
result, the oracle, sinogram by sinogram, on the CuPy-mannered CPU namespace
(``tests/stages/device_like.py``) so a NumPy fallback on the data path fails here.

Tolerances (stated in the module): the stripe detection's line fit is closed-form here and
an SVD in algotom (coefficients differ in the last bits: masks are compared and must be
identical), and the dead-stripe interpolation is a straight line here and FITPACK's
degree-1 spline there (float32 rounding: 1e-6 relative).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from algotom.prep import removal

from stages.prep import stripe_device
from stages.registry import REGISTRY
from streamer.errors import StageError
from tests.stages import device_like


def _sinograms(seed: int, rows: int = 3, angles: int = 60, cols: int = 48) -> Any:
    """Noisy sinograms with a large stripe (a bright band), a dead column (constant) and
    a fluctuating column: each method has something to find."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1.0, 1.0, cols)
    base = 1.0 + 0.5 * np.sqrt(np.clip(1.0 - x**2, 0.0, None))
    data = base[None, None, :] + 0.02 * rng.standard_normal((rows, angles, cols))
    data *= 1.0 + 0.01 * rng.standard_normal(cols)  # small stripes: column gains
    data[:, :, 20:23] *= 1.15  # a large stripe
    data[:, :, 31] = 0.9  # a dead (unresponsive) column
    data[:, :, 12] += 0.4 * rng.standard_normal((rows, angles))  # a fluctuating one
    return data.astype(np.float32)


def _device(block: Any) -> Any:
    return device_like.DeviceLikeArray(block)


def _host(result: Any) -> Any:
    return device_like.NAMESPACE.asnumpy(result)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_large_stripe_follows_algotom(seed: int, norm: bool) -> None:
    block = _sinograms(seed)
    params = {"snr": 3.0, "size": 11, "drop_ratio": 0.1, "norm": norm}
    expected = np.stack([removal.remove_large_stripe(s, **params) for s in block])
    result = _host(REGISTRY["remove_large_stripe"].run(
        _device(block), REGISTRY["remove_large_stripe"].params(**params), backend="numpy"))
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected.astype(np.float32))
    assert not np.array_equal(result, block), "the stripe was not touched"


@pytest.mark.parametrize("residual", [True, False])
def test_dead_stripe_follows_algotom(residual: bool) -> None:
    block = _sinograms(2)
    params = {"snr": 3.0, "size": 11, "residual": residual, "smooth_strength": 10}
    expected = np.stack([removal.remove_dead_stripe(s, **params) for s in block])
    result = _host(REGISTRY["remove_dead_stripe"].run(
        _device(block), REGISTRY["remove_dead_stripe"].params(**params)))
    np.testing.assert_allclose(result, expected.astype(np.float32), rtol=1e-6, atol=0)
    assert np.ptp(result[:, :, 31], axis=1).max() > 0, "no dead column was interpolated"


@pytest.mark.parametrize("dim", [1, 2])
def test_all_stripe_follows_algotom(dim: int) -> None:
    block = _sinograms(3)
    params = {"snr": 3.0, "la_size": 11, "sm_size": 5, "drop_ratio": 0.1, "dim": dim}
    expected = np.stack([removal.remove_all_stripe(s, **params) for s in block])
    result = _host(REGISTRY["remove_all_stripe"].run(
        _device(block), REGISTRY["remove_all_stripe"].params(**params)))
    np.testing.assert_allclose(result, expected.astype(np.float32), rtol=1e-6, atol=0)


def test_the_detection_masks_equal_algotom_s() -> None:
    from algotom.util import utility

    rng = np.random.default_rng(7)
    profiles = 1.0 + 0.01 * rng.standard_normal((5, 64))
    profiles[:, 10] += 0.2
    profiles[:, 40] -= 0.2
    expected = np.stack([utility.detect_stripe(p, 3.0) for p in profiles])
    result = _host(stripe_device._detect(_device(profiles), 3.0, "t"))
    np.testing.assert_array_equal(result, expected)
    assert expected[:, [10, 40]].all()


def test_noise_free_data_is_refused_in_one_line() -> None:
    block = np.ones((2, 20, 16), dtype=np.float32)
    with pytest.raises(StageError, match="noise-free") as error:
        REGISTRY["remove_large_stripe"].run(_device(block),
                                            REGISTRY["remove_large_stripe"].params())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("sort", "dim"), [(True, 1), (False, 1), (True, 2)])
def test_filtering_follows_algotom_bit_for_bit(sort: bool, dim: int) -> None:
    block = _sinograms(4)
    params = {"sigma": 3, "size": 7, "dim": dim, "sort": sort}
    expected = np.stack([removal.remove_stripe_based_filtering(s, **params) for s in block])
    spec = REGISTRY["remove_stripe_based_filtering"]
    result = _host(spec.run(_device(block), spec.params(**params)))
    np.testing.assert_array_equal(result, expected.astype(np.float32))


@pytest.mark.parametrize(("sort", "num_chunk", "order"), [(False, 1, 2), (True, 2, 3)])
def test_fitting_follows_algotom_bit_for_bit(sort: bool, num_chunk: int, order: int) -> None:
    block = _sinograms(5)
    params = {"order": order, "sigma": 6, "sort": sort, "num_chunk": num_chunk}
    expected = np.stack([removal.remove_stripe_based_fitting(s, **params) for s in block])
    spec = REGISTRY["remove_stripe_based_fitting"]
    result = _host(spec.run(_device(block), spec.params(**params)))
    np.testing.assert_array_equal(result, expected.astype(np.float32))


def test_a_fitting_window_shorter_than_the_order_is_refused() -> None:
    spec = REGISTRY["remove_stripe_based_fitting"]
    with pytest.raises(StageError, match="order: expected below the fitting window"):
        spec.run(_device(_sinograms(0, angles=8)), spec.params(order=5, num_chunk=2))


@pytest.mark.parametrize(("nblock", "alpha"), [(0, 1.5), (3, 0.5)])
def test_titarenko_on_the_device_follows_the_host_stage(nblock: int, alpha: float) -> None:
    """All sinograms' CG problems solved together (stages/prep/ti_device.py) against the
    host stage's one-by-one solve (tomopy's algorithm, itself tested against tomopy):
    dot products and convolutions summed in other orders, carried through CG: 1e-5."""
    spec = REGISTRY["remove_stripe_ti"]
    sinograms = _sinograms(6, rows=3, angles=30, cols=40)
    sinograms[1, 4, 7] = np.nan  # treated as 0 on both
    params = spec.params(nblock=nblock, alpha=alpha)
    expected = spec.run(sinograms, params)
    result = _host(spec.run(_device(sinograms), params))
    assert result.dtype == np.float32 and result.flags.c_contiguous
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, np.nan_to_num(sinograms), rtol=1e-3)


@pytest.mark.parametrize("wname", ["db5", "haar", "sym8"])
def test_the_filter_bank_transforms_follow_pywavelets(wname: str) -> None:
    """dwt2/idwt2 written as filter banks (stages/prep/fw_device.py) against PyWavelets,
    mode symmetric, odd and even sizes and signals shorter than the filter."""
    import pywt

    from stages.prep import fw_device

    wavelet = pywt.Wavelet(wname)
    rng = np.random.default_rng(8)
    for shape in ((2, 23, 19), (2, 5, 6), (1, 40, 33)):
        block = rng.random(shape, dtype=np.float32)
        approx, details = fw_device._dwt2(_device(block), wavelet)
        for index, sinogram in enumerate(block):
            ca, bands = pywt.dwt2(sinogram, wavelet)
            np.testing.assert_allclose(_host(approx)[index], ca, rtol=0, atol=1e-6)
            for got, want in zip(details, bands, strict=True):
                np.testing.assert_allclose(_host(got)[index], want, rtol=0, atol=1e-6)
            back = _host(fw_device._idwt2(approx, details, wavelet))[index]
            np.testing.assert_allclose(back, pywt.idwt2((ca, bands), wavelet), rtol=0,
                                       atol=1e-6)


@pytest.mark.parametrize(("level", "pad"), [(None, True), (2, False)])
def test_wavelet_fourier_on_the_device_follows_the_host_stage(level: int | None,
                                                              pad: bool) -> None:
    """The whole remove_stripe_fw on every sinogram at once against the host stage
    (PyWavelets per sinogram): float32 sums in another order, 1e-5 of the range."""
    spec = REGISTRY["remove_stripe_fw"]
    sinograms = _sinograms(9, rows=3, angles=30, cols=37)
    params = spec.params(level=level, pad=pad, sigma=2.0)
    expected = spec.run(sinograms, params)
    result = _host(spec.run(_device(sinograms), params))
    assert result.dtype == np.float32 and result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=0,
                               atol=1e-5 * float(np.abs(expected).max()))

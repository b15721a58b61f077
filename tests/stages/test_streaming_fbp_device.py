"""StreamingFbp on a device backend: the accumulators, the block tables and the gridding
live in the reconstructor's array module, each host block is uploaded once, and the
finished band comes back to the host once.

No GPU: the device is :mod:`tests.stages.device_like` (CuPy's manners over numpy, its
``finufft`` twin taking device arrays as ``cufinufft`` does), so any ``np.`` left on the
data path raises; on one host thread the result equals the host streaming bit for bit,
and batch ``fourier_fbp`` within 1e-5."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stages.backends.xp import TransferStats
from stages.recon.fourier import FourierFbpCache, FourierFbpParams, fourier_fbp
from stages.recon.streaming import StreamingFbp
from streamer.errors import StageError
from tests.stages import device_like
from tests.stages.test_streaming_fbp import _gaussian_sinogram, _relative

DEVICE = device_like.DeviceLikeNamespace()


def _blocks(count: int, seed: int) -> list[npt.NDArray[np.intp]]:
    """Uneven blocks of the angles in a shuffled order (the ``add`` order is free)."""
    order = np.random.default_rng(seed).permutation(count)
    cuts = [0, 5, 17, 18, 40, count]
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(cuts) if b > a]


def _stream(sino: npt.NDArray[np.float32], angles: npt.NDArray[np.float64],
            params: FourierFbpParams, blocks: list[npt.NDArray[np.intp]], *, xp: Any,
            rows_early: bool = True, transfers: TransferStats | None = None,
            ) -> npt.NDArray[np.float32]:
    band = StreamingFbp(sino.shape[0], sino.shape[2], angles, params, rows_early=rows_early,
                        xp=xp, transfers=transfers)
    for chosen in blocks:
        band.add(sino[:, chosen], angles[chosen])
    if xp is not np:
        assert isinstance(band.spread, device_like.DeviceLikeArray)  # on the device
    return band.finish()


@pytest.mark.parametrize("rows_early", [True, False])
@pytest.mark.parametrize(
    ("full_deg", "count", "settings"),
    [
        (180.0, 64, {}),
        (180.0, 45, {"filter_name": "hann", "center": 30.7}),
        (360.0, 60, {}),  # repeated lines
        (180.0, 48, {"circle_mask": True, "output_size": 41, "pad": False}),
    ],
)
def test_the_device_band_equals_the_host_band_and_batch(
        full_deg: float, count: int, settings: dict[str, Any], rows_early: bool) -> None:
    sino, angles = _gaussian_sinogram(3, count, 64, full_deg, seed=count)
    params = FourierFbpParams(threads=1, **settings)
    blocks = _blocks(count, seed=7)
    host = _stream(sino, angles, params, blocks, xp=np, rows_early=rows_early)
    moved = TransferStats()
    device = _stream(sino, angles, params, blocks, xp=DEVICE, rows_early=rows_early,
                     transfers=moved)
    assert isinstance(device, np.ndarray) and device.dtype == np.float32
    np.testing.assert_array_equal(device, host)
    batch = fourier_fbp(sino, angles_deg=angles, **params.model_dump())
    assert _relative(device, batch) < 1e-5
    assert (moved.to_device, moved.to_host) == (len(blocks), 1)
    assert moved.bytes_to_device == sino.nbytes
    assert moved.bytes_to_host == device.nbytes


def test_device_blocks_are_taken_as_they_are_and_bands_share_the_uploaded_tables() -> None:
    """A block already on the device is not copied again; two bands with one cache
    (one scan) share the plan's device tables and the last block's gridding."""
    sino, angles = _gaussian_sinogram(5, 40, 48, 180.0, seed=2)
    params = FourierFbpParams(threads=1)
    cache, moved = FourierFbpCache(), TransferStats()
    bands = [StreamingFbp(rows, 48, angles, params, cache=cache, xp=DEVICE, transfers=moved)
             for rows in (3, 2)]
    assert bands[0].response is bands[1].response
    assert bands[0].deconvolve is bands[1].deconvolve
    for chosen in _blocks(40, seed=3):
        on_device = DEVICE.asarray(sino[:, chosen])
        bands[0].add(on_device[:3], angles[chosen])
        bands[1].add(on_device[3:], angles[chosen])
    assert moved.to_device == 0
    assert cache.blocks_shared == len(_blocks(40, seed=3))
    got = np.concatenate([band.finish() for band in bands])
    alone = _stream(sino, angles, params, _blocks(40, seed=3), xp=np)
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5 * float(np.abs(alone).max()))
    assert moved.to_host == 2


def test_a_block_of_another_device_is_refused() -> None:
    sino, angles = _gaussian_sinogram(1, 16, 16, 180.0, seed=1)
    band = StreamingFbp(1, 16, angles, FourierFbpParams(threads=1))  # a host band
    with pytest.raises(StageError, match=r"expected a host array or one of numpy .* got "
                       r"one of device_like"):
        band.add(DEVICE.asarray(sino), angles)


@pytest.mark.gpu
@pytest.mark.parametrize("full_deg", [180.0, 360.0])
def test_on_a_gpu_the_cupy_band_agrees_with_the_host_band(full_deg: float) -> None:
    """cufinufft's spreading into CuPy accumulators: the finished band agrees with the
    host band to the NUFFT tolerance (the two kernels differ), one copy back."""
    from stages.backends.xp import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    import cupy

    sino, angles = _gaussian_sinogram(3, 120, 256, full_deg, seed=5)
    params = FourierFbpParams(threads=1, eps=1e-4)
    blocks = _blocks(120, seed=9)
    host = _stream(sino, angles, params, blocks, xp=np)
    moved = TransferStats()
    band = StreamingFbp(3, 256, angles, params, xp=cupy, transfers=moved)
    for chosen in blocks:
        band.add(sino[:, chosen], angles[chosen])
    assert isinstance(band.spread, cupy.ndarray)
    device = band.finish()
    assert isinstance(device, np.ndarray)
    assert _relative(device, host) < 1e-3
    assert (moved.to_device, moved.to_host) == (len(blocks), 1)

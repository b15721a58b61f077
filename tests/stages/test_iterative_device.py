"""The device code path of model-based reconstruction, checked on the CPU through
``tests/stages/device_like.py`` (CuPy's manners over numpy: any fallback to numpy on the
data path raises) and on a GPU by the ``gpu``-marked tests (skipped without one).

The stages themselves run in ``test_device_namespace.py`` (split NUFFT path, bit for bit);
here: the complete-transform NUFFT path that cupy/cufinufft takes, the pixel projector's
sparse products, and the progress record keeping the iterate on the device."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.backends.xp import gpu_available
from stages.recon.iterative import osem, sirt
from stages.recon.pixel_projector import PixelProjector
from stages.recon.projector import Projector
from stages.spec import Iteration
from tests.stages import device_like
from tests.stages.phantoms import ASYMMETRIC, sinogram, truth, uniform_angles

DEVICE = device_like.NAMESPACE


def _pair(rows: int, size: int, angles: int, cols: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(size)
    return (rng.standard_normal((rows, size, size)).astype(np.float32),
            rng.standard_normal((rows, angles, cols)).astype(np.float32))


@pytest.mark.parametrize("split", [False, True])
def test_nufft_projector_runs_in_the_device_namespace(split: bool) -> None:
    """Both NUFFT paths (complete transforms: cufinufft's; split: the CPU default) in the
    device namespace give numpy's numbers bit for bit."""
    angles = uniform_angles(23, 360.0)
    x, y = _pair(2, 33, 23, 40)
    host = Projector(angles, 40, 33, 19.3, 2, split=split)
    device = Projector(angles, 40, 33, 19.3, 2, split=split, xp=DEVICE)
    forward = device.forward(device_like.DeviceLikeArray(x.copy()))
    adjoint = device.adjoint(device_like.DeviceLikeArray(y.copy()))
    assert isinstance(forward, device_like.DeviceLikeArray)
    np.testing.assert_array_equal(DEVICE.asnumpy(forward), host.forward(x))
    np.testing.assert_array_equal(DEVICE.asnumpy(adjoint), host.adjoint(y))


def test_pixel_projector_runs_in_the_device_namespace() -> None:
    angles = uniform_angles(19)
    x, y = _pair(3, 24, 19, 30)
    host = PixelProjector(angles, 30, 24, 14.6, 3)
    device = PixelProjector(angles, 30, 24, 14.6, 3, xp=DEVICE)
    forward = device.forward(device_like.DeviceLikeArray(x.copy()))
    assert isinstance(forward, device_like.DeviceLikeArray)
    np.testing.assert_array_equal(DEVICE.asnumpy(forward), host.forward(x))
    np.testing.assert_array_equal(
        DEVICE.asnumpy(device.adjoint(device_like.DeviceLikeArray(y.copy()))), host.adjoint(y))


@pytest.mark.parametrize("method", [sirt, osem])
def test_progress_keeps_the_iterate_on_the_device(method: Any) -> None:
    angles = uniform_angles(20)
    sino = sinogram(ASYMMETRIC, angles, 24, radius=10.0)
    seen: list[Iteration] = []
    out = method(device_like.DeviceLikeArray(sino.copy()), angles_deg=angles, iterations=2,
                 on_iteration=seen.append)
    assert isinstance(out, device_like.DeviceLikeArray)
    assert [s.done for s in seen] == [1, 2]
    assert all(isinstance(s.iterate, device_like.DeviceLikeArray) for s in seen)
    measure = [s.residual if method is sirt else s.change for s in seen]
    assert all(isinstance(m, float) and m > 0 for m in measure)
    expected = method(sino, angles_deg=angles, iterations=2)
    np.testing.assert_array_equal(DEVICE.asnumpy(out), expected)


def _cupy() -> Any:
    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    import cupy

    return cupy


@pytest.mark.gpu
def test_projectors_on_the_gpu_agree_with_the_cpu() -> None:
    """cufinufft's A and Aᵀ against the CPU's within the NUFFT tolerance (1e-2 relative at
    eps 1e-3), the adjoint exact on the device, the pixel pair to float32 rounding."""
    cupy = _cupy()
    angles = uniform_angles(90)
    x, y = _pair(2, 128, 90, 128)
    host = Projector(angles, 128, 128, 63.5, 2)
    device = Projector(angles, 128, 128, 63.5, 2, xp=cupy)
    forward = cupy.asnumpy(device.forward(cupy.asarray(x)))
    adjoint = cupy.asnumpy(device.adjoint(cupy.asarray(y)))
    expected = host.forward(x)
    assert np.linalg.norm(forward - expected) < 1e-2 * np.linalg.norm(expected)
    assert np.linalg.norm(adjoint - host.adjoint(y)) < 1e-2 * np.linalg.norm(host.adjoint(y))
    left = float(np.vdot(forward.astype(np.float64), y))
    assert abs(left - float(np.vdot(x.astype(np.float64), adjoint))) < 1e-4 * abs(left)
    pixel = PixelProjector(angles, 128, 128, 63.5, 2, xp=cupy)
    np.testing.assert_allclose(cupy.asnumpy(pixel.forward(cupy.asarray(x))),
                               PixelProjector(angles, 128, 128, 63.5, 2).forward(x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("method", [sirt, osem])
def test_a_phantom_on_the_gpu_matches_the_cpu_oracle(method: Any) -> None:
    cupy = _cupy()
    angles = uniform_angles(90)
    sino = sinogram(ASYMMETRIC, angles, 96, radius=38.0)
    image = truth(ASYMMETRIC, 96, radius=38.0)
    cpu = method(sino, angles_deg=angles, iterations=10)
    gpu = cupy.asnumpy(method(cupy.asarray(sino), angles_deg=angles, iterations=10))
    assert np.linalg.norm(gpu - cpu) < 1e-2 * np.linalg.norm(cpu)
    assert np.linalg.norm(gpu - image) < 1.05 * np.linalg.norm(cpu - image) + 1e-6


def test_matrix_free_pixel_projector_runs_in_the_device_namespace() -> None:
    """Angle by angle, each angle's matrix uploaded (CSR of it and of its transpose): the
    host's products exactly."""
    angles = uniform_angles(19)
    x, y = _pair(3, 24, 19, 30)
    host = PixelProjector(angles, 30, 24, 14.6, 3, matrix_free=True)
    device = PixelProjector(angles, 30, 24, 14.6, 3, xp=DEVICE, matrix_free=True)
    forward = device.forward(device_like.DeviceLikeArray(x.copy()))
    assert isinstance(forward, device_like.DeviceLikeArray)
    np.testing.assert_array_equal(DEVICE.asnumpy(forward), host.forward(x))
    np.testing.assert_array_equal(
        DEVICE.asnumpy(device.adjoint(device_like.DeviceLikeArray(y.copy()))), host.adjoint(y))

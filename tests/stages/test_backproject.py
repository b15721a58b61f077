"""The direct back-projector: the CUDA kernel's numpy twin against the angle loop that
``fbp`` runs on numpy (on any machine), and the kernel itself on a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.backends.xp import gpu_available
from stages.recon.backproject import KERNEL_SOURCE, backproject, backproject_loop, kernel_twin

#: float32 sums over ~100 angles in another order (v0 + f·(v1 − v0) vs v0 + f·dq).
RTOL, ATOL = 1e-5, 1e-4


def _inputs(angles: int = 97, width: int = 70, rows: int = 3) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(7)
    q = np.zeros((angles, width, rows), dtype=np.float32)
    q[:, 1:-1, :] = rng.standard_normal((angles, width - 2, rows), dtype=np.float32)
    dq = np.zeros_like(q)
    dq[:, :-1, :] = q[:, 1:, :] - q[:, :-1, :]
    theta = np.deg2rad(np.sort(rng.uniform(0.0, 360.0, angles)))
    return q, dq, theta


@pytest.mark.parametrize(("size", "base"), [(40, 34.5), (64, 30.25), (9, 2.0)])
def test_kernel_twin_matches_the_angle_loop(size: int, base: float) -> None:
    """Sizes wider than the detector put positions off both ends (clipped to the zero
    columns), as an off-centre axis or output_size > cols do."""
    q, dq, theta = _inputs()
    loop = backproject_loop(q, dq, theta, size, base)
    twin = kernel_twin(q, theta, size, base)
    assert loop.shape == twin.shape == (q.shape[2], size, size)
    np.testing.assert_allclose(twin, loop, rtol=RTOL, atol=ATOL)
    assert np.abs(loop).max() > 1.0  # not a comparison of zeros


def test_numpy_input_takes_the_loop() -> None:
    q, dq, theta = _inputs(angles=5, width=12, rows=2)
    np.testing.assert_array_equal(backproject(q, dq, theta, 8, 5.5),
                                  backproject_loop(q, dq, theta, 8, 5.5))
    assert "__global__ void backproject" in KERNEL_SOURCE


@pytest.mark.gpu
def test_cuda_kernel_matches_the_twin_and_the_loop() -> None:
    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    import cupy

    q, dq, theta = _inputs(angles=181, width=300, rows=4)
    device = backproject(cupy.asarray(q), cupy.asarray(dq), theta, 256, 150.5)
    assert isinstance(device, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(device), kernel_twin(q, theta, 256, 150.5),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(cupy.asnumpy(device), backproject_loop(q, dq, theta, 256, 150.5),
                               rtol=RTOL, atol=ATOL)

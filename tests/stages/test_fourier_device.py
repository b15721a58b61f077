"""``fourier_fbp`` on the device: one code path for numpy and CuPy blocks.

On the CPU the device path runs in :mod:`tests.stages.device_like` (CuPy's manners over
numpy, with finufft behind its ``Plan`` twin): every array operation is the block's
module's, the spreading goes through :func:`stages.backends.nufft.spreading_plan`, the
filtering runs in device-sized chunks, and the per-scan cache keeps the device tables
and gridder. With one host thread the result must equal the host's bit for bit (the
same numbers underneath). On a GPU (``gpu`` marker) cufinufft spreads with its own
kernel, deconvolved by a probe of that kernel: the result agrees with numpy's to the
NUFFT tolerance, and both are as close to the analytic phantom.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from stages.backends.nufft import spreading_plan
from stages.backends.xp import gpu_available
from stages.recon.fourier import FourierFbpCache, fourier_fbp
from stages.registry import REGISTRY
from tests.stages import device_like
from tests.stages.phantoms import ASYMMETRIC, rel_l2, sinogram, truth, uniform_angles

DEVICE = device_like.NAMESPACE

#: (rows, angles, cols), angles, parameters: 180° and 360° (merged lines) scans, odd row
#: counts, an irregular angle set (no decimation), a window off the padded projection
#: (the axis near the edge), the circle mask, a smaller output and zero padding.
CASES: list[tuple[tuple[int, int, int], Any, dict[str, Any]]] = [
    ((3, 64, 41), uniform_angles(64), {"center": 20.7}),
    ((4, 72, 40), uniform_angles(72, 360.0), {"circle_mask": True, "center": 19.3}),
    ((2, 50, 33), np.sort(np.random.default_rng(1).uniform(0.0, 180.0, 50)),
     {"output_size": 30, "pad": False, "filter_name": "shepp"}),
    ((1, 40, 36), uniform_angles(40), {"center": 3.0, "eps": 1e-4}),
]


@pytest.mark.parametrize(("shape", "angles", "params"), CASES)
def test_the_device_path_equals_the_host_path(shape: tuple[int, int, int], angles: Any,
                                              params: dict[str, Any]) -> None:
    sino = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    host = fourier_fbp(sino, angles_deg=angles, threads=1, **params)
    result = fourier_fbp(device_like.DeviceLikeArray(sino.copy()), angles_deg=angles,
                         **params)
    assert isinstance(result, device_like.DeviceLikeArray), "the slices left the device"
    np.testing.assert_array_equal(DEVICE.asnumpy(result), host)


def test_the_scan_cache_keeps_the_device_plan() -> None:
    """A device block's tables, deconvolution and gridder are made at the first block of
    the scan and reused by the next (the geometry's host plan is the same object)."""
    angles = uniform_angles(48)
    cache = FourierFbpCache()
    blocks = np.random.default_rng(3).random((2, 4, 48, 30), dtype=np.float32)
    results = [DEVICE.asnumpy(fourier_fbp(device_like.DeviceLikeArray(b.copy()),
                                          angles_deg=angles, cache=cache)) for b in blocks]
    assert (cache.hits, cache.misses) == (1, 1)
    plan = cache._plan
    assert plan is not None and set(plan._tables) == {"device_like"}
    assert set(plan._device_deconvolution) == {"device_like"}
    assert [len(idle) for idle in plan._idle.values()] == [1]  # one gridder, given back
    for block, result in zip(blocks, results, strict=True):
        np.testing.assert_array_equal(result, fourier_fbp(block, angles_deg=angles,
                                                          threads=1))


def test_the_stage_runs_on_the_cupy_backend_with_the_scan_cache() -> None:
    """``StageSpec.run`` hands the per-scan cache to a device-ready stage's device run."""
    spec = REGISTRY["fourier_fbp"]
    assert spec.device and "cupy" in spec.backends
    cache = spec.cache() if spec.cache is not None else None
    block = device_like.DeviceLikeArray(np.ones((2, 16, 20), dtype=np.float32))
    spec.run(block, spec.params(), angles_deg=uniform_angles(16), cache=cache)
    assert isinstance(cache, FourierFbpCache) and cache.misses == 1


def test_the_adapter_names_the_options_of_each_library() -> None:
    """finufft (and the test twin) take ``spreadinterponly``/``nthreads``; cufinufft's
    names are checked where it is installed (its plans need a device)."""
    plan = spreading_plan(np, 1, (16, 16), n_trans=2, eps=1e-3, upsampfac=1.25, threads=1)
    plan.setpts(np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.float32))
    grids = plan.execute(np.ones((2, 3), dtype=np.complex64))
    assert grids.shape == (2, 16, 16)
    twin = spreading_plan(DEVICE, 1, (16, 16), n_trans=2, eps=1e-3, upsampfac=1.25,
                          threads=1)
    assert type(twin).__module__ == device_like.__name__


def test_the_adapter_gives_cufinufft_its_own_option_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CuPy block's plan: ``gpu_spreadinterponly``, no ``nthreads``, and the CuPy
    stream current when it is made (a stand-in cufinufft records what it is given)."""
    made: list[tuple[Any, ...]] = []

    class Plan:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append((args, kwargs))

    fake = types.ModuleType("cufinufft")
    fake.Plan = Plan  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cufinufft", fake)
    stream = types.SimpleNamespace(ptr=1234)
    cupy_like = types.SimpleNamespace(
        __name__="cupy", cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    spreading_plan(cupy_like, 1, (40, 40), n_trans=2, eps=1e-2, upsampfac=1.25, threads=8)
    stream.ptr = 0  # the null stream: cufinufft's default, not passed
    spreading_plan(cupy_like, 2, (40, 40), n_trans=1, eps=1e-2, upsampfac=1.25, threads=8)
    assert made == [
        ((1, (40, 40)), {"n_trans": 2, "eps": 1e-2, "dtype": "complex64", "upsampfac": 1.25,
                         "gpu_spreadinterponly": 1, "gpu_stream": 1234}),
        ((2, (40, 40)), {"n_trans": 1, "eps": 1e-2, "dtype": "complex64", "upsampfac": 1.25,
                         "gpu_spreadinterponly": 1})]


def _cupy() -> Any:
    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    import cupy

    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize(("span", "eps"), [(180.0, 1e-2), (360.0, 1e-4)])
def test_cupy_agrees_with_numpy_on_a_phantom(span: float, eps: float) -> None:
    """cufinufft's spreading with its own kernel's deconvolution against finufft's: equal
    to the NUFFT tolerance, and as close to the analytic phantom."""
    cupy = _cupy()
    size, radius = 128, 60.0
    angles = uniform_angles(180, span)
    sino = sinogram(ASYMMETRIC, angles, size, radius=radius)
    cpu = fourier_fbp(sino, angles_deg=angles, filter_name="hann", eps=eps)
    cache = FourierFbpCache()
    gpu = [cupy.asnumpy(fourier_fbp(cupy.asarray(sino), angles_deg=angles,
                                    filter_name="hann", eps=eps, cache=cache))
           for _ in range(2)]
    np.testing.assert_array_equal(gpu[0].shape, cpu.shape)
    assert np.linalg.norm(gpu[0] - cpu) < 5 * eps * np.linalg.norm(cpu)
    assert np.linalg.norm(gpu[1] - gpu[0]) <= 1e-5 * np.linalg.norm(cpu)  # cached plan
    image = truth(ASYMMETRIC, size, radius=radius)
    assert rel_l2(gpu[0], image) < 1.02 * rel_l2(cpu, image) + 1e-3


@pytest.mark.gpu
def test_cupy_merged_lines_and_odd_rows_agree_with_numpy() -> None:
    cupy = _cupy()
    angles = uniform_angles(96, 360.0)
    sino = np.random.default_rng(7).random((3, 96, 64), dtype=np.float32)
    cpu = fourier_fbp(sino, angles_deg=angles, center=30.2, circle_mask=True, eps=1e-4)
    gpu = cupy.asnumpy(fourier_fbp(cupy.asarray(sino), angles_deg=angles, center=30.2,
                                   circle_mask=True, eps=1e-4))
    assert np.linalg.norm(gpu - cpu) < 1e-3 * np.linalg.norm(cpu)

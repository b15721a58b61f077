"""Device-ready stages run unchanged in any array namespace.

Every stage that declares ``device=True`` (and so offers ``backend: cupy``) runs here
over an ``xp`` fixture:

* ``numpy``: the reference;
* ``device_like``: :mod:`tests.stages.device_like`, a CPU namespace with CuPy's manners
  (no implicit conversion to numpy, no NumPy dispatch, no host arrays mixed in): a stage
  that falls back to ``np.`` on its data path fails here, on any machine. The data are
  numpy underneath, so the result must equal the numpy one bit for bit;
* ``cupy``: the real device (``gpu`` marker; skipped cleanly without one), agreeing with
  numpy to a stated tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stages.backends.xp import array_module, gpu_available, ndimage_module
from stages.prep.repair import RepairCounts
from stages.registry import REGISTRY
from streamer.errors import StageError
from tests.stages import device_like

#: stage → (parameters, block shape): small blocks, every device-ready stage once.
CASES: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "remove_nan": ({"val": 2.0}, (3, 8, 9)),
    "remove_neg": ({"val": 0.5}, (3, 8, 9)),
    "adjust_range": ({"dmin": 0.2, "dmax": 0.7}, (3, 8, 9)),
    "median_filter": ({"size": 3, "axis": 1}, (4, 9, 10)),
    "gaussian_filter": ({"sigma": 1.5, "order": 1, "axis": 0}, (4, 9, 10)),
    "remove_outlier": ({"dif": 0.3, "size": 3}, (4, 9, 10)),
    "dezinger_temporal": ({"dif": 0.3, "window": 3}, (5, 6, 7)),
    "rescale": ({"dtype": "uint16", "window": (-0.5, 0.75)}, (3, 8, 9)),
    "total_variation_rof": ({"regularisation_parameter": 0.05, "iterations": 20}, (2, 12, 12)),
    "total_variation_pd": ({"regularisation_parameter": 0.05, "iterations": 20}, (2, 12, 12)),
    "fbp": ({"center": 10.3, "filter_name": "shepp", "circle_mask": True}, (2, 15, 21)),
    "remove_stripe_based_sorting": ({"size": 5, "dim": 2}, (3, 20, 24)),
    "paganin": ({"pixel_size": 1e-4, "dist": 50.0, "energy": 20.0, "alpha": 1e-3}, (3, 20, 24)),
    "paganin_filter": ({"pixel_size_um": 1.0, "distance_m": 0.5, "energy_kev": 20.0,
                        "ratio_delta_beta": 250.0}, (3, 20, 24)),
    "paganin_filter_savu_legacy": ({"pixel_size": 10.0, "distance": 0.5, "energy": 20.0,
                                    "ratio_delta_beta": 250.0}, (3, 20, 24)),
    "paganin_filter_httomolib": ({"pixel_size": 1e-3, "dist": 50.0, "energy": 20.0,
                                  "alpha": 1e-3}, (3, 20, 24)),
    "circular_mask": ({"ratio": 0.8, "value": -1.0, "axis": 1}, (4, 9, 10)),
    "downsample": ({"level": 1, "axis": 2}, (3, 8, 9)),
    "upsample": ({"level": 2, "axis": 1}, (3, 8, 9)),
    "binning": ({"factor_rows": 2, "factor_cols": 3}, (3, 8, 10)),
    "crop": ({"rows": (1, 6), "cols": (2, 9)}, (3, 8, 10)),
    "dark_flat_field_correction": ({"upper_bound": 0.9, "lower_bound": 0.05}, (3, 8, 9)),
    "remove_outlier3d": ({"kernel_size": 3, "dif": 0.3}, (4, 9, 10)),
    "median_filter3d": ({"kernel_size": 5, "dif": 0.0}, (4, 9, 10)),
    "remove_stripe_ti_httomo": ({"beta": 0.2}, (2, 12, 15)),
    "raven_filter": ({"pad_y": 4, "pad_x": 5, "vvalue": 2}, (2, 12, 15)),
    "sirt": ({"iterations": 3, "center": 10.3, "detector_pad": 2}, (2, 15, 21)),
    "cgls": ({"iterations": 3, "center": 10.3, "recon_size": 18}, (2, 15, 21)),
    "fista": ({"iterations": 2, "subsets_number": 3, "regularisation_iterations": 5,
               "regularisation_parameter": 1e-3, "initialisation": "CGLS"}, (2, 15, 21)),
    "admm": ({"iterations": 2, "subsets_number": 3, "regularisation_iterations": 5,
              "regularisation_type": "ROF_TV"}, (2, 15, 21)),  # FBP start: a host round trip
    "osem": ({"iterations": 2, "subsets_number": 3, "regularisation_iterations": 5,
              "center": 10.3}, (2, 15, 21)),
    "normalize": ({"minus_log": True, "cutoff": 1.5, "nonnegative": True}, (3, 8, 9)),
    "normalize_interpolated": ({"minus_log": True, "remove_nans": True}, (3, 8, 9)),
    "normalize_nf": ({"flat_loc": (0, 2, 4), "averaging": "median", "cutoff": 1.2},
                     (5, 8, 9)),
    "normalize_bg": ({"air": 2}, (3, 8, 9)),
    "minus_log": ({}, (3, 8, 9)),
    "remove_large_stripe": ({"size": 5}, (3, 20, 24)),
    "remove_dead_stripe": ({"size": 5}, (3, 20, 24)),
    "data_resampler": ({"newshape": (13, 7), "axis": 2}, (4, 10, 11)),
    "remove_stripe_ti": ({"nblock": 2, "alpha": 1.0}, (3, 6, 12)),
    "remove_stripe_fw": ({"level": 2, "sigma": 2.0}, (3, 12, 14)),
    "FBP3d_tomobar": ({"center": 10.3, "recon_size": 18, "recon_mask_radius": 0.9},
                      (2, 15, 21)),
    "FBP2d_astra": ({"filter_type": "hamming", "center": 10.3}, (2, 15, 21)),
    "remove_stripe_based_filtering": ({"sigma": 3, "size": 5, "sort": True}, (3, 20, 24)),
    "remove_stripe_based_fitting": ({"order": 2, "sigma": 5, "num_chunk": 2}, (3, 20, 24)),
    "remove_all_stripe": ({"la_size": 5, "sm_size": 3}, (3, 20, 24)),
    "remove_all_stripe_httomo": ({"la_size": 5, "sm_size": 3, "normalize": True},
                                 (3, 20, 24)),
    # issue 16's remaining TomoPy/httomolib methods (H23)
    "median_filter3d_tomopy": ({"size": 3}, (4, 9, 10)),
    "remove_outlier3d_tomopy": ({"dif": 0.3, "size": 3}, (4, 9, 10)),
    "remove_outlier1d": ({"dif": 0.3, "size": 3, "axis": 0}, (4, 9, 10)),
    "sobel_filter": ({}, (3, 8, 9)),
    "pad": ({"axis": 2, "npad": 3, "mode": "edge"}, (3, 8, 9)),
    "trim_sinogram": ({"center": 4.5, "x": 1, "y": -2, "diameter": 5}, (2, 8, 9)),
    "normalize_roi": ({"roi": (1, 1, 5, 6)}, (3, 8, 9)),
    "data_checker": ({"zeros_warning": True}, (3, 8, 9)),
    "seam_blend_stitched_data": ({"overlap": 3, "seam_index": 5}, (3, 8, 9)),
    "remove_stripe_sf": ({"size": 4}, (2, 12, 15)),
    # the Fourier-domain FBP through finufft's device twin (cufinufft on a GPU) (H40)
    "fourier_fbp": ({"center": 10.3, "filter_name": "hann", "threads": 1, "eps": 1e-4},
                    (3, 15, 21)),
    "LPRec3d_tomobar": ({"center": 10.3, "recon_size": 18}, (2, 15, 21)),
    "tomopy_recon": ({"center": 10.3}, (2, 15, 21)),
    # last session's TomoPy/httomolib stages, made device-ready (H40)
    "binary_thresholding": ({"val_intensity": 0.4}, (3, 8, 9)),
    "median_filter_nonfinite": ({"size": 3}, (3, 8, 9)),
    "shift_images": ({"sx": (0.5, -1.25, 2.0), "sy": (1.5, 0.3, -0.7)}, (3, 8, 9)),
    "stripes_detect3d": ({"size": 2, "radius": 1}, (3, 8, 9)),
    "stripes_mask3d": ({"threshold": 0.9, "min_stripe_length": 3, "min_stripe_depth": 1,
                        "min_stripe_width": 2}, (3, 8, 9)),
    "remove_ring": ({"rwidth": 3, "thresh": 1.0, "thresh_max": 2.0, "thresh_min": -1.0},
                    (2, 15, 15)),
    "remove_stripe_based_interpolation": ({"snr": 1.5, "size": 5}, (3, 20, 24)),
    "sino_360_to_180": ({"overlap": 3.4, "side": "left"}, (2, 10, 12)),
    "sino_360_to_180_tomopy": ({"overlap": 4.0, "rotation": "right"}, (2, 11, 12)),
    "average_projection_frames": ({"projection_averaging_factor": 3}, (2, 11, 12)),
    "distortion_correction_proj": ({"xcenter": 4.3, "ycenter": 3.6,
                                    "list_fact": (1.0, 2e-3, 1e-3)}, (3, 8, 9)),
    "distortion_correction_proj_discorpy": ({"xcenter": 4.3, "ycenter": 3.6,
                                             "list_fact": (1.0, -2e-3, 1e-3), "order": 3,
                                             "mode": "nearest"}, (3, 8, 9)),
}
#: On a GPU the NUFFT methods use cufinufft's complete transforms (CPU: finufft's
#: spreading + scipy's FFT), equal within the NUFFT tolerance (eps 1e-3), not float32
#: rounding: their results are compared to 1 % of the slice's maximum.
CUPY_LOOSE = frozenset({"sirt", "cgls", "fista", "admm", "fourier_fbp", "LPRec3d_tomobar",
                        "tomopy_recon"})
#: Stages compared on data without repeated values (see _sorting_on_device's note on ties).
TIE_FREE = frozenset({"remove_stripe_based_sorting", "remove_all_stripe",
                      "remove_stripe_based_filtering",
                      "remove_all_stripe_httomo"})
#: Device versions written from the algorithm whose oracle (algotom) computes a step
#: differently: FITPACK's degree-1 spline where the device interpolates a straight line
#: (float32 rounding; see stages/prep/stripe_device.py); separable bilinear weights where
#: scipy's interpn sums the corners in its own order (data_resampler); CG over a batch
#: with dot products summed in another order than BLAS's (remove_stripe_ti).
#: The same, compared to a fraction of the largest value (filter banks summed in another
#: order than PyWavelets' C loops: remove_stripe_fw).
#: The methods on fourier_fbp with its default threads: finufft spreads on the host's
#: threads (summing in another order) where the device twin spreads on one.
ORACLE_OF_RANGE = {"remove_stripe_fw": 1e-5, "LPRec3d_tomobar": 1e-5, "tomopy_recon": 1e-5}
ORACLE_RTOL = {"data_resampler": 1e-6, "remove_stripe_ti": 1e-5, "remove_dead_stripe": 1e-6,
               "remove_all_stripe": 1e-6, "remove_all_stripe_httomo": 1e-6}

#: A stage that is not device-ready (yet): the namespace check must fail it.
NUMPY_ONLY = "find_center_vo"

#: float32 agreement of the cupy run with numpy (different reduction orders and FMA).
CUPY_RTOL, CUPY_ATOL = 1e-5, 1e-5


def _block(shape: tuple[int, int, int]) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(sum(shape))
    data = rng.random(shape, dtype=np.float32)
    data.flat[:: 17] = -0.25  # negatives for remove_neg / adjust_range
    data.flat[5] = np.nan
    data.flat[11] = 3.0  # an outlier
    return data


class Namespace:
    """How a test puts a block into a namespace and takes it back out."""

    def __init__(self, name: str, upload: Callable[[Any], Any],
                 download: Callable[[Any], Any]) -> None:
        self.name, self.upload, self.download = name, upload, download


def _cupy() -> Namespace:
    if not gpu_available():
        pytest.skip("no CUDA device (cupy.is_available() is False or cupy is absent)")
    import cupy

    return Namespace("cupy", cupy.asarray, cupy.asnumpy)


@pytest.fixture(params=["numpy", "device_like", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request: pytest.FixtureRequest) -> Namespace:
    if request.param == "numpy":
        return Namespace("numpy", np.asarray, np.asarray)
    if request.param == "device_like":
        return Namespace("device_like", device_like.DeviceLikeArray,
                         device_like.NAMESPACE.asnumpy)
    return _cupy()


def _params(name: str) -> Any:
    spec = REGISTRY[name]
    return spec.params(**CASES[name][0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_stage_runs_in_the_namespace_of_its_input(name: str, xp: Namespace) -> None:
    spec = REGISTRY[name]
    block = _block(CASES[name][1])
    if name in TIE_FREE:
        block = np.random.default_rng(5).random(CASES[name][1], dtype=np.float32)
    if spec.pattern.value == "sinogram" or name.startswith("paganin"):
        # reconstruction, TV, phase retrieval: finite (and for paganin, positive) input
        block = np.abs(np.nan_to_num(block, nan=0.0)) + np.float32(0.5)
    extra: dict[str, Any] = {
        "angles_deg": np.linspace(0.0, 180.0, block.shape[1], endpoint=False),
        # the normalisations' frame facts (host arrays, as the executor passes them)
        "frame_indices": np.arange(block.shape[0], dtype=np.int64) + 3,
        "flat_indices": np.array([0, 1, 40], dtype=np.int64),
        "projection_indices": np.arange(block.shape[0], dtype=np.int64)}
    flats = np.full((3, *block.shape[1:]), 1.1, dtype=np.float32)
    flats += np.linspace(0.0, 0.2, 3, dtype=np.float32)[:, None, None]  # a drifting beam
    references = {"darks": np.full((2, *block.shape[1:]), 0.05, dtype=np.float32),
                  "flats": flats}
    references["darks"][:, 1, 2] = 2.0  # one dead pixel (dark above flat): repaired
    expected_repairs, repairs = RepairCounts(), RepairCounts()
    expected = spec.run(block.copy(), _params(name), **extra, **references,
                        repairs=expected_repairs)
    source = xp.upload(block.copy())
    backend = "cupy" if xp.name == "cupy" else "numpy"
    extra |= {key: xp.upload(value) for key, value in references.items()}
    result = spec.run(source, _params(name), backend=backend, **extra, repairs=repairs)
    assert array_module(result) is array_module(source), "the result left the input's device"
    host = xp.download(result)
    assert host.shape == expected.shape and host.dtype == expected.dtype
    if xp.name == "cupy" and name in CUPY_LOOSE:
        np.testing.assert_allclose(host, expected, rtol=0,
                                   atol=1e-2 * float(np.abs(expected).max()))
    elif xp.name == "cupy":
        np.testing.assert_allclose(host, expected, rtol=CUPY_RTOL, atol=CUPY_ATOL)
    elif xp.name == "device_like" and name in ORACLE_OF_RANGE:
        np.testing.assert_allclose(host, expected, rtol=0,
                                   atol=ORACLE_OF_RANGE[name] * float(np.nanmax(np.abs(expected))))
    elif xp.name == "device_like" and name in ORACLE_RTOL:
        np.testing.assert_allclose(host, expected, rtol=ORACLE_RTOL[name], atol=0)
    else:
        np.testing.assert_array_equal(host, expected)
    np.testing.assert_array_equal(xp.download(source), block, err_msg="input modified")
    assert repairs.counts == expected_repairs.counts, "repairs counted differently"


def test_every_device_ready_stage_has_a_case() -> None:
    ready = {name for name, spec in REGISTRY.items() if spec.device}
    assert ready == set(CASES), "a stage declared device=True needs a case here"
    assert all("cupy" in REGISTRY[name].backends for name in ready)
    assert "cupy" not in REGISTRY[NUMPY_ONLY].backends  # not device-ready (yet)


def test_the_device_like_namespace_catches_numpy_fallbacks() -> None:
    """The checker must be able to fail: each fallback a GPU would reject raises."""
    block = device_like.DeviceLikeArray(np.ones((2, 3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(block)
    with pytest.raises(TypeError):
        np.sqrt(block)
    with pytest.raises(TypeError):
        np.where(block > 0, block, 0.0)
    with pytest.raises(TypeError, match="host numpy array"):
        _ = block + np.ones(4, dtype=np.float32)
    with pytest.raises(TypeError, match="host numpy array"):
        array_module(block).maximum(block, np.zeros(4, dtype=np.float32))
    assert not isinstance(block, np.ndarray)
    assert isinstance(array_module(block).max(block), device_like.DeviceLikeArray)
    assert ndimage_module(array_module(block)) is not None


def test_a_numpy_only_stage_fails_the_namespace_check() -> None:
    """A stage still on numpy is caught, not silently passed (a CoR finder: the only
    stages left on the host besides the output steps, which pass their block through)."""
    spec = REGISTRY[NUMPY_ONLY]
    assert not spec.device and spec.finds_center is not None
    stack = device_like.DeviceLikeArray(
        np.random.default_rng(0).random((30, 4, 40), dtype=np.float32))
    angles = np.linspace(0.0, 180.0, 30, endpoint=False)
    with pytest.raises(TypeError):  # a NumPy call on the device block, not a refusal
        spec.finds_center(stack, angles, spec.params())


def test_cupy_backend_without_a_device_is_refused_in_one_line() -> None:
    if gpu_available():
        pytest.skip("a CUDA device is present")
    spec = REGISTRY["median_filter"]
    with pytest.raises(StageError, match="backend 'cupy'") as error:
        spec.run(np.ones((2, 5, 5), dtype=np.float32), spec.params(), backend="cupy")
    assert "\n" not in str(error.value)


def test_a_namespace_without_a_scipy_twin_is_refused() -> None:
    with pytest.raises(StageError, match=r"scipy\.ndimage twin"):
        ndimage_module(object())


@pytest.mark.parametrize("dim", [1, 2])
def test_device_sorting_follows_algotom_on_tie_free_data(dim: int) -> None:
    """The device version of Vo's sorting method (written from the paper) against
    algotom's, called directly on each sinogram: the CPU result is the oracle."""
    from algotom.prep import removal

    from stages.prep.stripe import remove_stripe_based_sorting

    block = np.random.default_rng(dim).random((2, 40, 33), dtype=np.float32)
    block += np.linspace(0.0, 0.3, 33, dtype=np.float32)  # a gradient with stripes on it
    block[:, :, 9] += 0.2
    result = remove_stripe_based_sorting(device_like.DeviceLikeArray(block), size=7, dim=dim)
    expected = np.stack([removal.remove_stripe_based_sorting(s, size=7, dim=dim)
                         for s in block]).astype(np.float32)
    np.testing.assert_array_equal(device_like.NAMESPACE.asnumpy(result), expected)


@pytest.mark.parametrize("seed", range(6))
def test_device_row_repair_equals_the_host_repair(seed: int) -> None:
    """The searchsorted repair (device path) gives the host repair's values and count:
    bad pixels at row ends, runs of them, whole bad rows, NaN and inf under the mask."""
    from stages.prep.device_correct import fill_rows
    from stages.prep.repair import fill_from_row_neighbours

    rng = np.random.default_rng(seed)
    data = rng.random((3, 7, 11), dtype=np.float32)
    bad = rng.random(data.shape) < 0.15 * (seed + 1)
    bad[0, 2] = True  # a whole row: takes the fill value
    bad[1, 3, :4] = True  # a run from the row's start
    bad[2, 4, -3:] = True  # a run to the row's end
    data[bad & (rng.random(data.shape) < 0.5)] = np.nan
    data[0, 5, 6] = np.inf
    bad[0, 5, 6] = True
    expected = data.copy()
    expected_count = fill_from_row_neighbours(expected, bad.copy(), 1.0)
    work = device_like.DeviceLikeArray(data.copy())
    count = fill_rows(work, device_like.DeviceLikeArray(bad.copy()), 1.0)
    assert count == expected_count == int(bad.sum())
    np.testing.assert_array_equal(work.get(), expected)


def test_normalize_on_the_device_repairs_and_counts_as_on_the_host() -> None:
    """uint16 counts with dead pixels (flat not above dark), zero counts before -log and
    a hot pixel: the device path repairs the same values and counts them the same."""
    spec = REGISTRY["normalize"]
    rng = np.random.default_rng(3)
    block = rng.integers(100, 4000, size=(4, 6, 10), dtype=np.uint16)
    block[1, 2, 3:6] = 0  # no signal: repaired before -log
    darks = np.full((2, 6, 10), 90, dtype=np.uint16)
    flats = np.full((3, 6, 10), 4100, dtype=np.uint16)
    flats[:, 4, 0] = 80  # dead pixel at a row's start
    params = spec.params(minus_log=True)
    host_counts, device_counts = RepairCounts(), RepairCounts()
    expected = spec.run(block, params, darks=darks, flats=flats, repairs=host_counts)
    result = spec.run(device_like.DeviceLikeArray(block), params, darks=darks, flats=flats,
                      repairs=device_counts)
    assert host_counts.counts == device_counts.counts == {"no_signal": 3 + 4}
    np.testing.assert_array_equal(device_like.NAMESPACE.asnumpy(result), expected)
    assert np.isfinite(expected).all()


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize(("axis", "newshape"), [("auto", (17, 5)), (0, (4, 9)), (2, (8, 8))])
def test_device_resampler_follows_interpn(axis: Any, newshape: tuple[int, int],
                                          interpolation: str) -> None:
    """The separable device resampler against scipy's interpn (the host stage), up- and
    down-sampling, every axis, points outside the grid set to 0."""
    spec = REGISTRY["data_resampler"]
    block = np.random.default_rng(11).random((5, 9, 12), dtype=np.float32)
    params = spec.params(newshape=newshape, axis=axis, interpolation=interpolation)
    expected = spec.run(block, params)
    result = device_like.NAMESPACE.asnumpy(spec.run(device_like.DeviceLikeArray(block), params))
    assert result.shape == expected.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)

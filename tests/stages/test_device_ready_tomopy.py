"""Last session's TomoPy/httomolib stages on the device path, beyond the one small case
each gets in ``test_device_namespace.py``: the branches that case does not reach (Otsu's
histogram, a window with no finite value, shifts indexed by projection number, stripes
actually found, rings actually removed), each on the CuPy-mannered CPU namespace against
the host stage, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.prep.repair import RepairCounts
from stages.registry import REGISTRY
from streamer.errors import StageError
from tests.stages import device_like

DEVICE = device_like.NAMESPACE


def _both(name: str, block: np.ndarray[Any, Any], **extra: Any) -> tuple[Any, Any]:
    spec = REGISTRY[name]
    params = spec.params(**extra.pop("params", {}))
    host = spec.run(block.copy(), params, **extra)
    device = spec.run(device_like.DeviceLikeArray(block.copy()), params, **extra)
    assert isinstance(device, device_like.DeviceLikeArray), "the result left the device"
    return host, DEVICE.asnumpy(device)


def test_otsu_threshold_is_computed_on_the_device() -> None:
    rng = np.random.default_rng(4)
    block = np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.8, 0.05, 240)])
    block = block.reshape(3, 12, 15).astype(np.float32)
    host, device = _both("binary_thresholding", block, params={"otsu": True})
    np.testing.assert_array_equal(device, host)
    assert 200 < host.sum() < 340  # the upper mode, found by the threshold


def test_otsu_on_the_device_refuses_nan_in_one_line() -> None:
    block = np.ones((2, 4, 5), dtype=np.float32)
    block[1, 2, 3] = np.nan
    spec = REGISTRY["binary_thresholding"]
    with pytest.raises(StageError, match="expected finite values"):
        spec.run(device_like.DeviceLikeArray(block), spec.params(otsu=True))


def test_nonfinite_median_repairs_and_counts_on_the_device() -> None:
    block = np.random.default_rng(2).random((2, 9, 11), dtype=np.float32)
    block[0, 0, 0] = np.nan  # a corner
    block[1, 4, 4:7] = np.inf  # a run
    block[1, 8, 10] = -np.inf
    host_counts, device_counts = RepairCounts(), RepairCounts()
    host, device = _both("median_filter_nonfinite", block, params={"size": 3},
                         repairs=host_counts)
    _both("median_filter_nonfinite", block, params={"size": 3}, repairs=device_counts)
    np.testing.assert_array_equal(device, host)
    assert np.isfinite(host).all()
    assert host_counts.counts == device_counts.counts


def test_nonfinite_median_refuses_an_empty_window_on_the_device() -> None:
    block = np.ones((1, 6, 6), dtype=np.float32)
    block[0, :3, :3] = np.nan
    spec = REGISTRY["median_filter_nonfinite"]
    with pytest.raises(StageError, match="holds no finite value"):
        spec.run(device_like.DeviceLikeArray(block), spec.params(size=1))


def test_shifts_follow_the_projection_numbers_on_the_device() -> None:
    block = np.random.default_rng(5).random((3, 10, 12), dtype=np.float32)
    params = {"sx": (0.0, 9.0, 1.5, -2.25, 0.5), "sy": (0.0, 9.0, -0.5, 3.0, 1.0)}
    host, device = _both("shift_images", block, params=params,
                         projection_indices=np.array([4, 2, 3]))
    np.testing.assert_array_equal(device, host)


def test_stripes_are_detected_and_masked_on_the_device() -> None:
    rng = np.random.default_rng(8)
    block = (rng.random((6, 40, 32), dtype=np.float32) * 0.05 + 1.0).astype(np.float32)
    block[:, :, 11] += 0.5  # a full stripe
    block[:, :, 20] -= 0.3
    host, device = _both("stripes_detect3d", block, params={"size": 5, "radius": 2})
    np.testing.assert_array_equal(device, host)
    assert host[:, :, 9:14].mean() < 0.2 and host[:, :, :6].mean() > 0.5  # low at stripes
    for depth in (0, 2):  # 2: these stripes cross every row, too deep (TomoPy's rule)
        params = {"threshold": 0.3, "min_stripe_length": 10, "min_stripe_depth": depth,
                  "min_stripe_width": 3}
        mask_host, mask_device = _both("stripes_mask3d", host, params=params)
        np.testing.assert_array_equal(mask_device, mask_host)
        assert mask_host[:, :, [11, 20]].all() == (depth == 0)
        assert not mask_host[:, :, :5].any()


@pytest.mark.parametrize("mode", ["WRAP", "REFLECT"])
def test_rings_are_removed_on_the_device(mode: str) -> None:
    y, x = np.mgrid[:40, :44]
    r = np.hypot(y - 19.5, x - 21.5)
    image = np.exp(-(r**2) / 352.0) + 0.02 * np.random.default_rng(6).random((40, 44))
    image += 0.3 * ((r > 12.0) & (r < 13.5))  # a ring
    block = np.stack([image, image[::-1]]).astype(np.float32)
    params = {"rwidth": 5, "theta_min": 60, "thresh": 1.0, "thresh_max": 2.0,
              "thresh_min": -1.0, "int_mode": mode, "center_x": 21.0}
    host, device = _both("remove_ring", block, params=params)
    np.testing.assert_array_equal(device, host)
    assert not np.array_equal(host, block)


@pytest.mark.parametrize("norm", [True, False])
def test_interpolated_stripes_on_the_device(norm: bool) -> None:
    """Stripes found in some sinograms and not in others: the device's one gather
    interpolates exactly the host's columns, and leaves the others as they were."""
    rng = np.random.default_rng(12)
    block = (1.0 + 0.05 * rng.random((4, 30, 40))).astype(np.float32)
    block[0, :, 12] *= 1.6
    block[2, :, 25:27] *= 0.5
    params = {"snr": 3.0, "size": 9, "norm": norm}
    host, device = _both("remove_stripe_based_interpolation", block, params=params)
    np.testing.assert_array_equal(device, host)
    assert abs(float(host[0, :, 12].mean()) - 1.025) < 0.05  # interpolated
    assert abs(float(host[2, :, 25].mean()) - 1.025) < 0.05


@pytest.mark.parametrize(("name", "params"), [
    ("sino_360_to_180", {"overlap": -3.0, "side": "right"}),  # a gap of edge values
    ("sino_360_to_180", {"overlap": 7.6, "side": "right"}),
    ("sino_360_to_180_tomopy", {"overlap": 5.0, "rotation": "left"}),
    ("average_projection_frames", {"projection_averaging_factor": 4}),  # a remainder
])
def test_scan_shape_stages_on_the_device(name: str, params: dict[str, Any]) -> None:
    block = np.random.default_rng(9).random((2, 14, 16), dtype=np.float32)
    host, device = _both(name, block, params=params)
    np.testing.assert_array_equal(device, host)

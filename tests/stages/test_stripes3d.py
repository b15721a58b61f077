"""TomoPy's ``stripes_detect3d`` / ``stripes_mask3d`` against a loop-by-loop port of its C
(``libtomo/prep/stripes_detect3d.c``, tomopy/tomopy@2c94ed18: ``gradient3D_local``,
``ratio_mean_stride3d``, ``vertical_median_stride3d``, ``mean_stride3d``,
``remove_inconsistent_stripes``, ``remove_short_stripes``, ``merge_stripes``) in TomoPy's
``(angles, detY, detX)`` layout, and on a scan with a real stripe."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.errors import StageError

F = np.float32


def _m(n: int, k: int, m: int) -> int:
    """C's neighbour rule: k + m, or k - m outside the array."""
    return k + m if 0 <= k + m < n else k - m


def _c_detect(data: np.ndarray[Any, Any], size: int, radius: int) -> np.ndarray[Any, Any]:
    dz, dy, dx = data.shape
    temp = np.empty_like(data)
    for k in range(dz):  # mean_stride3d (its result survives only where both means are 0)
        for j in range(dy):
            for i in range(dx):
                i1, i2, j1, j2, k1, k2 = i - 1, i + 1, j - 1, j + 1, k - 1, k + 1
                i1 = i2 if i1 < 0 else i1
                i2 = i1 if i2 >= dx else i2
                j1 = j2 if j1 < 0 else j1
                j2 = j1 if j2 >= dy else j2
                k1 = k2 if k1 < 0 else k1
                k2 = k1 if k2 >= dz else k2
                temp[k, j, i] = F(0.1428) * (data[k, j, i] + data[k, j, i1] + data[k, j, i2]
                                             + data[k, j1, i] + data[k, j2, i]
                                             + data[k1, j, i] + data[k2, j, i])
    grad = np.empty_like(data)
    for k in range(dz):
        for j in range(dy):
            for i in range(dx):
                i1 = i + 2 if i + 2 < dx else i - 2
                grad[k, j, i] = data[k, j, i1] - data[k, j, i]
    for k in range(dz):
        for j in range(dy):
            for i in range(dx):
                plate = F(0)
                for j_m in range(-radius, radius + 1):
                    for k_m in range(-radius, radius + 1):
                        plate += abs(grad[_m(dz, k, k_m), _m(dy, j, j_m), i])
                plate /= F((2 * radius + 1) ** 2)
                horiz = horiz2 = F(0)
                for j_m in (-1, 0, 1):
                    for i_m in range(1, radius + 1):
                        i1 = i + i_m if i + i_m < dx else i - i_m
                        horiz += abs(grad[k, _m(dy, j, j_m), i1])
                    for i_m in range(-radius, 0):
                        i1 = i + i_m if i + i_m >= 0 else i - i_m
                        horiz2 += abs(grad[k, _m(dy, j, j_m), i1])
                horiz /= F(radius * 3)
                horiz2 /= F(radius * 3)
                if horiz >= plate and horiz != 0:
                    temp[k, j, i] = plate / horiz
                if horiz < plate and plate != 0:
                    temp[k, j, i] = horiz / plate
                min_val = F(0)
                if horiz2 >= plate and horiz2 != 0:
                    min_val = plate / horiz2
                if horiz2 < plate and plate != 0:
                    min_val = horiz2 / plate
                temp[k, j, i] = min(temp[k, j, i], min_val)
    out = np.empty_like(data)
    for k in range(dz):
        for j in range(dy):
            for i in range(dx):
                values = sorted(temp[_m(dz, k, k_m), j, i] for k_m in range(-size, size + 1))
                out[k, j, i] = values[size - 1]
    return out


def _c_mask(w: np.ndarray[Any, Any], threshold: float, length: int, depth: int, width: int,  # noqa: PLR0917 - the C signature
            sensitivity: float) -> np.ndarray[Any, Any]:
    dz, dy, dx = w.shape
    mask = w <= F(threshold)
    t_vertical = int(F(0.01) * F(sensitivity) * F(length))
    t_depth = int(F(0.01) * F(sensitivity) * F(depth))
    out = mask.copy()
    for k, j, i in zip(*np.nonzero(mask), strict=True):  # depth consistency
        if depth != 0:
            count = sum(mask[k, _m(dy, j, y), i] for y in range(-(depth // 2), depth // 2 + 1))
            if count > t_depth:
                out[k, j, i] = False
    mask = out.copy()
    for k, j, i in zip(*np.nonzero(mask), strict=True):  # vertical consistency
        count = sum(mask[_m(dz, k, m), j, i] for m in range(-(length // 2), length // 2 + 1))
        if count < t_vertical:
            out[k, j, i] = False
    mask = out.copy()
    for k, j, i in zip(*np.nonzero(mask), strict=True):  # short stripes
        count = sum(mask[_m(dz, k, m), j, i] for m in range(-(length // 2), length // 2 + 1))
        if count < length // 2:
            out[k, j, i] = False
    mask = out.copy()
    for _ in range(width):
        for k, j, i in zip(*np.nonzero(~mask), strict=True):
            hw, vl = width // 2, 2 * width
            left = any(mask[k, j, i + x if i + x >= 0 else i - x] for x in range(-hw, 1))
            right = any(mask[k, j, i + x if i + x < dx else i - x] for x in range(0, hw + 1))
            if left and right:
                out[k, j, i] = True
            if not out[k, j, i]:
                up = any(mask[k + x if k + x >= 0 else k - x, j, i] for x in range(-vl, 1))
                down = any(mask[k + x if k + x < dz else k - x, j, i] for x in range(0, vl + 1))
                if up and down:
                    out[k, j, i] = True
        mask = out.copy()
    return out


def _scan(seed: int, shape: tuple[int, int, int] = (30, 6, 24)) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    data = (0.5 + 0.05 * rng.random(shape)).astype(np.float32)
    data[:, :, 0] = data[:, :, 1]  # a flat edge: zero gradients, the C code's tie branch
    data[4:26, 1:4, 9:12] += 0.3  # a partial stripe (angles 4-25, rows 1-3)
    return data


def _run(name: str, projections: np.ndarray[Any, Any], **params: Any) -> np.ndarray[Any, Any]:
    spec = REGISTRY[name]
    sinograms = np.ascontiguousarray(projections.transpose(1, 0, 2))
    return spec.run(sinograms, spec.params(**params)).transpose(1, 0, 2)


@pytest.mark.parametrize(("size", "radius"), [(10, 3), (4, 1), (2, 2)])
def test_stripes_detect3d_equals_tomopys_c(size: int, radius: int) -> None:
    data = _scan(size)
    expected = _c_detect(data, size, radius)
    result = _run("stripes_detect3d", data, size=size, radius=radius)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("depth", [0, 2, 4])
def test_stripes_mask3d_equals_tomopys_c(depth: int) -> None:
    weights = _c_detect(_scan(1), 6, 2)
    expected = _c_mask(weights, 0.6, 10, depth, 3, 85.0)
    result = _run("stripes_mask3d", weights, threshold=0.6, min_stripe_length=10,
                  min_stripe_depth=depth, min_stripe_width=3, sensitivity_perc=85.0)
    np.testing.assert_array_equal(result, expected.astype(np.float32))


def test_detect_then_mask_find_a_stripe_on_smooth_data() -> None:
    rng = np.random.default_rng(1)
    shape = (30, 6, 24)
    profile = 0.5 + 0.3 * np.sin(3 * np.linspace(0, 1, 24))
    data = (profile[None, None, :] + 0.02 * rng.random(shape)).astype(np.float32)
    data[4:26, 1:4, 9:12] += 0.3
    weights = _run("stripes_detect3d", data, size=6, radius=2)
    mask = _run("stripes_mask3d", weights, threshold=0.6, min_stripe_length=10,
                min_stripe_depth=0, min_stripe_width=3)
    per_column = mask.sum(axis=(0, 1))
    assert per_column[9:12].min() == 30 * 6  # the stripe's columns, every angle and row
    assert per_column[:5].sum() == 0 and per_column[16:].sum() == 0


def test_stripes_checks_are_tomopys() -> None:
    with pytest.raises(StageError, match="size: expected 1 … 15"):
        _run("stripes_detect3d", _scan(0), size=16)
    with pytest.raises(StageError, match="min_stripe_length"):
        _run("stripes_mask3d", _scan(0), min_stripe_length=30)

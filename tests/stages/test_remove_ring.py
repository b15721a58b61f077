"""TomoPy's ``remove_ring`` against a literal port of its C (``libtomo/misc/remove_ring.c``,
tomopy/tomopy@2c94ed18): the polar transform, the running median (quicksort, then one
bubble pass per step), the running azimuthal means, the inverse transform, in float32
where C uses float; and on a slice with a ring."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stages.misc.rings import remove_ring
from stages.registry import REGISTRY

F = np.float32
PI = 3.14159265359


def _iroundf(x: float) -> int:
    x = float(F(x))
    return math.floor(x + 0.5) if x != 0.0 else 0


def _polar(image: Any, cx: float, cy: float, t_max: float, t_min: float) -> Any:
    h, w = image.shape
    max_r = min(int(F(cx) + 1), int(F(cy) + 1), int(w - F(cx)), int(h - F(cy)))
    ph = _iroundf(float(F(2.0 * PI * max_r)))
    polar = np.zeros((ph, max_r), F)
    for row in range(ph):
        for r in range(max_r):
            theta = F(float(F(row)) * 2.0 * PI / float(F(ph)))
            fl_x = F(float(F(r)) * math.cos(float(theta) + PI / float(F(ph))))
            fl_y = F(float(F(r)) * math.sin(float(theta) + PI / float(F(ph))))
            value = image[_iroundf(F(fl_y + F(cy))), _iroundf(F(fl_x + F(cx)))]
            polar[row, r] = t_max if value > t_max else t_min if value < t_min else value
    return polar


def _median_rows(out: Any, image: Any, start_col: int, end_col: int, k: int) -> None:
    """``median_filter_fast_1D`` along x, with its reads (next row past the edge)."""
    h, w = image.shape
    flat = image.ravel()
    for row in range(h):
        col = start_col
        values, ages = [], []
        for n in range(-k, k + 1):
            c = col + n
            if c < 0:  # the opposite angle; its C reads on into the next rows (flat)
                index = (row + h // 2 if row < h // 2 else row - h // 2) * w - c
                values.append(flat[index] if index < flat.size else F(0))
            else:
                index = row * w + c
                values.append(flat[index] if index < flat.size else F(0))
            ages.append(n + k)
        order = np.argsort(values, kind="stable")
        values = [values[i] for i in order]
        ages = [ages[i] for i in order]
        out[row, col] = values[k]
        for col in range(start_col + 1, end_col + 1):
            nxt = image[row, col + k] if col + k < w else F(0)
            for i in range(2 * k + 1):
                ages[i] -= 1
                if ages[i] < 0:
                    ages[i], values[i] = 2 * k, nxt
            values, ages = [list(t) for t in zip(*sorted(zip(values, ages, strict=True)),
                                                 strict=True)]
            out[row, col] = values[k]


def _mean_cols(out: Any, image: Any, start_col: int, end_col: int,  # noqa: PLR0917 - C's
               k: int, mode: int) -> None:
    h = image.shape[0]
    num = 2 * k + 1
    for col in range(start_col, end_col + 1):
        if mode == 0:
            total = sum(float(image[(n + h) % h if n < 0 else n % h, col])
                        for n in range(-k, k + 1))
            out[0, col] = total / num
            for row in range(1, h):
                last, nxt = (row - 1) - k, row + k
                last += h if last < 0 else 0
                nxt -= h if nxt >= h else 0
                total = total - float(image[last, col]) + float(image[nxt, col])
                out[row, col] = total / num if image[row, col] != 0 else 0.0
        else:
            mid = h // 2
            for low, high in ((0, mid), (mid, h)):
                def ref(r: int, low: int = low, high: int = high) -> int:
                    if r < low:
                        return 2 * low - r
                    return 2 * high - r - 2 if r >= high else r
                total = sum(float(image[ref(low + n), col]) for n in range(-k, k + 1))
                out[low, col] = total / num
                for row in range(low + 1, high):
                    total = (total - float(image[ref((row - 1) - k), col])
                             + float(image[ref(row + k), col]))
                    out[row, col] = total / num if image[row, col] != 0 else 0.0


def _c_remove_ring(image: Any, thresh: float, t_max: float,  # noqa: PLR0917 - C's order
                   t_min: float, theta_min: int, rwidth: int, mode: int) -> Any:
    h, w = image.shape
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    polar = _polar(image, cx, cy, t_max, t_min)
    ph, pw = polar.shape
    m_azi = math.floor(float(F(ph)) / 360.0 * theta_min)
    m_rad = 2 * rwidth + 1
    filtered = np.zeros_like(polar)
    thirds = ((0, pw // 3 - 1), (pw // 3, 2 * pw // 3 - 1), (2 * pw // 3, pw - 1))
    for (a, b), k in zip(thirds, (m_rad // 3, 2 * m_rad // 3, m_rad), strict=True):
        if b >= a:
            _median_rows(filtered, polar, a, b, k)
    polar = polar - filtered
    polar[(polar > thresh) | (polar < -thresh)] = 0
    for (a, b), k in zip(thirds, (m_azi // 3, 2 * m_azi // 3, m_azi), strict=True):
        if b >= a:
            _mean_cols(filtered, polar, a, b, k, mode)
    ring = np.zeros((h, w), F)
    for row in range(h):
        for col in range(w):
            theta = F(math.atan2(float(F(row - cy)), float(F(col - cx)) - PI / float(F(ph))))
            if theta < 0:
                theta = F(float(theta) + 2.0 * PI)
            pol_row = _iroundf(float(F(theta * F(ph))) / (2.0 * PI))
            pol_col = _iroundf(F(math.sqrt(F(F(row - cy) ** 2 + F(col - cx) ** 2))))
            if pol_row < ph and pol_col < pw:
                ring[row, col] = filtered[pol_row, pol_col]
    return image - ring


def _ringed(shape: tuple[int, int]) -> Any:
    h, w = shape
    y, x = np.mgrid[:h, :w]
    r = np.hypot(y - (h - 1) / 2, x - (w - 1) / 2)
    rng = np.random.default_rng(h)
    image = np.exp(-(r**2) / (0.2 * h * w)) + 0.02 * rng.random(shape)
    image += 0.3 * ((r > 0.3 * h) & (r < 0.3 * h + 1.5))  # a ring
    return image.astype(np.float32)


@pytest.mark.parametrize(("shape", "rwidth", "theta_min", "mode"), [
    ((40, 40), 3, 30, "WRAP"), ((36, 44), 5, 60, "REFLECT"), ((30, 30), 30, 30, "WRAP")])
def test_remove_ring_equals_tomopys_c(shape: tuple[int, int], rwidth: int, theta_min: int,
                                      mode: str) -> None:
    image = _ringed(shape)
    expected = _c_remove_ring(image, 1.0, 2.0, -1.0, theta_min, rwidth,
                              0 if mode == "WRAP" else 1)
    result = remove_ring(image[None], thresh=1.0, thresh_max=2.0, thresh_min=-1.0,
                         theta_min=theta_min, rwidth=rwidth, int_mode=mode)[0]
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-6)


def test_remove_ring_lowers_a_ring() -> None:
    image = _ringed((64, 64))
    y, x = np.mgrid[:64, :64]
    r = np.hypot(y - 31.5, x - 31.5)
    on_ring = (r > 0.3 * 64) & (r < 0.3 * 64 + 1.5)
    inner = (r > 0.3 * 64 - 3) & (r < 0.3 * 64 - 1)
    outer = (r > 0.3 * 64 + 2.5) & (r < 0.3 * 64 + 4.5)
    spec = REGISTRY["remove_ring"]
    result = spec.run(image[None], spec.params(rwidth=3, thresh=1.0, thresh_max=2.0,
                                               thresh_min=-1.0))[0]
    before = image[on_ring].mean() - (image[inner].mean() + image[outer].mean()) / 2
    after = result[on_ring].mean() - (result[inner].mean() + result[outer].mean()) / 2
    assert after < 0.5 * before
    assert spec.params(rec=None).rec is None

"""TomoPy's ``tomopy.misc.corr.remove_ring``: ring removal on reconstructed slices, in the
polar domain (a port of TomoPy's C ``libtomo/misc/remove_ring.c``, vectorised).

For each slice ``(y, x)`` of the block (a reconstructed block is ``(slices, y, x)``):

1. **Polar image** of radius ``R`` (the centre's distance to the nearest edge, TomoPy's
   integer rule) and ``round(2πR)`` angles, by nearest neighbour (TomoPy's rounding and
   half-step angle offset), values clipped to ``[thresh_min, thresh_max]``.
2. **Radial median** of each angle's row, over ``2·k+1`` radii with ``k`` = ``m/3``,
   ``2m/3`` and ``m`` (``m = 2·rwidth + 1``) in the inner, middle and outer thirds;
   a radius below 0 reads the opposite angle (row ``± rows/2``), one beyond the edge
   reads 0, as TomoPy's running median does. The ring image is the polar image minus
   it, zeroed where it exceeds ``±thresh``.
3. **Azimuthal mean** of the ring image over ``2·j+1`` angles (``j`` = ``a/3``, ``2a/3``,
   ``a`` by third, ``a = floor(rows/360 · theta_min)``), wrapping at 360°
   (``int_mode: WRAP``) or reflecting within each half (``REFLECT``); where the ring
   image is 0 the mean is 0 (except in the first row of each pass, as TomoPy).
4. **Back to the slice** by TomoPy's nearest-neighbour inverse (including its
   ``x - π/rows`` in the angle), and subtracted from the slice.

Where a stencil reaches outside the polar image further than one reflection (tiny slices,
where TomoPy's C reads outside its arrays), indices are wrapped or clamped into it.
The step runs in whichever section it is placed (HTTomo's ``all``); it is meant for the
slices after the reconstructor. The template's ``rec: REQUIRED`` is TomoPy's data
argument listed as a parameter: ``rec`` only takes ``null``.

Every index table (polar coordinates, the median's taps, the mean's rows, the inverse
map) depends on the slice's geometry only: it is made on the host and uploaded, and the
data steps run in the array module of the block, so a CuPy block stays on its device.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "remove_ring"]

#: The C code's π.
PI = 3.14159265359


def _iround(values: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """TomoPy's ``iroundf``: ``floor(x + 0.5)`` (in double), 0 for 0."""
    return np.floor(values.astype(np.float64) + 0.5).astype(np.int64)


def _max_radius(cx: float, cy: float, width: int, height: int) -> int:
    """``min_distance_to_edge`` (C ``int`` conversions truncate)."""
    return min(int(np.float32(cx) + 1), int(np.float32(cy) + 1), int(width - np.float32(cx)),
               int(height - np.float32(cy)))


def _polar_indices(cx: float, cy: float, radius: int, rows: int
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    theta = (np.arange(rows, dtype=np.float64) * 2.0 * PI / rows).astype(np.float32)
    angle = theta.astype(np.float64)[:, None] + PI / np.float32(rows)
    r = np.arange(radius, dtype=np.float64)[None, :]
    fl_x = (r * np.cos(angle)).astype(np.float32)
    fl_y = (r * np.sin(angle)).astype(np.float32)
    return _iround(fl_y + np.float32(cy)), _iround(fl_x + np.float32(cx))


def _radial_median(polar: npt.NDArray[np.float32], first: int, last: int, half: int
                   ) -> npt.NDArray[np.float32]:
    """Median over radii ``c - half … c + half`` for columns ``first … last - 1``, with
    TomoPy's running median's reads: below radius 0 the opposite angle's row; beyond the
    edge 0, except in the window it starts from at ``first``. Where a read passes a row's
    end (the window it starts from, or a kernel wider than the polar image), its C code
    reads on into the next polar row: reproduced, with 0 past the array's end."""
    xp = array_module(polar)
    rows, width = polar.shape
    cols = np.arange(first, last)
    taps = cols[None, :] + np.arange(-half, half + 1)[:, None]  # (2·half+1, n)
    beyond = taps >= width
    from_start = beyond & (taps <= first + half)  # read by the initial window
    flat = polar.ravel()
    out: npt.NDArray[np.float32] = xp.empty((rows, cols.size), np.float32)
    dropped = xp.asarray((beyond & ~from_start)[None])
    chunk = max(1, (16 << 20) // max(1, 4 * taps.size))
    for top in range(0, rows, chunk):
        row = np.arange(top, min(top + chunk, rows))[:, None, None]
        opposite = np.where(row < rows // 2, row + rows // 2, row - rows // 2)
        # flat reads, as the C code's: row-major, running on into the next rows
        source = np.where(taps[None] < 0, opposite * width - taps[None],
                          row * width + taps[None])
        values = flat[xp.asarray(np.clip(source, 0, flat.size - 1))]
        values = xp.where(xp.asarray(source < flat.size), values, np.float32(0))
        values = xp.where(dropped, np.float32(0), values)
        out[top:top + row.shape[0]] = xp.median(values, axis=1)
    return out


def _reflected(index: npt.NDArray[np.int64], low: int, high: int) -> npt.NDArray[np.int64]:
    """TomoPy's REFLECT rule within ``[low, high)``: ``low + (low - r)`` below,
    ``high - (r - high) - 2`` above; then clamped."""
    out = np.where(index < low, 2 * low - index, index)
    out = np.where(out >= high, 2 * high - out - 2, out)
    return np.clip(out, low, high - 1)


def _azimuthal_mean(ring: npt.NDArray[np.float32], first: int, last: int, half: int,
                    mode: int) -> npt.NDArray[np.float32]:
    xp = array_module(ring)
    rows = ring.shape[0]
    part = ring[:, first:last].astype(xp.float64)
    offsets = np.arange(-half, half + 1)
    if mode == 0:  # WRAP
        index = (np.arange(rows)[:, None] + offsets[None, :]) % rows
        mean = part[xp.asarray(index)].sum(axis=1) / (2 * half + 1)
        starts = [0]
    else:  # REFLECT, each half on its own
        mid = rows // 2
        row = np.arange(rows)[:, None] + offsets[None, :]
        index = np.where(np.arange(rows)[:, None] < mid, _reflected(row, 0, mid),
                         _reflected(row, mid, rows))
        mean = part[xp.asarray(index)].sum(axis=1) / (2 * half + 1)
        starts = [0, mid] if mid < rows else [0]
    keep = part != 0
    keep[xp.asarray(starts)] = True  # the first row of a pass has no zero check
    result: npt.NDArray[np.float32] = xp.where(keep, mean, 0.0).astype(xp.float32)
    return result


def _inverse(polar: npt.NDArray[np.float32], cx: float, cy: float, height: int, width: int
             ) -> npt.NDArray[np.float32]:
    rows, radius = polar.shape
    y = (np.arange(height, dtype=np.float32) - np.float32(cy))[:, None]
    x = (np.arange(width, dtype=np.float32) - np.float32(cx))[None, :]
    theta = np.arctan2(np.broadcast_to(y, (height, width)).astype(np.float64),
                       (x.astype(np.float64) - PI / np.float32(rows))).astype(np.float32)
    theta = np.where(theta < 0, (theta.astype(np.float64) + 2.0 * PI).astype(np.float32),
                     theta)
    scaled = (theta * np.float32(rows)).astype(np.float32)  # float × float in C
    pol_row = _iround((scaled.astype(np.float64) / (2.0 * PI)).astype(np.float32))
    pol_col = _iround(np.sqrt(y * y + x * x).astype(np.float32))
    inside = (pol_row < rows) & (pol_col < radius)
    xp = array_module(polar)
    out: npt.NDArray[np.float32] = xp.zeros((height, width), np.float32)
    out[xp.asarray(inside)] = polar[xp.asarray(pol_row[inside]), xp.asarray(pol_col[inside])]
    return out


class RemoveRingParams(StageParams):
    """``tomopy.misc.corr.remove_ring`` (template defaults)."""

    rec: None = Field(default=None, description="null: the slices are the input")
    center_x: float | None = Field(default=None, allow_inf_nan=False)
    center_y: float | None = Field(default=None, allow_inf_nan=False)
    thresh: float = Field(default=300.0, allow_inf_nan=False)
    thresh_max: float = Field(default=300.0, allow_inf_nan=False)
    thresh_min: float = Field(default=-100.0, allow_inf_nan=False)
    theta_min: int = Field(default=30, ge=0, lt=180)
    rwidth: int = Field(default=30, ge=0)
    int_mode: Literal["WRAP", "REFLECT", "wrap", "reflect"] = "WRAP"


def _remove_ring_slice(image: npt.NDArray[np.float32], cx: float, cy: float,
                       params: dict[str, Any]) -> npt.NDArray[np.float32]:
    height, width = image.shape
    radius = _max_radius(cx, cy, width, height)
    rows = math.floor(float(np.float32(2.0 * PI * radius)) + 0.5)
    if radius < 3 or rows < 2:
        raise StageError(f"stage 'remove_ring': expected the centre ({cx}, {cy}) at least 3 "
                         f"pixels inside the {height}×{width} slice, got radius {radius}")
    ys, xs = _polar_indices(cx, cy, radius, rows)
    xp = array_module(image)
    polar = xp.clip(image[xp.asarray(np.clip(ys, 0, height - 1)),
                          xp.asarray(np.clip(xs, 0, width - 1))],
                    np.float32(params["thresh_min"]), np.float32(params["thresh_max"]))
    m_rad = 2 * params["rwidth"] + 1
    m_azi = math.floor(float(np.float32(rows)) / 360.0 * params["theta_min"])
    thirds = ((0, radius // 3), (radius // 3, 2 * radius // 3), (2 * radius // 3, radius))
    kernels = (m_rad // 3, 2 * m_rad // 3, m_rad)
    smooth = xp.zeros_like(polar)
    for (first, last), half in zip(thirds, kernels, strict=True):
        if last > first:
            smooth[:, first:last] = _radial_median(polar, first, last, half)
    ring = polar - smooth
    threshold = np.float32(params["thresh"])
    ring[(ring > threshold) | (ring < -threshold)] = 0
    mode = 0 if params["int_mode"].lower() == "wrap" else 1
    azimuthal = xp.zeros_like(ring)
    for (first, last), half in zip(thirds, (m_azi // 3, 2 * m_azi // 3, m_azi), strict=True):
        if last > first:
            azimuthal[:, first:last] = _azimuthal_mean(ring, first, last, half, mode)
    result: npt.NDArray[np.float32] = (image - _inverse(azimuthal, cx, cy, height, width)
                                       ).astype(xp.float32)
    return result


def remove_ring(block: npt.NDArray[Any], *, rec: None = None, center_x: float | None = None,
                center_y: float | None = None, thresh: float = 300.0,
                thresh_max: float = 300.0, thresh_min: float = -100.0, theta_min: int = 30,
                rwidth: int = 30, int_mode: str = "WRAP") -> npt.NDArray[np.float32]:
    """Remove rings from every slice ``block[s]`` of ``(slices, y, x)`` (module notes)."""
    stage = "remove_ring"
    if not 0 <= theta_min < 180:
        raise StageError(f"stage {stage!r}: theta_min: expected 0 … 179, got {theta_min}")
    if int_mode.lower() not in ("wrap", "reflect"):
        raise StageError(f"stage {stage!r}: int_mode: expected WRAP|REFLECT, got {int_mode!r}")
    checked = float_block(block, stage)
    xp = array_module(checked)
    data: npt.NDArray[np.float32] = xp.array(checked, dtype=xp.float32, copy=True)
    height, width = data.shape[1:]
    cx = (width - 1.0) / 2.0 if center_x is None else float(center_x)
    cy = (height - 1.0) / 2.0 if center_y is None else float(center_y)
    params = {"thresh": thresh, "thresh_max": thresh_max, "thresh_min": thresh_min,
              "theta_min": theta_min, "rwidth": rwidth, "int_mode": int_mode}
    for s in range(data.shape[0]):
        data[s] = _remove_ring_slice(data[s], cx, cy, params)
    return data


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="remove_ring", fn=remove_ring, pattern=Pattern.ALL,
        angle_local=False,  # meant for reconstructed slices
        params=RemoveRingParams,
        # input, float32 copy; per slice the polar images (≈ 2π R² ≤ 1.6 slices each,
        # four of them) and the median's (2k+1)-deep stack of one third
        memory=scaled_memory(3.0),
        summary="ring removal on reconstructed slices in polar coordinates (TomoPy)",
        aliases=("tomopy.misc.corr.remove_ring",), device=True,
    ),
)

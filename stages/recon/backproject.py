"""The direct (pixel-driven, linear-interpolating) back-projection of :func:`fbp`, on
either device.

Input is the filtered, angle-weighted data ``q`` of shape ``(angles, width, rows)``
(detector column ``k`` at index ``offset + k``, one zero column at each end so that a
position off the detector reads 0) and its first difference ``dq``; pixel ``(iy, ix)``
of row ``r`` sums, over the angles, ``q[a, i, r] + f · dq[a, i, r]`` at the position
``u = x cos θ + y sin θ + base`` (``x = ix − (N−1)/2``, ``y = (N−1)/2 − iy``,
``base = offset + center``), clipped to ``[0, width − 1]``, ``i = min(⌊u⌋, width − 2)``,
``f = u − i``.

Two implementations of that one formula:

* :func:`backproject_loop`: an angle loop of whole-array operations in the array
  namespace of ``q`` (numpy, or any namespace with numpy's API);
* :data:`KERNEL_SOURCE`: a CUDA kernel, one thread per output voxel looping over the
  angles, compiled by CuPy (``cupy.RawKernel``) where ``q`` is a CuPy array. It reads
  ``q`` and ``q``'s neighbour (``dq`` is not needed on the device) and never leaves the
  device: for previews of a band already there.

:func:`kernel_twin` is the kernel transcribed line by line into numpy (the same index
arithmetic, float32 throughout): on a machine without a GPU the tests check the twin
against :func:`backproject_loop`, and on a GPU the kernel against both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.xp import array_module

__all__ = ["KERNEL_SOURCE", "backproject", "backproject_loop", "kernel_twin"]

KERNEL_SOURCE = r"""
extern "C" __global__ void backproject(
    const float* q, const float* cos_t, const float* sin_t, float* out,
    const int angles, const int width, const int rows, const int size, const float base)
{
    const long long voxel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long plane = (long long)size * size;
    if (voxel >= plane * rows) return;
    const int r = (int)(voxel / plane);           // out[r, iy, ix]
    const long long pixel = voxel - (long long)r * plane;
    const int iy = (int)(pixel / size);
    const int ix = (int)(pixel - (long long)iy * size);
    const float half = 0.5f * (float)(size - 1);
    const float x = (float)ix - half;
    const float y = half - (float)iy;            // y points up: row 0 is the top
    const float last = (float)(width - 1);
    float acc = 0.0f;
    for (int a = 0; a < angles; ++a) {
        float u = __fadd_rn(__fadd_rn(__fmul_rn(x, cos_t[a]), __fmul_rn(y, sin_t[a])), base);
        u = fminf(fmaxf(u, 0.0f), last);
        int i = min((int)u, width - 2);
        const float f = u - (float)i;
        const float v0 = q[((long long)a * width + i) * rows + r];
        const float v1 = q[((long long)a * width + i + 1) * rows + r];
        acc += v0 + f * (v1 - v0);
    }
    out[voxel] = acc;
}
"""


def _trig(angles_rad: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float32], ...]:
    """cos and sin per angle, rounded to float32 as the loop uses them."""
    cos_t = np.array([math.cos(t) for t in angles_rad], dtype=np.float32)
    sin_t = np.array([math.sin(t) for t in angles_rad], dtype=np.float32)
    return cos_t, sin_t


def backproject_loop(q: Any, dq: Any, angles_rad: npt.NDArray[np.float64], size: int,
                     base: float) -> Any:
    """Back-project ``q`` (``(angles, width, rows)``) onto ``(rows, size, size)`` by an
    angle loop of whole-array operations in ``q``'s namespace."""
    xp = array_module(q)
    n_angles, width, rows = q.shape
    last = width - 1
    grid = xp.arange(size, dtype=xp.float32) - np.float32((size - 1) / 2)
    x = xp.tile(grid, size)  # x of pixel (iy, ix), flattened in C order
    y = xp.repeat(-grid, size)  # y points up: row 0 is the top of the slice
    acc = xp.zeros((size * size, rows), dtype=xp.float32)
    value = xp.empty_like(acc)
    slope = xp.empty_like(acc)
    pos = xp.empty(size * size, dtype=xp.float32)
    tmp = xp.empty_like(pos)
    cos_t, sin_t = _trig(angles_rad)
    for a in range(n_angles):
        xp.multiply(x, cos_t[a], out=pos)
        xp.multiply(y, sin_t[a], out=tmp)
        pos += tmp
        pos += np.float32(base)
        xp.clip(pos, 0.0, float(last), out=pos)
        idx = pos.astype(xp.intp)
        xp.minimum(idx, last - 1, out=idx)
        xp.subtract(pos, idx, out=tmp)  # fraction in [0, 1]
        xp.take(q[a], idx, axis=0, out=value)
        xp.take(dq[a], idx, axis=0, out=slope)
        slope *= tmp[:, None]
        acc += value
        acc += slope
    return xp.ascontiguousarray(acc.T).reshape(rows, size, size)


def kernel_twin(q: npt.NDArray[np.float32], angles_rad: npt.NDArray[np.float64], size: int,
                base: float) -> npt.NDArray[np.float32]:
    """:data:`KERNEL_SOURCE` in numpy, for every voxel at once (float32 throughout)."""
    n_angles, width, rows = q.shape
    voxel = np.arange(rows * size * size, dtype=np.int64)
    plane = size * size
    r = voxel // plane
    pixel = voxel - r * plane
    iy, ix = pixel // size, pixel - (pixel // size) * size
    half = np.float32(0.5) * np.float32(size - 1)
    x = ix.astype(np.float32) - half
    y = half - iy.astype(np.float32)
    last = np.float32(width - 1)
    acc = np.zeros(voxel.shape, dtype=np.float32)
    flat = q.reshape(-1)
    cos_t, sin_t = _trig(angles_rad)
    for a in range(n_angles):
        u = (x * cos_t[a] + y * sin_t[a]) + np.float32(base)
        u = np.minimum(np.maximum(u, np.float32(0.0)), last)
        i = np.minimum(u.astype(np.int64), width - 2)
        f = u - i.astype(np.float32)
        v0 = flat[(a * width + i) * rows + r]
        v1 = flat[(a * width + i + 1) * rows + r]
        acc += v0 + f * (v1 - v0)
    return acc.reshape(rows, size, size)


def _kernel_on_device(q: Any, angles_rad: npt.NDArray[np.float64], size: int,
                      base: float) -> Any:  # pragma: no cover - needs a CUDA device
    import cupy  # noqa: PLC0415 - only reached with a cupy array

    n_angles, width, rows = q.shape
    cos_t, sin_t = (cupy.asarray(v) for v in _trig(angles_rad))
    out = cupy.empty((rows, size, size), dtype=cupy.float32)
    kernel = cupy.RawKernel(KERNEL_SOURCE, "backproject")
    threads = 256
    blocks = -(-out.size // threads)
    kernel((blocks,), (threads,), (cupy.ascontiguousarray(q, dtype=cupy.float32), cos_t, sin_t,
                                   out, np.int32(n_angles), np.int32(width), np.int32(rows),
                                   np.int32(size), np.float32(base)))
    return out


def backproject(q: Any, dq: Any, angles_rad: npt.NDArray[np.float64], size: int,
                base: float) -> Any:
    """The back-projection on ``q``'s device: the CUDA kernel for a CuPy array, the
    angle loop otherwise."""
    xp = array_module(q)
    if getattr(xp, "__name__", "") == "cupy":
        return _kernel_on_device(q, angles_rad, size, base)
    return backproject_loop(q, dq, angles_rad, size, base)

"""Titarenko's stripe removal (``remove_stripe_ti``) for any array namespace: the device path.

The host stage (:func:`stages.prep.stripe.remove_stripe_ti_sino`, tomopy's algorithm) solves,
for every sinogram and angle block, a small regularised least-squares problem for the
correction profile ``q`` by conjugate gradients, one problem after another. Here all the
problems of a block (sinograms × angle blocks × the two regularisers) are solved
together: the same CG recurrences on a batch of vectors, the convolutions with the
first/second-difference kernels written as shifted sums, and each problem frozen (its
vectors no longer updated) once its residual norm falls below tomopy's ``1e-7``, so
every problem takes the iterations it would take alone.

The results agree with the host's to float rounding, not bit for bit: the host's dot
products are BLAS ``np.dot`` calls and its convolutions ``np.convolve``, summed in other
orders, and CG carries such differences through its iterations
(``tests/stages/test_stripe_device.py`` states the tolerance). A problem whose search
direction vanishes (a profile the regulariser does not see) gets a zero step where the
host divides 0 by 0.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from stages.backends.xp import array_module

#: How often (iterations) the host asks whether every problem has converged: the frozen
#: problems do not change, so asking less often changes no result, only saves syncs.
_CHECK_EVERY = 16

_KERNELS: dict[int, tuple[float, ...]] = {1: (1.0, -1.0), 2: (-1.0, 2.0, -1.0)}


def _matvec(kernel: tuple[float, ...], x: Any) -> Any:
    """``convolve(convolve(x, h[::-1])[len(h) - 1 : n], h)`` for each row of ``x``."""
    xp = array_module(x)
    n, taps = x.shape[1], len(kernel)
    width = n - taps + 1
    valid = kernel[0] * x[:, 0:width]
    for j in range(1, taps):
        valid = valid + kernel[j] * x[:, j:j + width]
    out = xp.zeros_like(x)
    for j in range(taps):
        out[:, j:j + width] += kernel[j] * valid
    return out


def _dot(a: Any, b: Any) -> Any:
    return (a * b).sum(axis=1)


def _ratio(numerator: Any, denominator: Any) -> Any:
    xp = array_module(numerator)
    safe = denominator != 0
    return xp.where(safe, numerator / xp.where(safe, denominator, 1.0), 0.0)


def _solve(kernel: tuple[float, ...], alpha: Any, f: Any) -> Any:
    """tomopy's CG for ``(HᵀH + α) q = f`` on every row of ``f`` (``alpha`` per row)."""
    xp = array_module(f)
    a_col = alpha[:, None]
    r = f.copy()
    w = -r
    z = _matvec(kernel, w) + a_col * w
    a = _ratio(_dot(r, w), _dot(w, z))
    x = a[:, None] * w
    active = xp.ones(f.shape[0], dtype=bool)
    for iteration in range(10 * f.shape[1] + 100):
        live = active[:, None]
        r = xp.where(live, r - a[:, None] * z, r)
        active = active & ~(xp.sqrt(_dot(r, r)) < 1e-7)
        if iteration % _CHECK_EVERY == 0 and not bool(active.any()):
            break
        live = active[:, None]
        beta = _ratio(_dot(r, z), _dot(w, z))
        w = xp.where(live, -r + beta[:, None] * w, w)
        z = xp.where(live, _matvec(kernel, w) + a_col * w, z)
        a = _ratio(_dot(r, w), _dot(w, z))
        x = xp.where(live, x + a[:, None] * w, x)
    return x


def _ring(sinos: Any, order: int) -> Any:
    """``_ti_ring`` of the host stage for every sinogram of ``(rows, angles, cols)``
    float64 at once: the float32 corrected sinograms."""
    xp = array_module(sinos)
    sums = sinos.sum(axis=2)
    spread = sums.max(axis=1) - sums.min(axis=1)
    flat = spread == 0.0  # no stripe to remove: passed through
    alpha = 1.0 / (2.0 * xp.where(flat, 1.0, spread))
    kernel = _KERNELS[order]
    q = _solve(kernel, alpha, -_matvec(kernel, sinos.mean(axis=1)))
    q = xp.where(flat[:, None], 0.0, q)
    return (sinos + q[:, None, :]).astype(xp.float32)


def remove_stripe_ti(block: Any, *, nblock: int, alpha: float) -> Any:
    """The host stage's result for a sinogram block ``(rows, angles, cols)`` (checked
    by the caller), computed for all sinograms at once; float32, C-contiguous."""
    xp = array_module(block)
    angles = block.shape[1]
    bounds = [0, angles] if nblock == 0 else [k * (angles // nblock) for k in range(nblock)]
    if nblock:
        bounds.append(angles)
    sinos = xp.nan_to_num(block.astype(xp.float64), nan=0.0)
    d1 = xp.empty(sinos.shape, dtype=xp.float32)
    d2 = xp.empty(sinos.shape, dtype=xp.float32)
    for lo, hi in itertools.pairwise(bounds):
        d1[:, lo:hi] = _ring(sinos[:, lo:hi], 1)
        d2[:, lo:hi] = _ring(sinos[:, lo:hi], 2)
    product = d1 * d2
    low = xp.abs(product.reshape(product.shape[0], -1).min(axis=1))[:, None, None]
    out = xp.sqrt(product + np.float32(alpha) * low)
    return xp.ascontiguousarray(out, dtype=xp.float32)

"""The flat/dark correction and the row repair for any array namespace (the device path).

:mod:`stages.prep.kernel` corrects NumPy blocks tile by tile on host threads; a CuPy block
cannot go through it (its tiles are NumPy views and its repair uses
``np.maximum.accumulate``, which CuPy's ufuncs do not offer). Here the same steps run as
whole-block expressions in the block's own namespace (``xp = array_module(block)``), in the
same order and with the same float32 (repair: float64) operations, so on
``tests/stages/device_like.py`` the result is the host kernel's bit for bit, and on a GPU
it is one pass of CuPy element-wise kernels over the block with no host round trip.

The repair (:func:`fill_rows`) is :func:`stages.prep.repair.fill_from_row_neighbours`
rewritten without running maxima: the valid pixels' flat positions are sorted (they come
out of ``flatnonzero`` in order), so the nearest valid pixel left (right) of a bad one is a
``searchsorted`` away, and it lies on the same detector row exactly when its flat
position does. The neighbours, weights and float64 interpolation are those of the host
code, so the repaired values are identical. Every repaired value is counted (one device
to host sync per block for the count), as on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.backends.xp import array_module
from stages.prep.kernel import Correction


def fill_rows(data: Any, bad: Any, fill: float) -> int:
    """Replace ``data[bad]`` in place by linear interpolation along the last axis.

    Same contract and same values as
    :func:`stages.prep.repair.fill_from_row_neighbours` (``data`` C-contiguous,
    floating; ``bad`` a boolean array of its shape), in ``data``'s namespace.
    """
    xp = array_module(data)
    cols = data.shape[-1]
    flat = data.reshape(-1)
    marks = bad.reshape(-1)
    broken = xp.flatnonzero(marks)
    count = int(broken.size)
    if count == 0:
        return 0
    valid = xp.flatnonzero(~marks)
    row_start = (broken // cols) * cols
    index = broken - row_start
    # nearest valid position at or left of each bad one, and at or right of it
    left_at = xp.searchsorted(valid, broken, side="right") - 1
    right_at = xp.searchsorted(valid, broken, side="left")
    nvalid = int(valid.size)
    if nvalid:
        left_pos = valid[xp.clip(left_at, 0, nvalid - 1)]
        right_pos = valid[xp.clip(right_at, 0, nvalid - 1)]
        has_before = (left_at >= 0) & (left_pos >= row_start)
        has_after = (right_at < nvalid) & (right_pos < row_start + cols)
    else:
        left_pos = right_pos = broken
        has_before = has_after = xp.zeros(broken.shape, dtype=bool)
    before = xp.where(has_before, left_pos - row_start, -1)
    after = xp.where(has_after, right_pos - row_start, cols)
    left = xp.where(has_before, flat[left_pos], 0).astype(xp.float64)
    right = xp.where(has_after, flat[right_pos], 0).astype(xp.float64)
    span = xp.maximum(after - before, 1)
    both = has_before & has_after
    weight = xp.where(both, (index - before) / span, 0.0)
    inner = left + weight * (right - left)
    repaired = xp.where(both, inner,
                        xp.where(has_before, left, xp.where(has_after, right, fill)))
    flat[broken] = repaired.astype(data.dtype)
    return count


def repair_no_signal(transmission: Any, *, dead: Any | None = None,
                     positive: bool = True) -> int:
    """:func:`stages.prep.repair.repair_no_signal` in the namespace of ``transmission``:
    values not finite, on a ``dead`` pixel, or (``positive``) ``<= 0`` are repaired in
    place from their row neighbours (a row without a valid value gets 1); the count."""
    xp = array_module(transmission)
    if positive:
        bad = ~(transmission > 0)  # NaN compares False: caught here
        bad |= xp.isinf(transmission)
    else:
        bad = ~xp.isfinite(transmission)
    if dead is not None:
        bad |= dead
    return fill_rows(transmission, bad, 1.0)


def correct(block: Any, dark: Any | None, denom: Any | None, dead: Any | None,
            steps: Correction) -> tuple[Any, int]:
    """:func:`stages.prep.kernel.correct` in the namespace of ``block``: the corrected
    float32 copy and the number of values repaired (see the module notes).

    ``dark`` and ``denom`` (``(rows, cols)``, or ``denom`` ``(angles, rows, cols)``) and
    ``dead`` (the shape of ``denom``) must live beside ``block``.
    """
    xp = array_module(block)
    out = xp.array(block, dtype=xp.float32, order="C", copy=True)  # never the caller's
    if dark is not None and denom is not None:
        out -= dark
        out /= denom
    repaired = repair_no_signal(out, dead=dead, positive=steps.minus_log)
    if steps.cutoff is not None:  # in place: the block and its mask are the peak
        xp.minimum(out, np.float32(steps.cutoff), out=out)
    if steps.minus_log:
        xp.log(out, out=out)
        xp.negative(out, out=out)
    if steps.nonnegative:
        xp.maximum(out, np.float32(0), out=out)
    if steps.remove_nans:
        out = xp.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out, repaired

"""httomolib's ``data_reducer``: the scan's darks and flats each reduced to one frame
(their per-pixel mean or median) before the flat/dark correction uses them.

What upstream does. ``httomolib.misc.morph.data_reducer(data, axis, method)`` reduces a
3-D array along ``axis`` by ``mean`` (float32 accumulation) or ``median``, keeping the
reduced axis with length 1. HTTomo never applies it to the projections: its
``DatareducerWrapper`` calls it once per run on the block's *darks* and *flats* (the
projections pass unchanged), and HTTomo's transform layer inserts one such step, with
the defaults (``axis`` 0, ``mean``), right after the loader of every pipeline. ``axis:
auto`` becomes the index of the section's pattern (0 where the pipeline starts with
projections, as the references are laid out). So ``data_reducer`` is about the
references, not about blocks, and its result does not depend on the block size.

Here it is a step that marks the references (``StageSpec.reduces_references``): when
the scan's darks and flats are complete, the run reduces each stack once
(:func:`reduce_references`), and every step after it (``normalize``,
``dark_flat_field_correction``, …) gets the reduced frames; blocks pass unchanged.
``axis`` 0 (``auto``) gives one dark and one flat; ``axis`` 1 or 2 reduces each
reference frame across its rows or columns, spread back over the frame (HTTomo hands
the ``(n, 1, cols)`` array on and its correction broadcasts it: the same values).

Differences from HTTomo: we reduce only where the pipeline asks (HTTomo always inserts
a mean reducer first, so there a pipeline's own ``method: median`` acts on frames
already averaged and changes nothing; here it is the median of the references as
received: what the parameter says, robust against a zinger in one flat), and the step
must come before every step that uses the references and before the first reslice (the
pipeline is refused otherwise: after them it could not act).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from stages.spec import Pattern, StageParams, StageSpec, scaled_memory, unchanged
from streamer.errors import StageError

__all__ = ["SPECS", "DataReducerParams", "reduce_references"]


class DataReducerParams(StageParams):
    """httomolib's ``data_reducer`` parameters (template: ``axis: auto``, ``method: mean``)."""

    #: ``auto`` is 0 (the frames of the reference stacks), as HTTomo resolves it for a
    #: pipeline that starts with projections.
    axis: Literal["auto", 0, 1, 2] = "auto"
    method: Literal["mean", "median"] = "mean"


def reduce_references(
    stack: npt.NDArray[Any], axis: Literal["auto", 0, 1, 2] = "auto",
    method: Literal["mean", "median"] = "mean",
) -> npt.NDArray[np.float32]:
    """One reference stack ``(n, rows, cols)`` reduced as httomolib's ``data_reducer``.

    ``axis`` 0 (``auto``): ``(1, rows, cols)``, the per-pixel mean (float32
    accumulation, as upstream) or median of the frames. ``axis`` 1 or 2: each frame
    reduced across its rows or columns and spread back over them, ``(n, rows, cols)``.
    An empty stack (a scan without darks, say) stays empty.
    """
    if stack.ndim != 3:
        raise StageError(f"stage 'data_reducer': expected a reference stack (n, rows, "
                         f"cols), got shape {stack.shape}")
    if stack.shape[0] == 0:
        return np.asarray(stack, dtype=np.float32)
    along = 0 if axis == "auto" else axis
    if method == "mean":
        reduced = np.mean(stack, axis=along, dtype=np.float32, keepdims=True)
    else:
        reduced = np.median(stack, axis=along, keepdims=True)
    if along != 0:
        reduced = np.broadcast_to(reduced, stack.shape)
    return np.ascontiguousarray(reduced, dtype=np.float32)


def _reduce_step(stack: npt.NDArray[np.float32], params: Any) -> npt.NDArray[np.float32]:
    assert isinstance(params, DataReducerParams)
    return reduce_references(stack, params.axis, params.method)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="data_reducer",
        fn=unchanged,
        pattern=Pattern.ALL,
        params=DataReducerParams,
        memory=scaled_memory(1.0),  # the block passes unchanged
        summary="httomolib's data_reducer: the scan's darks and flats each reduced once to "
        "their per-pixel mean or median (axis 0) before the correction uses them; "
        "projections pass unchanged",
        angle_local=True,
        reduces_references=_reduce_step,
        aliases=("httomolib.misc.morph.data_reducer",),
    ),
)

"""tomopy's element-wise corrections (``tomopy.misc.corr``), as ``all``-pattern stages.

* ``remove_nan``: NaN → ``val`` (tomopy: ``where(arr != arr, val, arr)``);
* ``remove_neg``: values below 0 → ``val`` (``where(arr < 0, val, arr)``);
* ``adjust_range``: values above ``dmax`` → ``dmax``, below ``dmin`` → ``dmin``; a bound
  left ``None`` is the block's own extreme in tomopy, i.e. no clipping on that side.

All return float32 (tomopy converts with ``as_float32``) and work on either layout, in
the array namespace of their input (numpy or cupy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from stages.backends.xp import array_module
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "adjust_range", "remove_nan", "remove_neg"]


def _float(stage: str, block: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    if block.ndim != 3 or block.dtype.kind not in "uif":
        raise StageError(f"stage {stage!r}: block: expected a real 3-D array, got "
                         f"{block.shape} {block.dtype}")
    xp = array_module(block)
    copy: npt.NDArray[np.float32] = xp.array(block, dtype=xp.float32)  # the input is left alone
    return copy


class ValueParams(StageParams):
    """``val``: the replacement value."""

    val: float = Field(default=0.0, allow_inf_nan=False)


class RangeParams(StageParams):
    """``dmin``/``dmax``: the bounds (``None``: unbounded on that side)."""

    dmin: float | None = Field(default=None, allow_inf_nan=False)
    dmax: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> RangeParams:
        if self.dmin is not None and self.dmax is not None and self.dmin > self.dmax:
            raise ValueError(f"dmin: expected <= dmax {self.dmax}, got {self.dmin}")
        return self


def remove_nan(block: npt.NDArray[Any], *, val: float = 0.0) -> npt.NDArray[np.float32]:
    """NaN replaced by ``val``."""
    data = _float("remove_nan", block)
    data[array_module(data).isnan(data)] = np.float32(val)
    return data


def remove_neg(block: npt.NDArray[Any], *, val: float = 0.0) -> npt.NDArray[np.float32]:
    """Negative values replaced by ``val``."""
    data = _float("remove_neg", block)
    data[data < 0] = np.float32(val)
    return data


def adjust_range(block: npt.NDArray[Any], *, dmin: float | None = None,
                 dmax: float | None = None) -> npt.NDArray[np.float32]:
    """Values clipped to ``[dmin, dmax]`` (an absent bound does not clip)."""
    data = _float("adjust_range", block)
    if dmax is not None:
        data[data > dmax] = np.float32(dmax)
    if dmin is not None:
        data[data < dmin] = np.float32(dmin)
    return data


SPECS: tuple[StageSpec, ...] = (
    StageSpec(name="remove_nan", fn=remove_nan, pattern=Pattern.ALL, params=ValueParams,
              angle_local=True,  # element-wise
              memory=scaled_memory(2), device=True,
              summary="NaN replaced by val (tomopy)",
              aliases=("tomopy.misc.corr.remove_nan",)),
    StageSpec(name="remove_neg", fn=remove_neg, pattern=Pattern.ALL, params=ValueParams,
              angle_local=True,  # element-wise
              memory=scaled_memory(2), device=True,
              summary="negative values replaced by val (tomopy)",
              aliases=("tomopy.misc.corr.remove_neg",)),
    StageSpec(name="adjust_range", fn=adjust_range, pattern=Pattern.ALL, params=RangeParams,
              angle_local=True,  # element-wise
              memory=scaled_memory(2), device=True,
              summary="values clipped to [dmin, dmax] (tomopy)",
              aliases=("tomopy.misc.corr.adjust_range",)),
)

"""Argument checks shared by stage functions (messages name the stage and argument)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import StageError


def float_block(block: npt.NDArray[Any], stage: str) -> npt.NDArray[np.float32]:
    """Check that ``block`` is a real 3-D array and return it as C-contiguous float32."""
    if block.ndim != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D array, got shape {block.shape}")
    if block.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: block.dtype: expected an integer or real float type, "
            f"got {block.dtype.name!r}"
        )
    return np.ascontiguousarray(block, dtype=np.float32)


def check_axis(axis: int | None, stage: str, *, allow_none: bool = False) -> None:
    """``axis`` must be 0, 1 or 2 (or ``None`` where a stage accepts a 3-D variant)."""
    allowed: tuple[int | None, ...] = (0, 1, 2, None) if allow_none else (0, 1, 2)
    if axis not in allowed:
        raise StageError(
            f"stage {stage!r}: axis: expected one of {'|'.join(map(str, allowed))}, got {axis!r}"
        )

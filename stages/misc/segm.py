"""httomolib's ``misc.segm.binary_thresholding``: a binary mask of a block.

``data > val_intensity`` (``foreground``) or ``data <= val_intensity`` (background) is 1,
the rest 0; with ``otsu`` the threshold is Otsu's, computed as scikit-image's
``threshold_otsu`` does (256-bin histogram of the values over their range, the bin centre
that maximises the between-class variance; a constant block's threshold is its value).
As in httomolib, one threshold covers the whole block it is given: httomolib loops over
``axis`` but thresholds the whole array on every pass, so ``axis`` changes nothing and is
accepted for the template's sake. Our blocks are those of the section the step runs in
(after reconstruction: a band of slices), as HTTomo's are its chunks. The mask is float32
0/1 (httomolib: uint8), as every stage returns float32.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "binary_thresholding", "otsu_threshold"]


def otsu_threshold(data: npt.NDArray[Any], nbins: int = 256) -> float:
    """Otsu's threshold of ``data`` (scikit-image's ``threshold_otsu`` for float data),
    computed in the array module of ``data`` (the histogram stays on its device)."""
    xp = array_module(data)
    values = data.astype(xp.float64).ravel()
    if values.size == 0:
        raise StageError("stage 'binary_thresholding': otsu: expected a non-empty block")
    if not bool(xp.isfinite(values).all()):
        raise StageError("stage 'binary_thresholding': otsu: expected finite values, got "
                         "NaN or inf (put data_checker before it)")
    if bool((values == values[0]).all()):
        return float(values[0])
    counts, edges = xp.histogram(values, bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight1 = xp.cumsum(counts)
    weight2 = xp.cumsum(counts[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):  # host numpy only; CuPy is quiet
        mean1 = xp.cumsum(counts * centres) / weight1
        mean2 = (xp.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(xp.nanargmax(variance))])


class BinaryThresholdingParams(StageParams):
    """httomolib's ``binary_thresholding`` (template defaults; ``axis: auto``)."""

    val_intensity: float = Field(default=0.1, allow_inf_nan=False)
    otsu: bool = False
    foreground: bool = True
    axis: Literal[0, 1, 2] = Field(default=1, description="accepted; changes nothing")

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        return 1 if value == "auto" else value


def binary_thresholding(
    block: npt.NDArray[Any], *, val_intensity: float = 0.1, otsu: bool = False,
    foreground: bool = True, axis: int = 1,
) -> npt.NDArray[np.float32]:
    """1 where ``block`` is above (``foreground``) or at/below the threshold, else 0."""
    data = float_block(block, "binary_thresholding")
    xp = array_module(data)
    threshold = val_intensity
    if otsu:
        threshold = otsu_threshold(data)
    chosen = data > np.float32(threshold) if foreground else data <= np.float32(threshold)
    mask: npt.NDArray[np.float32] = chosen.astype(xp.float32)
    return mask


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="binary_thresholding", fn=binary_thresholding, pattern=Pattern.ALL,
        angle_local=lambda p: not p.otsu,  # a fixed threshold is value by value
        params=BinaryThresholdingParams,
        memory=scaled_memory(3.5),  # input, float32 copy, comparison, mask (+ host copy)
        summary="binary mask by a threshold or Otsu's (httomolib)",
        device=True,
        aliases=("httomolib.misc.segm.binary_thresholding",),
    ),
)

"""Rescale a float block to unsigned integers (for 8/16-bit TIFF or preview output).

The intensity window ``[lo, hi]`` maps linearly onto ``[0, 2**bits - 1]``: values below
``lo`` become 0, above ``hi`` the maximum, and NaN becomes 0 (±inf clip like any other
value). The function :func:`rescale` takes the window as, in order of precedence:

* ``window=(lo, hi)``: fixed values, the same for every block;
* ``range_percent=(p_lo, p_hi)``: ``min + p/100 · (max - min)`` of the finite values of
  the block, the rule of ``httomolib(gpu).misc.rescale.rescale_to_int``;
* ``percentiles=(q_lo, q_hi)``: the ``q``-th percentiles of the finite values of the
  block (default 0.5 and 99.5, robust to a few hot pixels).

The pipeline stage ``rescale`` takes a fixed ``window`` only (ADR 0023): it sees one block
at a time, so a window from the block's statistics would make the result depend on the
block size and the rank count. With a fixed window the stage is element-wise (pattern
``all``, angle-local). It is not an HTTomo method: HTTomo pipelines' ``rescale_to_int``
entries map to the output step ``rescale_to_int`` (stages/misc/httomo_output.py), which
rescales the finished volume with its global statistics (``calculate_stats``, merged over
the ranks), and is the way to a data-dependent window.

Differences from httomolib's rule: values are rounded to the nearest integer (httomolib
truncates), NaN maps to 0 in the output (httomolib sets NaN to 0 in the *input*, which
lands at ``-lo · scale``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from stages.backends.xp import array_module
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

IntegerType = Literal["uint8", "uint16"]

#: Parameters that take the window from the data's own statistics: the function has them,
#: the pipeline stage refuses them (module notes).
_BLOCK_STATISTICS = ("percentiles", "range_percent", "perc_range_min", "perc_range_max")


def _ordered_pair(value: tuple[float, float] | None, name: str, lo: float, hi: float) -> None:
    if value is None:
        return
    if not lo <= value[0] < value[1] <= hi:
        raise ValueError(f"{name}: expected {lo} <= low < high <= {hi}, got {value}")


class RescaleParams(StageParams):
    """Parameters of the stage ``rescale``: a fixed ``window`` (required) and the output
    type (httomolib's ``bits`` 8/16 is mapped to ``dtype``).

    A window from the data's statistics (``percentiles``, ``range_percent``, httomolib's
    ``perc_range_min`` / ``perc_range_max``) is refused here with one line: in a
    pipeline the stage sees one block at a time, never the whole volume, so such a
    window would differ from block to block and the result would depend on the block
    size and the rank count (ADR 0023). The whole volume's statistics are HTTomo's
    output tail ``calculate_stats → rescale_to_int → save_to_images``.
    """

    dtype: IntegerType = Field("uint8", description="output integer type")
    window: tuple[float, float] = Field(
        description="fixed (lo, hi) in the unit of the data, lo < hi"
    )

    @model_validator(mode="before")
    @classmethod
    def _fixed_window_only(cls, data: Any) -> Any:
        """Refuse block statistics; map httomolib's ``bits`` to ``dtype``."""
        if not isinstance(data, dict):
            return data
        given = [key for key in _BLOCK_STATISTICS if data.get(key) is not None]
        if given:
            raise ValueError(
                f"{given[0]}: a window from each block's statistics would depend on the "
                "block size (a pipeline never holds the whole volume in one block); "
                "expected window: [lo, hi], or calculate_stats -> rescale_to_int -> "
                "save_to_images for the whole volume's statistics")
        if data.get("window") is None:
            raise ValueError(
                "window: expected a fixed [lo, hi] (the stage rescales every block alike), "
                "got none; for the whole volume's statistics use calculate_stats -> "
                "rescale_to_int -> save_to_images")
        mapped = {key: value for key, value in data.items() if key not in _BLOCK_STATISTICS}
        if "bits" not in mapped:
            return mapped
        bits = mapped.pop("bits")
        if bits not in (8, 16):
            raise ValueError(f"bits: expected 8|16, got {bits!r}")
        if "dtype" in mapped and mapped["dtype"] != f"uint{bits}":
            raise ValueError(f"bits={bits} contradicts dtype={mapped['dtype']!r}")
        mapped["dtype"] = f"uint{bits}"
        return mapped

    @model_validator(mode="after")
    def _check_window(self) -> RescaleParams:
        _ordered_pair(self.window, "window", -np.inf, np.inf)
        return self


def _window(
    finite: npt.NDArray[np.float32],
    percentiles: tuple[float, float] | None,
    window: tuple[float, float] | None,
    range_percent: tuple[float, float] | None,
) -> tuple[float, float]:
    if window is not None:
        return float(window[0]), float(window[1])
    if finite.size == 0:
        return 0.0, 0.0
    if range_percent is not None:
        low, high = float(finite.min()), float(finite.max())
        span = high - low
        return low + range_percent[0] / 100.0 * span, low + range_percent[1] / 100.0 * span
    if percentiles is None:
        raise StageError(
            "stage 'rescale': expected one of window, range_percent or percentiles, got none"
        )
    xp = array_module(finite)
    lo, hi = xp.percentile(finite, xp.asarray(percentiles, dtype=xp.float64))
    return float(lo), float(hi)


def rescale(
    block: npt.NDArray[Any],
    *,
    dtype: IntegerType = "uint8",
    percentiles: tuple[float, float] | None = (0.5, 99.5),
    window: tuple[float, float] | None = None,
    range_percent: tuple[float, float] | None = None,
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Map the window ``[lo, hi]`` of ``block`` linearly onto the range of ``dtype``.

    Parameters
    ----------
    block : ndarray of shape (n0, n1, n2)
        Any 3-D real block (typically a reconstruction); any unit.
    dtype : {"uint8", "uint16"}
        Output type; ``hi`` maps to 255 or 65535.
    percentiles : (float, float) or None
        Percentiles (0-100) of the finite values of the block that give ``lo`` and
        ``hi``, used when ``window`` and ``range_percent`` are None.
    window : (float, float) or None
        Fixed ``(lo, hi)``, in the unit of the block, with ``lo < hi``.
    range_percent : (float, float) or None
        ``lo, hi = min + p/100 · (max - min)`` over the finite values (httomolib's rule).

    Returns
    -------
    ndarray of shape (n0, n1, n2), uint8 or uint16, C-contiguous
        ``round(clip((x - lo) / (hi - lo), 0, 1) · (2**bits - 1))``; NaN gives 0. When
        ``hi == lo`` (a constant block), everything above ``lo`` gives the maximum and the
        rest 0.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array, ``dtype`` is not supported, or a range is
        not ordered.
    """
    stage = "rescale"
    if block.ndim != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D array, got shape {block.shape}")
    if block.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: block.dtype: expected an integer or real float type, "
            f"got {block.dtype.name!r}"
        )
    if dtype not in ("uint8", "uint16"):
        raise StageError(f"stage {stage!r}: dtype: expected uint8|uint16, got {dtype!r}")
    try:
        _ordered_pair(percentiles, "percentiles", 0.0, 100.0)
        _ordered_pair(range_percent, "range_percent", 0.0, 100.0)
        _ordered_pair(window, "window", -np.inf, np.inf)
    except ValueError as exc:
        raise StageError(f"stage {stage!r}: {exc}") from None
    if window is None and percentiles is None and range_percent is None:
        raise StageError(
            f"stage {stage!r}: window: expected one of window, range_percent or "
            "percentiles, got none"
        )
    xp = array_module(block)
    data = xp.asarray(block, dtype=xp.float32)
    finite = data[xp.isfinite(data)]
    lo, hi = _window(finite, percentiles, window, range_percent)
    top = float(np.iinfo(dtype).max)  # host facts about the type, not data
    scaled = data.astype(xp.float64)
    if hi > lo:
        scaled -= lo
        scaled *= top / (hi - lo)
    else:
        scaled = xp.where(scaled > lo, top, 0.0)
    scaled = xp.nan_to_num(scaled, nan=0.0, posinf=top, neginf=0.0)
    xp.clip(scaled, 0.0, top, out=scaled)
    xp.rint(scaled, out=scaled)
    result: npt.NDArray[np.unsignedinteger[Any]] = xp.ascontiguousarray(scaled.astype(dtype))
    return result


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="rescale",
        angle_local=True,  # a fixed window: element-wise
        fn=rescale,
        pattern=Pattern.ALL,
        params=RescaleParams,
        # input + float32 view/copy + finite values (≤ 1) + float64 working copy (2 float32
        # blocks) + the integer output (≤ 0.5): about 5.5 block-sized float32 buffers.
        memory=scaled_memory(5.5),
        device=True,
        summary="map a fixed intensity window onto uint8/uint16 (the whole volume's "
                "statistics: calculate_stats -> rescale_to_int)",
        # httomolib's rescale_to_int (global statistics, an output step) is the stage
        # rescale_to_int of stages/misc/httomo_output.py
    ),
)

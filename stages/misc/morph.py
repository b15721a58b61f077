"""TomoPy's ``tomopy.misc.morph.pad`` and ``trim_sinogram``, in its names and semantics.

* ``pad``: ``npad`` values on both sides of one axis (``npad: null``: TomoPy's
  ``ceil((n·√2 - n) / 2)``, which makes a width ``n`` reach the diagonal ``n·√2``),
  ``constant`` (``constant_values``, default 0) or ``edge``. It runs on projection
  blocks; ``axis`` counts as HTTomo's data do (1 detector rows, 2 columns). Axis 0
  (the angles) is refused: padding it would invent projections without angles. Padding
  the columns moves the rotation axis by ``npad`` columns, as in TomoPy: a CoR found
  after the step is in padded columns; one given by hand must add ``npad``.
* ``trim_sinogram``: the sinogram of a circular region of interest (centre ``x, y`` in
  pixels from the slice centre, ``diameter`` pixels) cut out of the full sinogram: row
  ``m`` (angle ``m·π/n``, TomoPy's assumption of ``n`` evenly spaced angles over 180°)
  keeps columns ``ceil(c) … floor(c + diameter)`` with ``c = cos(α - m·π/n)·r + center
  - diameter/2``, ``r = √(x² + y²)``, ``α = atan2(x, y)``, clipped to the detector, at
  the start of a ``diameter``-wide row; the rest of the row is 1.0, as TomoPy fills it.
  (TomoPy's own code slices with floats, which NumPy ≥ 1.12 refuses; the indices here
  are its ``ceil``/``floor`` values as integers.)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.spec import Pattern, StageParams, StageSpec
from streamer.errors import StageError

__all__ = ["SPECS", "default_npad", "pad", "trim_sinogram"]


def default_npad(length: int) -> int:
    """TomoPy's ``_get_npad``: ``ceil((n·√2 - n) / 2)``."""
    return int(np.ceil((length * np.sqrt(2) - length) / 2))


class PadParams(StageParams):
    """``tomopy.misc.morph.pad`` (template: ``axis`` required, ``npad: null``,
    ``mode: constant``) and its ``constant_values`` keyword."""

    axis: Literal[1, 2] = Field(description="1: detector rows, 2: detector columns")
    npad: int | None = Field(default=None, ge=0, le=1 << 15,
                             description="values added on each side (null: to the diagonal)")
    mode: Literal["constant", "edge"] = "constant"
    constant_values: float = Field(default=0.0, allow_inf_nan=False)

    @field_validator("axis", mode="before")
    @classmethod
    def _no_angle_axis(cls, value: Any) -> Any:
        if value == 0:
            raise ValueError("expected 1 (rows) or 2 (columns), got 0: padding the angles "
                             "would add projections without angles")
        return value


def pad(block: npt.NDArray[Any], *, axis: int, npad: int | None = None,
        mode: str = "constant", constant_values: float = 0.0) -> npt.NDArray[np.float32]:
    """Pad a projection block ``(angles, rows, cols)`` on both sides of ``axis``.

    Returns
    -------
    ndarray of shape with ``shape[axis] + 2·npad`` along ``axis``, float32
        The block in the middle; ``constant_values`` or the edge value around it.
    """
    stage = "pad"
    if axis not in (1, 2):
        raise StageError(f"stage {stage!r}: axis: expected 1 or 2, got {axis!r}")
    if mode not in ("constant", "edge"):
        raise StageError(f"stage {stage!r}: mode: expected constant|edge, got {mode!r}")
    data = float_block(block, stage)
    width = default_npad(data.shape[axis]) if npad is None else int(npad)
    if width < 0:
        raise StageError(f"stage {stage!r}: npad: expected >= 0, got {width}")
    xp = array_module(data)
    widths = [(0, 0), (0, 0), (0, 0)]
    widths[axis] = (width, width)
    if mode == "edge":
        padded = xp.pad(data, widths, mode="edge")
    else:
        padded = xp.pad(data, widths, mode="constant",
                        constant_values=np.float32(constant_values))
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(padded, dtype=xp.float32)
    return result


def _pad_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Input, float32 copy and the padded output (float32)."""
    axis = int(params.axis)
    grown = list(shape)
    grown[axis] += 2 * (default_npad(shape[axis]) if params.npad is None else params.npad)
    return int(2 * np.prod(shape) * max(4, np.dtype(dtype).itemsize) + 4 * np.prod(grown))


class TrimSinogramParams(StageParams):
    """``tomopy.misc.morph.trim_sinogram`` (template: every parameter required)."""

    center: float = Field(allow_inf_nan=False, description="rotation axis, detector column")
    x: int = Field(description="ROI centre, pixels right of the slice centre")
    y: int = Field(description="ROI centre, pixels from the slice centre")
    diameter: int = Field(ge=1, le=1 << 16, description="ROI diameter, pixels")


def trim_columns(n_angles: int, cols: int, *, center: float, x: int, y: int,
                 diameter: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` detector columns TomoPy keeps for each of ``n_angles`` rows."""
    radius = math.sqrt(x * x + y * y)
    alpha = math.atan2(x, y)
    low = center - diameter / 2
    step = math.pi / n_angles
    spans = []
    for m in range(n_angles):
        offset = math.cos(alpha - m * step) * radius + low
        start = min(max(math.ceil(offset), 0), cols)
        stop = min(max(math.floor(offset + diameter), 0), cols)
        spans.append((start, min(max(stop, start), start + diameter)))
    return spans


def trim_sinogram(block: npt.NDArray[Any], *, center: float, x: int, y: int,
                  diameter: int) -> npt.NDArray[np.float32]:
    """The ROI's sinogram out of a sinogram block ``(rows, angles, cols)`` (module notes).

    Returns
    -------
    ndarray of shape (rows, angles, diameter), float32
        Each angle's kept columns first, then 1.0.
    """
    stage = "trim_sinogram"
    if diameter < 1:
        raise StageError(f"stage {stage!r}: diameter: expected >= 1, got {diameter}")
    data = float_block(block, stage)
    rows, n_angles, cols = data.shape
    xp = array_module(data)
    out: npt.NDArray[np.float32] = xp.ones((rows, n_angles, diameter), dtype=xp.float32)
    for m, (start, stop) in enumerate(trim_columns(n_angles, cols, center=center, x=x, y=y,
                                                   diameter=diameter)):
        out[:, m, : stop - start] = data[:, m, start:stop]
    return out


def _trim_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Input, float32 copy and the ``diameter``-wide output."""
    rows, n_angles, _ = shape
    return int(2 * np.prod(shape) * max(4, np.dtype(dtype).itemsize)
               + 4 * rows * n_angles * int(params.diameter))


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="pad", fn=pad, pattern=Pattern.PROJECTION,
        angle_local=True,  # within each frame
        params=PadParams, memory=_pad_memory, device=True,
        summary="pad the detector rows or columns, constant or edge (TomoPy)",
        aliases=("tomopy.misc.morph.pad",),
    ),
    StageSpec(
        name="trim_sinogram", fn=trim_sinogram, pattern=Pattern.SINOGRAM,
        angle_local=False,  # the angle's position in the whole scan
        params=TrimSinogramParams, memory=_trim_memory, device=True,
        summary="the sinogram of a circular region of interest (TomoPy)",
        aliases=("tomopy.misc.morph.trim_sinogram",),
    ),
)

"""Geometry of a block: circular mask, down/upsampling, binning and cropping.

``circular_mask``, ``downsample`` and ``upsample`` follow ``tomopy.misc.corr.circ_mask``
and ``tomopy.misc.morph.downsample`` / ``upsample`` and reproduce TomoPy's test
references ``circ_mask_{0,1,2}.npy``, ``downsample_{0,1,2}.npy`` and
``upsample_{0,1,2}.npy`` exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from stages.backends.xp import array_module
from stages.checks import check_axis, float_block
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

# --------------------------------------------------------------------------- circular mask


class CircularMaskParams(StageParams):
    """Parameters of :func:`circular_mask`."""

    ratio: float = Field(
        1.0, gt=0.0, description="circle diameter / shorter edge of the masked slices"
    )
    value: float = Field(0.0, description="value written outside the circle")
    axis: Literal[0, 1, 2] = Field(0, description="mask each slice perpendicular to this axis")


def circle_inside(n_rows: int, n_cols: int, ratio: float = 1.0) -> npt.NDArray[np.bool_]:
    """Boolean ``(n_rows, n_cols)`` image, True inside TomoPy's centred circle.

    A pixel ``(i, j)`` is inside when its centre, measured from the image centre,
    ``y = i - (n_rows - 1) / 2``, ``x = j - (n_cols - 1) / 2``, satisfies
    ``x² + y² < (ratio · min(n_rows, n_cols) / 2)²`` (strict).
    """
    y = np.arange(n_rows, dtype=np.float64) - (n_rows - 1) / 2.0
    x = np.arange(n_cols, dtype=np.float64) - (n_cols - 1) / 2.0
    radius = ratio * min(n_rows, n_cols) / 2.0
    inside: npt.NDArray[np.bool_] = (y[:, None] ** 2 + x[None, :] ** 2) < radius * radius
    return inside


def circular_mask(
    block: npt.NDArray[Any], *, ratio: float = 1.0, value: float = 0.0, axis: int = 0
) -> npt.NDArray[np.float32]:
    """Set everything outside a centred circle of each slice to ``value``.

    Parameters
    ----------
    block : ndarray of shape (n0, n1, n2)
        Any 3-D real block; any unit (a reconstruction is ``(slices, y, x)``: ``axis=0``).
    ratio : float
        Circle diameter as a fraction of the shorter edge of the slices (1: inscribed).
    value : float
        Value of the pixels outside the circle, in the unit of the block.
    axis : {0, 1, 2}
        The slices perpendicular to this axis are masked, all with the same circle.

    Returns
    -------
    ndarray of shape (n0, n1, n2), float32, C-contiguous
        The masked block. The circle rule is :func:`circle_inside`.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array or ``ratio`` or ``axis`` is out of range.
    """
    stage = "circular_mask"
    check_axis(axis, stage)
    if not ratio > 0:
        raise StageError(f"stage {stage!r}: ratio: expected a value > 0, got {ratio}")
    data = float_block(block, stage)
    xp = array_module(data)
    edges = [n for i, n in enumerate(data.shape) if i != axis]
    inside = np.expand_dims(circle_inside(edges[0], edges[1], ratio), axis)
    # where(): a new array (the caller's block is never written), on any namespace
    masked: npt.NDArray[np.float32] = xp.where(xp.asarray(inside), data, np.float32(value))
    return masked


# ------------------------------------------------------------------ down/upsample (tomopy)


class SampleParams(StageParams):
    """Parameters of :func:`downsample` and :func:`upsample`."""

    level: int = Field(1, ge=0, le=8, description="factor 2**level")
    axis: Literal[0, 1, 2] = Field(2, description="axis that is resampled")

    @field_validator("axis", mode="before")
    @classmethod
    def _auto_axis(cls, value: Any) -> Any:
        """HTTomo's ``axis: auto`` is the slicing axis of a projection block: 0."""
        return 0 if value == "auto" else value


def downsample(
    block: npt.NDArray[Any], *, level: int = 1, axis: int = 2
) -> npt.NDArray[np.float32]:
    """Shrink ``block`` along ``axis`` by ``2**level``, averaging each bin.

    Parameters
    ----------
    block : ndarray of shape (n0, n1, n2)
        Any 3-D real block; any unit.
    level : int
        The bin is ``2**level`` samples (``level=0`` copies the block).
    axis : {0, 1, 2}
        The axis that shrinks (TomoPy's default is 2, the detector columns).

    Returns
    -------
    ndarray, float32, C-contiguous
        Shape of ``block`` with ``shape[axis] // 2**level`` along ``axis``; each value is
        the mean of its bin, in the unit of the input. The last ``shape[axis] % 2**level``
        samples do not fill a bin and are dropped, as in TomoPy.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array, ``axis`` or ``level`` is out of range, or
        ``block.shape[axis] < 2**level``.
    """
    stage = "downsample"
    check_axis(axis, stage)
    if level < 0:
        raise StageError(f"stage {stage!r}: level: expected an integer >= 0, got {level}")
    data = float_block(block, stage)
    factor = 2**level
    n_out = data.shape[axis] // factor
    if n_out == 0:
        raise StageError(
            f"stage {stage!r}: level: expected 2**level <= block.shape[{axis}] = "
            f"{data.shape[axis]}, got level={level} (factor {factor})"
        )
    xp = array_module(data)
    moved = xp.moveaxis(data, axis, 0)[: n_out * factor]
    binned = moved.reshape(n_out, factor, *moved.shape[1:]).mean(axis=1, dtype=xp.float64)
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(xp.moveaxis(binned, 0, axis),
                                                           dtype=xp.float32)
    return result


def upsample(
    block: npt.NDArray[Any], *, level: int = 1, axis: int = 2
) -> npt.NDArray[np.float32]:
    """Enlarge ``block`` along ``axis`` by ``2**level``, repeating each sample.

    Parameters
    ----------
    block : ndarray of shape (n0, n1, n2)
        Any 3-D real block; any unit.
    level : int
        Each sample is repeated ``2**level`` times (nearest-neighbour).
    axis : {0, 1, 2}
        The axis that grows (TomoPy's default is 2, the detector columns).

    Returns
    -------
    ndarray, float32, C-contiguous
        Shape of ``block`` with ``shape[axis] * 2**level`` along ``axis``.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array or ``axis`` or ``level`` is out of range.
    """
    stage = "upsample"
    check_axis(axis, stage)
    if level < 0:
        raise StageError(f"stage {stage!r}: level: expected an integer >= 0, got {level}")
    data = float_block(block, stage)
    xp = array_module(data)
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(xp.repeat(data, 2**level, axis=axis))
    return result


def _upsample_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Input, its float32 copy and an output ``2**level`` times the block."""
    level = int(getattr(params, "level", 1))
    return scaled_memory(2.0 + 2.0**level)(shape, dtype, params)


# ------------------------------------------------------------------------------- binning


class BinningParams(StageParams):
    """Parameters of :func:`binning`."""

    factor_rows: int = Field(2, ge=1, description="rows per bin (axis 1)")
    factor_cols: int = Field(2, ge=1, description="columns per bin (axis 2)")


def binning(
    block: npt.NDArray[Any], *, factor_rows: int = 2, factor_cols: int = 2
) -> npt.NDArray[np.float32]:
    """Average ``factor_rows × factor_cols`` pixel bins of every frame.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        A projection block; any unit.
    factor_rows, factor_cols : int
        Bin size along the rows (axis 1) and the columns (axis 2), pixels.

    Returns
    -------
    ndarray of shape (angles, rows // factor_rows, cols // factor_cols), float32
        The mean of each bin, in the unit of the input (the pixel size grows by the
        factors). The last ``rows % factor_rows`` rows and ``cols % factor_cols`` columns
        do not fill a bin and are dropped (cropped at the bottom/right edge).

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array, or a factor is < 1 or larger than the
        frame.
    """
    stage = "binning"
    data = float_block(block, stage)
    _, rows, cols = data.shape
    checks = (("factor_rows", factor_rows, rows), ("factor_cols", factor_cols, cols))
    for name, factor, size in checks:
        if not 1 <= factor <= size:
            raise StageError(f"stage {stage!r}: {name}: expected 1..{size}, got {factor}")
    n_r, n_c = rows // factor_rows, cols // factor_cols
    trimmed = data[:, : n_r * factor_rows, : n_c * factor_cols]
    bins = trimmed.reshape(data.shape[0], n_r, factor_rows, n_c, factor_cols)
    xp = array_module(bins)
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(
        bins.mean(axis=(2, 4), dtype=xp.float64), dtype=xp.float32)
    return result


# ---------------------------------------------------------------------------------- crop


class CropParams(StageParams):
    """Parameters of :func:`crop`: half-open ``(start, stop)`` ranges, None keeps all."""

    rows: tuple[int, int] | None = Field(None, description="(start, stop) of rows, axis 1")
    cols: tuple[int, int] | None = Field(None, description="(start, stop) of columns, axis 2")

    @field_validator("rows", "cols")
    @classmethod
    def _ordered(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError(f"expected 0 <= start < stop, got {value}")
        return value


def crop(
    block: npt.NDArray[Any],
    *,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> npt.NDArray[Any]:
    """Keep a rectangle of every frame ("preview").

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        A projection block, any dtype.
    rows, cols : (start, stop) or None
        Half-open pixel ranges along axis 1 and axis 2; None keeps the whole axis.

    Returns
    -------
    ndarray of shape (angles, stop_r - start_r, stop_c - start_c), C-contiguous
        A copy with the dtype of the input (cropping does not change values, so the
        dtype is kept rather than converted to float32).

    Raises
    ------
    StageError
        If ``block`` is not 3-D or a range is empty or outside ``0..shape``.
    """
    stage = "crop"
    if block.ndim != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D array, got shape {block.shape}")
    index: list[slice] = [slice(None)]
    for name, bounds, size in (("rows", rows, block.shape[1]), ("cols", cols, block.shape[2])):
        if bounds is None:
            index.append(slice(None))
            continue
        start, stop = bounds
        if not 0 <= start < stop <= size:
            raise StageError(
                f"stage {stage!r}: {name}: expected (start, stop) with "
                f"0 <= start < stop <= {size}, got ({start}, {stop})"
            )
        index.append(slice(start, stop))
    return block[tuple(index)].copy(order="C")


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="circular_mask",
        angle_local=lambda p: p.axis == 1,  # axis 1 of a sinogram block: each projection
        fn=circular_mask,
        pattern=Pattern.SINOGRAM,
        params=CircularMaskParams,
        # input + float32 copy that is masked in place and returned.
        memory=scaled_memory(2.0),
        device=True,
        summary="set pixels outside a centred circle of each slice to a value",
        aliases=("tomopy.misc.corr.circ_mask",),
    ),
    StageSpec(
        name="downsample",
        angle_local=lambda p: p.axis != 0,  # within each frame
        fn=downsample,
        pattern=Pattern.PROJECTION,
        params=SampleParams,
        # input + float32 copy + float64 bin means (at most half the block in float64,
        # i.e. one float32 block) + the float32 output (at most half a block).
        memory=scaled_memory(3.5),
        device=True,
        summary="shrink one axis by 2**level, averaging bins",
        changes_rows=lambda p: p.axis == 1 and p.level > 0,
        aliases=("tomopy.misc.morph.downsample",),
    ),
    StageSpec(
        name="upsample",
        angle_local=lambda p: p.axis != 0,  # within each frame
        fn=upsample,
        pattern=Pattern.PROJECTION,
        params=SampleParams,
        memory=_upsample_memory,
        device=True,
        summary="enlarge one axis by 2**level, repeating samples",
        changes_rows=lambda p: p.axis == 1 and p.level > 0,
        aliases=("tomopy.misc.morph.upsample",),
    ),
    StageSpec(
        name="binning",
        angle_local=True,  # within each frame
        fn=binning,
        pattern=Pattern.PROJECTION,
        params=BinningParams,
        # input + float32 copy + float64 means (half a float32 block for 2x2 bins, at most
        # one) + float32 output (a quarter block for 2x2).
        memory=scaled_memory(3.5),
        device=True,
        summary="average factor_rows x factor_cols pixel bins of each frame",
        changes_rows=lambda p: p.factor_rows > 1,
    ),
    StageSpec(
        name="crop",
        angle_local=True,  # within each frame
        fn=crop,
        pattern=Pattern.PROJECTION,
        params=CropParams,
        # input + the cropped copy (at most one block).
        memory=scaled_memory(2.0),
        device=True,
        summary="keep a (rows, cols) rectangle of each frame (preview)",
        changes_rows=lambda p: p.rows is not None,
    ),
)

"""HTTomo's output tail and resampler: ``calculate_stats``, ``rescale_to_int``,
``save_to_images``, ``data_resampler``.

The tail ``calculate_stats → rescale_to_int(glob_stats) → save_to_images`` writes an
image stack rescaled with statistics of the **whole** volume, which exist only once the
volume is complete. So these three are output steps: in the data path they pass the
block through unchanged (the float volume is what ``recon`` writes to HDF5/TIFF, as
HTTomo's ``save_result``), and when the volume is finished the runner applies them to it
(:mod:`streamer.pipeline.images`; on R ranks each rank to its own slices with statistics
merged over the ranks, ADR 0020): ``calculate_stats`` gives ``(min, max, mean, count)``
of the finite values, ``rescale_to_int`` maps ``[min + p_lo % · (max - min),
min + p_hi % · (max - min)]`` onto ``0 … 2^bits - 1`` (httomolib's rule; values are
rounded, httomolib truncates), ``save_to_images`` writes one TIFF per slice along
``axis`` into ``subfolder_name`` next to the output.

``data_resampler`` (httomolibgpu.misc.morph) resamples every 2-D slice perpendicular to
``axis`` to ``newshape`` with ``scipy.interpolate.interpn`` on httomolibgpu's grid
(``x - n/2``, zero outside). It runs in the sinogram section (after a reconstruction),
whose blocks are ``(rows, N, N)``; HTTomo's axes are ``(N, rows, N)`` there, so its
``axis`` 0/1/2 is our 1/0/2 and ``auto`` (the slicing axis, rows) is our 0.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator
from scipy.interpolate import interpn

from stages.backends.xp import array_module
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory, unchanged
from streamer.errors import StageError

__all__ = ["SPECS", "data_resampler", "resample_slice"]

#: HTTomo's axis (data ``(N, rows, N)``) → ours (``(rows, N, N)``) in the sinogram section.
_HTTOMO_AXIS = (1, 0, 2)


class CalculateStatsParams(StageParams):
    """httomo.methods.calculate_stats: no parameters."""


class RescaleToIntParams(StageParams):
    """httomolib's ``rescale_to_int`` (``glob_stats`` comes from ``calculate_stats``)."""

    perc_range_min: float = Field(default=0.0, ge=0, le=100)
    perc_range_max: float = Field(default=100.0, ge=0, le=100)
    bits: Literal[8, 16] = 8
    glob_stats: None = None

    @field_validator("perc_range_max")
    @classmethod
    def _above_min(cls, value: float, info: Any) -> float:
        low = info.data.get("perc_range_min", 0.0)
        if value <= low:
            raise ValueError(f"expected above perc_range_min {low}, got {value}")
        return value


class SaveToImagesParams(StageParams):
    """httomolib's ``save_to_images`` (current and older templates' parameters)."""

    subfolder_name: str = Field(default="images", pattern=r"^[A-Za-z0-9_.-]+$")
    axis: Literal["auto", 0, 1, 2] = "auto"
    file_format: Literal["tif"] = "tif"
    asynchronous: bool = True
    bits: Literal[8, 16] | None = None
    perc_range_min: float | None = Field(default=None, ge=0, le=100)
    perc_range_max: float | None = Field(default=None, ge=0, le=100)
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    glob_stats: bool | None = None
    offset: int = Field(default=0, ge=0)


class DataResamplerParams(StageParams):
    """httomolibgpu's ``data_resampler``."""

    newshape: tuple[int, int]
    axis: Literal["auto", 0, 1, 2] = "auto"
    interpolation: Literal["linear", "nearest"] = "linear"

    @field_validator("newshape")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"expected two sizes >= 1, got {list(value)}")
        return value


def _output_points(n: int, new: int) -> npt.NDArray[np.float64]:
    """httomolibgpu's output coordinates along one axis (float32, as it computes them)."""
    step = n / new
    scale = 2 / step
    return np.linspace(-new / scale, new / scale - step, num=new,
                       endpoint=False).astype(np.float32).astype(np.float64)


def _axis_weights(n: int, new: int, interpolation: str
                  ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64],
                             npt.NDArray[np.bool_]]:
    """For each output coordinate on the grid ``arange(n) - n/2``: the lower neighbour's
    index, the weight of the upper one (0 or 1 for ``nearest``, ties to the lower as
    scipy's ``interpn``) and whether it lies inside the grid (``interpn``'s rule)."""
    grid = np.arange(n) - n / 2
    points = _output_points(n, new)
    lower = np.clip(np.searchsorted(grid, points) - 1, 0, max(n - 2, 0))
    upper = np.minimum(lower + 1, n - 1)
    span = np.where(upper > lower, grid[upper] - grid[lower], 1.0)
    weight = (points - grid[lower]) / span
    if interpolation == "nearest":
        weight = (weight > 0.5).astype(np.float64)
    inside = (points >= grid[0]) & (points <= grid[-1])
    return lower, weight, inside


def _resample_on_device(data: Any, newshape: tuple[int, int], interpolation: str) -> Any:
    """:func:`resample_slice` for every slice of ``(slices, rows, cols)`` at once in the
    namespace of ``data``: separable linear (or nearest) weights on httomolibgpu's grid,
    zero outside. Agrees with scipy's ``interpn`` to float rounding (its 2-D kernel sums
    the four corners in another order), not bit for bit."""
    xp = array_module(data)
    rows, cols = data.shape[1:]
    iy, wy, in_y = _axis_weights(rows, newshape[0], interpolation)
    ix, wx, in_x = _axis_weights(cols, newshape[1], interpolation)
    up_y, up_x = np.minimum(iy + 1, rows - 1), np.minimum(ix + 1, cols - 1)
    values = data.astype(xp.float64)
    top, bottom = values[:, xp.asarray(iy)], values[:, xp.asarray(up_y)]
    wy_d = xp.asarray(wy)[None, :, None]
    wx_d = xp.asarray(wx)[None, None, :]
    lo_x, hi_x = xp.asarray(ix), xp.asarray(up_x)
    near = top[:, :, lo_x] * (1 - wx_d) + top[:, :, hi_x] * wx_d
    far = bottom[:, :, lo_x] * (1 - wx_d) + bottom[:, :, hi_x] * wx_d
    out = near * (1 - wy_d) + far * wy_d
    inside = xp.asarray(in_y[:, None] & in_x[None, :])
    return xp.where(inside[None], out, 0.0).astype(xp.float32)


def resample_slice(image: npt.NDArray[np.float32], newshape: tuple[int, int],
                   interpolation: str) -> npt.NDArray[np.float32]:
    """One 2-D slice on httomolibgpu's grid: axes ``arange(n) - n/2``, output points
    ``linspace(-s·n'/2, s·n'/2 - s, n', endpoint=False)`` with ``s = n / n'``."""
    rows, cols = image.shape
    step_x, step_y = rows / newshape[0], cols / newshape[1]
    scale_x, scale_y = 2 / step_x, 2 / step_y
    y1 = np.linspace(-newshape[0] / scale_x, newshape[0] / scale_x - step_x, num=newshape[0],
                     endpoint=False).astype(np.float32)
    x1 = np.linspace(-newshape[1] / scale_y, newshape[1] / scale_y - step_y, num=newshape[1],
                     endpoint=False).astype(np.float32)
    grid_x, grid_y = np.meshgrid(x1, y1)
    points = np.stack([grid_y.ravel(), grid_x.ravel()], axis=1)
    values = interpn((np.arange(rows) - rows / 2, np.arange(cols) - cols / 2), image, points,
                     method=interpolation, bounds_error=False, fill_value=0.0)
    return np.asarray(values, dtype=np.float32).reshape(newshape)


def data_resampler(block: npt.NDArray[Any], *, newshape: tuple[int, int],
                   axis: str | int = "auto", interpolation: str = "linear"
                   ) -> npt.NDArray[np.float32]:
    """Resample every slice perpendicular to ``axis`` (module notes for the axes)."""
    if block.ndim != 3 or block.dtype.kind not in "uif":
        raise StageError(f"stage 'data_resampler': block: expected a real 3-D array, got "
                         f"{block.shape} {block.dtype}")
    ours = 0 if axis == "auto" else _HTTOMO_AXIS[int(axis)]
    xp = array_module(block)
    if xp is not np:
        moved = xp.moveaxis(block.astype(xp.float32), ours, 0)
        resampled = _resample_on_device(moved, tuple(newshape), interpolation)  # type: ignore[arg-type]
        result: npt.NDArray[np.float32] = xp.ascontiguousarray(xp.moveaxis(resampled, 0, ours))
        return result
    data = np.moveaxis(np.asarray(block, dtype=np.float32), ours, 0)
    out = np.stack([resample_slice(image, tuple(newshape), interpolation)  # type: ignore[arg-type]
                    for image in data])
    return np.ascontiguousarray(np.moveaxis(out, 0, ours))


def _resampled_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    a, b = params.newshape
    return int(4 * (2 * np.prod(shape) + 3 * shape[0] * a * b))


def _resampled_device_memory(shape: tuple[int, int, int], dtype: np.dtype[Any],
                              params: Any) -> int:
    a, b = params.newshape
    rows = max(shape)  # the slicing axis may be any of the three
    return int(4 * (3 * np.prod(shape) + 2 * 2 * rows * a * max(shape) + 9 * rows * a * b))


SPECS: tuple[StageSpec, ...] = (
    StageSpec(name="calculate_stats", fn=unchanged, pattern=Pattern.ALL,
              angle_local=False,  # the finished volume
              params=CalculateStatsParams, memory=scaled_memory(1),
              summary="output step: min/max/mean/count of the finished volume, for "
              "rescale_to_int (the data pass through)",
              aliases=("httomo.methods.calculate_stats",)),
    StageSpec(name="rescale_to_int", fn=unchanged, pattern=Pattern.ALL,
              angle_local=False,  # the finished volume
              params=RescaleToIntParams, memory=scaled_memory(1),
              summary="output step: the finished volume rescaled to 8/16-bit integers with "
              "its global statistics, for save_to_images (the data pass through)",
              aliases=("httomolib.misc.rescale.rescale_to_int",
                       "httomolibgpu.misc.rescale.rescale_to_int")),
    StageSpec(name="save_to_images", fn=unchanged, pattern=Pattern.ALL,
              angle_local=False,  # the finished volume
              params=SaveToImagesParams, memory=scaled_memory(1),
              summary="output step: one TIFF per slice of the finished volume in "
              "subfolder_name (the data pass through)",
              aliases=("httomolib.misc.images.save_to_images",)),
    StageSpec(name="data_resampler", fn=data_resampler, pattern=Pattern.SINOGRAM,
              angle_local=False,  # resamples whole sinogram slices
              params=DataResamplerParams, memory=_resampled_memory, device=True,
              # float64 copy (2), two gathered row sets and two corner pairs of the
              # output (float64), the float32 result
              device_memory=_resampled_device_memory,
              summary="resample every slice to newshape (httomolibgpu, interpn)",
              # HTTomo's axis 0 or 2 resamples across the slices (module notes)
              changes_rows=lambda p: p.axis in {0, 2},
              aliases=("httomolibgpu.misc.morph.data_resampler",)),
)

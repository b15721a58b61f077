"""HTTomo's output tail on a finished volume: global statistics, integer rescale, images.

A pipeline ending ``calculate_stats → rescale_to_int → save_to_images`` (see
:mod:`stages.misc.httomo_output`) asks for an image stack rescaled with statistics of
the *whole* volume. ``recon`` writes the float volume first; then
:func:`write_images` reads it back slice by slice (never all at once), computes
``calculate_stats`` (min, max, mean, count of the finite values) in one pass, and writes
one TIFF per slice along ``axis`` with ``rescale_to_int``'s window and bits (when the
pipeline has no ``rescale_to_int``: ``save_to_images``' own ``bits`` and percentages, else
8 bits over the full range).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import tifffile

from stages.misc.rescale import IntegerType, rescale
from streamer.errors import SinkError
from streamer.pipeline.config import PipelineStep

__all__ = ["GlobalStats", "ImageTail", "image_tail", "write_images"]

#: Where ``recon`` keeps the volume in its HDF5 output.
VOLUME_DATASET = "/entry/reconstruction/data"


@dataclass(frozen=True)
class GlobalStats:
    """``calculate_stats``' side output: of the finite voxels."""

    minimum: float
    maximum: float
    mean: float
    count: int


@dataclass(frozen=True)
class ImageTail:
    """What the pipeline's output steps ask for."""

    subfolder: str
    axis: int
    bits: int
    perc_range: tuple[float, float]
    global_stats: bool


def image_tail(steps: tuple[PipelineStep, ...]) -> ImageTail | None:
    """The image output the steps ask for, or ``None`` without ``save_to_images``."""
    savers = [s for s in steps if s.name == "save_to_images"]
    if not savers:
        return None
    save: dict[str, Any] = dict(savers[-1].params)
    rescalers = [dict(s.params) for s in steps if s.name == "rescale_to_int"]
    if rescalers:
        bits = int(rescalers[-1]["bits"])
        perc = (float(rescalers[-1]["perc_range_min"]), float(rescalers[-1]["perc_range_max"]))
    else:
        bits = int(save["bits"] or 8)
        perc = (float(save["perc_range_min"] or 0.0), float(save["perc_range_max"] or 100.0))
    # our volume is (rows, N, N); HTTomo's (N, rows, N): its axis 1 (auto) is our 0
    axis = {"auto": 0, 0: 1, 1: 0, 2: 2}[save["axis"]]
    return ImageTail(str(save["subfolder_name"]), axis, bits, perc,
                     any(s.name == "calculate_stats" for s in steps))


def _slices(volume: Path, output_format: str) -> Iterator[npt.NDArray[np.float32]]:
    if output_format == "tiff":
        for path in sorted(volume.glob("slice_*.tif")):
            yield np.asarray(tifffile.imread(path), dtype=np.float32)
        return
    if output_format == "zarr":  # level 0 of the pyramid, one slice (chunk) at a time
        import zarr  # noqa: PLC0415  # 0.4 s to import, only for this format

        level = zarr.open_array(store=str(volume), path="0", mode="r", zarr_format=3)
        for index in range(level.shape[0]):
            yield np.asarray(level[index], dtype=np.float32)
        return
    with h5py.File(volume, "r") as handle:
        data = handle[VOLUME_DATASET]
        for index in range(data.shape[0]):
            yield np.asarray(data[index], dtype=np.float32)


def volume_stats(volume: Path, output_format: str) -> GlobalStats:
    """``calculate_stats`` over the finished volume, one slice at a time."""
    low, high, total, count = np.inf, -np.inf, 0.0, 0
    for image in _slices(volume, output_format):
        finite = image[np.isfinite(image)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
            total += float(finite.sum(dtype=np.float64))
            count += int(finite.size)
    if count == 0:
        return GlobalStats(0.0, 0.0, 0.0, 0)
    return GlobalStats(low, high, total / count, count)


def write_images(volume: Path, output_format: str, tail: ImageTail) -> tuple[Path, int]:
    """Write the image stack next to ``volume``; return its folder and image count."""
    stats = volume_stats(volume, output_format)
    span = stats.maximum - stats.minimum
    window = (stats.minimum + tail.perc_range[0] / 100 * span,
              stats.minimum + tail.perc_range[1] / 100 * span)
    if window[1] <= window[0]:
        window = (window[0], window[0] + 1.0)  # a constant volume: everything maps to 0
    folder = (volume if output_format == "tiff" else volume.parent) / tail.subfolder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SinkError(f"{folder}: save_to_images: cannot create the folder "
                        f"({error.strerror})") from None
    dtype: IntegerType = "uint8" if tail.bits == 8 else "uint16"
    count = 0
    if tail.axis == 0:
        for index, image in enumerate(_slices(volume, output_format)):
            scaled = rescale(image[np.newaxis], dtype=dtype, percentiles=None, window=window)
            tifffile.imwrite(folder / f"{index:05d}.tif", scaled[0])
            count += 1
        return folder, count
    volume_data = np.stack(list(_slices(volume, output_format)))  # other axes: whole volume
    moved = np.moveaxis(volume_data, tail.axis, 0)
    for index, image in enumerate(moved):
        scaled = rescale(np.ascontiguousarray(image)[np.newaxis], dtype=dtype,
                         percentiles=None, window=window)
        tifffile.imwrite(folder / f"{index:05d}.tif", scaled[0])
        count += 1
    return folder, count

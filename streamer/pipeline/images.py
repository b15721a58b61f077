"""HTTomo's output tail on a finished volume: global statistics, integer rescale, images.

A pipeline ending ``calculate_stats → rescale_to_int → save_to_images`` (see
:mod:`stages.misc.httomo_output`) asks for an image stack rescaled with statistics of
the *whole* volume. ``recon`` writes the float volume first; then
:func:`write_images` reads it back slice by slice (never all at once), computes
``calculate_stats`` (min, max, mean, count of the finite values) in one pass, and writes
one TIFF per slice along ``axis`` with ``rescale_to_int``'s window and bits (when the
pipeline has no ``rescale_to_int``: ``save_to_images``' own ``bits`` and percentages, else
8 bits over the full range).

On R ranks nobody holds the volume: each rank counts :class:`PartialStats` of the slices
it writes, the ranks exchange them (:mod:`streamer.run.ranks`), and each rank rescales its
own slices, read back with :func:`band_slices`, with the merged window
(:func:`image_window`) and writes them with :func:`write_image` under the one-rank names
(ADR 0020). The window uses min and max only, so the images equal one rank's.
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

__all__ = ["GlobalStats", "ImageTail", "PartialStats", "band_slices", "image_folder",
           "image_tail", "image_window", "make_image_folder", "write_image", "write_images"]

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
    partial = PartialStats()
    for image in _slices(volume, output_format):
        partial.add(image)
    return partial.merged([])


@dataclass
class PartialStats:
    """``calculate_stats`` of a part of the volume (one rank's band): the finite values'
    min, max, float64 sum and count, merged over every rank into :class:`GlobalStats`."""

    low: float = np.inf
    high: float = -np.inf
    total: float = 0.0
    count: int = 0

    def add(self, slices: npt.NDArray[np.float32]) -> None:
        finite = slices[np.isfinite(slices)]
        if finite.size:
            self.low, self.high = min(self.low, float(finite.min())), max(
                self.high, float(finite.max()))
            self.total += float(finite.sum(dtype=np.float64))
            self.count += int(finite.size)

    def as_dict(self) -> dict[str, float | int]:
        """For a message between ranks (``inf`` when no finite value was seen)."""
        return {"low": self.low, "high": self.high, "total": self.total, "count": self.count}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> PartialStats:
        return cls(float(fields["low"]), float(fields["high"]), float(fields["total"]),
                   int(fields["count"]))

    def merged(self, others: list[PartialStats]) -> GlobalStats:
        """The whole volume's statistics from this part and the ``others``."""
        parts = [self, *others]
        count = sum(part.count for part in parts)
        if count == 0:
            return GlobalStats(0.0, 0.0, 0.0, 0)
        return GlobalStats(min(part.low for part in parts), max(part.high for part in parts),
                           sum(part.total for part in parts) / count, count)


def image_window(stats: GlobalStats, tail: ImageTail) -> tuple[float, float]:
    """``rescale_to_int``'s window: ``[min + p_lo % · span, min + p_hi % · span]``."""
    span = stats.maximum - stats.minimum
    window = (stats.minimum + tail.perc_range[0] / 100 * span,
              stats.minimum + tail.perc_range[1] / 100 * span)
    if window[1] <= window[0]:
        window = (window[0], window[0] + 1.0)  # a constant volume: everything maps to 0
    return window


def image_folder(volume: Path, output_format: str, tail: ImageTail, *,
                 per_scan: bool = False) -> Path:
    """Where the images of ``volume`` go: ``recon`` (one fixed output) beside the volume
    (``<dir>/<subfolder>``, inside a TIFF stack's folder); ``per_scan`` (the ``run``
    service, one output per scan in one folder) in a folder named after the scan's
    output (``<dir>/<scan>/<subfolder>``), so scans never share an image folder."""
    if output_format == "tiff":
        return volume / tail.subfolder
    if per_scan:
        return volume.parent / volume.name.split(".")[0] / tail.subfolder
    return volume.parent / tail.subfolder


def make_image_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SinkError(f"{folder}: save_to_images: cannot create the folder "
                        f"({error.strerror})") from None
    return folder


def write_image(folder: Path, index: int, image: npt.NDArray[np.float32],
                window: tuple[float, float], tail: ImageTail) -> None:
    """One slice rescaled into ``window`` and written as ``<index:05d>.tif`` (the slice's
    index in the whole volume, on any number of ranks)."""
    dtype: IntegerType = "uint8" if tail.bits == 8 else "uint16"
    scaled = rescale(np.ascontiguousarray(image)[np.newaxis], dtype=dtype, percentiles=None,
                     window=window)
    try:
        tifffile.imwrite(folder / f"{index:05d}.tif", scaled[0])
    except OSError as error:
        raise SinkError(f"{folder}: save_to_images: cannot write image {index} "
                        f"({error.strerror})") from None


def write_images(volume: Path, output_format: str, tail: ImageTail, *,
                 per_scan: bool = False) -> tuple[Path, int]:
    """Write the image stack of the finished ``volume`` (one rank); return its folder and
    image count."""
    window = image_window(volume_stats(volume, output_format), tail)
    folder = make_image_folder(image_folder(volume, output_format, tail, per_scan=per_scan))
    count = 0
    if tail.axis == 0:
        for index, image in enumerate(_slices(volume, output_format)):
            write_image(folder, index, image, window, tail)
            count += 1
        return folder, count
    volume_data = np.stack(list(_slices(volume, output_format)))  # other axes: whole volume
    moved = np.moveaxis(volume_data, tail.axis, 0)
    for index, image in enumerate(moved):
        write_image(folder, index, image, window, tail)
        count += 1
    return folder, count


def band_slices(output_format: str, path: Path, rows: tuple[int, int],
                first_row: int) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """One rank's written band read back slice by slice, as (index in the volume, slice):
    ``path`` is the rank's part file (HDF5), or the shared TIFF stack or Zarr store."""
    first, last = rows
    if output_format == "tiff":
        from streamer.sinks.tiff import slice_name  # noqa: PLC0415

        for index in range(first, last):
            yield index, np.asarray(tifffile.imread(path / slice_name(first_row + index)),
                                    dtype=np.float32)
        return
    if output_format == "zarr":
        import zarr  # noqa: PLC0415  # 0.4 s to import, only for this format

        level = zarr.open_array(store=str(path), path="0", mode="r", zarr_format=3)
        for index in range(first, last):
            yield index, np.asarray(level[index], dtype=np.float32)
        return
    with h5py.File(path, "r") as handle:  # the rank's part: band-relative slices
        data = handle[VOLUME_DATASET]
        for local in range(last - first):
            yield first + local, np.asarray(data[local], dtype=np.float32)

"""Incremental preview reconstruction: a few detector rows, back-projected as they arrive.

Pure functions over arrays (no threads, no sockets): the live feed's thread calls them.

A preview row is binned to at most ``max_size`` columns (``binning`` detector columns
averaged into one), ramp-filtered once per projection with the FBP stage's own filter
(:func:`stages.recon.fbp.filter_response`, padded to :func:`~stages.recon.fbp.padded_length`
with edge values), and its filtered row is back-projected into the preview image straight
away: after all projections the preview is the FBP of that row (uniform angular weights
``π / expected``), binned. The work per projection is bounded: ``rows × size²``
interpolations, ``size ≤ max_size``.

Geometry (``docs/explanation/conventions.md``): preview pixel ``j`` along x stands for the
block of ``binning`` slice pixels starting at ``binning·j``, so a final slice binned by
:func:`bin_image` lies on the same grid; the detector column ``u`` of the full detector is
binned column ``(u − (binning − 1)/2) / binning``. Values are in attenuation per
(unbinned) pixel, like the final slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft

from stages.recon.fbp import padded_length

#: Most elements of one interpolation batch (angles × pixels): bounds the feed's memory.
BATCH_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class PreviewGeometry:
    """How a detector of ``cols`` columns maps to a preview of ``size × size`` pixels.

    ``slice_size`` is the edge of the final slices (the FBP's ``output_size``, ``cols``
    by default): the preview grid is that grid, binned.
    """

    cols: int
    binning: int
    width: int  # binned detector columns
    size: int  # preview edge, pixels
    slice_size: int
    length: int  # padded length of a filtered row
    offset: int  # index of binned column 0 in a filtered row (one zero guard column first)

    @classmethod
    def for_detector(cls, cols: int, max_size: int = 512, slice_size: int | None = None
                     ) -> PreviewGeometry:
        """The geometry of a ``cols``-column detector, binned so that the preview (and
        the ``slice_size`` slices) are at most ``max_size`` pixels wide."""
        if cols < 1 or max_size < 1:
            raise ValueError(f"cols and max_size: expected >= 1, got {cols}, {max_size}")
        size_full = cols if slice_size is None else slice_size
        binning = max(1, math.ceil(max(cols, size_full) / max_size))
        width = math.ceil(cols / binning)
        length = padded_length(width)
        left = (length - width) // 2
        return cls(cols=cols, binning=binning, width=width,
                   size=math.ceil(size_full / binning), slice_size=size_full,
                   length=length, offset=left + 1)

    def binned_center(self, center: float) -> float:
        """Binned column of the full detector's column ``center``."""
        return (center - (self.binning - 1) / 2) / self.binning

    def grid(self, size: int | None = None) -> tuple[npt.NDArray[np.float32],
                                                       npt.NDArray[np.float32]]:
        """x and y (binned pixels, relative to the axis) of every pixel of a ``size²``
        image covering the preview's field (``size`` defaults to the preview's), C order."""
        edge = self.size if size is None else size
        scale = self.size / edge
        index = (np.arange(edge, dtype=np.float64) + 0.5) * scale - 0.5  # preview pixels
        d = self.binning
        coords = (index + (d - 1) / (2 * d) - (self.slice_size - 1) / (2 * d)).astype(np.float32)
        # x grows along a row; y grows up the image (row 0 at the top), as in the slices
        return np.tile(coords, edge), np.repeat(-coords, edge)


def bin_columns(rows: npt.NDArray[np.float32], binning: int) -> npt.NDArray[np.float32]:
    """Average groups of ``binning`` columns of ``(..., cols)``; the last group is padded
    with the edge value."""
    if binning == 1:
        return np.ascontiguousarray(rows, dtype=np.float32)
    cols = rows.shape[-1]
    width = math.ceil(cols / binning)
    pad = width * binning - cols
    if pad:
        widths = [(0, 0)] * (rows.ndim - 1) + [(0, pad)]
        rows = np.pad(rows, widths, mode="edge")
    grouped = rows.reshape(*rows.shape[:-1], width, binning)
    binned: npt.NDArray[np.float32] = grouped.mean(axis=-1, dtype=np.float32)
    return binned


def bin_image(image: npt.NDArray[np.float32], binning: int) -> npt.NDArray[np.float32]:
    """Average ``binning × binning`` blocks of a 2-D image (edge-padded at the far sides)."""
    if binning == 1:
        return np.ascontiguousarray(image, dtype=np.float32)
    height, width = image.shape
    out_h, out_w = math.ceil(height / binning), math.ceil(width / binning)
    padded = np.pad(image, ((0, out_h * binning - height), (0, out_w * binning - width)),
                    mode="edge")
    blocks = padded.reshape(out_h, binning, out_w, binning)
    binned: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return binned


def filter_rows(
    binned: npt.NDArray[np.float32], geometry: PreviewGeometry,
    response: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:
    """Ramp-filter binned rows ``(angles, rows, width)`` → ``(angles, rows, length + 2)``.

    As in :func:`stages.recon.fbp.fbp`: edge padding to ``length``, the filter's real
    response applied in Fourier space, and one zero column at each end so that positions
    off the padded detector read 0.
    """
    count, rows, width = binned.shape
    left = geometry.offset - 1
    padded = np.pad(binned, ((0, 0), (0, 0), (left, geometry.length - width - left)),
                    mode="edge")
    spectrum = scipy.fft.rfft(padded, axis=2)
    spectrum *= response.astype(np.complex64)
    filtered = scipy.fft.irfft(spectrum, n=geometry.length, axis=2)
    out = np.zeros((count, rows, geometry.length + 2), dtype=np.float32)
    out[:, :, 1:-1] = filtered
    return out


def backproject(
    acc: npt.NDArray[np.float32],
    filtered: npt.NDArray[np.float32],
    angles_rad: npt.NDArray[np.float64],
    *,
    center: float,
    geometry: PreviewGeometry,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
) -> None:
    """Add the filtered rows ``(angles, rows, length + 2)`` to ``acc`` ``(rows, pixels)``.

    ``center`` is the full detector's CoR column; ``x``, ``y`` the pixel coordinates from
    :meth:`PreviewGeometry.grid`. Linear interpolation, unweighted (the caller scales).
    """
    count, rows, width = filtered.shape
    pixels = x.shape[0]
    last = width - 1
    base = np.float32(geometry.offset + geometry.binned_center(center))
    step = max(1, BATCH_ELEMENTS // pixels)
    for first in range(0, count, step):
        theta = angles_rad[first:first + step]
        batch = theta.shape[0]
        pos = np.cos(theta).astype(np.float32)[:, None] * x[None, :]
        pos += np.sin(theta).astype(np.float32)[:, None] * y[None, :]
        pos += base
        np.clip(pos, 0.0, float(last), out=pos)
        index = pos.astype(np.intp)
        np.minimum(index, last - 1, out=index)
        pos -= index  # now the fraction in [0, 1]
        index += (np.arange(batch, dtype=np.intp) * width)[:, None]
        for row in range(rows):
            values = np.ascontiguousarray(filtered[first:first + batch, row, :]).ravel()
            low = np.take(values, index)
            high = np.take(values, index + 1)
            high -= low
            high *= pos
            low += high
            acc[row] += low.sum(axis=0)


def scale(acc: npt.NDArray[np.float32], projections: int, binning: int
          ) -> npt.NDArray[np.float32]:
    """The accumulated back-projection as attenuation per pixel: ``acc · π / n / binning``.

    With every projection in, this is the FBP with uniform angular weights (the FBP
    stage's weights for evenly spaced angles); before that, the image of the angles so far,
    at the final image's scale.
    """
    factor = np.float32(math.pi / max(projections, 1) / binning)
    return acc * factor


def display_window(image: npt.NDArray[np.float32]) -> tuple[float, float]:
    """A display window: the 0.5th and 99.5th percentiles (of at most ~65 k samples)."""
    flat = image.ravel()
    stride = max(1, flat.size // 65536)
    sample = flat[::stride]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if not high > low:
        high = low + 1.0
    return low, high


def to_uint8(image: npt.NDArray[np.float32], window: tuple[float, float]
             ) -> npt.NDArray[np.uint8]:
    """Map ``window`` linearly onto 0…255 (clipped)."""
    low, high = window
    scaled = (image - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    mapped: npt.NDArray[np.uint8] = np.rint(scaled).astype(np.uint8)
    return mapped


def sweep_image(
    filtered: npt.NDArray[np.float32],
    angles_rad: npt.NDArray[np.float64],
    center: float,
    geometry: PreviewGeometry,
    size: int,
) -> npt.NDArray[np.float32]:
    """One preview row ``(angles, length + 2)`` reconstructed at CoR ``center`` on a
    ``size × size`` grid covering the preview's field."""
    x, y = geometry.grid(size)
    acc = np.zeros((1, size * size), dtype=np.float32)
    backproject(acc, filtered[:, None, :], angles_rad, center=center, geometry=geometry,
                x=x, y=y)
    # The coarser grid samples the same function: the scale is the preview's.
    factor = np.float32(math.pi / max(angles_rad.shape[0], 1) / geometry.binning)
    image: npt.NDArray[np.float32] = (acc[0] * factor).reshape(size, size)
    return image

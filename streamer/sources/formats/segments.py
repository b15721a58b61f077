"""Runs of stored frames that can be read lazily, one block at a time.

A stored scan is a sequence of *segments*: a stack of darks in one dataset, a TIFF series,
a slice of an interleaved NeXus dataset. Each segment knows its frame count, its full
frame shape and its stored dtype, and copies frames ``start … stop-1`` (with a row crop)
into an output block the reader has already allocated in the wire dtype, so a block is
converted once, straight into the buffer that is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import numpy.typing as npt
import tifffile

from streamer.errors import ScanFormatError


class Segment(Protocol):
    """Frames stored together, read lazily by block."""

    @property
    def name(self) -> str:
        """Where the frames are, for messages: ``tooth.h5:/exchange/data``."""
        ...

    @property
    def count(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int]:
        """Full (uncropped) frame shape ``(rows, cols)``."""
        ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def read_into(self, out: npt.NDArray[Any], start: int, stop: int, rows: slice) -> None:
        """Copy frames ``start … stop-1``, rows ``rows``, into ``out`` (already shaped)."""
        ...

    def close(self) -> None: ...


def check_numeric(dtype: np.dtype[Any], where: str) -> None:
    """Refuse pixel types that are not real numbers (strings, compounds, complex)."""
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
            or np.issubdtype(dtype, np.bool_)):
        raise ScanFormatError(f"{where}: expected numeric pixels, got dtype {dtype}")


class H5Segment:
    """Frames of an HDF5 dataset ``(frames, rows, cols)`` (or one ``(rows, cols)`` frame).

    Parameters
    ----------
    dataset : h5py.Dataset
        The stored frames; kept open (the reader owns the file).
    name : str
        ``file:path`` for messages.
    indices : ndarray of int, optional
        File frame index of each segment frame (to skip frames); all frames if None.
    """

    def __init__(
        self, dataset: h5py.Dataset, name: str, indices: npt.NDArray[np.int64] | None = None
    ) -> None:
        if dataset.ndim not in (2, 3):
            raise ScanFormatError(
                f"{name}: expected a 3-D dataset (frames, rows, cols) or one 2-D frame, "
                f"got shape {dataset.shape}"
            )
        check_numeric(dataset.dtype, name)
        self._dataset = dataset
        self._single = dataset.ndim == 2
        stored = 1 if self._single else int(dataset.shape[0])
        self._indices = np.arange(stored, dtype=np.int64) if indices is None else indices
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def count(self) -> int:
        return int(self._indices.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self._dataset.shape[-2:]
        return int(rows), int(cols)

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self._dataset.dtype)
        return dtype

    def read_into(self, out: npt.NDArray[Any], start: int, stop: int, rows: slice) -> None:
        if self._single:
            out[0] = self._dataset[rows, :]
            return
        wanted = self._indices[start:stop]
        # Read each run of consecutive file frames as one hyperslab.
        breaks = [*(np.flatnonzero(np.diff(wanted) != 1) + 1).tolist(), len(wanted)]
        low = 0
        for high in breaks:
            first, last = int(wanted[low]), int(wanted[high - 1])
            out[low:high] = self._dataset[first : last + 1, rows, :]
            low = high

    def close(self) -> None:
        """Close the file holding the dataset (an externally linked file stays open else)."""
        if self._dataset.id.valid:  # invalid once another segment closed the same file
            self._dataset.file.close()


class TiffSegment:
    """Pages of one or more TIFF files, each page one 2-D frame.

    Only one file is kept open at a time, so a series of thousands of single-page files
    does not exhaust file handles.
    """

    def __init__(
        self, pages: list[tuple[Path, int]], shape: tuple[int, int], dtype: np.dtype[Any],
        name: str,
    ) -> None:
        self._pages = pages
        self._shape = shape
        self._dtype = dtype
        self._name = name
        self._open: tuple[Path, tifffile.TiffFile] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def count(self) -> int:
        return len(self._pages)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    def _file(self, path: Path) -> tifffile.TiffFile:
        if self._open is None or self._open[0] != path:
            self.close()
            try:
                self._open = (path, tifffile.TiffFile(path))
            except (OSError, tifffile.TiffFileError) as exc:
                raise ScanFormatError(f"{path.name}: cannot read TIFF ({exc})") from None
        return self._open[1]

    def read_into(self, out: npt.NDArray[Any], start: int, stop: int, rows: slice) -> None:
        for offset, (path, page) in enumerate(self._pages[start:stop]):
            image = np.asarray(self._file(path).pages[page].asarray())
            if image.shape != self._shape:
                raise ScanFormatError(
                    f"{path.name}: page {page}: expected a {self._shape[0]}x{self._shape[1]} "
                    f"frame like the rest of {self._name}, got shape {image.shape}"
                )
            out[offset] = image[rows, :]

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


class ArraySegment:
    """Frames already in memory (single sinograms, which are small)."""

    def __init__(self, frames: npt.NDArray[Any], name: str) -> None:
        if frames.ndim != 3:
            raise ScanFormatError(f"{name}: expected frames (n, rows, cols), got {frames.shape}")
        check_numeric(frames.dtype, name)
        self._frames = frames
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def count(self) -> int:
        return int(self._frames.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._frames.shape[1]), int(self._frames.shape[2])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._frames.dtype

    def read_into(self, out: npt.NDArray[Any], start: int, stop: int, rows: slice) -> None:
        out[...] = self._frames[start:stop, rows, :]

    def close(self) -> None:
        """Nothing to release."""

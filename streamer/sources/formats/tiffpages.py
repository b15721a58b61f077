"""Finding TIFF files and checking their pages: shared by TIFF series and references."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import tifffile

from streamer.errors import ScanFormatError
from streamer.sources.formats.detect import is_glob
from streamer.sources.formats.segments import TiffSegment, check_numeric

TIFF_SUFFIXES: Final = (".tif", ".tiff")


def natural_key(path: Path) -> tuple[tuple[str, int], ...]:
    """Sort key putting ``raw_2.tif`` before ``raw_10.tif``."""
    pieces = re.split(r"(\d+)", path.name)
    return tuple(
        (pieces[i].lower(), int(pieces[i + 1]) if i + 1 < len(pieces) else -1)
        for i in range(0, len(pieces), 2)
    )


def series_files(spec: str) -> list[Path]:
    """The TIFF files named by ``spec`` (directory, glob pattern or file), naturally sorted."""
    path = Path(spec)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES]
        if not files:
            raise ScanFormatError(f"{spec}: expected .tif/.tiff files in the directory, found none")
    elif path.is_file():
        files = [path]
    elif is_glob(spec):
        files = [Path(p) for p in glob.glob(spec) if Path(p).is_file()]
        if not files:
            raise ScanFormatError(f"{spec}: expected TIFF files matching the pattern, found none")
    else:
        raise ScanFormatError(f"{spec}: no such file, directory or pattern")
    return sorted(files, key=natural_key)


def tiff_segment(files: list[Path], name: str) -> TiffSegment:
    """A segment of every page of ``files``, checking that all are 2-D of one shape/type."""
    pages: list[tuple[Path, int]] = []
    shape: tuple[int, int] | None = None
    dtype: np.dtype[Any] | None = None
    for file in files:
        try:
            with tifffile.TiffFile(file) as tiff:
                for number, page in enumerate(tiff.pages):
                    page_shape = tuple(int(n) for n in page.shape)
                    page_dtype = np.dtype(page.dtype)
                    where = f"{file.name}: page {number}"
                    if len(page_shape) != 2:
                        raise ScanFormatError(
                            f"{where}: expected a 2-D grey image, got shape {page_shape}"
                        )
                    check_numeric(page_dtype, where)
                    if shape is None or dtype is None:
                        shape, dtype = (page_shape[0], page_shape[1]), page_dtype
                    elif page_shape != shape or page_dtype.str[1:] != dtype.str[1:]:
                        raise ScanFormatError(
                            f"{where}: expected {shape[0]}x{shape[1]} {dtype.name} like "
                            f"{pages[0][0].name}, got {page_shape} {page_dtype.name}"
                        )
                    pages.append((file, number))
        except (OSError, tifffile.TiffFileError) as exc:
            raise ScanFormatError(f"{file.name}: cannot read TIFF ({exc})") from None
    if shape is None or dtype is None:
        raise ScanFormatError(f"{name}: expected at least one TIFF page, found none")
    return TiffSegment(pages, shape, dtype, name)

"""Which loader reads a scan: from the file's content first, then its name.

Content beats extension because beamline files are often misnamed (``.nxs`` files that are
plain HDF5, ``.hdf`` data-exchange files). Rules, in order:

* a directory or a glob pattern → ``tiff`` (a TIFF series);
* HDF5 (signature at offset 0, 512, 1024 … for files with a user block) → ``mat`` if it
  carries a MATLAB 7.3 header, ``dxchange`` if it has ``/exchange/data``, else ``nexus``;
* TIFF → ``sinogram-tif`` if it holds one 2-D page (one page is a sinogram, not a scan),
  else ``tiff`` (a multi-page stack of projections);
* a MATLAB 5 header → ``mat``;
* otherwise the extension (``.mat`` v4 files have no signature); else an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import h5py
import tifffile

from streamer.errors import ScanFormatError
from streamer.sources.formats.options import FormatName

HDF5_SIGNATURE: Final = b"\x89HDF\r\n\x1a\n"
TIFF_SIGNATURES: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
MATLAB_HEADER: Final = b"MATLAB "
GLOB_CHARACTERS: Final = frozenset("*?[")

_BY_SUFFIX: Final[dict[str, FormatName]] = {
    ".nxs": "nexus", ".nx5": "nexus", ".h5": "nexus", ".hdf5": "nexus", ".hdf": "nexus",
    ".tif": "tiff", ".tiff": "tiff", ".mat": "mat",
}


def is_glob(text: str) -> bool:
    """Whether ``text`` looks like a glob pattern rather than a file name."""
    return any(char in GLOB_CHARACTERS for char in text)


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file (the signature may follow a user block)."""
    try:
        with path.open("rb") as handle:
            offset = 0
            while True:
                handle.seek(offset)
                head = handle.read(len(HDF5_SIGNATURE))
                if len(head) < len(HDF5_SIGNATURE):
                    return False
                if head == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False


def detect_format(scan: str | Path) -> FormatName:
    """The loader for ``scan`` (a file, a directory of TIFFs or a glob pattern).

    Raises
    ------
    ScanFormatError
        If the path does not exist or its format is not recognised.
    """
    path = Path(scan)
    if path.is_dir() or (not path.exists() and is_glob(str(scan))):
        return "tiff"
    if not path.is_file():
        raise ScanFormatError(f"{scan}: no such file or directory")
    try:
        with path.open("rb") as handle:
            head = handle.read(128)
    except OSError as exc:
        raise ScanFormatError(f"{path.name}: cannot read ({exc})") from None
    if is_hdf5(path):
        if head.startswith(MATLAB_HEADER):
            return "mat"
        return _hdf5_kind(path)
    if head[:4] in TIFF_SIGNATURES:
        return _tiff_kind(path)
    if head.startswith(MATLAB_HEADER):
        return "mat"
    by_suffix = _BY_SUFFIX.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix
    raise ScanFormatError(
        f"{path.name}: unknown scan format: expected an HDF5/NeXus, data-exchange, TIFF or "
        f"MATLAB .mat file (or pass --format), got a file starting with {head[:8]!r}"
    )


def _hdf5_kind(path: Path) -> FormatName:
    try:
        with h5py.File(path, "r") as file:
            data = file.get("/exchange/data")
            return "dxchange" if isinstance(data, h5py.Dataset) else "nexus"
    except OSError as exc:
        raise ScanFormatError(f"{path.name}: cannot open as HDF5 ({exc})") from None


def _tiff_kind(path: Path) -> FormatName:
    try:
        with tifffile.TiffFile(path) as tiff:
            pages = len(tiff.pages)
            single = pages == 1 and len(tiff.pages[0].shape) == 2
    except (OSError, tifffile.TiffFileError) as exc:
        raise ScanFormatError(f"{path.name}: cannot read TIFF ({exc})") from None
    return "sinogram-tif" if single else "tiff"

"""Loaders for stored scans: NeXus/NXtomo, APS data-exchange, TIFF series, sinograms.

:func:`open_scan` detects the format (or takes ``LoadOptions.format``) and returns a lazy
:class:`~streamer.sources.scan.FrameReader`: frames are read from disk only when a block
is asked for. :func:`write_nxtomo` writes any reader back as a standard NXtomo file.
The how-to ``docs/how-to/replay-stored-scans.md`` gives the options for each format.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from streamer.sources.formats.detect import detect_format
from streamer.sources.formats.dxchange import load_dxchange
from streamer.sources.formats.nexus import load_nexus
from streamer.sources.formats.nxtomo_writer import write_nxtomo
from streamer.sources.formats.options import FORMATS, LoadOptions, parse_angle_range, parse_rows
from streamer.sources.formats.reader import StoredScan
from streamer.sources.formats.sinogram import load_mat, load_sinogram_tif
from streamer.sources.formats.tiffseries import load_tiff_series

__all__ = [
    "FORMATS",
    "LoadOptions",
    "StoredScan",
    "detect_format",
    "open_scan",
    "parse_angle_range",
    "parse_rows",
    "write_nxtomo",
]

_Loader = Callable[[Path, LoadOptions, ExitStack], StoredScan]

_LOADERS: Final[dict[str, _Loader]] = {
    "nexus": load_nexus,
    "dxchange": load_dxchange,
    "mat": load_mat,
    "sinogram-tif": load_sinogram_tif,
}


#: Options used when none are given: detect everything.
DEFAULT_OPTIONS: Final = LoadOptions()


def open_scan(path: str | Path, options: LoadOptions = DEFAULT_OPTIONS) -> StoredScan:
    """Open a stored scan for lazy reading, detecting its format unless forced.

    Parameters
    ----------
    path : str or Path
        A scan file, a directory of TIFFs or a glob pattern of TIFFs.
    options : LoadOptions
        Paths, references, crop, angles and scaling (all optional).

    Returns
    -------
    StoredScan
        A :class:`~streamer.sources.scan.FrameReader` with ``.layout``, ``.read(start,
        stop)`` and ``.close()``; also a context manager.

    Raises
    ------
    ScanFormatError
        The file cannot be read as a scan; the message names the file and dataset.
    """
    kind = detect_format(path) if options.format == "auto" else options.format
    resources = ExitStack()
    try:
        if kind == "tiff":
            return load_tiff_series(path, options, resources)
        return _LOADERS[kind](Path(path), options, resources)
    except BaseException:
        resources.close()
        raise

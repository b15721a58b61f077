"""Which sink writes a volume: one protocol, one registry, one naming rule.

Every output format is a class with the :class:`VolumeSink` methods, constructed with the
geometry keywords of :class:`~streamer.sinks.hdf5.Hdf5VolumeWriter` (detector rows, slice
shape, angles, CoR and how it was found, pipeline, scan, metadata, overwrite). The
:data:`SINKS` registry maps a format name to its :class:`SinkFormat`; the format of an
output follows ``--output-format`` (or ``--tiff``), else the output's suffix
(:func:`format_for`). Adding a format is one module with its writer and one line in
:data:`SINKS`.

The one rule that turns a scan id into a file name, :func:`output_stem`, and the one
that picks a free name for a scan in an output folder, :func:`free_output_path`, live
here too, so the one-rank and the R-rank paths name their outputs alike.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError, SinkError
from streamer.sinks.disk import check_writable
from streamer.sinks.hdf5 import Hdf5VolumeWriter
from streamer.sinks.tiff import TiffStackWriter


class VolumeSink(Protocol):
    """What the runner needs of an output: bands of slices in any order, then a close
    that says whether the volume is complete (and stores the run's report)."""

    def write(self, first_slice: int, slices: npt.NDArray[np.float32]) -> None: ...

    def close(self, *, complete: bool, report: Mapping[str, Any] | None = None) -> None: ...


@dataclass(frozen=True)
class SinkFormat:
    """One output format: how to open it and how its outputs are named."""

    name: str
    #: Suffix of a scan's output in a folder (``""``: the output is a folder itself).
    suffix: str
    #: Output suffixes that select this format when ``--format`` is not given.
    suffixes: tuple[str, ...]
    #: ``opener(path, **geometry)``: the writer (geometry keywords as Hdf5VolumeWriter's).
    opener: Callable[..., VolumeSink]
    description: str
    #: ``"file"``: one new file; ``"store"``: one new folder (a Zarr store); both are
    #: refused if they exist, without --overwrite. ``"folder"``: a folder that holds a
    #: file per slice and may exist before (TIFF).
    output_kind: Literal["file", "folder", "store"] = "file"


def _open_zarr(path: Path, **geometry: Any) -> VolumeSink:
    """The OME-Zarr writer, imported when used (zarr takes 0.4 s to import)."""
    from streamer.sinks.omezarr import ZarrVolumeWriter  # noqa: PLC0415

    return ZarrVolumeWriter(path, **geometry)


#: Every output format by name. A new format: its module and one line here.
SINKS: Final[Mapping[str, SinkFormat]] = {
    "hdf5": SinkFormat("hdf5", ".h5", (".h5", ".hdf5", ".hdf", ".nxs"), Hdf5VolumeWriter,
                       "one HDF5 file (parts and a master file on several ranks)"),
    "tiff": SinkFormat("tiff", "", (".tif", ".tiff"), TiffStackWriter,
                       "a folder with one TIFF per slice and volume.json", output_kind="folder"),
    "zarr": SinkFormat("zarr", ".ome.zarr", (".zarr",), _open_zarr,
                       "one OME-Zarr store (Zarr v3, NGFF 0.5) with a resolution pyramid",
                       output_kind="store"),
}
DEFAULT_FORMAT: Final = "hdf5"


def sink_format(name: str) -> SinkFormat:
    """The registered format ``name``; a :class:`ConfigError` names the known ones."""
    try:
        return SINKS[name]
    except KeyError:
        raise ConfigError(f"--output-format: expected one of {', '.join(SINKS)}, "
                          f"got {name!r}") from None


def format_for(output: Path | None, requested: str | None = None) -> str:
    """The format of ``output``: ``requested`` (``--output-format``) if given (checked),
    else the format whose suffixes include the output's suffix, else
    :data:`DEFAULT_FORMAT`."""
    if requested is not None:
        return sink_format(requested).name
    suffix = output.suffix.lower() if output is not None else ""
    for sink in SINKS.values():
        if suffix in sink.suffixes:
            return sink.name
    return DEFAULT_FORMAT


def open_sink(output_format: str, path: Path, **geometry: Any) -> VolumeSink:
    """Open a writer of ``output_format`` at ``path`` (geometry keywords as
    :class:`~streamer.sinks.hdf5.Hdf5VolumeWriter`'s)."""
    return sink_format(output_format).opener(path, **geometry)


def check_output(output: Path, output_format: str, *, overwrite: bool,
                 what: str = "-o/--output") -> None:
    """Refuse, before any work, an output that cannot be written: a folder of slices
    (TIFF) must be writable; a file or store must be new (or ``overwrite``) and its
    folder writable."""
    kind = sink_format(output_format).output_kind
    if kind == "folder":
        check_writable(output, folder=True, what=what)
        return
    if kind == "store":
        if output.exists() and not output.is_dir():
            raise SinkError(f"{output}: {what}: expected a folder (an OME-Zarr store), got "
                            "an existing file")
        check_writable(output.parent, folder=True, what=what)
    else:
        check_writable(output, what=what)
    if output.exists() and not overwrite:
        raise SinkError(f"{output}: {what}: expected a new {kind}, got an existing one "
                        "(pass --overwrite to replace it)")


def output_stem(scan: str) -> str:
    """The one scan-id → file-name rule: every character outside ``[A-Za-z0-9._-]``
    becomes ``_`` (no path separator, no shell metacharacter reaches the disk)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", scan)


def free_output_path(out_dir: Path, scan: str, output_format: str) -> Path:
    """``<scan><suffix>`` in ``out_dir``, or ``<scan>-2<suffix>`` … when that name (or a
    part file of it, ``<name>.part*of*.h5``) is taken: a scan never overwrites an older
    one. Creates ``out_dir``."""
    suffix = sink_format(output_format).suffix
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(scan)
    name, number = stem, 2
    while (out_dir / f"{name}{suffix}").exists() or any(
            out_dir.glob(f"{glob.escape(name)}.part*of*.h5")):
        name = f"{stem}-{number}"
        number += 1
    return out_dir / f"{name}{suffix}"


__all__ = ["DEFAULT_FORMAT", "SINKS", "SinkFormat", "VolumeSink", "check_output", "format_for",
           "free_output_path", "open_sink", "output_stem", "sink_format"]

"""One volume written by R ranks: how each output format shares the work.

The R-rank runner needs three things of an output, whatever its format: rank 0 marks
the output in progress when a scan opens, each rank opens a writer for its band of
slices, and rank 0 finishes the output once every rank has reported. Two ways exist:

* **hdf5**: a part file per rank (``<stem>.part<r>of<R>.h5``) and a master file with a
  Virtual Dataset (:mod:`streamer.sinks.master`), because HDF5 without MPI-IO cannot be
  written by several processes.
* **zarr**: one OME-Zarr store; every rank writes its own chunks and rank 0 builds the
  coarse slices that straddle two bands and writes the closing attributes
  (:mod:`streamer.sinks.omezarr`, ADR 0007). No master file.
* **tiff**: one stack folder; every rank writes the slice files of its band and rank 0
  writes ``volume.json`` from the files present (:mod:`streamer.sinks.tiff`). No master.

On one rank none of this is used: the runner opens the format's writer from the registry
(:func:`streamer.sinks.registry.open_sink`) for the whole volume, so the output is the
volume itself. The band writers take band-relative slice indices, as the runner counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError
from streamer.sinks.registry import VolumeSink


@dataclass(frozen=True)
class Finished:
    """What rank 0 wrote when the scan closed: the output (None: no rank wrote a slice)
    and the CoR it records."""

    path: Path | None
    center: float | None


class RankedOutput(Protocol):
    """How one output format is written by R ranks (see the module docstring)."""

    def mark_in_progress(self, path: Path, *, scan: str, ranks: int) -> None: ...

    def open_band(self, path: Path, *, rank: int, ranks: int, band: tuple[int, int],
                  first_row: int, volume_slices: int, overwrite: bool,
                  **geometry: Any) -> tuple[Path, VolumeSink]: ...

    def finish(self, path: Path, *, ranks: int, bands: Sequence[tuple[int, int]],
               first_row: int, complete: bool, report: Mapping[str, Any],
               errors: Sequence[str]) -> Finished: ...


class Hdf5Parts:
    """A part file per rank, stitched by a master file (an HDF5 Virtual Dataset)."""

    def mark_in_progress(self, path: Path, *, scan: str, ranks: int) -> None:
        from streamer.sinks.master import write_placeholder  # noqa: PLC0415  # h5py

        write_placeholder(path, scan=scan, ranks=ranks)

    def open_band(self, path: Path, *, rank: int, ranks: int, band: tuple[int, int],
                  first_row: int, volume_slices: int, overwrite: bool,
                  **geometry: Any) -> tuple[Path, VolumeSink]:
        from streamer.sinks.hdf5 import Hdf5VolumeWriter  # noqa: PLC0415  # h5py
        from streamer.sinks.master import part_path  # noqa: PLC0415

        part = part_path(path, rank, ranks)
        rows = list(range(first_row + band[0], first_row + band[1]))
        return part, Hdf5VolumeWriter(part, detector_rows=rows, overwrite=overwrite,
                                      **geometry)

    def finish(self, path: Path, *, ranks: int, bands: Sequence[tuple[int, int]],
               first_row: int, complete: bool, report: Mapping[str, Any],
               errors: Sequence[str]) -> Finished:
        import h5py  # noqa: PLC0415  # only rank 0, once per scan

        from streamer.sinks.master import part_path, write_master  # noqa: PLC0415

        # Every planned part, written or not: a part that is missing reads as a NaN band
        # in the master (which is then incomplete and says why).
        planned = [(rank, band) for rank, band in enumerate(bands) if band[1] > band[0]]
        files = [part_path(path, rank, ranks) for rank, _ in planned]
        rows = [list(range(first_row + a, first_row + b)) for _, (a, b) in planned]
        written = [file for file in files if file.exists()]
        if not written:
            return Finished(None, None)
        # Replaces rank 0's in-progress placeholder (the name was free, or the command
        # was allowed to overwrite it, when the scan opened).
        write_master(path, files, complete=complete, report=report, overwrite=True,
                     bands=rows)
        try:
            with h5py.File(written[0], "r") as handle:
                center = float(handle["/entry/process/center_of_rotation"][()])
        except (OSError, KeyError):
            center = None
        return Finished(path, center)


class _BandOfStore:
    """A rank's writer of a shared store (Zarr) or stack (TIFF), taking band-relative
    slice indices."""

    def __init__(self, writer: VolumeSink, offset: int) -> None:
        self._writer = writer
        self._offset = offset

    def write(self, first_slice: int, slices: npt.NDArray[np.float32]) -> None:
        self._writer.write(self._offset + int(first_slice), slices)

    def close(self, *, complete: bool, report: Mapping[str, Any] | None = None) -> None:
        self._writer.close(complete=complete, report=report)


class ZarrStore:
    """One OME-Zarr store: every rank writes its chunks, rank 0 finishes the pyramid."""

    def mark_in_progress(self, path: Path, *, scan: str, ranks: int) -> None:
        from streamer.sinks.omezarr import write_store_placeholder  # noqa: PLC0415  # zarr

        write_store_placeholder(path, scan=scan, ranks=ranks)

    def open_band(self, path: Path, *, rank: int, ranks: int, band: tuple[int, int],
                  first_row: int, volume_slices: int, overwrite: bool,
                  **geometry: Any) -> tuple[Path, VolumeSink]:
        from streamer.sinks.omezarr import ZarrVolumeWriter  # noqa: PLC0415  # zarr

        rows = list(range(first_row, first_row + volume_slices))
        writer = ZarrVolumeWriter(path, detector_rows=rows, region=band, **geometry)
        return path, _BandOfStore(writer, band[0])

    def finish(self, path: Path, *, ranks: int, bands: Sequence[tuple[int, int]],
               first_row: int, complete: bool, report: Mapping[str, Any],
               errors: Sequence[str]) -> Finished:
        from streamer.sinks.omezarr import finish_store  # noqa: PLC0415  # zarr

        reasons = list(errors) if complete else ["the run reported the scan incomplete",
                                                 *errors]
        summary = finish_store(path, complete=complete, report=report, reasons=reasons)
        if summary.slices_written == 0:
            return Finished(None, None)
        return Finished(path, summary.center_of_rotation)


class TiffStack:
    """One TIFF stack folder: every rank writes its slice files, rank 0 the sidecar."""

    def mark_in_progress(self, path: Path, *, scan: str, ranks: int) -> None:
        from streamer.sinks.tiff import prepare_shared_stack  # noqa: PLC0415

        prepare_shared_stack(path, scan=scan, ranks=ranks)

    def open_band(self, path: Path, *, rank: int, ranks: int, band: tuple[int, int],
                  first_row: int, volume_slices: int, overwrite: bool,
                  **geometry: Any) -> tuple[Path, VolumeSink]:
        from streamer.sinks.tiff import TiffStackWriter  # noqa: PLC0415

        rows = list(range(first_row, first_row + volume_slices))
        writer = TiffStackWriter(path, detector_rows=rows, region=band, **geometry)
        return path, _BandOfStore(writer, band[0])

    def finish(self, path: Path, *, ranks: int, bands: Sequence[tuple[int, int]],
               first_row: int, complete: bool, report: Mapping[str, Any],
               errors: Sequence[str]) -> Finished:
        from streamer.sinks.tiff import finish_shared_stack  # noqa: PLC0415

        slices, center = finish_shared_stack(path, complete=complete, report=report,
                                             errors=errors)
        return Finished(path if slices else None, center)


#: The formats R ranks can write, by the name of :data:`streamer.sinks.registry.SINKS`.
RANKED: Final[Mapping[str, RankedOutput]] = {"hdf5": Hdf5Parts(), "zarr": ZarrStore(),
                                              "tiff": TiffStack()}


def ranked_output(output_format: str) -> RankedOutput:
    """How R ranks write ``output_format``; a :class:`ConfigError` for one they cannot."""
    try:
        return RANKED[output_format]
    except KeyError:
        raise ConfigError(
            f"--output-format {output_format}: with several MPI ranks the output is one of "
            f"{', '.join(RANKED)} (run one rank for {output_format})") from None


__all__ = ["RANKED", "Finished", "Hdf5Parts", "RankedOutput", "TiffStack", "ZarrStore",
           "ranked_output"]

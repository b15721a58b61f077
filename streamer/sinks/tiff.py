"""The TIFF stack writer: one TIFF per slice plus a ``volume.json`` sidecar.

Files are named ``slice_{row:05d}.tif`` after the detector row of the slice. Each slice
is written to a temporary name and renamed, so a file that exists is a whole slice: after
a crash the files present are exactly the slices written. ``volume.json`` is written
atomically when the writer opens (``complete: false``) and again at close. The layout is
documented in ``docs/reference/output.md``.

**One stack, R ranks** (:class:`~streamer.sinks.ranked.TiffStack`): rank 0 prepares the
folder (:func:`prepare_shared_stack`: the old stack removed, an in-progress ``volume.json``);
each rank opens a writer with ``region=(a, b)``, its band of the volume's slices, which
writes only those slice files and no sidecar (the writer of the band that starts at slice 0
rewrites the in-progress sidecar with the volume's geometry); when every rank has reported,
rank 0's :func:`finish_shared_stack` writes ``volume.json`` from the slice files present:
the files on disk are the slices written, so no rank's count has to be trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import tifffile

from streamer.errors import SinkError
from streamer.ingest.report import software_versions
from streamer.sinks.disk import RESERVE_BYTES, free_bytes, os_reason
from streamer.sinks.hdf5 import (
    FORMAT_VERSION,
    MetadataValue,
    OutputDtype,
    describe_written,
    now_iso,
    validate_band,
    validate_geometry,
    written_ranges,
)

SIDECAR = "volume.json"


def slice_name(row: int) -> str:
    """The file name of the slice of detector row ``row``."""
    return f"slice_{row:05d}.tif"


class TiffStackWriter:
    """Write a volume as one TIFF per slice into ``folder``; same interface as HDF5."""

    def __init__(
        self,
        folder: Path,
        *,
        detector_rows: Sequence[int] | npt.NDArray[Any],
        slice_shape: tuple[int, int],
        angles_deg: npt.NDArray[Any] | Sequence[float],
        center_of_rotation: float,
        center_method: str,
        pipeline_yaml: str,
        scan: str,
        metadata: Mapping[str, MetadataValue] | None = None,
        dtype: OutputDtype = "float32",
        window: tuple[float, float] | None = None,
        overwrite: bool = False,
        region: tuple[int, int] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.geometry = validate_geometry(
            self.folder,
            detector_rows=detector_rows,
            slice_shape=slice_shape,
            angles_deg=angles_deg,
            center_of_rotation=center_of_rotation,
            center_method=center_method,
            pipeline_yaml=pipeline_yaml,
            scan=scan,
            metadata=metadata or {},
            dtype=dtype,
            window=window,
        )
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(
                f"{self.folder}: output folder: expected a folder, got an existing file"
            )
        n = self.geometry.n_slices
        if region is not None and not (
                isinstance(region, tuple) and len(region) == 2
                and 0 <= int(region[0]) < int(region[1]) <= n):
            raise SinkError(f"{self.folder}: region: expected (a, b) with 0 <= a < b <= {n}, "
                            f"got {region!r}")
        #: This writer's slices of a stack shared by ranks (None: the whole stack is its own).
        self.region = None if region is None else (int(region[0]), int(region[1]))
        self._written = np.zeros(n, dtype=bool)
        self._closed = False
        self._created = now_iso()
        if self.region is not None:  # rank 0 prepared the folder (prepare_shared_stack)
            if not self.folder.is_dir():
                raise SinkError(f"{self.folder}: shared stack: expected the folder rank 0 "
                                "prepared, got none")
            if self.region[0] == 0:
                self._write_sidecar(complete=False, report=None)
            return
        old = previous_stack(self.folder)
        if old and not overwrite:
            raise SinkError(
                f"{self.folder}: output folder: expected no previous stack, got "
                f"{len(old)} file(s) such as {old[0].name} (pass overwrite=True to replace them)"
            )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path in old:
                path.unlink()
        except OSError as error:
            raise SinkError(
                f"{self.folder}: cannot prepare the output folder: {os_reason(error)}"
            ) from error
        self._write_sidecar(complete=False, report=None)

    @property
    def slices_written(self) -> npt.NDArray[np.bool_]:
        """A copy of the per-slice written flags."""
        return self._written.copy()

    def sidecar_document(
        self, *, complete: bool, report: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The content of ``volume.json``."""
        g = self.geometry
        q = g.quantisation
        return {
            "format": "tomo-streamer tiff stack",
            "format_version": FORMAT_VERSION,
            "scan": g.scan,
            "complete": complete,
            "created": self._created,
            "file_pattern": "slice_{row:05d}.tif",
            "detector_rows": g.detector_rows.tolist(),
            "slice_shape": list(g.slice_shape),
            "dtype": g.dtype,
            "window": None if q is None else [q.window_min, q.window_max],
            "scale": None if q is None else q.scale,
            "offset": None if q is None else q.offset,
            "slices_written": int(self._written.sum()),
            "written_ranges": [list(r) for r in written_ranges(self._written)],
            "angles_count": int(g.angles_deg.shape[0]),
            "angles_deg": g.angles_deg.tolist(),
            "center_of_rotation": g.center_of_rotation,
            "center_method": g.center_method,
            "pipeline": g.pipeline_yaml,
            "metadata": g.metadata,
            "software_versions": software_versions(),
            "report": None if report is None else dict(report),
        }

    def _write_sidecar(self, *, complete: bool, report: Mapping[str, Any] | None) -> None:
        path = self.folder / SIDECAR
        temporary = self.folder / f".{SIDECAR}.tmp"
        try:
            text = json.dumps(
                self.sidecar_document(complete=complete, report=report), indent=2, default=str
            )
            temporary.write_text(text + "\n", encoding="utf-8")
            os.replace(temporary, path)
        except (TypeError, ValueError) as error:
            raise SinkError(f"{path}: cannot write the sidecar: {error}") from error
        except OSError as error:
            with contextlib.suppress(OSError):  # a partial temporary file, never the sidecar
                temporary.unlink()
            raise SinkError(
                f"{path}: cannot write the sidecar: {os_reason(error)}; the previous "
                f"{SIDECAR} (if any) is unchanged"
            ) from error

    def write(self, first_slice: int, slices: npt.NDArray[np.float32]) -> None:
        """Store each slice of the band as its own TIFF (written, then renamed)."""
        if self._closed:
            raise SinkError(f"{self.folder}: write: expected an open writer, got a closed one")
        band = validate_band(self.geometry, first_slice, slices)
        first = int(first_slice)
        if self.region is not None and not (
                self.region[0] <= first and first + band.shape[0] <= self.region[1]):
            raise SinkError(f"{self.folder}: band: expected slices within this rank's "
                            f"{list(self.region)}, got [{first}, {first + band.shape[0]})")
        q = self.geometry.quantisation
        stored = band if q is None else q.apply(band)
        for offset in range(stored.shape[0]):
            index = first + offset
            name = slice_name(int(self.geometry.detector_rows[index]))
            temporary = self.folder / f".{name}.tmp"
            free = free_bytes(self.folder)
            if free is not None and free < stored[offset].nbytes + RESERVE_BYTES:
                raise SinkError(
                    f"{self.folder / name}: writing slice {index} refused: no space left on "
                    f"device ({free} bytes free, the slice needs {stored[offset].nbytes} "
                    f"and {RESERVE_BYTES} stay reserved for {SIDECAR}); "
                    f"{describe_written(self._written)}"
                )
            try:
                tifffile.imwrite(
                    temporary, np.ascontiguousarray(stored[offset]), photometric="minisblack"
                )
                os.replace(temporary, self.folder / name)
            except OSError as error:
                with contextlib.suppress(OSError):  # a partial slice is never left behind
                    temporary.unlink()
                reason = os_reason(error)
                free = free_bytes(self.folder)
                if getattr(error, "errno", None) is None and free is not None and (
                        free < stored[offset].nbytes):  # tifffile's short-write error
                    reason += f" (No space left on device: {free} bytes free)"
                raise SinkError(
                    f"{self.folder / name}: writing slice {index} failed: {reason}; "
                    f"{describe_written(self._written)}"
                ) from error
            self._written[index] = True

    def close(self, *, complete: bool, report: Mapping[str, Any] | None = None) -> None:
        """Rewrite ``volume.json`` with the complete flag and ``report``.

        ``complete=True`` with slices missing writes ``complete: false`` and raises
        :class:`SinkError`. Closing twice is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        if self.region is not None:  # rank 0's finish_shared_stack writes the sidecar
            a, b = self.region
            if complete and not self._written[a:b].all():
                raise SinkError(
                    f"{self.folder}: close(complete=True): expected every slice of "
                    f"[{a}, {b}) written, got {describe_written(self._written[a:b])}")
            return
        missing = not bool(self._written.all())
        self._write_sidecar(complete=bool(complete and not missing), report=report)
        if complete and missing:
            raise SinkError(
                f"{self.folder}: close(complete=True): expected every slice written, got "
                f"{describe_written(self._written)}; the stack is marked incomplete"
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc_type is not None:
            with contextlib.suppress(SinkError):  # the original exception matters more
                self.close(complete=False)
        else:
            self.close(complete=bool(self._written.all()))


def previous_stack(folder: Path) -> list[Path]:
    """The files of a stack already in ``folder`` (``volume.json`` first), if any."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(folder.glob("slice_*.tif"))
    if (folder / SIDECAR).exists():
        found.insert(0, folder / SIDECAR)
    return found


def prepare_shared_stack(folder: Path, *, scan: str, ranks: int) -> Path:
    """Rank 0, when a scan opens: make ``folder`` the in-progress stack of ``scan``
    written by ``ranks`` ranks. A previous stack there is removed (the caller checked it
    may: ``run`` picks a free name, ``recon`` refuses one without ``--overwrite``); the
    ``volume.json`` left says ``complete: false`` and why until
    :func:`finish_shared_stack` replaces it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in previous_stack(folder):
            path.unlink()
    except OSError as error:
        raise SinkError(
            f"{folder}: cannot prepare the output folder: {os_reason(error)}") from error
    document = {
        "format": "tomo-streamer tiff stack", "format_version": FORMAT_VERSION,
        "scan": scan, "complete": False, "status": "in progress", "created": now_iso(),
        "incomplete_reasons": [
            f"scan {scan!r} was being reconstructed on {ranks} ranks; if this is still "
            "here, the job ended before every rank had written its band"],
    }
    _replace_json(folder / SIDECAR, document)
    return folder


def finish_shared_stack(folder: Path, *, complete: bool, report: Mapping[str, Any] | None,
                        errors: Sequence[str]) -> tuple[int, float | None]:
    """Rank 0, once every rank has reported: rewrite ``volume.json`` from the slice files
    present (``slices_written``, ``written_ranges``), ``complete`` only if ``complete``,
    no ``errors`` and every slice is there. Returns (slices written, the CoR recorded)."""
    folder = Path(folder)
    path = folder / SIDECAR
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SinkError(f"{path}: cannot read the stack's sidecar: {error}") from error
    rows = document.get("detector_rows")
    if not isinstance(rows, list):  # the band at slice 0 never opened: no geometry
        present = sorted(folder.glob("slice_*.tif"))
        document.update(complete=False, status="failed", slices_written=len(present),
                        report=None if report is None else dict(report))
        document["incomplete_reasons"] = [*errors] or [
            "the writer of the first band never opened: the stack's geometry is unknown"]
        _replace_json(path, document)
        return len(present), None
    written = np.array([(folder / slice_name(int(row))).exists() for row in rows], dtype=bool)
    whole = bool(written.all())
    document.update(
        complete=bool(complete and whole and not errors),
        slices_written=int(written.sum()),
        written_ranges=[list(r) for r in written_ranges(written)],
        report=None if report is None else dict(report),
    )
    document.pop("status", None)
    reasons = list(errors)
    if not whole:
        reasons.append(describe_written(written))
    if reasons:
        document["incomplete_reasons"] = reasons
    else:
        document.pop("incomplete_reasons", None)
    _replace_json(path, document)
    center = document.get("center_of_rotation")
    return int(written.sum()), None if center is None else float(center)


def _replace_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` through a temporary name (never a partial file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2, default=str) + "\n",
                             encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise SinkError(f"{path}: cannot write: {os_reason(error)}") from error

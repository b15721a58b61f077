"""The HDF5 volume writer: NeXus-style layout, flushed per band, readable after a crash.

The layout is documented field by field in ``docs/reference/output.md``. In short::

    /entry                      NXentry   attrs scan, complete, software_versions, created
    /entry/reconstruction       NXdata    signal="data"
        data          (slices, y, x) float32 | uint8 | uint16, one slice per chunk
        detector_row  (slices,) int32      slice -> detector row
        slice_written (slices,) bool       which slices hold data (updated per band)
    /entry/process              NXprocess
        angles_deg          (angles,) float64
        center_of_rotation  float64 scalar, attr method
        pipeline            the pipeline YAML (string)
        report              the JSON run report (string, written at close)
    /entry/metadata             NXcollection, one attribute per metadata item

The file is created under a hidden temporary name (``.<name>.tmp`` beside it) and renamed
to its final path as soon as its layout is written and flushed, so the visible path always
opens: a crash (even ``kill -9``) before the rename leaves no ``<name>`` at all (only the
temporary file, replaced by the next writer of that path), and after it a file that opens.
From then on the file is written in place, with ``/entry@complete`` False until
:meth:`Hdf5VolumeWriter.close` is called with ``complete=True``. A crash mid-scan
therefore leaves a file that opens, says plainly that it is incomplete, and whose
``slice_written`` tells exactly which slices are valid: every band is flushed before its
``slice_written`` entries are set, and those are flushed again. Renaming only at the end
would instead lose every slice already reconstructed. With ``overwrite=True`` an old file
stays readable until the new one replaces it.

A full disk is met before HDF5 meets it: each band is checked against the free space
(:mod:`streamer.sinks.disk`), and if HDF5 fails anyway the file is frozen at its last
good band rather than given more metadata to write.

The helpers shared with the TIFF writer (validation of the geometry, quantisation to
integers through a window) live here too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import h5py
import numpy as np
import numpy.typing as npt

from streamer.errors import SinkError
from streamer.ingest.report import software_versions
from streamer.sinks.disk import RESERVE_BYTES, blocking_file, free_bytes, os_reason

OutputDtype = Literal["float32", "uint8", "uint16"]
MetadataValue = str | int | float | bool

OUTPUT_DTYPES: tuple[str, ...] = ("float32", "uint8", "uint16")
VOLUME_PATH = "/entry/reconstruction/data"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Quantisation:
    """How stored integers map back to floats: ``float = offset + scale * stored``."""

    dtype: OutputDtype
    window_min: float
    window_max: float

    @property
    def levels(self) -> int:
        """The largest stored value (255 or 65535)."""
        return int(np.iinfo(self.dtype).max)

    @property
    def scale(self) -> float:
        return (self.window_max - self.window_min) / self.levels

    @property
    def offset(self) -> float:
        return self.window_min

    def apply(self, slices: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        """Map ``[window_min, window_max]`` linearly onto ``[0, levels]``, rounding.

        Values outside the window saturate at 0 or ``levels``; NaN becomes 0.
        """
        scaled = (slices.astype(np.float64) - self.window_min) / self.scale
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=self.levels, neginf=0.0)
        np.clip(scaled, 0, self.levels, out=scaled)
        return np.rint(scaled).astype(self.dtype)


@dataclass(frozen=True)
class VolumeGeometry:
    """The validated description of one output volume, shared by every sink."""

    target: Path
    detector_rows: npt.NDArray[np.int32]
    slice_shape: tuple[int, int]
    angles_deg: npt.NDArray[np.float64]
    center_of_rotation: float
    center_method: str
    pipeline_yaml: str
    scan: str
    metadata: dict[str, MetadataValue]
    dtype: OutputDtype
    quantisation: Quantisation | None

    @property
    def n_slices(self) -> int:
        return int(self.detector_rows.shape[0])


def _fail(target: Path, field: str, expected: str, got: object) -> SinkError:
    return SinkError(f"{target}: {field}: expected {expected}, got {got!r}")


def validate_geometry(
    target: Path,
    *,
    detector_rows: Sequence[int] | npt.NDArray[Any],
    slice_shape: tuple[int, int],
    angles_deg: npt.NDArray[Any] | Sequence[float],
    center_of_rotation: float,
    center_method: str,
    pipeline_yaml: str,
    scan: str,
    metadata: Mapping[str, MetadataValue],
    dtype: str,
    window: tuple[float, float] | None,
) -> VolumeGeometry:
    """Check every argument of a volume writer; raise :class:`SinkError` naming the field."""
    rows = np.asarray(detector_rows)
    if rows.ndim != 1 or rows.shape[0] == 0:
        raise _fail(target, "detector_rows", "a non-empty 1-D sequence", f"shape {rows.shape}")
    if rows.dtype.kind not in "iu":
        raise _fail(target, "detector_rows", "integers", f"dtype {rows.dtype}")
    if int(rows.min()) < 0 or int(rows.max()) > np.iinfo(np.int32).max:
        raise _fail(
            target, "detector_rows", "values in [0, 2**31)", f"{int(rows.min())}..{int(rows.max())}"
        )
    if np.unique(rows).shape[0] != rows.shape[0]:
        values, counts = np.unique(rows, return_counts=True)
        raise _fail(
            target, "detector_rows", "distinct rows", f"repeated {values[counts > 1][:10].tolist()}"
        )
    if (
        not isinstance(slice_shape, tuple)
        or len(slice_shape) != 2
        or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) for n in slice_shape)
        or min(slice_shape) <= 0
    ):
        raise _fail(target, "slice_shape", "(ny, nx) with two positive integers", slice_shape)
    angles = np.asarray(angles_deg)
    if angles.ndim != 1 or angles.shape[0] == 0:
        raise _fail(target, "angles_deg", "a non-empty 1-D array", f"shape {angles.shape}")
    if angles.dtype.kind not in "iuf":
        raise _fail(target, "angles_deg", "real numbers", f"dtype {angles.dtype}")
    if not np.all(np.isfinite(angles)):
        raise _fail(target, "angles_deg", "finite values", "NaN or infinity")
    if (
        isinstance(center_of_rotation, bool)
        or not isinstance(center_of_rotation, int | float | np.integer | np.floating)
        or not math.isfinite(float(center_of_rotation))
    ):
        raise _fail(target, "center_of_rotation", "a finite number", center_of_rotation)
    if not isinstance(center_method, str) or not center_method:
        raise _fail(target, "center_method", "a non-empty string such as 'given'", center_method)
    if not isinstance(pipeline_yaml, str):
        raise _fail(target, "pipeline_yaml", "a string", type(pipeline_yaml).__name__)
    if not isinstance(scan, str) or not scan:
        raise _fail(target, "scan", "a non-empty string", scan)
    clean: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or "/" in key or key == ".":
            raise _fail(target, "metadata key", "a non-empty name without '/'", key)
        if not isinstance(value, str | int | float | bool):
            raise _fail(target, f"metadata[{key!r}]", "str, int, float or bool", value)
        clean[key] = value
    if dtype not in OUTPUT_DTYPES:
        raise _fail(target, "dtype", "one of " + "|".join(OUTPUT_DTYPES), dtype)
    quantisation: Quantisation | None = None
    if dtype == "float32":
        if window is not None:
            raise _fail(target, "window", "None for dtype float32 (stored unscaled)", window)
    else:
        if window is None:
            raise _fail(target, "window", f"(lo, hi) for dtype {dtype}", None)
        if (
            not isinstance(window, tuple | list)
            or len(window) != 2
            or not all(
                isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
                for v in window
            )
            or not all(math.isfinite(float(v)) for v in window)
            or not float(window[0]) < float(window[1])
        ):
            raise _fail(target, "window", "(lo, hi) finite with lo < hi", window)
        quantisation = Quantisation(
            dtype,  # type: ignore[arg-type]
            float(window[0]),
            float(window[1]),
        )
    return VolumeGeometry(
        target=target,
        detector_rows=rows.astype(np.int32),
        slice_shape=(int(slice_shape[0]), int(slice_shape[1])),
        angles_deg=angles.astype(np.float64),
        center_of_rotation=float(center_of_rotation),
        center_method=center_method,
        pipeline_yaml=pipeline_yaml,
        scan=scan,
        metadata=clean,
        dtype=dtype,  # type: ignore[arg-type]
        quantisation=quantisation,
    )


def validate_band(
    geometry: VolumeGeometry, first_slice: object, slices: object
) -> npt.NDArray[np.float32]:
    """Check one band ``slices[first_slice : first_slice + n]``; return it as float32."""
    target = geometry.target
    if isinstance(first_slice, bool) or not isinstance(first_slice, int | np.integer):
        raise _fail(target, "first_slice", "an integer", first_slice)
    if not isinstance(slices, np.ndarray):
        raise _fail(target, "slices", "a numpy array", type(slices).__name__)
    ny, nx = geometry.slice_shape
    if slices.ndim != 3 or slices.shape[0] == 0 or slices.shape[1:] != (ny, nx):
        raise _fail(target, "slices.shape", f"(n >= 1, {ny}, {nx})", slices.shape)
    if slices.dtype != np.float32:
        raise _fail(target, "slices.dtype", "float32", str(slices.dtype))
    first = int(first_slice)
    n = int(slices.shape[0])
    if first < 0 or first + n > geometry.n_slices:
        raise _fail(
            target,
            "band",
            f"slices within [0, {geometry.n_slices})",
            f"[{first}, {first + n})",
        )
    return slices


def written_ranges(written: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Runs of True in ``written`` as half-open ``(start, stop)`` pairs."""
    padded = np.concatenate(([False], written.astype(bool), [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def describe_written(written: npt.NDArray[np.bool_]) -> str:
    """``'3 of 8 slices written ([0, 2), [5, 6))'`` for error messages."""
    ranges = written_ranges(written)
    shown = ", ".join(f"[{a}, {b})" for a, b in ranges[:20])
    if len(ranges) > 20:
        shown += ", …"
    return f"{int(written.sum())} of {written.shape[0]} slices written ({shown or 'none'})"


def temporary_path(path: Path) -> Path:
    """The hidden name a file is created under before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.tmp")


def now_iso() -> str:
    """The current time, UTC, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Hdf5VolumeWriter:
    """Write a reconstructed volume band by band into one HDF5 file.

    ``write`` accepts bands in any order; each is flushed before it is marked in
    ``slice_written``. ``close(complete=True)`` requires every slice to have been written.
    Used as a context manager, an exception closes the file with ``complete=False``; a
    normal exit without an explicit ``close`` closes it with ``complete`` set to whether
    every slice was written.
    """

    def __init__(
        self,
        path: Path,
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
    ) -> None:
        self.path = Path(path)
        self.geometry = validate_geometry(
            self.path,
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
        if self.path.exists() and not overwrite:
            raise SinkError(
                f"{self.path}: output file: expected a new file, got an existing one "
                "(pass overwrite=True to replace it)"
            )
        if self.path.is_dir():
            raise _fail(self.path, "output file", "a file path", "a directory")
        self._written = np.zeros(self.geometry.n_slices, dtype=bool)
        self._closed = False
        self._failed: str | None = None  # why an HDF5 write failed; the file is then frozen
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            blocker = blocking_file(self.path.parent)
            reason = os_reason(error) if blocker is None else f"{blocker} is not a folder"
            raise SinkError(f"{self.path}: cannot create the output file: {reason}") from error
        free = free_bytes(self.path.parent)
        if free is not None and free < RESERVE_BYTES:
            raise SinkError(
                f"{self.path}: cannot create the output file: no space left on device "
                f"({free} bytes free, expected at least {RESERVE_BYTES})"
            )
        temporary = temporary_path(self.path)
        try:
            # No chunk cache: every write covers whole chunks (one slice each) that are
            # never read back, so caching them only adds a copy and a flush on close
            # (measured: 1.4x slower per band with the default 1 MiB cache).
            self._file = h5py.File(temporary, "w", rdcc_nbytes=0)
        except OSError as error:
            raise SinkError(
                f"{self.path}: cannot create the output file: {os_reason(error)}"
            ) from error
        try:
            self._create_layout()
            self._file.flush()
            # The layout is on disk: only now does the file take its visible name (the
            # open handle writes on through the rename).
            os.replace(temporary, self.path)
            # Handles kept open: opening a chunked dataset per band costs more than the
            # band's bookkeeping.
            self._data: h5py.Dataset = self._file[VOLUME_PATH]
            self._slice_written: h5py.Dataset = self._file["entry/reconstruction/slice_written"]
            self._entry: h5py.Group = self._file["entry"]
        except (OSError, RuntimeError) as error:
            with contextlib.suppress(OSError, RuntimeError):
                self._file.close()
            with contextlib.suppress(OSError):  # a new file that holds nothing yet
                temporary.unlink()
            raise SinkError(
                f"{self.path}: cannot write the file layout: {os_reason(error)}; "
                "no file was left"
            ) from error

    # -- layout ---------------------------------------------------------------------------

    def _create_layout(self) -> None:
        g = self.geometry
        string = h5py.string_dtype()
        root = self._file
        root.attrs["default"] = "entry"
        root.attrs["format"] = "tomo-streamer volume"
        root.attrs["format_version"] = FORMAT_VERSION
        entry = root.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "reconstruction"
        entry.attrs["scan"] = g.scan
        entry.attrs["complete"] = False
        entry.attrs["slices_written"] = 0
        entry.attrs["software_versions"] = json.dumps(software_versions(), sort_keys=True)
        entry.attrs["created"] = now_iso()

        recon = entry.create_group("reconstruction")
        recon.attrs["NX_class"] = "NXdata"
        recon.attrs["signal"] = "data"
        recon.attrs["axes"] = np.array(["detector_row", ".", "."], dtype=object)
        recon.attrs["detector_row_indices"] = 0
        ny, nx = g.slice_shape
        fill: float | int = np.nan if g.dtype == "float32" else 0
        data = recon.create_dataset(
            "data",
            shape=(g.n_slices, ny, nx),
            dtype=g.dtype,
            chunks=(1, ny, nx),
            fillvalue=fill,
        )
        if g.quantisation is not None:
            q = g.quantisation
            data.attrs["window_min"] = q.window_min
            data.attrs["window_max"] = q.window_max
            data.attrs["scale"] = q.scale
            data.attrs["offset"] = q.offset
        data.attrs["long_name"] = "reconstructed attenuation per slice (rows of the detector)"
        recon.create_dataset("detector_row", data=g.detector_rows, dtype=np.int32)
        recon.create_dataset("slice_written", data=self._written, dtype=bool)

        process = entry.create_group("process")
        process.attrs["NX_class"] = "NXprocess"
        process.attrs["program"] = "tomo-streamer"
        process.create_dataset("angles_deg", data=g.angles_deg, dtype=np.float64)
        cor = process.create_dataset(
            "center_of_rotation", data=np.float64(g.center_of_rotation), dtype=np.float64
        )
        cor.attrs["method"] = g.center_method
        cor.attrs["units"] = "pixel"
        process.create_dataset("pipeline", data=g.pipeline_yaml, dtype=string)

        meta = entry.create_group("metadata")
        meta.attrs["NX_class"] = "NXcollection"
        for key, value in g.metadata.items():
            meta.attrs[key] = value

    # -- writing --------------------------------------------------------------------------

    @property
    def slices_written(self) -> npt.NDArray[np.bool_]:
        """A copy of the per-slice written flags."""
        return self._written.copy()

    def write(self, first_slice: int, slices: npt.NDArray[np.float32]) -> None:
        """Store ``slices`` as slices ``first_slice …``; flushed to disk before returning.

        A band that would leave less than :data:`~streamer.sinks.disk.RESERVE_BYTES` free
        on the filesystem is refused before anything is written (``SinkError``, "no space
        left on device"); the writer stays usable, e.g. once space is freed. If HDF5
        itself fails, the file is frozen as it was after the last good band: later
        writes are refused and ``close`` only closes it (see ``docs/reference/output.md``).
        """
        if self._closed:
            raise SinkError(f"{self.path}: write: expected an open writer, got a closed one")
        if self._failed is not None:
            raise SinkError(
                f"{self.path}: write: the file is frozen after an earlier failure "
                f"({self._failed}); {describe_written(self._written)} and readable"
            )
        band = validate_band(self.geometry, first_slice, slices)
        first = int(first_slice)
        stop = first + band.shape[0]
        q = self.geometry.quantisation
        stored = band if q is None else q.apply(band)
        free = free_bytes(self.path.parent)
        if free is not None and free < stored.nbytes + RESERVE_BYTES:
            raise SinkError(
                f"{self.path}: writing slices [{first}, {stop}) refused: no space left on "
                f"device ({free} bytes free, the band needs {stored.nbytes} and "
                f"{RESERVE_BYTES} stay reserved to close the file); "
                f"{describe_written(self._written)} and readable (see slice_written)"
            )
        try:
            self._write_chunks(first, stored)
            self._file.flush()
            self._written[first:stop] = True
            self._slice_written[first:stop] = True
            self._entry.attrs["slices_written"] = int(self._written.sum())
            self._file.flush()
        except (OSError, RuntimeError) as error:
            self._written[first:stop] = False
            self._failed = os_reason(error)
            raise SinkError(
                f"{self.path}: writing slices [{first}, {stop}) failed: {self._failed}; "
                f"{describe_written(self._written)} and readable (see slice_written)"
            ) from error

    def _write_chunks(self, first: int, stored: npt.NDArray[Any]) -> None:
        """Write each slice of ``stored`` as its chunk, bytes as they are.

        The chunks are one slice, unfiltered, in the array's own dtype (float32, or the
        quantised integers; both native byte order, as the dataset was created), so a
        slice's bytes *are* its chunk: ``write_direct_chunk`` hands them to the file
        without HDF5's selection, conversion and chunk-cache machinery, which made
        ``ds[a:b] = band`` cost up to 1.4x a contiguous write (``tools/bench_hdf5.py``).
        The chunk index is updated as by a normal write, and flushed per band the same.
        """
        chunks = np.ascontiguousarray(stored, dtype=self._data.dtype)
        dataset_id = self._data.id
        for index in range(chunks.shape[0]):
            dataset_id.write_direct_chunk((first + index, 0, 0), chunks[index])

    def close(self, *, complete: bool, report: Mapping[str, Any] | None = None) -> None:
        """Finish the file: store ``report`` and set ``/entry@complete``.

        ``complete=True`` with slices still missing marks the file incomplete, closes it
        and raises :class:`SinkError`. Closing twice is a no-op. A report that does not
        fit in the free space is left out (``/entry@report_error`` says why); after a
        failed write nothing is added, the file is only closed.
        """
        if self._closed:
            return
        self._closed = True
        missing = not bool(self._written.all())
        if self._failed is not None:
            # HDF5 may hold metadata it could not store: adding more (report, flags)
            # could write a half-updated index over the good file. Leave it as it was
            # after the last good band (complete=False, slice_written exact).
            self._close_file()
            if complete:
                raise SinkError(
                    f"{self.path}: close(complete=True): the file stays marked incomplete "
                    f"after a failed write ({self._failed}); {describe_written(self._written)}"
                )
            return
        try:
            text = None if report is None else json.dumps(report, sort_keys=False, default=str)
        except (TypeError, ValueError) as error:
            self._close_file()
            raise SinkError(
                f"{self.path}: report: expected a JSON-able mapping, got {error}; the file "
                "stays marked incomplete"
            ) from error
        try:
            if text is not None:
                free = free_bytes(self.path.parent)
                if free is not None and free < len(text.encode()) + RESERVE_BYTES // 2:
                    self._entry.attrs["report_error"] = (
                        f"report of {len(text.encode())} bytes not stored: no space left "
                        f"on device ({free} bytes free)"
                    )
                else:
                    self._file["entry/process"].create_dataset(
                        "report", data=text, dtype=h5py.string_dtype()
                    )
            self._entry.attrs["slices_written"] = int(self._written.sum())
            self._entry.attrs["closed"] = now_iso()
            self._entry.attrs["complete"] = bool(complete and not missing)
            self._file.flush()
        except (OSError, RuntimeError) as error:
            self._failed = os_reason(error)
            self._close_file()
            raise SinkError(
                f"{self.path}: closing failed: {self._failed}; the file stays marked "
                f"incomplete; {describe_written(self._written)}"
            ) from error
        self._close_file()
        if complete and missing:
            raise SinkError(
                f"{self.path}: close(complete=True): expected every slice written, got "
                f"{describe_written(self._written)}; the file is marked incomplete"
            )

    def _close_file(self) -> None:
        try:
            self._file.close()
        except (OSError, RuntimeError) as error:
            raise SinkError(
                f"{self.path}: closing the HDF5 file failed: {os_reason(error)}"
            ) from error

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

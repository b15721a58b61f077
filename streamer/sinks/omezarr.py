"""The OME-Zarr volume writer: Zarr v3 with OME-NGFF 0.5 multiscales, one store for R ranks.

Layout (``docs/reference/output.md`` documents every field)::

    <name>.ome.zarr/
      zarr.json        group; attributes ``ome`` (NGFF 0.5: multiscales, axes z/y/x,
                       scale + translation per level) and ``tomo_streamer`` (scan,
                       complete, CoR and method, angles, detector rows, pipeline,
                       metadata, report, …)
      0/ 1/ … L-1/     the pyramid levels, (z, y, x); level k+1 is the 2×2×2 mean of
                       level k (:mod:`streamer.sinks.pyramid`); chunks (1, ≤1024, ≤1024)
      written/0 …      uint8 (slices of the level,), one chunk per slice: 1 = the slice
                       holds data (set after its chunks are written)

**Written as bands complete.** ``write(first, band)`` stores the band's level-0 chunks,
then every coarser slice whose level-0 slices are now all written (computed from the
band in memory plus at most one slice read back on each side), then marks them in
``written/<level>``. A reader (napari with napari-ome-zarr, any NGFF reader, ``zarr``)
opens the store while it is written: slices not yet written read as the fill value
(NaN for float32, 0 for integers) and ``written/<level>`` says exactly which are valid.
Memory is the band plus one float64 slice for the mean (no whole-volume array).

**Crash safety.** zarr-python (≥ 3.1) writes every chunk and every ``zarr.json`` to a
temporary name and renames it, so a file of the store is whole or absent. A new store is
built under a hidden name (``.<name>.tmp``) with all its metadata and renamed to its
visible name before any chunk is written, so the visible store always opens; it says
``complete: false`` until :meth:`ZarrVolumeWriter.close` (one writer) or
:func:`finish_store` (R ranks) says otherwise, and marks are written only after the data
they vouch for.

**R ranks, one store** (ADR 0007): rank 0 marks the store in progress
(:func:`write_store_placeholder`); each rank opens a writer with ``region=(a, b)``, its
band of slices, and writes its own chunks: the level-0 chunks are one slice each, so
band edges are chunk edges, and a coarse slice is written by the rank that holds all of
its level-0 slices. The few coarse slices that straddle two ranks are built by rank 0 in
:func:`finish_store`, from the written level below, once every rank has reported; it then
writes ``complete`` and the report. No master file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt
import zarr
import zarr.errors

from streamer.errors import SinkError
from streamer.ingest.report import software_versions
from streamer.sinks.disk import RESERVE_BYTES, blocking_file, free_bytes, os_reason
from streamer.sinks.hdf5 import (
    FORMAT_VERSION,
    MetadataValue,
    OutputDtype,
    VolumeGeometry,
    describe_written,
    now_iso,
    temporary_path,
    validate_band,
    validate_geometry,
    written_ranges,
)
from streamer.sinks.pyramid import children, downsample, level_count, level_shape

FORMAT_NAME: Final = "tomo-streamer volume"
NGFF_VERSION: Final = "0.5"
#: The group attribute that holds everything that is not NGFF.
ATTRIBUTES: Final = "tomo_streamer"
#: The group of the per-level written marks.
WRITTEN: Final = "written"
#: In-plane chunk side (a slice larger than this is split into tiles).
XY_CHUNK: Final = 1024
AXES: Final = ("z", "y", "x")


def ngff_metadata(scan: str, levels: int, pixel_size_um: float | None) -> dict[str, Any]:
    """The ``ome`` attribute (OME-NGFF 0.5) of a volume with ``levels`` levels.

    Axes z, y, x are space axes; with a pixel size they are in micrometres, without one
    the unit is left out (the NGFF way of saying "unknown") and the scale is in detector
    pixels. Level ``k`` has scale ``2^k`` pixels and a translation of ``(2^k - 1) / 2``
    pixels: the centre of a 2^k block is where its mean belongs.
    """
    size = 1.0 if pixel_size_um is None else float(pixel_size_um)
    axes: list[dict[str, str]] = []
    for name in AXES:
        axis = {"name": name, "type": "space"}
        if pixel_size_um is not None:
            axis["unit"] = "micrometer"
        axes.append(axis)
    datasets = []
    for level in range(levels):
        factor = float(1 << level)
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": [size * factor] * 3}]
        if level:
            transforms.append({"type": "translation",
                               "translation": [size * (factor - 1) / 2] * 3})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": scan,
            "axes": axes,
            "datasets": datasets,
            "type": "mean",
            "metadata": {"description": "each level is the mean of 2x2x2 voxels of the "
                                        "level above (a shorter block at an odd edge)",
                         "method": "streamer.sinks.pyramid.downsample"},
        }],
    }


def _pixel_size(geometry: VolumeGeometry) -> float | None:
    value = geometry.metadata.get("pixel_size_um")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _jsonable(report: Mapping[str, Any] | None, where: Path) -> Any:
    if report is None:
        return None
    try:
        return json.loads(json.dumps(dict(report), default=str))
    except (TypeError, ValueError) as error:
        raise SinkError(f"{where}: report: expected a JSON-able mapping, got {error}; the "
                        "store stays marked incomplete") from error


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(built: Path, path: Path) -> None:
    """Put the store built at ``built`` at ``path``, replacing an older one there (moved
    aside first, so there is never a half-removed store at ``path``)."""
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old")
        _remove_tree(old)
        os.replace(path, old)
        os.replace(built, path)
        _remove_tree(old)
    else:
        os.replace(built, path)


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group``; a :class:`SinkError` if it is a group."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise SinkError(f"{group.store_path}/{name}: expected an array, got a group")
    return node


def _own_attributes(group: zarr.Group) -> dict[str, Any]:
    """The ``tomo_streamer`` attributes of ``group`` (empty if it has none)."""
    own = group.attrs.get(ATTRIBUTES)
    return dict(own) if isinstance(own, Mapping) else {}


def _is_store_of(attributes: Mapping[str, Any], scan: str) -> bool:
    own = attributes.get(ATTRIBUTES)
    return isinstance(own, dict) and own.get("format") == FORMAT_NAME and own.get(
        "scan") == scan


def write_store_placeholder(path: Path, *, scan: str, ranks: int) -> Path:
    """Mark ``path`` as the store of a scan being reconstructed on ``ranks`` ranks.

    Rank 0 writes it when the scan opens (replacing whatever is at ``path``: the command
    checked that it may); the ranks' writers fill it in. If the job dies before
    :func:`finish_store`, the store that is left opens, names the scan and says
    ``complete: false`` and why. Built under a hidden name and renamed.
    """
    path = Path(path)
    built = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_tree(built)
        zarr.create_group(store=str(built), zarr_format=3, attributes={ATTRIBUTES: {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "scan": scan,
            "complete": False, "status": "in progress", "created": now_iso(),
            "incomplete_reasons": [
                f"scan {scan!r} was being reconstructed on {ranks} ranks; if this is "
                "still here, the job ended before every rank had written its band"],
        }})
        _publish(built, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            _remove_tree(built)
        raise SinkError(f"{path}: cannot write the OME-Zarr store: {os_reason(error)}"
                        ) from error
    return path


class ZarrVolumeWriter:
    """Write a volume band by band into an OME-Zarr store, pyramid levels included.

    Takes the arguments of :class:`~streamer.sinks.hdf5.Hdf5VolumeWriter` (the geometry
    of the whole volume) and ``region``: ``None`` for the one writer of the store, which
    creates it and marks it complete at :meth:`close`; ``(a, b)`` for one rank's band of
    slices in a store shared by R ranks, which joins the store (creating its arrays if it
    is first) and writes only slices ``[a, b)``; :func:`finish_store` then completes it.
    ``write(first_slice, slices)`` takes indices into the whole volume, bands in any
    order. A region writer joins the store whatever ``overwrite`` says: rank 0's
    placeholder already replaced any older store, when the command allowed it.
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
        region: tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.geometry = validate_geometry(
            self.path, detector_rows=detector_rows, slice_shape=slice_shape,
            angles_deg=angles_deg, center_of_rotation=center_of_rotation,
            center_method=center_method, pipeline_yaml=pipeline_yaml, scan=scan,
            metadata=metadata or {}, dtype=dtype, window=window,
        )
        n = self.geometry.n_slices
        if region is None:
            self.region = (0, n)
        elif (not isinstance(region, tuple) or len(region) != 2
              or not all(isinstance(v, int) and not isinstance(v, bool) for v in region)
              or not 0 <= region[0] < region[1] <= n):
            raise SinkError(f"{self.path}: region: expected (a, b) with 0 <= a < b <= {n}, "
                            f"got {region!r}")
        else:
            self.region = region
        self.shared = region is not None
        ny, nx = self.geometry.slice_shape
        self.levels = level_count((ny, nx))
        self.shapes = [level_shape((n, ny, nx), level) for level in range(self.levels)]
        self._written = [np.zeros(shape[0], dtype=bool) for shape in self.shapes]
        self._closed = False
        self._created = now_iso()
        self._prepare_folder()
        try:
            group = self._join() if self.shared else self._create(overwrite)
            self._arrays = [_array(group, str(level)) for level in range(self.levels)]
            self._marks = [_array(group, f"{WRITTEN}/{level}") for level in range(self.levels)]
        except (OSError, RuntimeError, zarr.errors.BaseZarrError) as error:
            raise SinkError(f"{self.path}: cannot write the OME-Zarr layout: "
                            f"{os_reason(error)}") from error
        self._group = group

    # -- layout ---------------------------------------------------------------------------

    def _prepare_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise SinkError(f"{self.path}: output store: expected a folder (an OME-Zarr "
                            "store), got an existing file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            blocker = blocking_file(self.path.parent)
            reason = os_reason(error) if blocker is None else f"{blocker} is not a folder"
            raise SinkError(f"{self.path}: cannot create the output store: {reason}"
                            ) from error
        free = free_bytes(self.path.parent)
        if free is not None and free < RESERVE_BYTES:
            raise SinkError(f"{self.path}: cannot create the output store: no space left on "
                            f"device ({free} bytes free, expected at least {RESERVE_BYTES})")

    def attributes(self) -> dict[str, Any]:
        """The group attributes of a store being written (``complete: false``)."""
        g = self.geometry
        q = g.quantisation
        return {
            "ome": ngff_metadata(g.scan, self.levels, _pixel_size(g)),
            ATTRIBUTES: {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "scan": g.scan,
                "complete": False,
                "created": self._created,
                "levels": self.levels,
                "written": f"{WRITTEN}/<level>: 1 = the slice holds data",
                "detector_rows": g.detector_rows.tolist(),
                "slice_shape": list(g.slice_shape),
                "dtype": g.dtype,
                "window": None if q is None else [q.window_min, q.window_max],
                "scale": None if q is None else q.scale,
                "offset": None if q is None else q.offset,
                "angles_deg": g.angles_deg.tolist(),
                "center_of_rotation": g.center_of_rotation,
                "center_method": g.center_method,
                "pipeline": g.pipeline_yaml,
                "metadata": dict(g.metadata),
                "software_versions": software_versions(),
            },
        }

    def _create(self, overwrite: bool) -> zarr.Group:
        """A new store with its whole layout, built hidden and then renamed into place."""
        if self.path.exists() and not overwrite:
            raise SinkError(f"{self.path}: output store: expected a new store, got an "
                            "existing one (pass overwrite=True to replace it)")
        built = temporary_path(self.path)
        try:
            _remove_tree(built)  # left by a crash before its rename: never visible
            group = zarr.create_group(store=str(built), zarr_format=3,
                                      attributes=self.attributes())
            self._create_arrays(group)
            _publish(built, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_tree(built)
            raise
        return zarr.open_group(store=str(self.path), mode="r+", zarr_format=3)

    def _join(self) -> zarr.Group:
        """Open the shared store (rank 0's placeholder, or one another rank created) and
        create what is missing; everything that is there must match this volume."""
        group = zarr.open_group(store=str(self.path), mode="a", zarr_format=3)
        attributes = dict(group.attrs)
        own = attributes.get(ATTRIBUTES)
        if own is not None and not _is_store_of(attributes, self.geometry.scan):
            found = own.get("scan") if isinstance(own, dict) else own
            raise SinkError(f"{self.path}: output store: expected the store of scan "
                            f"{self.geometry.scan!r}, got one of {found!r}")
        if "ome" not in attributes:
            group.attrs.update(self.attributes())
        self._create_arrays(group, join=True)
        return group

    def _array_specs(self) -> Iterator[tuple[str, tuple[int, ...], tuple[int, ...], str,
                                             Any, tuple[str, ...]]]:
        dtype = self.geometry.dtype
        fill: Any = float("nan") if dtype == "float32" else 0
        for level, (z, y, x) in enumerate(self.shapes):
            yield (str(level), (z, y, x), (1, min(y, XY_CHUNK), min(x, XY_CHUNK)), dtype,
                   fill, AXES)
            yield f"{WRITTEN}/{level}", (z,), (1,), "uint8", 0, ("z",)

    def _create_arrays(self, group: zarr.Group, *, join: bool = False) -> None:
        for name, shape, chunks, dtype, fill, dimensions in self._array_specs():
            if join and name in group:
                self._check_array(group, name, shape, dtype)
                continue
            try:
                group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                   fill_value=fill, compressors=None,
                                   dimension_names=dimensions)
            except zarr.errors.ContainsArrayError:
                if not join:
                    raise
                self._check_array(group, name, shape, dtype)  # another rank made it now

    def _check_array(self, group: zarr.Group, name: str, shape: tuple[int, ...],
                     dtype: str) -> None:
        array = group[name]
        if not isinstance(array, zarr.Array) or tuple(array.shape) != shape or str(
                array.dtype) != dtype:
            got = (f"shape {tuple(array.shape)}, dtype {array.dtype}"
                   if isinstance(array, zarr.Array) else "a group")
            raise SinkError(f"{self.path}/{name}: expected shape {shape}, dtype {dtype} "
                            f"(this volume), got {got}")

    # -- writing --------------------------------------------------------------------------

    @property
    def slices_written(self) -> npt.NDArray[np.bool_]:
        """A copy of the per-slice written flags of level 0 (this writer's)."""
        return self._written[0].copy()

    def write(self, first_slice: int, slices: npt.NDArray[np.float32]) -> None:
        """Store ``slices`` as slices ``first_slice …`` and every coarser slice they
        complete; marked written after their chunks are on disk."""
        if self._closed:
            raise SinkError(f"{self.path}: write: expected an open writer, got a closed one")
        band = validate_band(self.geometry, first_slice, slices)
        first = int(first_slice)
        stop = first + band.shape[0]
        a, b = self.region
        if not a <= first < stop <= b:
            raise SinkError(f"{self.path}: write: expected slices within this writer's "
                            f"region [{a}, {b}), got [{first}, {stop})")
        q = self.geometry.quantisation
        stored = band if q is None else q.apply(band)
        needed = stored.nbytes + stored.nbytes // 7  # the coarser levels: 1/8 + 1/64 + …
        free = free_bytes(self.path.parent)
        if free is not None and free < needed + RESERVE_BYTES:
            raise SinkError(
                f"{self.path}: writing slices [{first}, {stop}) refused: no space left on "
                f"device ({free} bytes free, the band needs {needed} and {RESERVE_BYTES} "
                f"stay reserved to close the store); {describe_written(self._written[0])} "
                f"and readable (see {WRITTEN}/0)")
        try:
            self._store(0, first, stored)
        except (OSError, RuntimeError, zarr.errors.BaseZarrError) as error:
            raise SinkError(
                f"{self.path}: writing slices [{first}, {stop}) failed: {os_reason(error)}; "
                f"{describe_written(self._written[0])} and readable (see {WRITTEN}/0)"
            ) from error

    def _store(self, level: int, first: int, data: npt.NDArray[Any]) -> None:
        """Write ``data`` as slices ``first …`` of ``level``, mark them, then build the
        coarser slices they complete."""
        stop = first + data.shape[0]
        self._arrays[level][first:stop] = data
        self._marks[level][first:stop] = 1
        self._written[level][first:stop] = True
        if level + 1 < self.levels:
            self._cascade(level, first, data)

    def _cascade(self, level: int, first: int, data: npt.NDArray[Any]) -> None:
        """The slices of ``level + 1`` that ``data`` (slices ``first …`` of ``level``)
        completes: their means, written as one run per contiguous stretch.

        Only the first and the last parent can have a slice outside ``data`` (an odd
        ``first``, or a band that ends mid-pair with the next slice written earlier):
        those two are read back; the parents in between are the mean of a view of
        ``data``.
        """
        stop = first + data.shape[0]
        length = self.shapes[level][0]
        written, coarser = self._written[level], self._written[level + 1]
        ready = [parent for parent in range(first // 2, (stop - 1) // 2 + 1)
                 if not coarser[parent] and bool(written[slice(*children(parent, length))].all())]
        for run in _runs(ready):
            inside = [p for p in run if first <= 2 * p and children(p, length)[1] <= stop]
            pieces = []
            if run[0] not in inside:
                pieces.append(downsample(self._slices(level, run[0], first, data)))
            if inside:
                begin, end = 2 * inside[0], children(inside[-1], length)[1]
                pieces.append(downsample(data[begin - first:end - first]))
            if run[-1] not in inside and len(run) > 1:
                pieces.append(downsample(self._slices(level, run[-1], first, data)))
            self._store(level + 1, run[0], np.concatenate(pieces))

    def _slices(self, level: int, parent: int, first: int,
                data: npt.NDArray[Any]) -> npt.NDArray[Any]:
        begin, end = children(parent, self.shapes[level][0])
        block = np.empty((end - begin, *self.shapes[level][1:]), dtype=data.dtype)
        for index in range(begin, end):
            if first <= index < first + data.shape[0]:
                block[index - begin] = data[index - first]
            else:
                block[index - begin] = self._arrays[level][index]
        return block

    def close(self, *, complete: bool, report: Mapping[str, Any] | None = None) -> None:
        """Finish the store: ``complete``, the report and the written ranges go to the
        group attributes (one writer). A writer of a rank's region only checks its band:
        rank 0's :func:`finish_store` completes a shared store.

        ``complete=True`` with slices still missing marks the store incomplete and raises
        :class:`SinkError`. Closing twice is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        a, b = self.region
        missing = not bool(self._written[0][a:b].all())
        if not self.shared:
            _finalize(self.path, self._group, complete=complete and not missing,
                      report=report, reasons=[])
        if complete and missing:
            raise SinkError(
                f"{self.path}: close(complete=True): expected every slice of [{a}, {b}) "
                f"written, got {describe_written(self._written[0][a:b])}; the store is "
                "marked incomplete")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        if exc_type is not None:
            with contextlib.suppress(SinkError):  # the original exception matters more
                self.close(complete=False)
        else:
            a, b = self.region
            self.close(complete=bool(self._written[0][a:b].all()))


def _runs(indices: list[int]) -> Iterator[list[int]]:
    """``[1, 2, 3, 7, 8]`` → ``[1, 2, 3]``, ``[7, 8]``."""
    run: list[int] = []
    for index in indices:
        if run and index != run[-1] + 1:
            yield run
            run = []
        run.append(index)
    if run:
        yield run


def _finalize(path: Path, group: zarr.Group, *, complete: bool,
              report: Mapping[str, Any] | None, reasons: list[str]) -> dict[str, Any]:
    """Write the closing attributes (complete, written ranges, report, reasons); return
    the ``tomo_streamer`` attributes as written."""
    document = _jsonable(report, path)
    own = _own_attributes(group)
    written = (np.asarray(_array(group, f"{WRITTEN}/0")[:], dtype=bool)
               if f"{WRITTEN}/0" in group else np.zeros(0, dtype=bool))
    missing = written.shape[0] == 0 or not bool(written.all())
    if missing and not reasons:
        reasons = [describe_written(written) if written.shape[0] else "no slice was written"]
    own.pop("status", None)
    own.update({
        "complete": bool(complete and not missing and not reasons),
        "closed": now_iso(),
        "slices_written": int(written.sum()),
        "written_ranges": [list(r) for r in written_ranges(written)],
        "incomplete_reasons": reasons,
        "report": document,
    })
    try:
        group.attrs.update({ATTRIBUTES: own})
    except (OSError, RuntimeError, zarr.errors.BaseZarrError) as error:
        raise SinkError(f"{path}: closing failed: {os_reason(error)}; the store stays "
                        f"marked incomplete; {describe_written(written)}") from error
    return own


@dataclass(frozen=True)
class StoreSummary:
    """What :func:`finish_store` found and wrote."""

    path: Path
    slices_written: int
    complete: bool
    center_of_rotation: float | None


def complete_pyramid(group: zarr.Group) -> int:
    """Build every coarse slice whose slices of the level below are all written but that
    is not written itself (those that straddle two ranks' bands); return how many.
    Reads two slices of the level below per coarse slice."""
    levels = int(_own_attributes(group).get("levels", 0))
    built = 0
    for level in range(1, levels):
        below = np.asarray(_array(group, f"{WRITTEN}/{level - 1}")[:], dtype=bool)
        marks = _array(group, f"{WRITTEN}/{level}")
        here = np.asarray(marks[:], dtype=bool)
        source, target = _array(group, str(level - 1)), _array(group, str(level))
        for parent in np.flatnonzero(~here).tolist():
            begin, end = children(parent, below.shape[0])
            if below[begin:end].all():
                target[parent:parent + 1] = downsample(np.asarray(source[begin:end]))
                marks[parent] = 1
                built += 1
    return built


def finish_store(path: Path, *, complete: bool, report: Mapping[str, Any] | None,
                 reasons: Sequence[str] = ()) -> StoreSummary:
    """Rank 0, once every rank has reported: build the coarse slices that straddle two
    ranks, then write ``complete`` (only if ``complete``, no ``reasons`` and every slice
    written), the written ranges, the reasons and the report."""
    path = Path(path)
    try:
        group = zarr.open_group(store=str(path), mode="r+", zarr_format=3)
        if f"{WRITTEN}/0" in group:
            complete_pyramid(group)
        own = _finalize(path, group, complete=complete, report=report, reasons=list(reasons))
    except (OSError, RuntimeError, zarr.errors.BaseZarrError) as error:
        raise SinkError(f"{path}: cannot finish the OME-Zarr store: {os_reason(error)}"
                        ) from error
    center = own.get("center_of_rotation")
    return StoreSummary(path, int(own["slices_written"]), bool(own["complete"]),
                        None if center is None else float(center))


def read_written(path: Path, level: int = 0) -> npt.NDArray[np.bool_]:
    """Which slices of ``level`` hold data (for readers of a store being written)."""
    try:
        group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
        return np.asarray(_array(group, f"{WRITTEN}/{level}")[:], dtype=bool)
    except (OSError, KeyError, zarr.errors.BaseZarrError) as error:
        raise SinkError(f"{path}: {WRITTEN}/{level}: cannot read it: {error}") from error


__all__ = ["ATTRIBUTES", "FORMAT_NAME", "NGFF_VERSION", "WRITTEN", "StoreSummary",
           "ZarrVolumeWriter", "complete_pyramid", "finish_store", "ngff_metadata",
           "read_written", "write_store_placeholder"]

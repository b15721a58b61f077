"""Several ranks, one volume: per-rank part files stitched by an HDF5 Virtual Dataset.

Each MPI rank writes the slices of its band of detector rows with the ordinary
:class:`~streamer.sinks.hdf5.Hdf5VolumeWriter` into its own file,
``<stem>.part<rank>of<R>.h5`` (:func:`part_path`). When the scan is over one process
calls :func:`write_master`, which reads every part's layout, checks that the parts
describe the same volume, and writes ``<stem>.h5`` with **the same layout as a
single-rank file** (``docs/reference/output.md``): ``/entry/reconstruction/data`` is a
Virtual Dataset whose pieces are the parts' ``data`` in detector-row order, so every
reader of our files (h5py, silx, NeXpy, ``tomo-streamer``'s own tests) reads the master
as if it were one file. ``detector_row`` and ``slice_written`` are real datasets (copied),
so the map and the validity of each slice are in the master itself.

Why a VDS and not one shared file: writing one file from many processes needs HDF5
built with MPI-IO (parallel h5py), which the h5py wheels on PyPI are not; every
structural change is then collective, and a rank that dies can corrupt the shared file
for all. Separate files keep each rank's output independent (a part is crash-consistent
on its own) and the VDS costs nothing at write time: it is a map of a few hundred bytes.

Source paths in the map are relative to the master's folder, so the folder can be moved
or copied as a whole. A part that is missing or unreadable does not stop the master:
its band (when known, see ``bands``) is left unmapped and reads as the fill value (NaN
for float32), the master is marked incomplete and the reason is recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from streamer.errors import SinkError
from streamer.ingest.report import software_versions
from streamer.sinks.hdf5 import (
    FORMAT_VERSION,
    VOLUME_PATH,
    describe_written,
    now_iso,
    temporary_path,
)

FORMAT_NAME = "tomo-streamer volume"
QUANTISATION_ATTRS = ("window_min", "window_max", "scale", "offset")


def part_path(master: Path, rank: int, ranks: int) -> Path:
    """The file of rank ``rank`` of ``ranks``: ``<stem>.part<rank>of<ranks>.h5`` beside
    ``master``."""
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise SinkError(f"{master}: ranks: expected an integer >= 1, got {ranks!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < ranks:
        raise SinkError(f"{master}: rank: expected an integer in [0, {ranks}), got {rank!r}")
    master = Path(master)
    return master.with_name(f"{master.stem}.part{rank}of{ranks}.h5")


@dataclass(frozen=True)
class PartLayout:
    """What a volume file says about itself (a part, or any single-rank volume)."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    detector_rows: npt.NDArray[np.int32]
    slice_written: npt.NDArray[np.bool_]
    angles_deg: npt.NDArray[np.float64]
    center_of_rotation: float
    center_method: str
    pipeline_yaml: str
    scan: str
    complete: bool
    closed: bool
    quantisation: dict[str, float]
    metadata: dict[str, Any]
    long_name: str | None

    @property
    def slice_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]


def read_layout(path: Path) -> PartLayout:
    """Read the layout of a volume file written by :class:`Hdf5VolumeWriter`.

    Raises :class:`SinkError` naming the file and what is wrong when it cannot be opened
    or is not a tomo-streamer volume.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as file:
            fmt = file.attrs.get("format")
            if fmt != FORMAT_NAME:
                raise SinkError(f"{path}: format: expected {FORMAT_NAME!r}, got {fmt!r}")
            entry = file["entry"]
            recon = file["entry/reconstruction"]
            data = recon["data"]
            process = file["entry/process"]
            cor = process["center_of_rotation"]
            shape = tuple(int(n) for n in data.shape)
            if len(shape) != 3:
                raise SinkError(f"{path}: {VOLUME_PATH}: expected 3-D, got shape {shape}")
            rows = np.asarray(recon["detector_row"][...], dtype=np.int32)
            written = np.asarray(recon["slice_written"][...], dtype=bool)
            if rows.shape != (shape[0],) or written.shape != (shape[0],):
                raise SinkError(
                    f"{path}: detector_row / slice_written: expected shape ({shape[0]},), got "
                    f"{rows.shape} / {written.shape}"
                )
            pipeline = process["pipeline"][()]
            return PartLayout(
                path=path,
                shape=(shape[0], shape[1], shape[2]),
                dtype=data.dtype,
                detector_rows=rows,
                slice_written=written,
                angles_deg=np.asarray(process["angles_deg"][...], dtype=np.float64),
                center_of_rotation=float(cor[()]),
                center_method=str(cor.attrs.get("method", "")),
                pipeline_yaml=pipeline.decode() if isinstance(pipeline, bytes) else str(pipeline),
                scan=str(entry.attrs["scan"]),
                complete=bool(entry.attrs["complete"]),
                closed="closed" in entry.attrs,
                quantisation={
                    key: float(data.attrs[key]) for key in QUANTISATION_ATTRS
                    if key in data.attrs
                },
                metadata=dict(file["entry/metadata"].attrs) if "metadata" in entry else {},
                long_name=str(data.attrs["long_name"]) if "long_name" in data.attrs else None,
            )
    except SinkError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise SinkError(f"{path}: not a readable tomo-streamer volume: {error}") from error


@dataclass(frozen=True)
class _Piece:
    """One band of the master: a readable part, or a placeholder for a missing one."""

    index: int  # position in ``parts`` (the rank)
    path: Path
    rows: npt.NDArray[np.int32]
    layout: PartLayout | None
    problem: str | None


def _disagree(part: Path, field: str, expected: object, got: object, reference: Path) -> SinkError:
    return SinkError(
        f"{part}: {field}: expected {expected!r} (as in {reference.name}), got {got!r}; "
        "the parts do not describe one volume"
    )


def _check_agree(reference: PartLayout, other: PartLayout) -> None:
    """Raise :class:`SinkError` if ``other`` is not a band of the same volume."""
    pairs: list[tuple[str, object, object]] = [
        ("scan", reference.scan, other.scan),
        ("slice shape", reference.slice_shape, other.slice_shape),
        ("dtype", str(reference.dtype), str(other.dtype)),
        ("center_of_rotation", reference.center_of_rotation, other.center_of_rotation),
        ("quantisation", reference.quantisation, other.quantisation),
    ]
    for field, expected, got in pairs:
        if expected != got:
            raise _disagree(other.path, field, expected, got, reference.path)
    ref, got = reference.angles_deg, other.angles_deg
    if ref.shape != got.shape:
        raise _disagree(other.path, "angles_deg", f"{ref.shape[0]} angles",
                        f"{got.shape[0]} angles", reference.path)
    if not np.array_equal(ref, got):
        first = int(np.flatnonzero(ref != got)[0])
        raise _disagree(other.path, f"angles_deg[{first}]", float(ref[first]),
                        float(got[first]), reference.path)


def _pieces(
    parts: Sequence[Path], bands: Sequence[Sequence[int]] | None
) -> list[_Piece]:
    """Read every part; readable parts are checked against ``bands`` when given."""
    if bands is not None and len(bands) != len(parts):
        raise SinkError(
            f"bands: expected one band of rows per part ({len(parts)}), got {len(bands)}"
        )
    pieces: list[_Piece] = []
    for index, raw in enumerate(parts):
        path = Path(raw)
        planned = None if bands is None else np.asarray(list(bands[index]), dtype=np.int64)
        if planned is not None and (planned.ndim != 1 or planned.shape[0] == 0):
            raise SinkError(f"bands[{index}]: expected a non-empty sequence of detector rows")
        try:
            layout = read_layout(path)
        except SinkError as error:
            reason = "missing" if not path.exists() else "unreadable"
            rows = (np.zeros(0, np.int32) if planned is None else planned.astype(np.int32))
            pieces.append(_Piece(index, path, rows, None, f"{reason}: {error}"))
            continue
        if planned is not None and not np.array_equal(planned, layout.detector_rows):
            raise SinkError(
                f"{path}: detector_row: expected the planned band "
                f"{_rows_text(planned)}, got {_rows_text(layout.detector_rows)}"
            )
        problem = None
        if not layout.complete:
            state = "closed" if layout.closed else "never closed (writer stopped)"
            problem = (f"incomplete, {state}: "
                       f"{describe_written(layout.slice_written)}")
        pieces.append(_Piece(index, path, layout.detector_rows, layout, problem))
    return pieces


def _rows_text(rows: npt.NDArray[Any]) -> str:
    if rows.shape[0] == 0:
        return "no rows"
    if np.array_equal(rows, np.arange(rows[0], rows[0] + rows.shape[0])):
        return f"rows [{int(rows[0])}, {int(rows[-1]) + 1})"
    return f"{rows.shape[0]} rows {int(rows.min())}..{int(rows.max())}"


def write_master(
    path: Path,
    parts: Sequence[Path],
    *,
    complete: bool,
    report: Mapping[str, Any] | None,
    overwrite: bool = False,
    bands: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write the master file of a volume written in parts; return its path.

    Parameters
    ----------
    path : Path
        The master file (``<stem>.h5``); the parts are usually :func:`part_path` of it.
    parts : sequence of Path
        The part files, one per rank, in rank order.
    complete : bool
        Whether the run says the scan was complete. The master says ``complete`` only if
        this is true, every part is present and says complete, and every slice is written.
    report : mapping, optional
        The merged run report, stored as ``/entry/process/report`` (JSON).
    overwrite : bool
        Replace an existing master.
    bands : sequence of sequences of int, optional
        The detector rows each part was planned to hold (the reslice's bands). Needed to
        place the NaN band of a part that is missing or unreadable; readable parts are
        checked against it. Without it, a missing part's rows are unknown and absent from
        the master (the reason says so).

    Raises
    ------
    SinkError
        If no part is readable, parts disagree (scan, slice shape, dtype, angles, CoR,
        quantisation), their detector rows overlap, or the master cannot be written.
    """
    path = Path(path)
    if not parts:
        raise SinkError(f"{path}: parts: expected at least one part file, got none")
    if path.exists() and not overwrite:
        raise SinkError(
            f"{path}: output file: expected a new file, got an existing one "
            "(pass overwrite=True to replace it)"
        )
    if path.resolve() in {Path(p).resolve() for p in parts}:
        raise SinkError(f"{path}: the master cannot also be one of its parts")
    pieces = _pieces(parts, bands)
    readable = [p for p in pieces if p.layout is not None]
    if not readable:
        reasons = "; ".join(f"part {p.index}: {p.problem}" for p in pieces)
        raise SinkError(f"{path}: expected at least one readable part, got none ({reasons})")
    reference = readable[0].layout
    assert reference is not None  # readable pieces have a layout
    for piece in readable[1:]:
        assert piece.layout is not None
        _check_agree(reference, piece.layout)
    _check_no_overlap(path, pieces)
    ordered = sorted(
        (p for p in pieces if p.rows.shape[0] > 0), key=lambda p: int(p.rows.min())
    )
    problems = [f"part {p.index} ({p.path.name}): {p.problem}" for p in pieces if p.problem]
    problems += [
        f"part {p.index} ({p.path.name}): its rows are unknown (no bands given), so they are "
        "absent from the master" for p in pieces if p.rows.shape[0] == 0
    ]
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as file:
            written = _write_layout(file, path, ordered, reference, report)
            entry = file["entry"]
            missing_slices = not bool(written.all())
            if missing_slices and not problems:
                problems.append(describe_written(written))
            entry.attrs["complete"] = bool(complete and not problems and not missing_slices)
            if not complete:  # why, when the run says (e.g. a rank stopped by SIGINT)
                errors = [str(e) for e in (report or {}).get("reconstruction_errors", ())]
                problems[:0] = errors or ["the run reported the scan incomplete"]
            entry.attrs["incomplete_reasons"] = json.dumps(problems)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise SinkError(f"{path}: cannot write the master file: {error}") from error
    return path


def _check_no_overlap(path: Path, pieces: list[_Piece]) -> None:
    seen: dict[int, int] = {}
    for piece in pieces:
        for row in piece.rows.tolist():
            if row in seen:
                raise SinkError(
                    f"{path}: detector rows: expected disjoint bands, got row {row} in part "
                    f"{seen[row]} ({Path(pieces[seen[row]].path).name}) and part "
                    f"{piece.index} ({piece.path.name})"
                )
            seen[row] = piece.index


def write_placeholder(path: Path, *, scan: str, ranks: int) -> Path:
    """Mark ``path`` as the master of a scan being acquired on ``ranks`` ranks.

    Written by rank 0 when the scan opens and replaced by :func:`write_master` when it
    closes. If the job dies in between (a rank killed: the launcher ends every rank), the
    file that is left opens, names the scan, says ``complete = False`` and why — no data,
    nothing that could pass for a volume. Written to a temporary name and renamed.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as file:
            file.attrs["format"] = FORMAT_NAME
            file.attrs["format_version"] = FORMAT_VERSION
            entry = file.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["scan"] = scan
            entry.attrs["complete"] = False
            entry.attrs["status"] = "in progress"
            entry.attrs["created"] = now_iso()
            entry.attrs["incomplete_reasons"] = json.dumps([
                f"scan {scan!r} was being acquired on {ranks} ranks: its parts are written "
                "when it closes; if this is still here, the job ended before that"])
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise SinkError(f"{path}: cannot write the master file: {error}") from error
    return path


def _write_layout(
    file: h5py.File,
    master: Path,
    ordered: list[_Piece],
    reference: PartLayout,
    report: Mapping[str, Any] | None,
) -> npt.NDArray[np.bool_]:
    """Write the single-rank layout with a VDS ``data``; return ``slice_written``."""
    string = h5py.string_dtype()
    n_slices = sum(p.rows.shape[0] for p in ordered)
    ny, nx = reference.slice_shape
    rows = np.concatenate([p.rows for p in ordered]).astype(np.int32)
    written = np.concatenate([
        p.layout.slice_written if p.layout is not None else np.zeros(p.rows.shape[0], bool)
        for p in ordered
    ])
    file.attrs["default"] = "entry"
    file.attrs["format"] = FORMAT_NAME
    file.attrs["format_version"] = FORMAT_VERSION
    entry = file.create_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = "reconstruction"
    entry.attrs["scan"] = reference.scan
    entry.attrs["complete"] = False
    entry.attrs["slices_written"] = int(written.sum())
    entry.attrs["software_versions"] = json.dumps(software_versions(), sort_keys=True)
    entry.attrs["created"] = now_iso()
    entry.attrs["closed"] = now_iso()

    recon = entry.create_group("reconstruction")
    recon.attrs["NX_class"] = "NXdata"
    recon.attrs["signal"] = "data"
    recon.attrs["axes"] = np.array(["detector_row", ".", "."], dtype=object)
    recon.attrs["detector_row_indices"] = 0
    layout = h5py.VirtualLayout(shape=(n_slices, ny, nx), dtype=reference.dtype)
    first = 0
    for piece in ordered:
        n = piece.rows.shape[0]
        if piece.layout is not None:
            source = os.path.relpath(piece.path.resolve(), master.parent.resolve())
            layout[first:first + n] = h5py.VirtualSource(
                source, VOLUME_PATH, shape=(n, ny, nx), dtype=reference.dtype
            )
        first += n
    fill: float = float("nan") if reference.dtype == np.float32 else 0
    data = recon.create_virtual_dataset("data", layout, fillvalue=fill)
    for key, value in reference.quantisation.items():
        data.attrs[key] = value
    if reference.long_name is not None:
        data.attrs["long_name"] = reference.long_name
    recon.create_dataset("detector_row", data=rows, dtype=np.int32)
    recon.create_dataset("slice_written", data=written, dtype=bool)

    process = entry.create_group("process")
    process.attrs["NX_class"] = "NXprocess"
    process.attrs["program"] = "tomo-streamer"
    process.create_dataset("angles_deg", data=reference.angles_deg, dtype=np.float64)
    cor = process.create_dataset(
        "center_of_rotation", data=np.float64(reference.center_of_rotation), dtype=np.float64
    )
    cor.attrs["method"] = reference.center_method or "unknown"
    cor.attrs["units"] = "pixel"
    process.create_dataset("pipeline", data=reference.pipeline_yaml, dtype=string)
    if report is not None:
        try:
            text = json.dumps(dict(report), sort_keys=False, default=str)
        except (TypeError, ValueError) as error:
            raise SinkError(f"{master}: report: expected a JSON-able mapping: {error}") from error
        process.create_dataset("report", data=text, dtype=string)

    meta = entry.create_group("metadata")
    meta.attrs["NX_class"] = "NXcollection"
    for key, value in _common_metadata(ordered).items():
        meta.attrs[key] = value

    table = entry.create_group("parts")
    table.attrs["NX_class"] = "NXcollection"
    table.create_dataset("file", data=[
        os.path.relpath(p.path.resolve(), master.parent.resolve()) for p in ordered
    ], dtype=string)
    table.create_dataset("first_slice", data=np.cumsum(
        [0] + [p.rows.shape[0] for p in ordered[:-1]]).astype(np.int64))
    table.create_dataset("slices", data=[p.rows.shape[0] for p in ordered], dtype=np.int64)
    table.create_dataset("rank", data=[p.index for p in ordered], dtype=np.int64)
    table.create_dataset("status", data=[
        "complete" if p.problem is None else p.problem for p in ordered
    ], dtype=string)
    return written


def _common_metadata(ordered: list[_Piece]) -> dict[str, Any]:
    """Metadata items with the same value in every readable part."""
    layouts = [p.layout for p in ordered if p.layout is not None]
    if not layouts:
        return {}
    common = dict(layouts[0].metadata)
    for layout in layouts[1:]:
        common = {
            k: v for k, v in common.items()
            if k in layout.metadata and np.array_equal(layout.metadata[k], v)
        }
    return common

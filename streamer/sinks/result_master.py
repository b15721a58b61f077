"""Several ranks, one intermediate file: HTTomo's ``save_result`` output as a virtual dataset.

On R ranks each rank writes the blocks of a ``save_result`` step that it holds to its own
part (:class:`streamer.pipeline.intermediate.IntermediateResults`): ``/data`` in HTTomo's
order ``(angles, detector_y, detector_x)`` cut along the axis the rank holds at that step
(``pattern`` ``projection``: axis 0, its projections; ``sinogram``: axis 1, its rows), and
``/index`` the place of each of them in the whole array. :func:`write_result_master`
writes the file the user names with the layout of the one-rank file (``/data``, its
``step``, ``where`` and ``axes`` attributes, ``/angles`` in radians,
``/data_dims/detector_x_y``, the file's ``complete``), ``/data`` being an HDF5 Virtual
Dataset: each run of consecutive places of a part is one mapping. Dealt projection
frames (blocks round-robin, so not contiguous) are so a mapping per block; a band of
rows or a range of angles is one mapping.

Why a VDS: as for the volume (:mod:`streamer.sinks.master`, ADR 0003), several
processes cannot write one HDF5 file without MPI-IO. The parts' names in the map are
relative to the master's folder (move the folder as a whole). A place no part holds
reads as NaN (the fill value) and leaves the file incomplete, with the reason in its
``incomplete_reasons`` attribute; so does a part that cannot be read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from streamer.errors import SinkError
from streamer.sinks.hdf5 import temporary_path

__all__ = ["PART_FORMAT", "ResultMaster", "write_result_master"]

#: The ``format`` attribute of a rank's part file.
PART_FORMAT = "tomo-streamer intermediate part"
#: The attributes of ``/data`` a master copies from its parts.
DATA_ATTRS = ("step", "where", "axes")


@dataclass(frozen=True)
class ResultMaster:
    """What :func:`write_result_master` wrote: the file, whether it is complete and why
    not."""

    path: Path
    complete: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class _Part:
    path: Path
    pattern: str
    total: int
    shape: tuple[int, int, int]
    index: npt.NDArray[np.int64]
    angles_deg: npt.NDArray[np.float64]
    attrs: dict[str, str]
    complete: bool


def _read_part(path: Path) -> _Part:
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != PART_FORMAT:
                raise SinkError(f"{path}: format: expected {PART_FORMAT!r}, got "
                                f"{file.attrs.get('format')!r}")
            data = file["data"]
            shape = tuple(int(n) for n in data.shape)
            index = np.asarray(file["index"][...], dtype=np.int64)
            pattern = str(file.attrs["pattern"])
            held = shape[0] if pattern == "projection" else shape[1]
            if len(shape) != 3 or index.shape != (held,):
                raise SinkError(f"{path}: /index: expected {held} places for /data of shape "
                                f"{shape}, got {index.shape[0]}")
            return _Part(path, pattern, int(file.attrs["total"]),
                         (shape[0], shape[1], shape[2]), index,
                         np.asarray(file["angles"][...], dtype=np.float64),
                         {key: str(data.attrs[key]) for key in DATA_ATTRS
                          if key in data.attrs},
                         bool(file.attrs["complete"]))
    except SinkError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise SinkError(f"{path}: not a readable intermediate part: {error}") from error


def _runs(index: npt.NDArray[np.int64]) -> list[tuple[int, int, int]]:
    """(first position in the part, first place, length) of each run of consecutive
    places held at consecutive positions."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [index.size]])
    return [(int(a), int(index[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def _whole_shape(reference: _Part) -> tuple[int, int, int]:
    a, b, c = reference.shape
    if reference.pattern == "projection":
        return reference.total, b, c
    return a, reference.total, c


def _check_agree(reference: _Part, part: _Part) -> None:
    ours, theirs = _whole_shape(reference), _whole_shape(part)
    fields = [("pattern", reference.pattern, part.pattern), ("shape", ours, theirs),
              ("attributes", reference.attrs, part.attrs)]
    if reference.pattern == "sinogram" == part.pattern:
        fields.append(("angles", reference.angles_deg.tolist(), part.angles_deg.tolist()))
    for name, expected, got in fields:
        if expected != got:
            raise SinkError(f"{part.path}: {name}: expected {expected!r} (as in "
                            f"{reference.path.name}), got {got!r}; the parts do not "
                            "describe one array")


def write_result_master(path: Path, parts: Sequence[Path], *, complete: bool,
                        detector_x_y: tuple[int, int]) -> ResultMaster:
    """Write ``path`` over the ``parts`` that exist (absent ones hold nothing: a rank
    with no block at that step); ``complete`` is the run's verdict. Raises
    :class:`SinkError` when no part can be read or the parts disagree."""
    path = Path(path)
    found: list[_Part] = []
    reasons: list[str] = [] if complete else ["the run reported the scan incomplete"]
    for name in parts:
        if not Path(name).exists():
            continue
        try:
            found.append(_read_part(Path(name)))
        except SinkError as error:
            reasons.append(str(error))
    if not found:
        raise SinkError(f"{path}: no readable part: {'; '.join(reasons) or 'none written'}")
    reference = found[0]
    for part in found[1:]:
        _check_agree(reference, part)
    shape = _whole_shape(reference)
    axis = 0 if reference.pattern == "projection" else 1
    held = np.zeros(reference.total, dtype=bool)
    for part in found:
        if np.any(held[part.index]) or len(np.unique(part.index)) != part.index.size:
            raise SinkError(f"{part.path}: /index: expected places no other part holds, "
                            "got a repeated one")
        held[part.index] = True
        if not part.complete:
            reasons.append(f"{part.path.name}: its rank's part is incomplete")
    if not held.all():
        what = "projections" if axis == 0 else "rows"
        reasons.append(f"{int((~held).sum())} of {reference.total} {what} are in no part "
                       f"(first: {int(np.flatnonzero(~held)[0])}); they read as NaN")
    layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
    for part in found:
        source = h5py.VirtualSource(os.path.relpath(part.path.resolve(),
                                                    path.parent.resolve()),
                                    "data", shape=part.shape, dtype=np.float32)
        for at, place, count in _runs(part.index):
            if axis == 0:
                layout[place:place + count] = source[at:at + count]
            else:
                layout[:, place:place + count] = source[:, at:at + count]
    if axis == 0:
        angles = np.full(reference.total, np.nan)
        for part in found:
            angles[part.index] = part.angles_deg
    else:
        angles = reference.angles_deg
    tmp = temporary_path(path)
    try:
        with h5py.File(tmp, "w") as file:
            data = file.create_virtual_dataset("data", layout, fillvalue=np.nan)
            for key, value in reference.attrs.items():
                data.attrs[key] = value
            file.create_dataset("angles", data=np.deg2rad(angles))
            file.create_dataset("data_dims/detector_x_y", data=list(detector_x_y))
            file.attrs["complete"] = not reasons
            file.attrs["parts"] = json.dumps([
                os.path.relpath(p.path.resolve(), path.parent.resolve()) for p in found])
            if reasons:
                file.attrs["incomplete_reasons"] = json.dumps(reasons)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise SinkError(f"{path}: cannot write the intermediate file: {error}") from error
    return ResultMaster(path, not reasons, tuple(reasons))

"""Rotation angles: units, ``START,STOP,COUNT`` ranges, external files, per-frame layout.

The wire carries one angle per frame in degrees. Files give angles either one per frame
(NeXus, interleaved with the references) or one per projection (data-exchange, TIFF
series); :func:`per_frame` puts either form on the frames of a scan and says clearly when
the count fits neither.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

from streamer.errors import ScanFormatError
from streamer.sources.formats.h5tree import attr_text, dataset_at, open_h5
from streamer.wire.protocol import IMAGE_KEY_PROJECTION

Float64Array = npt.NDArray[np.float64]

_DEGREES: Final = {"deg", "degree", "degrees", "°"}
_RADIANS: Final = {"rad", "radian", "radians"}
_MILLIRADIANS: Final = {"mrad", "milliradian", "milliradians"}
_TEXT_SUFFIXES: Final = {".txt", ".dat", ".csv"}


def to_degrees(values: npt.ArrayLike, units: str | None, where: str) -> Float64Array:
    """Convert angles in ``units`` (degrees if ``units`` is empty or None) to degrees."""
    array = np.asarray(values, dtype=np.float64)
    unit = (units or "").strip().lower()
    if not unit or unit in _DEGREES:
        return array
    if unit in _RADIANS:
        return np.rad2deg(array)
    if unit in _MILLIRADIANS:
        return np.rad2deg(array / 1000.0)
    raise ScanFormatError(
        f"{where}: angle units: expected degrees or radians, got {units!r}"
    )


def angle_range(start: float, stop: float, count: int) -> Float64Array:
    """``count`` angles from ``start`` to ``stop`` degrees, both ends included."""
    return np.linspace(start, stop, count, endpoint=True, dtype=np.float64)


def as_vector(values: npt.ArrayLike, where: str) -> Float64Array:
    """Flatten a 1-D, (n, 1) or (1, n) numeric array of angles, refusing anything else."""
    array = np.asarray(values)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1 or array.size == 0:
        raise ScanFormatError(
            f"{where}: expected a 1-D array of angles, got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ScanFormatError(f"{where}: expected numeric angles, got dtype {array.dtype}")
    return array.astype(np.float64)


def h5_angles(dataset: h5py.Dataset, where: str) -> Float64Array:
    """Read an angle dataset, honouring its ``units`` attribute (degrees if absent)."""
    return to_degrees(as_vector(dataset[()], where), attr_text(dataset, "units"), where)


def per_frame(
    keys: npt.NDArray[np.int8], values: Float64Array, where: str
) -> Float64Array:
    """Put ``values`` on every frame: one per frame, or one per projection (refs get 0).

    Raises
    ------
    ScanFormatError
        When the count is neither the number of frames nor of projections, e.g.
        ``tooth.h5:/exchange/theta: expected 181 angles (one per projection), got 180``.
    """
    frames = int(keys.shape[0])
    projections = int(np.count_nonzero(keys == IMAGE_KEY_PROJECTION))
    if values.shape[0] == frames:
        return values.astype(np.float64, copy=True)
    if values.shape[0] == projections:
        out = np.zeros(frames, dtype=np.float64)
        out[keys == IMAGE_KEY_PROJECTION] = values
        return out
    if frames == projections:
        wanted = f"{projections} angles (one per projection)"
    else:
        wanted = f"{frames} angles (one per frame) or {projections} (one per projection)"
    raise ScanFormatError(f"{where}: expected {wanted}, got {values.shape[0]}")


def check_finite(
    keys: npt.NDArray[np.int8], angles: Float64Array, where: str
) -> Float64Array:
    """Refuse NaN/inf angles on projections; set those of references (unused) to 0."""
    bad = ~np.isfinite(angles)
    if not bad.any():
        return angles
    projection_bad = bad & (keys == IMAGE_KEY_PROJECTION)
    if projection_bad.any():
        first = int(np.flatnonzero(projection_bad)[0])
        raise ScanFormatError(
            f"{where}: expected finite angles, got {angles[first]} for frame {first} "
            f"(a projection) and {int(projection_bad.sum())} non-finite projection angles in all"
        )
    fixed = angles.copy()
    fixed[bad] = 0.0
    return fixed


def scan_range(keys: npt.NDArray[np.int8], angles: Float64Array) -> float | None:
    """Rotation covered by the projections (max − min, degrees), or None if zero."""
    projection = angles[keys == IMAGE_KEY_PROJECTION]
    if projection.size < 2:
        return None
    span = round(float(projection.max() - projection.min()), 6)
    return span if span > 0 and math.isfinite(span) else None


def split_file_spec(spec: str) -> tuple[Path | None, str | None]:
    """Split ``FILE``, ``FILE:DATASET`` or ``DATASET`` into ``(file, dataset)``.

    A whole existing file wins; otherwise the first ``:`` whose left part is an existing
    file splits the spec. Anything else is a dataset path with no file.
    """
    if Path(spec).is_file():
        return Path(spec), None
    position = spec.find(":")
    while position > 0:
        left = Path(spec[:position])
        if left.is_file():
            return left, spec[position + 1 :] or None
        position = spec.find(":", position + 1)
    return None, spec


def load_angles(spec: str, scan_file: h5py.File | None, scan_name: str) -> tuple[
    Float64Array, str
]:
    """Angles in degrees from ``--angles-path`` and a description for messages.

    Parameters
    ----------
    spec : str
        ``DATASET`` (in ``scan_file``), ``FILE:DATASET`` (HDF5/NeXus, units attribute
        honoured) or a ``.txt``/``.csv``/``.dat``/``.npy`` file of angles in degrees.
    scan_file : h5py.File or None
        The scan's own HDF5 file, if it is one.
    scan_name : str
        The scan's file name, for messages.
    """
    file, dataset = split_file_spec(spec)
    if file is None:
        assert dataset is not None
        if ":" in spec:
            raise ScanFormatError(
                f"--angles-path {spec}: expected FILE:DATASET with an existing FILE, "
                f"no such file {spec.rsplit(':', 1)[0]!r}"
            )
        if scan_file is None:
            raise ScanFormatError(
                f"--angles-path {spec}: no such file, and {scan_name} is not an HDF5 file "
                "that could hold such a dataset (use FILE:DATASET or a .txt/.npy file)"
            )
        where = f"{scan_name}:{dataset}"
        return h5_angles(dataset_at(scan_file, dataset, scan_name), where), where
    if dataset is None:
        return _plain_file_angles(file), file.name
    with open_h5(file) as handle:
        where = f"{file.name}:{dataset}"
        return h5_angles(dataset_at(handle, dataset, file.name), where), where


def _plain_file_angles(file: Path) -> Float64Array:
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            values: Any = np.load(file, allow_pickle=False)
        elif suffix in _TEXT_SUFFIXES:
            with warnings.catch_warnings():  # an empty file warns; as_vector refuses it below
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(
                    file, dtype=np.float64, delimiter="," if suffix == ".csv" else None, ndmin=1
                )
        else:
            raise ScanFormatError(
                f"--angles-path {file}: expected FILE:DATASET for an HDF5 file, or a "
                f".npy/.txt/.csv/.dat file of angles in degrees, got a {suffix or 'plain'} file"
            )
    except (OSError, ValueError) as exc:
        raise ScanFormatError(f"{file.name}: cannot read angles ({exc})") from None
    return as_vector(np.atleast_1d(values), file.name)

"""Single sinograms: a MATLAB ``.mat`` variable or a one-page TIFF, one detector row.

Each angle is streamed as one frame of shape ``(1, det)``. The whole sinogram is read at
open (it is small). The sinogram is oriented ``(angles, det)`` by matching the number of
angles (from the file, ``--angles-path`` or ``--angles``) to one of its dimensions; a TIFF
is taken as stored (rows are angles) when that does not decide.

``.mat`` files (v4/v5 via SciPy, v7.3 via h5py): the sinogram is ``--data-path NAME`` or
the only 2-D numeric variable (else the one with a dimension equal to the angle count);
angles are ``--angles-path NAME`` or the 1-D variable whose name contains ``angle`` or
``theta``. Their unit comes from the name: radians if it contains ``rad``, else degrees
(values alone cannot tell degrees from radians safely).

A sinogram without flats is normalised by its air (``air``) unless ``--normalised`` says
it is attenuation already. Reading attenuation as counts inverts it silently (dense
becomes bright air), so a sinogram read as counts is checked first
(:func:`attenuation_signs`): counts are largest in the air beside the sample, so their
outer columns are brighter than the middle, and never negative; attenuation is the
opposite. A sinogram that looks like attenuation is refused with a message naming
``--normalised`` (and ``--counts`` for counts that only look so, e.g. a sample wider
than the detector with dense edges), rather than switched silently: the check is a
heuristic and the user should decide. The ToMoBAR dendrite (``1000 × -log``) is refused
this way; every count sinogram in ``../shared/data`` passes.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import scipy.io
import tifffile

from streamer.errors import ScanFormatError
from streamer.sources.formats.angles import (
    Float64Array,
    as_vector,
    load_angles,
    split_file_spec,
    to_degrees,
)
from streamer.sources.formats.detect import is_hdf5
from streamer.sources.formats.options import LoadOptions
from streamer.sources.formats.parts import Part, keys_like
from streamer.sources.formats.reader import StoredScan, assemble
from streamer.sources.formats.segments import ArraySegment, check_numeric
from streamer.wire.protocol import IMAGE_KEY_PROJECTION, MetadataValue


def load_mat(path: Path, options: LoadOptions, resources: ExitStack) -> StoredScan:
    """Open a sinogram stored in a MATLAB file (see module docstring)."""
    name = path.name
    variables = _mat_variables(path)
    angles, angles_from, angles_var = _mat_angles(name, variables, options)
    count = len(angles) if angles is not None else _override_count(options)
    data_var = options.data_path or _pick_sinogram(name, variables, angles_var, count)
    if data_var not in variables:
        raise ScanFormatError(
            f"{name}:{data_var}: no such variable (the file has {', '.join(sorted(variables))})"
        )
    sinogram = np.asarray(variables[data_var])
    metadata: dict[str, MetadataValue] = {"data_path": data_var, "single_sinogram": True}
    if angles_from:
        metadata["angles_path"] = angles_from
    return _assemble(path, "mat", f"{name}:{data_var}", sinogram, count=count, angles=angles,
                     angles_from=angles_from, options=options, resources=resources,
                     metadata=metadata)


def load_sinogram_tif(path: Path, options: LoadOptions, resources: ExitStack) -> StoredScan:
    """Open a sinogram stored as one 2-D TIFF page, rows = angles (see module docstring)."""
    name = path.name
    try:
        with tifffile.TiffFile(path) as tiff:
            if len(tiff.pages) != 1:
                raise ScanFormatError(
                    f"{name}: expected one page (a sinogram), got {len(tiff.pages)} pages; "
                    "use --format tiff for a stack of projections"
                )
            sinogram = np.asarray(tiff.pages[0].asarray())
    except (OSError, tifffile.TiffFileError) as exc:
        raise ScanFormatError(f"{name}: cannot read TIFF ({exc})") from None
    angles, angles_from = None, ""
    if options.angles_path is not None:
        angles, angles_from = load_angles(options.angles_path, None, name)
    count = len(angles) if angles is not None else _override_count(options)
    metadata: dict[str, MetadataValue] = {"single_sinogram": True}
    if angles_from:
        metadata["angles_path"] = angles_from
    return _assemble(path, "sinogram-tif", name, sinogram, count=count, angles=angles,
                     angles_from=angles_from, options=options, resources=resources,
                     metadata=metadata)


def _override_count(options: LoadOptions) -> int | None:
    return None if options.angles is None else options.angles[2]


def _assemble(
    path: Path, format_name: str, where: str, sinogram: npt.NDArray[Any], *,
    count: int | None, angles: Float64Array | None, angles_from: str, options: LoadOptions,
    resources: ExitStack, metadata: dict[str, MetadataValue],
) -> StoredScan:
    if sinogram.ndim != 2 or min(sinogram.shape) < 2:
        raise ScanFormatError(
            f"{where}: expected a 2-D sinogram (angles, detector), got shape {sinogram.shape}"
        )
    check_numeric(sinogram.dtype, where)
    oriented = _orient(where, sinogram, count, angles_from or "--angles")
    read_as_counts = not (options.normalised or options.darks or options.flats)
    if read_as_counts and not options.counts:
        signs = attenuation_signs(oriented if options.scale is None
                                  else oriented * options.scale)
        if signs is not None:
            raise ScanFormatError(
                f"{where}: the sinogram looks like attenuation (-log), not detector counts "
                f"({signs}); pass --normalised if it is attenuation (with --scale 0.001 "
                "for 1000 x -log data), or --counts if these really are counts"
            )
    frames = np.ascontiguousarray(oriented[:, np.newaxis, :])
    keys = keys_like(frames.shape[0], IMAGE_KEY_PROJECTION)
    part = Part(ArraySegment(frames, where), keys, angles, angles_from)
    return assemble(scan=path, format_name=format_name, parts=[part], options=options,
                    resources=resources, metadata=metadata)


def attenuation_signs(sinogram: npt.NDArray[Any]) -> str | None:
    """Why ``sinogram`` (angles, det) looks like attenuation rather than counts, or
    ``None``: negative values, or outer columns (5 % each side, the air beside the
    sample in a count sinogram) darker in median than the middle quarter."""
    values = np.asarray(sinogram, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and float(finite.min()) < 0:
        return f"negative values down to {float(finite.min()):.4g}"
    cols = values.shape[1]
    edge = max(1, cols // 20)
    outer = np.concatenate((values[:, :edge], values[:, -edge:]), axis=1)
    middle = values[:, cols // 2 - max(1, cols // 8): cols // 2 + max(1, cols // 8)]
    outer_median, middle_median = float(np.nanmedian(outer)), float(np.nanmedian(middle))
    if outer_median < middle_median:
        return (f"its outer columns, where counts would see air, are darker than the middle: "
                f"median {outer_median:.4g} against {middle_median:.4g}")
    return None


def _orient(
    where: str, sinogram: npt.NDArray[Any], count: int | None, source: str
) -> npt.NDArray[Any]:
    """``sinogram`` as (angles, det), by matching ``count`` angles to a dimension.

    Without a count it is taken as stored (rows are angles); the missing angles are then
    reported by the reader.
    """
    rows, cols = sinogram.shape
    if count is None:
        return sinogram
    if count == rows:
        return sinogram
    if count == cols:
        return sinogram.T
    raise ScanFormatError(
        f"{where}: expected one dimension equal to the {count} angles from {source}, "
        f"got shape {sinogram.shape}"
    )


def _mat_variables(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Numeric variables of a .mat file, in MATLAB's (row, column) orientation."""
    if is_hdf5(path):  # MATLAB v7.3: HDF5, arrays stored transposed
        try:
            with h5py.File(path, "r") as file:
                return {
                    key: np.asarray(file[key][()]).T for key in file
                    if isinstance(file[key], h5py.Dataset) and not key.startswith("#")
                    and file[key].dtype.kind in "uifb"
                }
        except OSError as exc:
            raise ScanFormatError(f"{path.name}: cannot read MATLAB 7.3 file ({exc})") from None
    try:
        loaded = scipy.io.loadmat(path, squeeze_me=False)
    except (OSError, ValueError, NotImplementedError, TypeError) as exc:
        raise ScanFormatError(f"{path.name}: cannot read as a MATLAB .mat file ({exc})") from None
    return {
        key: value for key, value in loaded.items()
        if not key.startswith("__") and isinstance(value, np.ndarray)
        and value.dtype.kind in "uifb"
    }


def _is_vector(value: npt.NDArray[Any]) -> bool:
    return value.size > 1 and (value.ndim == 1 or (value.ndim == 2 and 1 in value.shape))


def _mat_angles(
    name: str, variables: dict[str, npt.NDArray[Any]], options: LoadOptions
) -> tuple[Float64Array | None, str, str | None]:
    """Angles in degrees, where they came from, and the variable name if in the file."""
    spec = options.angles_path
    if spec is not None:
        if spec in variables and split_file_spec(spec)[0] is None:
            var = spec
        else:
            values, where = load_angles(spec, None, name)
            return values, where, None
    elif options.angles is not None:
        return None, "", None
    else:
        named = sorted(
            key for key, value in variables.items()
            if _is_vector(value) and ("angle" in key.lower() or "theta" in key.lower())
        )
        if not named:
            return None, "", None
        if len(named) > 1:
            raise ScanFormatError(
                f"{name}: several angle variables ({', '.join(named)}); "
                "pass --angles-path NAME"
            )
        var = named[0]
    where = f"{name}:{var}"
    vector = as_vector(variables[var], where)
    units = "rad" if "rad" in var.lower() and "deg" not in var.lower() else "deg"
    return to_degrees(vector, units, where), where, var


def _pick_sinogram(
    name: str, variables: dict[str, npt.NDArray[Any]], angles_var: str | None,
    count: int | None,
) -> str:
    candidates = sorted(
        key for key, value in variables.items()
        if key != angles_var and value.ndim == 2 and min(value.shape) > 1
    )
    if len(candidates) > 1 and count is not None:
        candidates = [key for key in candidates if count in variables[key].shape]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ScanFormatError(
            f"{name}: expected a 2-D numeric variable (the sinogram), found none "
            f"(variables: {', '.join(sorted(variables)) or 'none'})"
        )
    raise ScanFormatError(
        f"{name}: several 2-D variables could be the sinogram ({', '.join(candidates)}); "
        "pass --data-path NAME"
    )

"""The one :class:`~streamer.sources.scan.FrameReader` every stored format returns.

Format loaders only find *where* the frames, keys and angles are (a list of
:class:`Part`); :func:`assemble` applies everything the formats share, so the rules hold
for all of them alike:

* separate darks and flats (``--darks``/``--flats``) go first, darks then flats;
* all frames must have one shape; ``--rows A:B`` crops rows and is checked against it;
* ``--angles START,STOP,COUNT`` replaces the projections' angles (COUNT must match);
* projections need finite angles; references without one get 0;
* the pixel type is kept if it is a wire type and the same everywhere, else float32;
  ``--scale`` multiplies and makes float32;
* normalisation is ``none`` if the data are already normalised, ``flat_dark`` if the
  scan has flats, ``air`` otherwise.
"""

from __future__ import annotations

import bisect
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from streamer.errors import ProtocolError, ScanFormatError
from streamer.sources.formats.angles import Float64Array, angle_range, check_finite, scan_range
from streamer.sources.formats.options import LoadOptions
from streamer.sources.formats.parts import Part
from streamer.sources.formats.references import reference_parts
from streamer.sources.scan import ScanLayout, check_block
from streamer.wire.protocol import (
    IMAGE_KEY_DARK,
    IMAGE_KEY_FLAT,
    IMAGE_KEY_PROJECTION,
    MAX_TEXT,
    WIRE_DTYPES,
    Geometry,
    MetadataValue,
    Normalisation,
    wire_dtype_name,
)


class StoredScan:
    """A stored scan read lazily by block, in stream order (see module docstring).

    Use :func:`streamer.sources.formats.open_scan` to make one. Closing it closes every
    file it opened; it is also a context manager.
    """

    def __init__(
        self, layout: ScanLayout, parts: list[Part], rows: slice, scale: float | None,
        resources: ExitStack,
    ) -> None:
        self._layout = layout
        self._parts = parts
        self._offsets = np.cumsum([0, *(part.segment.count for part in parts)]).tolist()
        self._rows = rows
        self._scale = None if scale is None else np.float32(scale)
        self._dtype = WIRE_DTYPES[wire_dtype_name(layout.dtype)]
        self._resources = resources
        self._closed = False

    @property
    def layout(self) -> ScanLayout:
        return self._layout

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Frames ``start … stop-1`` as a C-contiguous little-endian ``(n, rows, cols)``."""
        check_block(self._layout, start, stop)
        if self._closed:
            raise ScanFormatError(f"{self._layout.source}: read: the scan is closed")
        out = np.empty((stop - start, self._layout.rows, self._layout.cols), dtype=self._dtype)
        index = start
        while index < stop:
            part = bisect.bisect_right(self._offsets, index) - 1
            part_start, part_stop = self._offsets[part], self._offsets[part + 1]
            end = min(stop, part_stop)
            self._parts[part].segment.read_into(
                out[index - start : end - start], index - part_start, end - part_start, self._rows
            )
            index = end
        if self._scale is not None:
            out *= self._scale
        if out.dtype.kind == "f":
            self._check_finite(out, start)
        return out

    def _check_finite(self, out: npt.NDArray[Any], start: int) -> None:
        """Refuse NaN/Inf pixels: one would turn whole reconstructed slices into NaN."""
        finite = np.isfinite(out)
        if finite.all():
            return
        bad_frames = np.flatnonzero(~finite.reshape(len(out), -1).all(axis=1)) + start
        first = int(bad_frames[0])
        kind = {0: "projection", 1: "flat", 2: "dark"}.get(
            int(self._layout.image_keys[first]), "frame")
        raise ScanFormatError(
            f"{self._layout.source}: frame {first} ({kind}): expected finite pixel values, "
            f"got {int((~finite).sum())} NaN/Inf pixels in {len(bad_frames)} frames of "
            f"{start}…{start + len(out) - 1}"
        )

    def close(self) -> None:
        """Release every file handle; further reads raise. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            for part in self._parts:
                part.segment.close()
        finally:
            self._resources.close()

    def __enter__(self) -> StoredScan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def wire_dtype_for(dtypes: list[np.dtype[Any]], scale: float | None) -> np.dtype[Any]:
    """The wire dtype for segments stored as ``dtypes``: kept if shared and allowed."""
    if scale is None:
        names = set()
        for dtype in dtypes:
            try:
                names.add(wire_dtype_name(dtype))
            except ProtocolError:
                names.add("")
        if len(names) == 1 and "" not in names:
            return WIRE_DTYPES[names.pop()]
    return WIRE_DTYPES["float32"]


def assemble(
    *,
    scan: Path,
    format_name: str,
    parts: list[Part],
    options: LoadOptions,
    resources: ExitStack,
    scan_h5: h5py.File | None = None,
    metadata: dict[str, MetadataValue] | None = None,
    normalised: bool = False,
) -> StoredScan:
    """Apply the shared rules (module docstring) to a loader's parts; make the reader.

    Parameters
    ----------
    scan : Path
        The scan as the user named it (file, directory or glob).
    format_name : str
        Detected or forced format, recorded in the metadata.
    parts : list of Part
        The scan's own frames in stream order.
    options : LoadOptions
        Validated user options.
    resources : ExitStack
        Files the reader must close; references opened here are added to it.
    scan_h5 : h5py.File, optional
        The scan's HDF5 file, so ``--darks``/``--flats`` may name a dataset in it.
    metadata : dict, optional
        Loader-specific scalar metadata.
    normalised : bool
        The file itself says its data are already normalised.
    """
    name = scan.name or str(scan)
    parts = [
        *reference_parts(options.darks, IMAGE_KEY_DARK, resources, scan_h5, name),
        *reference_parts(options.flats, IMAGE_KEY_FLAT, resources, scan_h5, name),
        *parts,
    ]
    parts = [part for part in parts if part.segment.count > 0]
    if not parts:
        raise ScanFormatError(f"{name}: expected at least one frame, found none")
    shape = _common_shape(parts)
    keys = np.concatenate([part.keys for part in parts]).astype(np.int8)
    if not np.any(keys == IMAGE_KEY_PROJECTION):
        raise ScanFormatError(f"{name}: expected at least one projection, found none")
    angles = _angles(name, parts, keys, options)
    rows = _row_crop(name, shape[0], options.rows)
    dtype = wire_dtype_for([part.segment.dtype for part in parts], options.scale)
    normalisation: Normalisation
    if options.normalised or normalised:
        normalisation = "none"
    elif np.any(keys == IMAGE_KEY_FLAT):
        normalisation = "flat_dark"
    else:
        normalisation = "air"
    info: dict[str, MetadataValue] = {"format": format_name, "file": name}
    info.update(metadata or {})
    if options.rows is not None:
        info["rows_crop"] = f"{rows.start}:{rows.stop}"
    if options.scale is not None:
        info["scale"] = float(options.scale)
    if options.angles is not None:
        info["angles_override"] = ",".join(str(v) for v in options.angles)
    if options.darks:
        info["darks_from"] = ";".join(options.darks)
    if options.flats:
        info["flats_from"] = ";".join(options.flats)
    info = {
        key: value[: MAX_TEXT - 3] + "..." if isinstance(value, str) and len(value) > MAX_TEXT
        else value
        for key, value in info.items()
    }
    layout = ScanLayout(
        rows=rows.stop - rows.start,
        cols=shape[1],
        dtype=dtype,
        image_keys=keys,
        angles_deg=angles,
        normalisation=normalisation,
        geometry=Geometry(scan_range_deg=scan_range(keys, angles)),
        source=f"replay:{name}",
        metadata=info,
    )
    return StoredScan(layout, parts, rows, options.scale, resources)


def _common_shape(parts: list[Part]) -> tuple[int, int]:
    # The scan's own frames (last part) set the shape; references must match it.
    reference = parts[-1].segment
    for part in parts:
        if part.segment.shape != reference.shape:
            rows, cols = reference.shape
            raise ScanFormatError(
                f"{part.segment.name}: expected {rows}x{cols} frames like {reference.name}, "
                f"got {part.segment.shape[0]}x{part.segment.shape[1]}"
            )
    return reference.shape


def _angles(
    name: str, parts: list[Part], keys: npt.NDArray[np.int8], options: LoadOptions
) -> Float64Array:
    pieces = []
    for part in parts:
        if part.angles is None:
            pieces.append(np.zeros(part.segment.count, dtype=np.float64))
        else:
            # Projection angles replaced below are not checked: the override is the fix.
            checked = part.keys if options.angles is None else np.full_like(part.keys, -1)
            pieces.append(check_finite(checked, part.angles, part.angles_from or name))
    angles = np.concatenate(pieces)
    projections = keys == IMAGE_KEY_PROJECTION
    if options.angles is not None:
        start, stop, count = options.angles
        wanted = int(projections.sum())
        if count != wanted:
            raise ScanFormatError(
                f"{name}: --angles {start:g},{stop:g},{count}: expected COUNT = {wanted} "
                f"(the projections in the scan), got {count}"
            )
        angles[projections] = angle_range(start, stop, count)
        return angles
    missing = [p.segment.name for p in parts if p.angles is None and np.any(p.keys == 0)]
    if missing:
        raise ScanFormatError(
            f"{missing[0]}: no rotation angles found for the projections; pass "
            "--angles START,STOP,COUNT (degrees, endpoint included) or "
            "--angles-path FILE:DATASET"
        )
    return angles


def _row_crop(name: str, rows: int, crop: tuple[int, int] | None) -> slice:
    if crop is None:
        return slice(0, rows)
    first, stop = crop
    if not 0 <= first < stop <= rows:
        raise ScanFormatError(
            f"{name}: --rows {first}:{stop}: expected 0 <= A < B <= {rows} "
            f"(the frames have {rows} rows), got {first}:{stop}"
        )
    return slice(first, stop)

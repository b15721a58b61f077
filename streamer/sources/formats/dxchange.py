"""APS data-exchange HDF5 files (``/exchange/data``, ``data_white``, ``data_dark``, ``theta``).

References are stored in their own datasets, so the stream puts them first, as a detector
sends them: ``data_dark``, ``data_white``, then the ``*_pre`` variants, the projections,
and last the ``*_post`` variants. Angles (``/exchange/theta``) are one per projection;
their ``units`` attribute is honoured (degrees if absent).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Final

import h5py

from streamer.sources.formats.angles import Float64Array, h5_angles, load_angles, per_frame
from streamer.sources.formats.h5tree import dataset_at, open_h5
from streamer.sources.formats.options import LoadOptions
from streamer.sources.formats.parts import Part, keys_like
from streamer.sources.formats.reader import StoredScan, assemble
from streamer.sources.formats.segments import H5Segment
from streamer.sources.sample_name import SAMPLE_ENTRY, stored_sample_name
from streamer.wire.protocol import (
    IMAGE_KEY_DARK,
    IMAGE_KEY_FLAT,
    IMAGE_KEY_PROJECTION,
    MetadataValue,
)

DATA: Final = "/exchange/data"
THETA: Final = "/exchange/theta"
#: TomoPy's sample name (sent as ``start``'s ``metadata["sample"]``).
SAMPLE_NAME: Final = "/measurement/sample/name"
#: Reference datasets before the projections, in stream order.
BEFORE: Final = (
    ("/exchange/data_dark", IMAGE_KEY_DARK),
    ("/exchange/data_white", IMAGE_KEY_FLAT),
    ("/exchange/data_dark_pre", IMAGE_KEY_DARK),
    ("/exchange/data_white_pre", IMAGE_KEY_FLAT),
)
#: Reference datasets after the projections, in stream order.
AFTER: Final = (
    ("/exchange/data_white_post", IMAGE_KEY_FLAT),
    ("/exchange/data_dark_post", IMAGE_KEY_DARK),
)


def load_dxchange(path: Path, options: LoadOptions, resources: ExitStack) -> StoredScan:
    """Open a data-exchange file (see module docstring)."""
    name = path.name
    file = resources.enter_context(open_h5(path))
    data_path = options.data_path or DATA
    projections = H5Segment(dataset_at(file, data_path, name), f"{name}:{data_path}")
    keys = keys_like(projections.count, IMAGE_KEY_PROJECTION)
    angles, angles_from = _angles(file, name, options)
    if angles is not None:
        angles = per_frame(keys, angles, angles_from)
    parts = [*_references(file, name, BEFORE)]
    parts.append(Part(projections, keys, angles, angles_from))
    parts.extend(_references(file, name, AFTER))
    metadata: dict[str, MetadataValue] = {"data_path": data_path}
    if angles_from:
        metadata["angles_path"] = angles_from
    sample = stored_sample_name(file, SAMPLE_NAME)
    if sample is not None:
        metadata[SAMPLE_ENTRY] = sample
    return assemble(
        scan=path, format_name="dxchange", parts=parts, options=options,
        resources=resources, scan_h5=file, metadata=metadata,
    )


def _angles(
    file: h5py.File, name: str, options: LoadOptions
) -> tuple[Float64Array | None, str]:
    if options.angles_path is not None:
        return load_angles(options.angles_path, file, name)
    if options.angles is None and isinstance(file.get(THETA), h5py.Dataset):
        where = f"{name}:{THETA}"
        return h5_angles(dataset_at(file, THETA, name), where), where
    return None, ""


def _references(
    file: h5py.File, name: str, paths: tuple[tuple[str, int], ...]
) -> list[Part]:
    parts = []
    for path, key in paths:
        if isinstance(file.get(path), h5py.Dataset):
            segment = H5Segment(dataset_at(file, path, name), f"{name}:{path}")
            parts.append(Part(segment, keys_like(segment.count, key)))
    return parts

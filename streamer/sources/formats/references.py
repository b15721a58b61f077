"""Darks and flats stored apart from the scan (``--darks``/``--flats``).

Each entry is a TIFF (single or multi-page), ``FILE:DATASET`` in an HDF5 file, or a bare
``DATASET`` in the scan's own HDF5 file. They are streamed before the projections, darks
first, as a detector sends them.
"""

from __future__ import annotations

from contextlib import ExitStack

import h5py

from streamer.errors import ScanFormatError
from streamer.sources.formats.angles import split_file_spec
from streamer.sources.formats.detect import is_hdf5
from streamer.sources.formats.h5tree import dataset_at, open_h5
from streamer.sources.formats.parts import Part, keys_like
from streamer.sources.formats.segments import H5Segment, Segment
from streamer.sources.formats.tiffpages import tiff_segment
from streamer.wire.protocol import IMAGE_KEY_NAMES


def reference_parts(
    specs: tuple[str, ...], key: int, resources: ExitStack, scan_h5: h5py.File | None,
    scan_name: str,
) -> list[Part]:
    """One part of image_key ``key`` per spec, opening files into ``resources``."""
    option = f"--{IMAGE_KEY_NAMES[key]}"
    parts = []
    for spec in specs:
        segment = _segment(spec, option, resources, scan_h5, scan_name)
        parts.append(Part(segment, keys_like(segment.count, key)))
    return parts


def _segment(
    spec: str, option: str, resources: ExitStack, scan_h5: h5py.File | None, scan_name: str
) -> Segment:
    file, dataset = split_file_spec(spec)
    if file is None:
        assert dataset is not None
        if ":" in spec or scan_h5 is None or scan_h5.get(dataset, getlink=True) is None:
            also = "" if scan_h5 is None else f", and no such dataset in {scan_name}"
            raise ScanFormatError(f"{option} {spec}: no such file{also}")
        return H5Segment(dataset_at(scan_h5, dataset, scan_name), f"{scan_name}:{dataset}")
    if dataset is not None:
        handle = resources.enter_context(open_h5(file))
        return H5Segment(dataset_at(handle, dataset, file.name), f"{file.name}:{dataset}")
    if is_hdf5(file):
        raise ScanFormatError(
            f"{option} {spec}: an HDF5 file needs the dataset too: expected FILE:DATASET"
        )
    return tiff_segment([file], file.name)

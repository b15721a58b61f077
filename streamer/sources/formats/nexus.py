"""NeXus/HDF5 scans with an image_key (NXtomo and beamline files such as DIAD's).

Frames are streamed in file order, interleaved flats and darks where they are. Frames
whose image_key is 3 ("invalid" in NXtomo) are skipped and counted in
``metadata["skipped_invalid_frames"]``. Paths not given in the options are found by
:class:`~streamer.sources.formats.nexus_find.NexusSearch`; without an image_key every
frame is a projection. Angles may be one per frame or one per projection; their
``units`` attribute is honoured (degrees if absent).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Final

import h5py
import numpy as np
import numpy.typing as npt

from streamer.errors import ScanFormatError
from streamer.sources.formats.angles import Float64Array, h5_angles, load_angles, per_frame
from streamer.sources.formats.h5tree import attr_text, dataset_at, open_h5
from streamer.sources.formats.nexus_find import VALID_KEYS, NexusSearch
from streamer.sources.formats.options import LoadOptions
from streamer.sources.formats.parts import Part
from streamer.sources.formats.reader import StoredScan, assemble
from streamer.sources.formats.segments import H5Segment
from streamer.sources.sample_name import SAMPLE_ENTRY, stored_sample_name
from streamer.wire.protocol import IMAGE_KEY_PROJECTION, MetadataValue

IMAGE_KEY_INVALID: Final = 3
#: Group written by :func:`~streamer.sources.formats.nxtomo_writer.write_nxtomo` to keep
#: what NXtomo cannot say (the data are already normalised, the original source).
STREAMER_GROUP: Final = "tomo_streamer"


def load_nexus(path: Path, options: LoadOptions, resources: ExitStack) -> StoredScan:
    """Open a NeXus/HDF5 scan (see module docstring)."""
    name = path.name
    file = resources.enter_context(open_h5(path))
    search = NexusSearch(file, name)
    data_path = options.data_path or search.data()
    data = dataset_at(file, data_path, name)
    if data.ndim != 3:
        raise ScanFormatError(
            f"{name}:{data_path}: expected a 3-D dataset (frames, rows, cols), "
            f"got shape {data.shape}"
        )
    frames = int(data.shape[0])
    key_path = options.image_key_path or search.image_key(data_path, frames)
    raw_keys = _image_keys(file, name, key_path, data_path, frames)
    keep = raw_keys != IMAGE_KEY_INVALID
    if not keep.any():
        raise ScanFormatError(
            f"{name}:{key_path}: expected some valid frames, got image_key 3 (invalid) "
            f"for all {frames}"
        )
    keys = raw_keys[keep].astype(np.int8)
    angles, angles_from = _angles(file, name, options, search, keys=keys, keep=keep)
    indices = None if keep.all() else np.flatnonzero(keep).astype(np.int64)
    segment = H5Segment(data, f"{name}:{data_path}", indices)
    metadata: dict[str, MetadataValue] = {
        "data_path": data_path,
        "image_key_path": key_path or "(none: all frames are projections)",
        "skipped_invalid_frames": int(np.count_nonzero(~keep)),
    }
    if angles_from:
        metadata["angles_path"] = angles_from
    entry = data_path.strip("/").split("/")[0]  # the NXentry holding the data
    sample = stored_sample_name(file, f"/{entry}/sample/name")
    if sample is not None:
        metadata[SAMPLE_ENTRY] = sample
    return assemble(
        scan=path, format_name="nexus", parts=[Part(segment, keys, angles, angles_from)],
        options=options, resources=resources, scan_h5=file, metadata=metadata,
        normalised=_marked_normalised(file, data_path),
    )


def _image_keys(
    file: h5py.File, name: str, key_path: str | None, data_path: str, frames: int
) -> npt.NDArray[np.int64]:
    if key_path is None:
        return np.zeros(frames, dtype=np.int64)
    where = f"{name}:{key_path}"
    dataset = dataset_at(file, key_path, name)
    values = np.asarray(dataset[()])
    if values.ndim != 1 or values.dtype.kind not in "uib":
        raise ScanFormatError(
            f"{where}: expected a 1-D integer image_key, got shape {values.shape} "
            f"dtype {values.dtype}"
        )
    if values.shape[0] != frames:
        raise ScanFormatError(
            f"{where}: expected {frames} values (one per frame of {data_path}), "
            f"got {values.shape[0]}"
        )
    bad = ~np.isin(values, list(VALID_KEYS))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ScanFormatError(
            f"{where}: expected image_key values 0 (projection), 1 (flat), 2 (dark) or "
            f"3 (invalid), got {int(values[first])} at frame {first}"
        )
    return values.astype(np.int64)


def _angles(
    file: h5py.File, name: str, options: LoadOptions, search: NexusSearch, *,
    keys: npt.NDArray[np.int8], keep: npt.NDArray[np.bool_],
) -> tuple[Float64Array | None, str]:
    """Per-frame angles of the kept frames, or None if the user gives them as a range."""
    if options.angles is not None:
        return None, ""
    if options.angles_path is not None:
        values, where = load_angles(options.angles_path, file, name)
    else:
        lengths = {int(keep.shape[0]), int(keys.shape[0]),
                   int(np.count_nonzero(keys == IMAGE_KEY_PROJECTION))}
        path = search.angles(lengths)
        if path is None:
            return None, ""
        where = f"{name}:{path}"
        values = h5_angles(dataset_at(file, path, name), where)
    if values.shape[0] == keep.shape[0] != keys.shape[0]:
        values = values[keep]  # one per stored frame: drop the invalid ones too
    return per_frame(keys, values, where), where


def _marked_normalised(file: h5py.File, data_path: str) -> bool:
    entry = "/" + data_path.strip("/").split("/", 1)[0]
    group = file.get(f"{entry}/{STREAMER_GROUP}")
    return isinstance(group, h5py.Group) and attr_text(group, "normalisation") == "none"

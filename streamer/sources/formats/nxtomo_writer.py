"""Write any :class:`~streamer.sources.scan.FrameReader` as a standard NXtomo file.

Layout (NeXus NXtomo application definition)::

    /entry                        NXentry, definition = "NXtomo"
      instrument/detector         NXdetector
        data                      (frames, rows, cols), chunked one frame per chunk
        image_key                 (frames,) int8: 0 projection, 1 flat, 2 dark
      sample                      NXsample
        rotation_angle            (frames,) float64, units "degree"
      data                        NXdata: links to data, rotation_angle, image_key
      tomo_streamer               NXcollection: normalisation, source, scalar metadata

Frames are copied in blocks of about 64 MiB, never the whole scan at once. The file is
written under a temporary name and renamed when complete, so a reader never sees half a
file. :func:`~streamer.sources.formats.open_scan` reads it back with no options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import h5py
import numpy as np

from streamer.errors import SinkError
from streamer.sources.formats.nexus import STREAMER_GROUP
from streamer.sources.scan import FrameReader

#: Target size of one copied block.
BLOCK_BYTES: Final = 64 * 1024**2


def write_nxtomo(path: str | Path, reader: FrameReader) -> None:
    """Write every frame of ``reader`` to ``path`` as NXtomo (see module docstring).

    Raises
    ------
    SinkError
        If the file cannot be written.
    """
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        with h5py.File(partial, "w") as file:
            _write(file, reader)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SinkError(f"{target}: cannot write NXtomo file ({exc})") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _write(file: h5py.File, reader: FrameReader) -> None:
    layout = reader.layout
    file.attrs["default"] = "entry"
    entry = _group(file, "entry", "NXentry")
    entry.attrs["default"] = "data"
    entry["definition"] = "NXtomo"
    if layout.source:
        entry["title"] = layout.source
    detector = _group(_group(entry, "instrument", "NXinstrument"), "detector", "NXdetector")
    frames = detector.create_dataset(
        "data", shape=(layout.frames, layout.rows, layout.cols), dtype=layout.dtype,
        chunks=(1, layout.rows, layout.cols),
    )
    detector.create_dataset("image_key", data=np.asarray(layout.image_keys, dtype=np.int8))
    sample = _group(entry, "sample", "NXsample")
    angles = sample.create_dataset(
        "rotation_angle", data=np.asarray(layout.angles_deg, dtype=np.float64)
    )
    angles.attrs["units"] = "degree"
    data = _group(entry, "data", "NXdata")
    data["data"] = h5py.SoftLink(frames.name)
    data["rotation_angle"] = h5py.SoftLink(angles.name)
    data["image_key"] = h5py.SoftLink(detector.name + "/image_key")
    data.attrs["signal"] = "data"
    data.attrs["axes"] = ["rotation_angle", ".", "."]
    data.attrs["rotation_angle_indices"] = 0
    extra = _group(entry, STREAMER_GROUP, "NXcollection")
    extra.attrs["normalisation"] = layout.normalisation
    extra.attrs["source"] = layout.source
    for key, value in layout.metadata.items():
        extra.attrs[f"metadata.{key}"] = value
    if layout.geometry.scan_range_deg is not None:
        extra.attrs["scan_range_deg"] = layout.geometry.scan_range_deg
    block = max(1, BLOCK_BYTES // max(1, layout.frame_bytes))
    for start in range(0, layout.frames, block):
        stop = min(layout.frames, start + block)
        frames[start:stop] = reader.read(start, stop)

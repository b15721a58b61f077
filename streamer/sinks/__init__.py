"""Where reconstructed slices go: an HDF5 volume (the default) or a TIFF stack.

Both writers take the same arguments and offer ``write(first_slice, slices)`` (bands in
any order) and ``close(complete=..., report=...)``. With several ranks each writes a part
file and :func:`write_master` stitches them (an HDF5 Virtual Dataset). See
``docs/reference/output.md``.
"""

from __future__ import annotations

from streamer.sinks.hdf5 import VOLUME_PATH, Hdf5VolumeWriter
from streamer.sinks.master import part_path, write_master
from streamer.sinks.tiff import TiffStackWriter

__all__ = ["VOLUME_PATH", "Hdf5VolumeWriter", "TiffStackWriter", "part_path", "write_master"]

"""TIFF series: a directory, a glob pattern or one multi-page TIFF of projections.

Files are taken in natural order (``raw_2`` before ``raw_10``), every page is one frame.
TIFFs carry no angles and no references: darks and flats come from ``--darks``/``--flats``
and angles from ``--angles-path`` or ``--angles``. Only page headers are read at open;
pixels are read when a block is asked for.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from streamer.sources.formats.angles import load_angles, per_frame
from streamer.sources.formats.options import LoadOptions
from streamer.sources.formats.parts import Part, keys_like
from streamer.sources.formats.reader import StoredScan, assemble
from streamer.sources.formats.tiffpages import series_files, tiff_segment
from streamer.wire.protocol import IMAGE_KEY_PROJECTION


def load_tiff_series(scan: str | Path, options: LoadOptions, resources: ExitStack) -> StoredScan:
    """Open a TIFF series of projections (see module docstring)."""
    spec = str(scan)
    files = series_files(spec)
    name = Path(spec).name or spec
    segment = tiff_segment(files, name)
    keys = keys_like(segment.count, IMAGE_KEY_PROJECTION)
    angles = None
    angles_from = ""
    if options.angles_path is not None:
        values, angles_from = load_angles(options.angles_path, None, name)
        angles = per_frame(keys, values, angles_from)
    return assemble(
        scan=Path(spec),
        format_name="tiff",
        parts=[Part(segment, keys, angles, angles_from)],
        options=options,
        resources=resources,
        metadata={
            "files": len(files),
            "first_file": files[0].name,
            "last_file": files[-1].name,
            **({"angles_path": angles_from} if angles_from else {}),
        },
    )

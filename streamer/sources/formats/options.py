"""Options for loading a stored scan, checked once when they are made.

The command line (``tomo-streamer replay``) turns its flags into a :class:`LoadOptions`;
loaders only ever see validated values. Values that are wrong on their own (``--rows 5:3``,
``--angles 0,180,0``) raise :class:`~streamer.errors.ConfigError` here; values that are
wrong *for a file* (a crop beyond the detector, an angle count that does not match the
projections) are found by the loader and raise :class:`~streamer.errors.ScanFormatError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, get_args

from streamer.errors import ConfigError

FormatName = Literal["auto", "nexus", "dxchange", "tiff", "mat", "sinogram-tif"]

#: Every value ``LoadOptions.format`` accepts, ``auto`` first.
FORMATS: Final[tuple[str, ...]] = get_args(FormatName)


@dataclass(frozen=True)
class LoadOptions:
    """How to read a stored scan; every field is optional.

    Parameters
    ----------
    format : {'auto', 'nexus', 'dxchange', 'tiff', 'mat', 'sinogram-tif'}
        Force a format instead of detecting it from the file.
    data_path : str, optional
        Dataset of frames inside an HDF5 file (or variable name in a ``.mat`` file).
    image_key_path : str, optional
        Dataset of NeXus image_key values inside the HDF5 file.
    angles_path : str, optional
        Where the rotation angles are: ``DATASET`` in the scan file, ``FILE:DATASET`` in
        another HDF5/NeXus file, or a ``.txt``/``.npy`` file of angles in degrees.
    darks, flats : tuple of str
        Separate reference files: a TIFF (single or multi-page) or ``FILE:DATASET``.
    rows : (int, int), optional
        Detector-row crop ``[A, B)``, 0-based, like HTTomo's preview.
    angles : (float, float, int), optional
        ``START, STOP, COUNT`` in degrees, endpoint included, one per projection; replaces
        the file's angles.
    normalised : bool
        The data are already ``-log`` attenuation: the scan is announced with
        normalisation ``none``.
    counts : bool
        The data are detector counts even if they look like attenuation: skips the check
        a single sinogram without flats gets (see :mod:`streamer.sources.formats.sinogram`).
    scale : float, optional
        Multiply every pixel by this (the frames are then float32), e.g. ``0.001`` for data
        stored as ``1000 × attenuation``.
    """

    format: FormatName = "auto"
    data_path: str | None = None
    image_key_path: str | None = None
    angles_path: str | None = None
    darks: tuple[str, ...] = ()
    flats: tuple[str, ...] = ()
    rows: tuple[int, int] | None = None
    angles: tuple[float, float, int] | None = None
    normalised: bool = False
    counts: bool = False
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(
                f"--format: expected one of {'|'.join(FORMATS)}, got {self.format!r}"
            )
        for name in ("data_path", "image_key_path", "angles_path"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"--{name.replace('_', '-')}: expected a path, got {value!r}")
        for name in ("darks", "flats"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"--{name}: expected a list of file names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.rows is not None:
            _check_rows(self.rows)
        if self.angles is not None:
            _check_angles(self.angles)
            if self.angles_path is not None:
                raise ConfigError(
                    "--angles and --angles-path: expected at most one source of angles, got both"
                )
        if self.normalised and self.counts:
            raise ConfigError("--normalised and --counts: expected at most one, got both")
        if self.scale is not None and (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, int | float)
            or not math.isfinite(self.scale)
            or self.scale == 0
        ):
            raise ConfigError(f"--scale: expected a finite non-zero number, got {self.scale!r}")


def _check_rows(rows: tuple[int, int]) -> None:
    ok = (
        len(rows) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in rows)
        and 0 <= rows[0] < rows[1]
    )
    if not ok:
        raise ConfigError(f"--rows: expected A:B with 0 <= A < B, got {rows!r}")


def _check_angles(angles: tuple[float, float, int]) -> None:
    if len(angles) != 3:
        raise ConfigError(f"--angles: expected START,STOP,COUNT, got {angles!r}")
    start, stop, count = angles
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (start, stop)):
        raise ConfigError(f"--angles: expected finite START and STOP, got {start!r}, {stop!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--angles: expected a whole COUNT >= 1, got {count!r}")


def parse_rows(text: str) -> tuple[int, int]:
    """Parse ``A:B`` (the ``--rows`` syntax) into a checked ``(A, B)`` tuple."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        rows = (int(parts[0]), int(parts[1]))
    except ValueError:
        raise ConfigError(f"--rows: expected A:B (two whole numbers), got {text!r}") from None
    _check_rows(rows)
    return rows


def parse_angle_range(text: str) -> tuple[float, float, int]:
    """Parse ``START,STOP,COUNT`` (the ``--angles`` syntax) into a checked tuple."""
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        angles = (float(parts[0]), float(parts[1]), int(parts[2]))
    except ValueError:
        raise ConfigError(
            f"--angles: expected START,STOP,COUNT (degrees, degrees, whole number), got {text!r}"
        ) from None
    _check_angles(angles)
    return angles

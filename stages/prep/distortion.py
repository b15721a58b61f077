"""Optical (radial) distortion correction of projections: Vo et al.'s polynomial backward
model (Opt. Express 23, 32859, 2015; discorpy), as httomolibgpu's
``distortion_correction_proj_discorpy`` and tomopy's ``distortion_correction_proj``.

For each pixel ``(x, y)`` of the corrected image, with ``(xu, yu)`` its offset from the
centre of distortion ``(xcenter, ycenter)`` and ``ru = hypot(xu, yu)``, the distorted
image is sampled at ``xcenter + F(ru) · xu``, ``ycenter + F(ru) · yu`` (clipped to the
image), ``F(ru) = Σ list_fact[i] · ru**i``, by spline interpolation of ``order`` with
``mode`` at the edges (scipy's ``map_coordinates``, which cupyx twins upstream).

The coefficients come from the parameters or from discorpy's text file
(``metadata_path``: one value per line, the last field of the line taken, in the order
``xcenter``, ``ycenter``, ``factor0``, ``factor1``, …; discorpy writes
``xcenter = 1252.15``), read here, as upstream's ``_load_metadata_txt`` and HTTomo's
``_inject_distortion_coeff_values_into_method`` do; the file wins over the values, as
upstream. A relative ``metadata_path`` is taken from the pipeline file's folder (where a
pipeline and its coefficients file sit together), not from the current directory; an
absolute one as given. It is read and checked when the pipeline is validated (``check``
reports a missing or malformed file with its resolved path and line) and again when the
stage runs.

``shift_xy`` is what HTTomo's ``DistortionCorrectionWrapper`` sets from the loader's
``preview``: the crop's first column and row, so the centre stays on the detector's
pixel; ``recon --rows A:B`` sets it the same way. As in HTTomo, only the projections are
corrected (the darks and flats the correction after it divides by are not).

tomopy's ``distortion_correction_sino(tomo, ind, xcenter, ycenter, list_fact)`` gives the
corrected sinogram of detector row ``ind``: for each column ``x`` it samples the
projections at ``(ycenter + F(ru)·(ind - ycenter), xcenter + F(ru)·(x - xcenter))``
(clipped), linear interpolation, ``reflect`` edges, reading only the rows that curve
crosses. That curve spans several detector rows, which a sinogram block (a few rows) may
not hold, so here it runs on projection blocks, where every row is at hand: for each
output row the same samples (:func:`unwarp_rows`, coordinates in float64 as tomopy's);
after the reslice each sinogram is tomopy's for its row. ``ind`` is tomopy's (a detector
row: that one sinogram, so the volume has one slice), HTTomo's ``mid``, or ``all`` /
``null``: every row, the whole corrected scan. HTTomo cannot run this method (its
``DistortionCorrectionWrapper`` passes ``shift_xy``/``step_xy``, which tomopy's function
does not take, and the 2-D sinogram it returns is not a block).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import Field, ValidationInfo, field_validator, model_validator
from scipy.ndimage import map_coordinates

from stages.backends.xp import array_module, ndimage_module
from stages.spec import Pattern, StageParams, StageSpec, resolve_from_pipeline, scaled_memory
from streamer.errors import ConfigError, StageError

__all__ = ["SPECS", "distortion_correction_proj", "distortion_correction_proj_discorpy",
           "distortion_correction_sino", "read_coefficients", "unwarp", "unwarp_rows"]

Mode = Literal["constant", "nearest", "mirror", "reflect", "wrap", "grid-mirror",
               "grid-wrap", "grid-constant"]
#: A coefficients file larger than this is not discorpy's (a few lines of numbers).
MAX_FILE_BYTES = 1 << 16


def read_coefficients(path: str | Path) -> tuple[float, float, tuple[float, ...]]:
    """``(xcenter, ycenter, list_fact)`` from discorpy's text file, or a ``ConfigError``
    naming the file, the line and what was expected."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{file}: expected discorpy's distortion coefficients (a few "
                              f"lines), got {size} bytes")
        text = file.read_text()
    except OSError as error:
        raise ConfigError(f"metadata_path: cannot read {file} ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: expected a text file of distortion coefficients, got "
                          "binary data") from None
    values = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            value = float(fields[-1])
        except ValueError:
            raise ConfigError(f"{file}:{number}: expected a number at the end of the line "
                              f"(discorpy's 'name = value'), got {line.strip()!r}") from None
        if not np.isfinite(value):
            raise ConfigError(f"{file}:{number}: expected a finite number, got {value}")
        values.append(value)
    if len(values) < 3:
        raise ConfigError(f"{file}: expected xcenter, ycenter and at least one factor "
                          f"(3 or more values), got {len(values)}")
    return values[0], values[1], tuple(values[2:])


def unwarp(
    block: npt.NDArray[Any], xcenter: float, ycenter: float, list_fact: tuple[float, ...],
    *, order: int = 3, mode: Mode = "constant",
) -> npt.NDArray[np.float32]:
    """Each frame of a projection block ``(angles, rows, cols)`` unwarped, in the block's
    array module (the coordinate maps are made on the host and uploaded once)."""
    height, width = block.shape[1], block.shape[2]
    xu, yu = np.meshgrid(np.arange(width) - xcenter, np.arange(height) - ycenter)
    ru = np.hypot(xu, yu)
    factor = np.zeros_like(ru)
    for power, coefficient in enumerate(list_fact):
        factor += coefficient * ru**power
    xd = np.clip(xcenter + factor * xu, 0, width - 1).astype(np.float32)
    yd = np.clip(ycenter + factor * yu, 0, height - 1).astype(np.float32)
    xp = array_module(block)
    remap = map_coordinates if xp is np else ndimage_module(xp).map_coordinates
    coordinates = xp.asarray(np.stack([yd.ravel(), xd.ravel()]))
    out: npt.NDArray[np.float32] = xp.empty(block.shape, dtype=xp.float32)
    for index in range(block.shape[0]):
        out[index] = remap(block[index].astype(xp.float32, copy=False), coordinates,
                           order=order, mode=mode).reshape(height, width)
    return out


class _LensParams(StageParams):
    """The lens of both distortion corrections: discorpy's coefficients file
    (``metadata_path``, found next to the pipeline file, wins) or the three values."""

    #: What the error says when neither is complete (each method names its own first).
    _missing: ClassVar[str]

    metadata_path: str | None = None
    xcenter: float | None = None
    ycenter: float | None = None
    list_fact: tuple[float, ...] | None = None

    @field_validator("metadata_path")
    @classmethod
    def _from_pipeline_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_from_pipeline(value, info.context)

    @model_validator(mode="after")
    def _coefficients_given(self) -> Self:
        if self.metadata_path is not None:
            try:
                read_coefficients(self.metadata_path)
            except ConfigError as error:
                raise ValueError(str(error)) from None
        elif self.xcenter is None or self.ycenter is None or not self.list_fact:
            raise ValueError(self._missing)
        return self


class DiscorpyParams(_LensParams):
    """httomolibgpu's ``distortion_correction_proj_discorpy`` parameters."""

    _missing: ClassVar[str] = ("expected metadata_path (discorpy's coefficients file), or "
                               "xcenter, ycenter and list_fact; got none of them complete")

    order: int = Field(default=3, ge=0, le=5)
    mode: Mode = "constant"
    #: Set from a crop (HTTomo's preview, ``recon --rows``): (first column, first row).
    shift_xy: tuple[int, int] = (0, 0)
    #: HTTomo's: a step larger than 1 is refused upstream; only 1 here.
    step_xy: tuple[Literal[1], Literal[1]] = (1, 1)


def distortion_correction_proj_discorpy(
    block: npt.NDArray[Any], *, metadata_path: str | None = None,
    xcenter: float | None = None, ycenter: float | None = None,
    list_fact: tuple[float, ...] | None = None, order: int = 3, mode: Mode = "constant",
    shift_xy: tuple[int, int] = (0, 0), step_xy: tuple[int, int] = (1, 1),
) -> npt.NDArray[np.float32]:
    """httomolibgpu's ``distortion_correction_proj_discorpy`` on a projection block."""
    if metadata_path is not None:
        try:
            xcenter, ycenter, list_fact = read_coefficients(metadata_path)
        except ConfigError as error:
            raise StageError(f"stage 'distortion_correction_proj_discorpy': {error}") from None
    if xcenter is None or ycenter is None or not list_fact:
        raise StageError("stage 'distortion_correction_proj_discorpy': expected "
                         "metadata_path, or xcenter, ycenter and list_fact, got none")
    return unwarp(block, xcenter - shift_xy[0], ycenter - shift_xy[1], tuple(list_fact),
                  order=order, mode=mode)


class TomopyDistortionParams(StageParams):
    """tomopy's ``distortion_correction_proj``: the coefficients, required."""

    xcenter: float
    ycenter: float
    list_fact: tuple[float, ...] = Field(min_length=1)
    shift_xy: tuple[int, int] = (0, 0)


def distortion_correction_proj(
    block: npt.NDArray[Any], *, xcenter: float, ycenter: float,
    list_fact: tuple[float, ...], shift_xy: tuple[int, int] = (0, 0),
) -> npt.NDArray[np.float32]:
    """tomopy's ``distortion_correction_proj``: linear interpolation, ``reflect`` edges."""
    return unwarp(block, xcenter - shift_xy[0], ycenter - shift_xy[1], list_fact, order=1,
                  mode="reflect")


def unwarp_rows(
    block: npt.NDArray[Any], xcenter: float, ycenter: float, list_fact: tuple[float, ...],
    rows: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """tomopy's ``distortion_correction_sino`` for each of ``rows`` (indices into the
    frames of the projection block ``(angles, height, width)``): ``(angles, len(rows),
    width)``, row ``k`` of each frame the unwarped detector row ``rows[k]``."""
    height, width = block.shape[1], block.shape[2]
    xu = np.arange(width, dtype=np.float64)[None, :] - xcenter
    yu = np.asarray(rows, dtype=np.float64)[:, None] - ycenter
    ru = np.sqrt(xu**2 + yu**2)
    factor = np.zeros_like(ru)
    for power, coefficient in enumerate(list_fact):
        factor += coefficient * ru**power
    xd = np.clip(xcenter + factor * xu, 0, width - 1)
    yd = np.clip(ycenter + factor * yu, 0, height - 1)
    coordinates = np.stack([yd.ravel(), xd.ravel()])
    out = np.empty((block.shape[0], len(rows), width), dtype=np.float32)
    for index in range(block.shape[0]):
        out[index] = map_coordinates(np.asarray(block[index], np.float32), coordinates,
                                     order=1, mode="reflect").reshape(len(rows), width)
    return out


class TomopySinoDistortionParams(_LensParams):
    """tomopy's ``distortion_correction_sino``: ``ind`` and the coefficients, required
    (the coefficients or discorpy's file, ``metadata_path``, which wins)."""

    _missing: ClassVar[str] = ("expected xcenter, ycenter and list_fact, or metadata_path "
                               "(discorpy's coefficients file); got none of them complete")

    ind: Annotated[int, Field(ge=0)] | Literal["mid", "all"] | None
    #: Set from a crop (HTTomo's preview, ``recon --rows``): (first column, first row).
    shift_xy: tuple[int, int] = (0, 0)


def distortion_correction_sino(
    block: npt.NDArray[Any], *, ind: int | Literal["mid", "all"] | None,
    xcenter: float | None = None, ycenter: float | None = None,
    list_fact: tuple[float, ...] | None = None, metadata_path: str | None = None,
    shift_xy: tuple[int, int] = (0, 0),
) -> npt.NDArray[np.float32]:
    """tomopy's ``distortion_correction_sino`` on a projection block: the corrected
    sinogram rows (every row for ``ind`` ``all``/``None``; the one row ``ind``, in the
    detector's numbering, or the middle row for ``mid``)."""
    stage = "distortion_correction_sino"
    if metadata_path is not None:
        try:
            xcenter, ycenter, list_fact = read_coefficients(metadata_path)
        except ConfigError as error:
            raise StageError(f"stage {stage!r}: {error}") from None
    if xcenter is None or ycenter is None or not list_fact:
        raise StageError(f"stage {stage!r}: expected xcenter, ycenter and list_fact, or "
                         "metadata_path, got none")
    height = block.shape[1]
    if ind is None or ind == "all":
        rows = np.arange(height, dtype=np.int64)
    elif ind == "mid":
        rows = np.array([height // 2], dtype=np.int64)
    else:
        row = int(ind) - shift_xy[1]
        if not 0 <= row < height:
            raise StageError(f"stage {stage!r}: ind: expected a detector row in "
                             f"{shift_xy[1]}..{shift_xy[1] + height - 1} (the rows read), "
                             f"got {ind}")
        rows = np.array([row], dtype=np.int64)
    return unwarp_rows(block, xcenter - shift_xy[0], ycenter - shift_xy[1], tuple(list_fact),
                       rows)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="distortion_correction_proj_discorpy",
        fn=distortion_correction_proj_discorpy,
        pattern=Pattern.PROJECTION,
        params=DiscorpyParams,
        memory=scaled_memory(4.0),  # block, output, the two coordinate maps (float32)
        summary="Radial lens-distortion correction of projections (discorpy's polynomial "
        "backward model, httomolibgpu): coefficients from discorpy's text file "
        "(metadata_path) or given; spline order and edge mode as scipy.",
        angle_local=True, device=True,
        aliases=("httomolibgpu.prep.alignment.distortion_correction_proj_discorpy",),
    ),
    StageSpec(
        name="distortion_correction_proj",
        fn=distortion_correction_proj,
        pattern=Pattern.PROJECTION,
        params=TomopyDistortionParams,
        memory=scaled_memory(4.0),
        summary="tomopy's radial distortion correction of projections (the same model, "
        "linear interpolation, reflected edges).",
        angle_local=True, device=True,
        aliases=("tomopy.prep.alignment.distortion_correction_proj",),
    ),
    StageSpec(
        name="distortion_correction_sino",
        fn=distortion_correction_sino,
        pattern=Pattern.PROJECTION,  # each sinogram row reads the rows its curve crosses
        params=TomopySinoDistortionParams,
        memory=scaled_memory(3.0),  # block, output; the coordinate maps are frame-sized
        summary="tomopy's radial distortion correction in its sinogram form (each row's "
        "curve, linear interpolation, reflected edges): every row (ind: all) or one "
        "sinogram (ind: N or mid); run on projections, where every row is at hand.",
        angle_local=True,
        aliases=("tomopy.prep.alignment.distortion_correction_sino",),
    ),
)

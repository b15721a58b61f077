"""A simulated parallel-beam detector: the ``simulate`` source.

:class:`SimulatedScan` streams a 3-D Shepp–Logan phantom (:mod:`streamer.sources.phantom`)
as a real detector would: dark frames, flat (open-beam) frames and projections, with a
non-uniform beam, photon (Poisson) noise, read noise, an optional detector offset, and the
defects that processing pipelines must cope with (zingers, dead and hot columns).

Detector model
--------------
For frame ``i`` the reading of pixel ``(r, c)`` is, before clipping,

``counts = Poisson(F·b(r, c)·g(r, c)·exp(-L)) + d(r, c) + N(0, σ²)``

* ``F`` is ``flat_counts``; ``b`` the smooth beam profile (brightest in the middle
  rows, falling off towards the top/bottom and sides, within ±15 %); ``g`` a fixed
  pixel-gain pattern (1 % r.m.s., clipped at ±3 %; what flat-field correction removes);
* ``L`` is the exact line integral of the phantom (0 for flats and darks; darks get no
  photons at all), scaled so that its peak over all angles and rows is
  ``max_attenuation``;
* ``d`` is the dark offset, ``dark_counts`` with a 2 % r.m.s. fixed pattern, and ``σ`` is
  ``dark_noise``;
* projections also get zingers: their number per frame is ``Poisson(zinger_rate)``; each
  is a streak of 1–3 pixels (horizontal, vertical or diagonal) that gains
  ``U(0.3, 1)·65535`` counts (flats and darks stay free of them);
* dead columns have gain 0 (they read the dark level, ~0 signal); hot columns have gain
  ×4, so they saturate in flats and in the open beam;
* the result is clipped to ``0 … 65535`` (a 16-bit ADC) and, for ``uint16``, rounded.

Every frame depends only on ``(seed, frame index)`` (``np.random.default_rng([seed,
index])``), so blocks can be read in any order, or twice, with identical bytes; the fixed
patterns come from a separate stream of the same seed.

Stream order and angles
-----------------------
Darks, then flats (all of them, or the first ``flats - flats//2`` with
``flats_at="start_end"``), then projections, then the trailing ``flats//2`` flats. The
projection angles are ``linspace(0, scan_range_deg, projections, endpoint=endpoint)``.
A reference frame carries the angle of the projection nearest to it in stream order:
darks and leading flats the first angle (0.0), trailing flats the last one.

The geometry (columns, rows, centre of rotation, slice grid) is that of
:mod:`streamer.sources.phantom`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamer.errors import ConfigError, ScanFormatError
from streamer.sources.phantom import (
    FIT_FRACTION,
    default_z_scale_px,
    fit_radius_px,
    peak_line_integral,
    project,
    shepp_logan_3d,
    voxelise,
)
from streamer.sources.scan import ScanLayout, check_block
from streamer.wire.protocol import (
    IMAGE_KEY_DARK,
    IMAGE_KEY_FLAT,
    IMAGE_KEY_PROJECTION,
    WIRE_DTYPES,
    Geometry,
    MetadataValue,
)

if TYPE_CHECKING:
    from streamer.sources.scan import FrameReader

#: Largest reading of the simulated 16-bit ADC (also the clip for ``float32`` output).
FULL_SCALE: Final = 65535.0
#: Relative amplitude of the smooth beam profile (±15 %).
BEAM_VARIATION: Final = 0.15
#: R.m.s. of the fixed pixel-gain pattern, and its clip.
GAIN_RMS: Final = 0.01
GAIN_CLIP: Final = 0.03
#: R.m.s. of the fixed dark-offset pattern, relative to ``dark_counts``.
DARK_PATTERN_RMS: Final = 0.02
#: Gain of a hot column (saturates in the open beam at the default flat counts).
HOT_GAIN: Final = 4.0
#: Zinger amplitude range, as fractions of :data:`FULL_SCALE`, and streak lengths.
ZINGER_AMPLITUDE: Final = (0.3, 1.0)
ZINGER_MAX_LENGTH: Final = 3
_ZINGER_STEPS: Final = ((0, 1), (1, 0), (1, 1), (1, -1))
#: Largest total frame count (as in the wire protocol's ``start`` message).
MAX_FRAMES: Final = 10_000_000
#: Most defect columns of each kind (keeps the ``start`` metadata small).
MAX_DEFECT_COLUMNS: Final = 100
PHANTOM_NAME: Final = "shepp_logan_3d"

_Size = Annotated[int, Strict(), Field(ge=1, le=65536)]
_Count = Annotated[int, Strict(), Field(ge=0, le=MAX_FRAMES)]
_Column = Annotated[int, Strict()]


class SimulationConfig(BaseModel):
    """Settings of the simulated detector (the sender's ``block`` and ``rate`` are not here).

    Build it with :meth:`from_kwargs` / :meth:`from_mapping` to get a
    :class:`~streamer.errors.ConfigError` such as ``simulate.rows: must be >= 1, got 0``
    instead of pydantic's ``ValidationError``. Integers are strict (``True`` or ``64.0``
    are refused); floats accept integers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Detector rows (slices).
    rows: _Size = 64
    #: Detector columns.
    cols: _Size = 128
    #: Number of projections over ``scan_range_deg``.
    projections: Annotated[int, Strict(), Field(ge=1, le=MAX_FRAMES)] = 180
    #: Number of flat (open-beam) frames.
    flats: _Count = 20
    #: Number of dark frames.
    darks: _Count = 10
    #: ``start``: all flats before the projections; ``start_end``: half before, half after.
    flats_at: Literal["start", "start_end"] = "start"
    #: Rotation covered by the projections, degrees.
    scan_range_deg: Literal[180, 360] = 180
    #: Whether the last projection sits at ``scan_range_deg`` (``linspace`` endpoint).
    endpoint: bool = False
    #: Column of the rotation axis; ``None`` is the detector centre ``(cols-1)/2``.
    cor_px: Annotated[float, Strict(), Field(allow_inf_nan=False)] | None = None
    #: Mean photons per pixel in the open beam (before the ±15 % beam profile).
    flat_counts: Annotated[float, Strict(), Field(gt=0, le=FULL_SCALE, allow_inf_nan=False)] = (
        20000.0
    )
    #: Mean dark offset, counts.
    dark_counts: Annotated[float, Strict(), Field(ge=0, le=FULL_SCALE, allow_inf_nan=False)] = (
        100.0
    )
    #: Read noise σ, counts.
    dark_noise: Annotated[float, Strict(), Field(ge=0, le=1000, allow_inf_nan=False)] = 3.0
    #: Peak line integral of the phantom (largest ``-log`` transmission).
    max_attenuation: Annotated[float, Strict(), Field(gt=0, le=10, allow_inf_nan=False)] = 2.0
    #: Expected zingers per projection frame.
    zinger_rate: Annotated[float, Strict(), Field(ge=0, le=10_000, allow_inf_nan=False)] = 0.0
    #: Columns that read only the dark level (stripe/ring defects).
    dead_columns: tuple[_Column, ...] = Field(default=(), max_length=MAX_DEFECT_COLUMNS)
    #: Columns with ×4 gain, saturating in the open beam (stripe/ring defects).
    hot_columns: tuple[_Column, ...] = Field(default=(), max_length=MAX_DEFECT_COLUMNS)
    #: Pixel type on the wire.
    dtype: Literal["uint16", "float32"] = "uint16"
    #: Seed of every random draw.
    seed: Annotated[int, Strict(), Field(ge=0)] = 0

    @field_validator("cor_px")
    @classmethod
    def _phantom_fits(cls, value: float | None, info: ValidationInfo) -> float | None:
        cols = info.data.get("cols")
        if value is not None and cols is not None:
            try:
                fit_radius_px(cols, value)
            except ConfigError:
                centre = (cols - 1) / 2
                reach = FIT_FRACTION * cols
                raise ValueError(
                    f"must lie within {reach:g} px of the detector centre {centre:g} "
                    f"(from {centre - reach:g} to {centre + reach:g}) so that the phantom fits"
                ) from None
        return value

    @field_validator("dead_columns", "hot_columns")
    @classmethod
    def _columns_exist(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        cols = info.data.get("cols")
        if cols is not None:
            outside = [c for c in value if not 0 <= c < cols]
            if outside:
                raise ValueError(f"columns must be in 0 … {cols - 1} (cols = {cols})")
        if len(set(value)) != len(value):
            raise ValueError("each column may be listed only once")
        if info.field_name == "hot_columns":
            both = sorted(set(value) & set(info.data.get("dead_columns", ())))
            if both:
                raise ValueError(f"columns {both} are also listed in dead_columns")
        return value

    @model_validator(mode="after")
    def _frames_fit(self) -> Self:
        total = self.projections + self.flats + self.darks
        if total > MAX_FRAMES:
            raise ValueError(
                f"projections + flats + darks: must be <= {MAX_FRAMES} frames, got {total}"
            )
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SimulationConfig:
        """Validate ``data``; raise :class:`ConfigError` naming each bad field.

        Raises
        ------
        ConfigError
            E.g. ``simulate.rows: must be >= 1, got 0``; several problems are joined by
            ``; ``.
        """
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SimulationConfig:
        """``SimulationConfig.from_kwargs(rows=32, cols=64)``; see :meth:`from_mapping`."""
        return cls.from_mapping(kwargs)

    @property
    def frames(self) -> int:
        """Total frames of the scan (darks + flats + projections)."""
        return self.darks + self.flats + self.projections

    @property
    def centre_of_rotation(self) -> float:
        """``cor_px`` with ``None`` resolved to the detector centre ``(cols-1)/2``."""
        return (self.cols - 1) / 2 if self.cor_px is None else self.cor_px


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = "simulate"
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        kind = error["type"]
        ctx = error.get("ctx", {})
        if kind == "extra_forbidden":
            allowed = ", ".join(SimulationConfig.model_fields)
            message = f"unknown field (allowed: {allowed})"
        elif kind in _BOUNDS:
            symbol, name = _BOUNDS[kind]
            message = f"must be {symbol} {_number(ctx[name])}"
        elif kind == "literal_error":
            message = f"must be one of {ctx['expected']}"
        elif kind in ("int_type", "int_parsing", "int_from_float"):
            message = "must be an integer"
        elif kind in ("float_type", "float_parsing"):
            message = "must be a number"
        elif kind == "finite_number":
            message = "must be finite"
        elif kind in ("bool_type", "bool_parsing"):
            message = "must be true or false"
        elif kind in ("tuple_type", "list_type"):
            message = "must be a list of column indices"
        elif kind == "too_long":
            message = f"must have at most {ctx['max_length']} entries"
        elif kind == "value_error":
            message = str(ctx.get("error", error["msg"]))
        else:
            message = error["msg"]
        if error["loc"]:
            problems.append(f"{where}: {message}, got {_short(error['input'])}")
        else:
            problems.append(f"{where}: {message}")
    return "; ".join(problems)


_BOUNDS: Final = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(value: object, limit: int = 80) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def beam_profile(rows: int, cols: int) -> npt.NDArray[np.float64]:
    """The smooth open-beam profile, relative to its nominal intensity.

    ``1 + 0.15·(0.6·(1 - 2v²) + 0.3·cos(πh) + 0.1·h)`` with ``v, h ∈ [-1, 1]`` the
    normalised row and column: a beam brightest in the middle rows (like a synchrotron
    beam's vertical profile), with a gentle fall-off and a slight tilt across the columns.
    It stays within ``0.85 … 1.15``.

    Returns
    -------
    ndarray of shape (rows, cols), float64
    """
    v = (np.arange(rows) - (rows - 1) / 2) / max((rows - 1) / 2, 1.0)
    h = (np.arange(cols) - (cols - 1) / 2) / max((cols - 1) / 2, 1.0)
    shape = 0.6 * (1 - 2 * v**2)[:, None] + (0.3 * np.cos(np.pi * h) + 0.1 * h)[None, :]
    profile: npt.NDArray[np.float64] = 1.0 + BEAM_VARIATION * shape
    return profile


class SimulatedScan:
    """A simulated scan of the 3-D Shepp–Logan phantom; a :class:`FrameReader`.

    Parameters
    ----------
    config : SimulationConfig, optional
        Detector and scan settings; the defaults when omitted.

    Notes
    -----
    Construction precomputes the expected flat and dark images (two float64
    ``(rows, cols)`` arrays); each frame's projection is computed on demand, so memory
    does not grow with the number of projections.
    """

    def __init__(self, config: SimulationConfig | None = None) -> None:
        self._config = SimulationConfig() if config is None else config
        cfg = self._config
        self._ellipsoids = shepp_logan_3d()
        self._cor = cfg.centre_of_rotation
        self._radius = fit_radius_px(cfg.cols, self._cor)
        self._z_scale = default_z_scale_px(cfg.rows, self._radius)
        self._scale = cfg.max_attenuation / (self._radius * peak_line_integral(self._ellipsoids))
        self._layout = self._make_layout()

        patterns = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
        gain = 1.0 + GAIN_RMS * patterns.standard_normal((cfg.rows, cfg.cols))
        np.clip(gain, 1.0 - GAIN_CLIP, 1.0 + GAIN_CLIP, out=gain)
        gain[:, list(cfg.dead_columns)] = 0.0
        gain[:, list(cfg.hot_columns)] *= HOT_GAIN
        profile = beam_profile(cfg.rows, cfg.cols)
        self._flat_signal: npt.NDArray[np.float64] = cfg.flat_counts * profile * gain
        dark = cfg.dark_counts * (
            1.0 + DARK_PATTERN_RMS * patterns.standard_normal((cfg.rows, cfg.cols))
        )
        self._dark_offset: npt.NDArray[np.float64] = np.maximum(dark, 0.0)
        self._closed = False

    def _make_layout(self) -> ScanLayout:
        cfg = self._config
        lead = cfg.flats if cfg.flats_at == "start" else cfg.flats - cfg.flats // 2
        trail = cfg.flats - lead
        angles = np.linspace(
            0.0, float(cfg.scan_range_deg), cfg.projections, endpoint=cfg.endpoint
        )
        keys = np.concatenate(
            [
                np.full(cfg.darks, IMAGE_KEY_DARK, dtype=np.int8),
                np.full(lead, IMAGE_KEY_FLAT, dtype=np.int8),
                np.full(cfg.projections, IMAGE_KEY_PROJECTION, dtype=np.int8),
                np.full(trail, IMAGE_KEY_FLAT, dtype=np.int8),
            ]
        )
        frame_angles = np.concatenate(
            [np.full(cfg.darks + lead, angles[0]), angles, np.full(trail, angles[-1])]
        )
        metadata: dict[str, MetadataValue] = {
            "phantom": PHANTOM_NAME,
            "seed": cfg.seed,
            "flat_counts": cfg.flat_counts,
            "dark_counts": cfg.dark_counts,
            "dark_noise": cfg.dark_noise,
            "max_attenuation": cfg.max_attenuation,
            "zinger_rate": cfg.zinger_rate,
            "dead_columns": ",".join(map(str, cfg.dead_columns)),
            "hot_columns": ",".join(map(str, cfg.hot_columns)),
            "flats_at": cfg.flats_at,
            "radius_px": self._radius,
        }
        return ScanLayout(
            rows=cfg.rows,
            cols=cfg.cols,
            dtype=WIRE_DTYPES[cfg.dtype],
            image_keys=keys,
            angles_deg=frame_angles.astype(np.float64),
            normalisation="flat_dark" if cfg.flats > 0 else "air",
            geometry=Geometry(scan_range_deg=float(cfg.scan_range_deg), cor_px=self._cor),
            source="simulate",
            metadata=metadata,
        )

    @property
    def layout(self) -> ScanLayout:
        """The scan's layout (stream order: darks, flats, projections, trailing flats)."""
        return self._layout

    @property
    def config(self) -> SimulationConfig:
        """The settings this scan was built from."""
        return self._config

    @property
    def radius_px(self) -> float:
        """Object half-width in pixels (see :func:`~streamer.sources.phantom.fit_radius_px`)."""
        return self._radius

    @property
    def z_scale_px(self) -> float:
        """Pixels per phantom unit along z."""
        return self._z_scale

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Frames ``start … stop-1`` as an ``ndarray of shape (stop-start, rows, cols)``.

        Deterministic: frame ``i`` is the same for every call with the same seed.

        Raises
        ------
        ScanFormatError
            If the range is outside ``0 … frames`` or the scan is closed.
        """
        self._check_open()
        check_block(self._layout, start, stop)
        out = np.empty((stop - start, self._layout.rows, self._layout.cols), self._layout.dtype)
        rounding = out.dtype.kind == "u"
        for k, index in enumerate(range(start, stop)):
            counts = self._counts(index)
            np.clip(counts, 0.0, FULL_SCALE, out=counts)
            if rounding:
                np.rint(counts, out=counts)
            out[k] = counts
        return out

    def close(self) -> None:
        """Mark the scan closed (nothing to release); further reads raise."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ScanFormatError("simulate: read after close")

    def _counts(self, index: int) -> npt.NDArray[np.float64]:
        """Frame ``index`` as float64 counts before clipping (draws in a fixed order)."""
        cfg = self._config
        rng = np.random.default_rng([cfg.seed, index])
        key = int(self._layout.image_keys[index])
        shape = (cfg.rows, cfg.cols)
        if key == IMAGE_KEY_DARK:
            counts = np.zeros(shape, dtype=np.float64)
        elif key == IMAGE_KEY_FLAT:
            counts = rng.poisson(self._flat_signal).astype(np.float64)
        else:
            expected = self._line_integrals(index)
            np.negative(expected, out=expected)
            np.exp(expected, out=expected)
            expected *= self._flat_signal
            counts = rng.poisson(expected).astype(np.float64)
        counts += self._dark_offset
        if cfg.dark_noise > 0:
            noise = rng.standard_normal(shape, dtype=np.float32)
            noise *= np.float32(cfg.dark_noise)
            counts += noise
        if key == IMAGE_KEY_PROJECTION and cfg.zinger_rate > 0:
            self._add_zingers(counts, rng)
        return counts

    def _add_zingers(self, counts: npt.NDArray[np.float64], rng: np.random.Generator) -> None:
        rows, cols = counts.shape
        n = int(rng.poisson(self._config.zinger_rate))
        if n == 0:
            return
        r0 = rng.integers(0, rows, n)
        c0 = rng.integers(0, cols, n)
        length = rng.integers(1, ZINGER_MAX_LENGTH + 1, n)
        step = np.asarray(_ZINGER_STEPS)[rng.integers(0, len(_ZINGER_STEPS), n)]
        amplitude = rng.uniform(*ZINGER_AMPLITUDE, n) * FULL_SCALE
        along = np.arange(ZINGER_MAX_LENGTH)
        rr = r0[:, None] + along[None, :] * step[:, 0:1]
        cc = c0[:, None] + along[None, :] * step[:, 1:2]
        keep = (along[None, :] < length[:, None]) & (rr < rows) & (cc >= 0) & (cc < cols)
        hits = np.broadcast_to(amplitude[:, None], keep.shape)[keep]
        np.add.at(counts, (rr[keep], cc[keep]), hits)

    def _line_integrals(self, index: int) -> npt.NDArray[np.float64]:
        angle = float(self._layout.angles_deg[index])
        cfg = self._config
        single: npt.NDArray[np.float64] = project(
            self._ellipsoids,
            [angle],
            cfg.rows,
            cfg.cols,
            radius_px=self._radius,
            cor_px=self._cor,
            z_scale_px=self._z_scale,
        )[0]
        single *= self._scale
        return single

    def attenuation(self, start: int, stop: int) -> npt.NDArray[np.float64]:
        """Noise-free line integrals (``-log`` transmission) of frames ``start … stop-1``.

        Returns
        -------
        ndarray of shape (stop-start, rows, cols), float64
            The phantom's projections for projection frames, zeros for flats and darks.
        """
        check_block(self._layout, start, stop)
        out = np.zeros((stop - start, self._layout.rows, self._layout.cols), dtype=np.float64)
        for k, index in enumerate(range(start, stop)):
            if self._layout.image_keys[index] == IMAGE_KEY_PROJECTION:
                out[k] = self._line_integrals(index)
        return out

    def ground_truth(self, supersample: int = 4) -> npt.NDArray[np.float32]:
        """The phantom's slices, in the units of the projections' ``-log``.

        Slice ``r`` belongs to detector row ``r``; the ``cols × cols`` grid is centred on
        the rotation axis (the convention of :mod:`streamer.sources.phantom`), so an FBP of
        the flat-dark-corrected, ``-log`` projections onto that grid should return it.

        Parameters
        ----------
        supersample : int
            In-plane sub-samples per voxel edge, for partial-volume edges.

        Returns
        -------
        ndarray of shape (rows, cols, cols), float32
            Attenuation per pixel of path (the whole volume: mind its size for big
            detectors).
        """
        cfg = self._config
        volume = voxelise(
            self._ellipsoids,
            cfg.rows,
            cfg.cols,
            radius_px=self._radius,
            z_scale_px=self._z_scale,
            supersample=supersample,
        )
        volume *= np.float32(self._scale)
        return volume

    def mean_flat(self) -> npt.NDArray[np.float64]:
        """Expected reading of a flat frame (signal + dark offset, before clipping).

        Returns
        -------
        ndarray of shape (rows, cols), float64
        """
        return self._flat_signal + self._dark_offset

    def mean_dark(self) -> npt.NDArray[np.float64]:
        """Expected reading of a dark frame (the dark offset).

        Returns
        -------
        ndarray of shape (rows, cols), float64
        """
        return self._dark_offset.copy()


if TYPE_CHECKING:

    def _is_frame_reader(scan: SimulatedScan) -> FrameReader:
        return scan  # mypy checks that SimulatedScan satisfies the protocol


__all__ = ["SimulatedScan", "SimulationConfig", "beam_profile"]

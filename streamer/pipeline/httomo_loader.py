"""HTTomo's loader entry (``httomo.data.hdf.loaders.standard_tomo``) as load options.

An HTTomo pipeline starts with its loader, which says where the frames, image keys and
angles are and which part of the detector to use. ``recon`` honours what maps onto
:class:`~streamer.sources.formats.LoadOptions` (command-line options win where both say
something): ``data_path``, ``image_key_path``, ``rotation_angles`` (``auto``, a
``data_path`` in the scan file, or ``user_defined`` start/stop/total), ``preview`` rows
(``detector_y``, HTTomo's vertical crop), separate ``darks``/``flats`` (file + dataset).
``auto`` means "detect" (our NeXus finder does what HTTomo's ``auto`` does). What we
cannot honour — a column crop (``detector_x``), an angle crop, ``continuous_scan_subset``,
an image-key path for separate darks/flats — is refused by name, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from streamer.sources.formats.options import LoadOptions

__all__ = ["IGNORED_OLD", "LOADER_MODULES", "LoaderSettings", "loader_settings",
           "with_loader"]

LOADER_MODULES = ("httomo.data.hdf.loaders",)
_KNOWN = frozenset({"data_path", "image_key_path", "rotation_angles", "preview", "darks",
                    "flats", "continuous_scan_subset"})
#: Loader parameters of HTTomo 1.x/2.0 pipelines that HTTomo 2.0's loader never read
#: (``ui_layer._setup_loader``; its ``in_file`` is the command line's) and 2.1 dropped:
#: accepted and ignored, as there.
IGNORED_OLD = frozenset({"name", "in_file", "dimension", "pad"})


@dataclass(frozen=True)
class LoaderSettings:
    """What an HTTomo loader entry asks for, as :class:`LoadOptions` fields (``None``:
    detect / not given)."""

    data_path: str | None = None
    image_key_path: str | None = None
    angles_path: str | None = None
    angles: tuple[float, float, int] | None = None
    rows: tuple[int, int] | None = None
    darks: tuple[str, ...] = ()
    flats: tuple[str, ...] = ()

    def given(self) -> dict[str, Any]:
        """The fields the entry set, by LoadOptions name."""
        return {name: value for name, value in vars(self).items() if value not in (None, ())}


def _path(value: Any) -> str | None:
    if value is None or value == "auto":
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a dataset path or 'auto', got {value!r}")
    return value if value.startswith("/") else "/" + value


def _range(value: Any, what: str) -> tuple[int, int] | None:
    """``{start, stop}`` (either may be null) → ``(start, stop)`` or ``None`` for all."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"start", "stop"}:
        raise ValueError(f"{what}: expected {{start: N, stop: M}}, got {value!r}")
    start, stop = value.get("start"), value.get("stop")
    if start is None and stop is None:
        return None
    if start is None or stop is None:
        raise ValueError(f"{what}: expected both start and stop (or neither), got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop)) or not (
            0 <= start < stop):
        raise ValueError(f"{what}: expected whole numbers 0 <= start < stop, got {value!r}")
    return int(start), int(stop)


def _preview_rows(preview: Any) -> tuple[int, int] | None:
    if preview is None:
        return None
    if isinstance(preview, list):  # the older [angles, detector_y, detector_x] form
        if len(preview) != 3:
            raise ValueError(f"preview: expected [angles, detector_y, detector_x], got "
                             f"{preview!r}")
        preview = {"angles": preview[0], "detector_y": preview[1], "detector_x": preview[2]}
    if not isinstance(preview, Mapping) or set(preview) - {"angles", "detector_y",
                                                          "detector_x"}:
        raise ValueError(f"preview: expected detector_y/detector_x/angles ranges, got "
                         f"{preview!r}")
    for refused in ("detector_x", "angles"):
        if _range(preview.get(refused), f"preview.{refused}") is not None:
            raise ValueError(f"preview.{refused}: cropping "
                             f"{'detector columns' if refused == 'detector_x' else 'angles'}"
                             " is not supported (only detector_y rows); set start and stop "
                             "to null")
    return _range(preview.get("detector_y"), "preview.detector_y")


def _angles(value: Any) -> tuple[str | None, tuple[float, float, int] | None]:
    if value is None or value == "auto":
        return None, None
    if isinstance(value, Mapping) and set(value) == {"data_path"}:
        return _path(value["data_path"]), None
    if isinstance(value, Mapping) and set(value) == {"user_defined"}:
        defined = value["user_defined"]
        keys = {"start_angle", "stop_angle", "angles_total"}
        if not isinstance(defined, Mapping) or set(defined) != keys:
            raise ValueError(f"rotation_angles.user_defined: expected {sorted(keys)}, got "
                             f"{defined!r}")
        total = defined["angles_total"]
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"rotation_angles.user_defined.angles_total: expected a whole "
                             f"number >= 1, got {total!r}")
        return None, (float(defined["start_angle"]), float(defined["stop_angle"]), total)
    raise ValueError(f"rotation_angles: expected auto, {{data_path: ...}} or "
                     f"{{user_defined: ...}}, got {value!r}")


def _references(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or "file" not in value or "data_path" not in value:
        raise ValueError(f"{what}: expected {{file: ..., data_path: ...}}, got {value!r}")
    if value.get("image_key_path") is not None:
        raise ValueError(f"{what}.image_key_path: selecting {what} by image key in a separate "
                         "file is not supported; give a dataset holding only them")
    extra = set(value) - {"file", "data_path", "image_key_path"}
    if extra:
        raise ValueError(f"{what}: unknown keys {sorted(extra)}")
    return (f"{value['file']}:{_path(value['data_path'])}",)


def loader_settings(parameters: Mapping[str, Any],
                    problem: Callable[[str, str], None]) -> LoaderSettings:
    """Read ``standard_tomo``'s parameters; each problem goes to ``problem(field, text)``."""
    unknown = sorted(str(key) for key in set(parameters) - _KNOWN - IGNORED_OLD)
    for key in unknown:
        problem(key, f"unknown loader parameter; expected one of {', '.join(sorted(_KNOWN))}")
    fields: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("data_path", lambda: fields.update(data_path=_path(parameters.get("data_path")))),
        ("image_key_path", lambda: fields.update(
            image_key_path=_path(parameters.get("image_key_path")))),
        ("rotation_angles", lambda: fields.update(zip(
            ("angles_path", "angles"), _angles(parameters.get("rotation_angles")),
            strict=True))),
        ("preview", lambda: fields.update(rows=_preview_rows(parameters.get("preview")))),
        ("darks", lambda: fields.update(darks=_references(parameters.get("darks"), "darks"))),
        ("flats", lambda: fields.update(flats=_references(parameters.get("flats"), "flats"))),
    ]
    for name, read in steps:
        try:
            read()
        except ValueError as error:
            problem(name, str(error))
    if parameters.get("continuous_scan_subset") is not None:
        problem("continuous_scan_subset", "selecting a subset of a continuous scan is not "
                "supported; set it to null")
    return LoaderSettings(**fields)


def with_loader(options: LoadOptions, loader: LoaderSettings | None) -> LoadOptions:
    """``options`` completed by the loader entry: a field the command line left unset takes
    the loader's value (angles from either source only when the command line gave none)."""
    if loader is None:
        return options
    taken: dict[str, Any] = {}
    for name, value in loader.given().items():
        if name in ("angles", "angles_path") and (options.angles or options.angles_path):
            continue
        if getattr(options, name) in (None, ()):
            taken[name] = value
    return replace(options, **taken) if taken else options

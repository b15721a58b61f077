"""Method names from older httomolibgpu/httomolib releases: translated where the maths is
the same, refused with the current equivalent where it is not.

HTTomo pipelines name methods as the library release of their day did (HTTomo 1.0 called
the GPU library ``httomolib``; its names follow httomolibgpu 1.x's entries); several
were renamed, re-parametrised or removed since (``docs/reference/httomo-methods.md``,
"Names from older releases", lists every one with the release that changed it). This
module is a table, read by :mod:`streamer.pipeline.config` before a ``module_path.method``
is resolved:

* :class:`Renamed`: the old method computes what a current one computes (read in the old
  source); its parameters are translated (old name → new name, the old release's
  defaults where the current ones differ, values spelled otherwise) and ``check`` says so
  in one line. A parameter whose default changed *during* the old name's life must be
  given (the release is not in the file, so no default would be safe); an old parameter
  with no current counterpart is accepted only at the value that changes nothing.
* :class:`Removed`: no stage of ours computes the old formula; the entry is refused in one
  line naming the current equivalent and how to write it.

An entry with ``only_with`` applies only when one of those parameters is present: the
dotted name was reused by a later release with other parameters (httomolibgpu 1.x's
``paganin_filter`` was Savu's filter; today's is another).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

#: A parameter value is passed through as it is when it is a side-output reference.
_REFERENCE_PREFIX = "${{"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Renamed:
    """An old name whose maths a current method computes.

    ``renames``: old parameter → current parameter. ``fixed``: current parameters the old
    method had no say in, set to what it did (given values win). ``defaults``: the old
    release's defaults where the current method's differ (used when the parameter is
    absent). ``required``: parameters whose default changed between the releases that had
    the old name → why. ``dropped``: old parameters without a counterpart → the values
    that change nothing (anything else is refused with ``dropped_hint``). ``values``:
    old parameter → {old value: current value}.
    """

    old: str
    current: str
    releases: str
    change: str
    renames: Mapping[str, str] = field(default_factory=_frozen)
    fixed: Mapping[str, Any] = field(default_factory=_frozen)
    defaults: Mapping[str, Any] = field(default_factory=_frozen)
    required: Mapping[str, str] = field(default_factory=_frozen)
    dropped: Mapping[str, tuple[Any, ...]] = field(default_factory=_frozen)
    dropped_hint: Mapping[str, str] = field(default_factory=_frozen)
    values: Mapping[str, Mapping[Any, Any]] = field(default_factory=_frozen)
    only_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Removed:
    """An old name no stage of ours computes the same way: refused, ``advice`` says what
    to write instead."""

    old: str
    releases: str
    advice: str
    only_with: tuple[str, ...] = ()


OldName = Renamed | Removed

_GPU = "httomolibgpu"
_NEGLOG = {"neglog": (False, None)}
_NEGLOG_HINT = {"neglog": "put a minus_log step (httomolibgpu.prep.normalize) before it; "
                          "httomolibgpu removed neglog in 5.0"}
_GPU_ID = {"gpu_id": (0, None)}
#: ``recon_mask_radius`` that masks nothing: ToMoBAR's CuPy SIRT/CGLS of httomolibgpu 2.x
#: applied no mask (``methodsIR_CuPy``, ToMoBAR 2024.08), and our iterative stages take
#: a radius ``>= 2`` as no mask.
_NO_MASK = 2.0
_ITERATIVE_HINT = {**_NEGLOG_HINT, "gpu_id": "we run on the device the backend names"}

TABLE: tuple[OldName, ...] = (
    Renamed(f"{_GPU}.misc.corr.median_filter3d", f"{_GPU}.misc.corr.median_filter",
            "httomolibgpu 1.0–1.2", "renamed median_filter in 2.0 (same CUDA kernel)"),
    Renamed(f"{_GPU}.misc.corr.remove_outlier3d", f"{_GPU}.misc.corr.remove_outlier",
            "httomolibgpu 1.0–1.2", "renamed remove_outlier in 2.0 (same CUDA kernel)",
            defaults={"dif": 0.1}),
    *(Renamed(f"{_GPU}.misc.corr.{name}", f"{_GPU}.misc.corr.{name}", "httomolibgpu 2.0",
              "its `axis` (a 2-D median of the slices along it; null: 3-D) was removed in "
              "2.1, the filter is 3-D since",
              dropped={"axis": (None,)},
              dropped_hint={"axis": "httomolibgpu 2.0 filtered 2-D slices along it (HTTomo's "
                            "auto: the slicing axis), the current method is 3-D: write "
                            "axis: null for the 3-D filter or use tomopy.misc.corr."
                            f"{name} for 2-D "
                            "slices"},
              only_with=("axis",))
      for name in ("median_filter", "remove_outlier")),
    Renamed(f"{_GPU}.prep.phase.paganin_filter_tomopy", "httomolib.prep.phase.paganin_filter",
            "httomolibgpu 2.0–3.1", "replaced in 4.0 by paganin_filter (µm, m, "
            "ratio_delta_beta = 1/alpha); httomolib's CPU paganin_filter keeps its "
            "parameters and formula"),
    Renamed(f"{_GPU}.prep.phase.retrieve_phase", "tomopy.prep.phase.retrieve_phase",
            "httomolibgpu 1.0", "a port of TomoPy's retrieve_phase, removed in 1.1"),
    Renamed(f"{_GPU}.recon.algorithm.FBP", f"{_GPU}.recon.algorithm.FBP3d_tomobar",
            "httomolibgpu 1.0–1.2", "renamed FBP3d_tomobar in 2.5; 1.x's FBP(center, "
            "objsize) ran ToMoBAR's FBP3D, whose SINC filter had a fixed a = 1.1 and no mask",
            renames={"objsize": "recon_size"},
            fixed={"filter_freq_cutoff": 1.1, "recon_mask_radius": None},
            dropped=_GPU_ID, dropped_hint=_ITERATIVE_HINT, only_with=("objsize",)),
    Renamed(f"{_GPU}.recon.algorithm.FBP", f"{_GPU}.recon.algorithm.FBP3d_tomobar",
            "httomolibgpu 2.0–2.4", "renamed FBP3d_tomobar in 2.5",
            renames={"objsize": "recon_size"},
            required={
                "filter_freq_cutoff": "its default changed between releases (2.0: 0.6; "
                "2.1–2.2: 1.1; 2.3–2.4: 0.35)",
                "recon_mask_radius": "its default changed between releases (2.0–2.2: "
                "null, no mask; 2.3–2.4: 0.95)",
            },
            dropped={**_NEGLOG, **_GPU_ID}, dropped_hint=_ITERATIVE_HINT),
    Renamed(f"{_GPU}.recon.algorithm.LPRec", f"{_GPU}.recon.algorithm.LPRec3d_tomobar",
            "httomolibgpu 2.0–2.4", "renamed LPRec3d_tomobar in 2.5; the ramp filter of "
            "the ToMoBAR of its day (gain n·0.5) is filter_type ramp, filter_freq_cutoff "
            "0.5 now",
            fixed={"filter_type": "ramp", "filter_freq_cutoff": 0.5},
            required={"recon_mask_radius": "its default changed between releases (2.0–2.2: "
                      "null, no mask; 2.3–2.4: 0.95)"},
            dropped=_NEGLOG, dropped_hint=_NEGLOG_HINT),
    Renamed(f"{_GPU}.recon.algorithm.SIRT", f"{_GPU}.recon.algorithm.SIRT3d_tomobar",
            "httomolibgpu 1.0–2.4", "renamed SIRT3d_tomobar in 2.5",
            renames={"objsize": "recon_size"}, fixed={"recon_mask_radius": _NO_MASK},
            dropped={**_NEGLOG, **_GPU_ID}, dropped_hint=_ITERATIVE_HINT),
    Renamed(f"{_GPU}.recon.algorithm.CGLS", f"{_GPU}.recon.algorithm.CGLS3d_tomobar",
            "httomolibgpu 1.0–2.4", "renamed CGLS3d_tomobar in 2.5",
            renames={"objsize": "recon_size"}, fixed={"recon_mask_radius": _NO_MASK},
            dropped={**_NEGLOG, **_GPU_ID}, dropped_hint=_ITERATIVE_HINT),
    Renamed(f"{_GPU}.misc.supp_func.data_checker", f"{_GPU}.misc.utils.data_checker",
            "httomolibgpu 2.6–4.0", "moved to misc.utils in 5.0",
            renames={"method_name": "data_to_method_name"}),
    Renamed(f"{_GPU}.misc.morph.sino_360_to_180", "tomopy.misc.morph.sino_360_to_180",
            "httomolibgpu 1.0–2.6", "its `rotation` form (overlap rounded, positive only, "
            "no padding: TomoPy's) became `side` with edge padding in 2.7",
            only_with=("rotation",)),
    Renamed(f"{_GPU}.recon.rotation.find_center_360", f"{_GPU}.recon.rotation.find_center_360",
            "httomolibgpu 1.0–2.6", "`side` 0/1 became 'left'/'right' in 2.7",
            values={"side": {0: "left", 1: "right"}}),
    Removed(f"{_GPU}.prep.phase.paganin_filter_savu", "httomolibgpu 2.0–3.0",
            "httomolibgpu retired Savu's filter (its own CUDA kernel, pad_y/pad_x, "
            "increment) in 3.1; the nearest current method is "
            "httomolibgpu.prep.phase.paganin_filter_savu_legacy with pixel_size "
            "(= resolution, µm), distance (m), energy (keV), ratio_delta_beta (= ratio): "
            "another padding and grid, so other images"),
    Removed(f"{_GPU}.prep.phase.paganin_filter", "httomolibgpu 1.0–1.2",
            "httomolibgpu 1.x's paganin_filter (ratio, resolution, pad_y, pad_x, "
            "increment) was Savu's filter, retired in 3.1; today's paganin_filter takes "
            "pixel_size (µm), distance (m), energy (keV), ratio_delta_beta, or use "
            "paganin_filter_savu_legacy for Savu's δ/β convention: another padding and "
            "grid, so other images",
            only_with=("ratio", "resolution", "pad_y", "pad_x", "pad_method", "increment")),
    Removed(f"{_GPU}.prep.phase.paganin_filter2", "httomolibgpu 1.1–1.2",
            "its filter 1/(1 + dist·alpha·λ·w²/4π) and output -ln(x)·λ/4π have no current "
            "equivalent (the scale differs); use httomolib.prep.phase.paganin_filter "
            "(pixel_size, dist, energy, alpha = 1/old alpha) and rescale"),
    Removed(f"{_GPU}.prep.phase.fresnel_filter", "httomolibgpu 1.0–1.2",
            "httomolibgpu removed it in 2.0 with no successor; for phase retrieval use "
            "httomolibgpu.prep.phase.paganin_filter"),
    *(Renamed(f"{_GPU}.recon.algorithm.{name}", f"{_GPU}.recon.algorithm.{name}",
              "httomolibgpu 2.4–4.x", "its `neglog` was removed in 5.0",
              dropped=_NEGLOG, dropped_hint=_NEGLOG_HINT, only_with=("neglog",))
      for name in ("FBP2d_astra", "FBP3d_tomobar", "LPRec3d_tomobar", "SIRT3d_tomobar",
                   "CGLS3d_tomobar", "FISTA3d_tomobar")),
    Removed(f"{_GPU}.prep.alignment.distortion_correction_proj_discorpy",
            "httomolibgpu 2.0–2.1.2",
            "its `preview` (filled by HTTomo) became shift_xy/step_xy in 2.1.3, and its "
            "defaults order 1, mode reflect became 3, constant: remove preview and write "
            "order: 1, mode: reflect to keep that release's result",
            only_with=("preview",)),
    Removed("httomolib.misc.corr.inpainting_filter3d", "httomolib 1.0–1.2",
            "httomolib removed it in 2.0 with no successor; no stage of ours inpaints a "
            "mask (for non-finite values: tomopy.misc.corr.median_filter_nonfinite)"),
    Removed(f"{_GPU}.prep.alignment.distortion_correction_proj", "httomolibgpu 1.0–1.2",
            "renamed distortion_correction_proj_discorpy in 2.0 with other parameters: "
            "use it with metadata_path (discorpy's coefficients file) or xcenter, "
            "ycenter, list_fact; HTTomo sets shift_xy from its preview"),
)

#: HTTomo 1.0 named the GPU library ``httomolib`` (its templates, ``templates/httomolib/
#: 1.0/``); it became httomolibgpu 1.0 in June 2023 with the same bodies (compared in
#: httomolibgpu's history, commit 3c0f8a6 against v1.0), some renamed: old name → the
#: httomolibgpu 1.x name whose entry above it follows. ``reconstruct_tomobar`` (before
#: 2023-04) is the same SINC ``a = 1.1`` filter and back-projection as ``FBP_rec``.
_HTTOMOLIB_GPU: Mapping[str, str] = MappingProxyType({
    "misc.corr.median_filter3d": "misc.corr.median_filter3d",
    "misc.corr.remove_outlier3d": "misc.corr.remove_outlier3d",
    "misc.morph.sino_360_to_180": "misc.morph.sino_360_to_180",
    "prep.alignment.distortion_correction_proj": "prep.alignment.distortion_correction_proj",
    "prep.alignment.distortion_correction_proj_discorpy":
        "prep.alignment.distortion_correction_proj_discorpy",
    "prep.phase.fresnel_filter": "prep.phase.fresnel_filter",
    "prep.phase.paganin_filter": "prep.phase.paganin_filter",
    "prep.phase.retrieve_phase": "prep.phase.retrieve_phase",
    "recon.algorithm.FBP_rec": "recon.algorithm.FBP",
    "recon.algorithm.reconstruct_tomobar": "recon.algorithm.FBP",
    "recon.algorithm.SIRT_rec": "recon.algorithm.SIRT",
    "recon.algorithm.CGLS_rec": "recon.algorithm.CGLS",
    "recon.rotation.find_center_360": "recon.rotation.find_center_360",
})
_HTTOMOLIB_GPU_RELEASES = "httomolib (GPU) of HTTomo 1.0"


def _httomolib_gpu() -> tuple[OldName, ...]:
    """The httomolibgpu 1.x entries again under HTTomo 1.0's ``httomolib`` names, plus
    the names that kept their meaning and only changed package."""
    out: list[OldName] = []
    for old, new in _HTTOMOLIB_GPU.items():
        for entry in TABLE:
            first_form = not isinstance(entry, Renamed) or "1.0" in entry.releases
            if entry.old == f"{_GPU}.{new}" and first_form:
                # the parameters that told two forms apart are not needed here, but for
                # paganin_filter: httomolib's current CPU method has that name
                keep = entry.only_with if old == "prep.phase.paganin_filter" else ()
                out.append(replace(entry, old=f"httomolib.{old}",
                                   releases=_HTTOMOLIB_GPU_RELEASES, only_with=keep))
    for name in ("prep.stripe.remove_stripe_based_sorting", "prep.stripe.remove_stripe_ti",
                 "recon.rotation.find_center_vo"):
        out.append(Renamed(f"httomolib.{name}", f"{_GPU}.{name}", _HTTOMOLIB_GPU_RELEASES,
                           "the same method in httomolibgpu"))
    out.append(Removed("httomolib.recon.algorithm.reconstruct_tomopy_astra",
                       _HTTOMOLIB_GPU_RELEASES,
                       "TomoPy's ASTRA wrapper (algorithm, iterations, proj_type) has no "
                       "equivalent here: for algorithm FBP_CUDA use httomolibgpu.recon."
                       "algorithm.FBP2d_astra (filter_type ram-lak)"))
    return tuple(out)


TABLE = TABLE + _httomolib_gpu()

_BY_NAME: Mapping[str, tuple[OldName, ...]] = MappingProxyType({
    name: tuple(entry for entry in TABLE if entry.old == name)
    for name in {entry.old for entry in TABLE}
})


@dataclass(frozen=True)
class Translation:
    """An old entry as the current method sees it: its dotted ``module``/``method``, its
    parameters, the one-line ``note`` for ``check``, and ``problems`` (parameter or
    ``None``, message) that make the entry invalid."""

    module: str
    method: str
    params: dict[str, Any]
    note: str
    problems: tuple[tuple[str | None, str], ...] = ()


def find(module: str, method: str, params: Mapping[str, Any]) -> OldName | None:
    """The table's entry for ``module.method`` with these parameters, if any."""
    for entry in _BY_NAME.get(f"{module}.{method}", ()):
        if not entry.only_with or any(key in params for key in entry.only_with):
            return entry
    return None


def refusal(entry: Removed) -> str:
    """The one-line error for a removed name."""
    return (f"expected a method of the current API; {entry.old} ({entry.releases}) has no "
            f"equivalent here: {entry.advice}")


def translate(entry: Renamed, params: Mapping[str, Any]) -> Translation:
    """``params`` (the old method's) as ``entry.current``'s, with the note and problems."""
    out: dict[str, Any] = {}
    problems: list[tuple[str | None, str]] = []
    said: list[str] = []
    for key, value in params.items():
        if key in entry.dropped:
            if value not in entry.dropped[key]:
                allowed = " or ".join(repr(v) for v in entry.dropped[key])
                problems.append((key, f"{entry.old} is translated to {entry.current}, which "
                                 f"has no {key}: expected {allowed}, got {value!r}; "
                                 f"{entry.dropped_hint.get(key, 'remove it')}"))
            else:
                said.append(f"{key}: {value!r} dropped (what {entry.current} does)")
            continue
        new_key = entry.renames.get(key, key)
        if new_key != key:
            said.append(f"{key} → {new_key}")
        out[new_key] = (_translated_value(entry, key, value, problems, said)
                        if key in entry.values else value)
    for key, why in entry.required.items():
        if key not in params:
            problems.append((key, f"expected a value for {key} ({entry.old}: {why}); "
                             "give the one your HTTomo release used"))
    for key, value in entry.defaults.items():
        if key not in out:
            out[key] = value
            said.append(f"{key}: {value!r} (that release's default)")
    for key, value in entry.fixed.items():
        if key not in out:
            out[key] = value
            said.append(f"{key}: {value!r}")
    module, _, method = entry.current.rpartition(".")
    detail = f"; {', '.join(said)}" if said else ""
    note = (f"{entry.old} ({entry.releases}) translated to {entry.current}: "
            f"{entry.change}{detail}")
    if entry.old == entry.current and not said:
        note = ""  # a current pipeline: nothing was translated
    return Translation(module, method, out, note, tuple(problems))


def _translated_value(entry: Renamed, key: str, value: Any,
                      problems: list[tuple[str | None, str]], said: list[str]) -> Any:
    table = entry.values[key]
    if isinstance(value, str) and value.startswith(_REFERENCE_PREFIX):
        return value
    if value in table.values():
        return value  # already the current spelling
    if value in table:
        said.append(f"{key}: {value!r} → {table[value]!r}")
        return table[value]
    if value is None:
        return value
    expected = ", ".join(repr(v) for v in (*table, *table.values()))
    problems.append((key, f"expected one of {expected}, got {value!r}"))
    return value

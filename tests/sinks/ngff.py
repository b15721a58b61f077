"""A small validator of the OME-NGFF 0.5 image fields the OME-Zarr sink emits.

Written from the specification (https://ngff.openmicroscopy.org/0.5/, "multiscales"),
not from the sink: the rules a reader relies on, each failure one line. The PyPI
validators (``ome-zarr-models``) pin an older pydantic than the project's, so they are
not test dependencies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: UDUNITS-2 length units the specification allows for space axes (a subset).
SPACE_UNITS = {"angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer",
               "foot", "gigameter", "hectometer", "inch", "kilometer", "megameter", "meter",
               "micrometer", "mile", "millimeter", "nanometer", "parsec", "petameter",
               "picometer", "terameter", "yard", "yoctometer", "yottameter", "zeptometer",
               "zettameter"}
AXIS_TYPES = {"space", "time", "channel"}


def _json(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict), f"{path}: expected a JSON object"
    return document


def validate_image(store: Path) -> list[str]:
    """The problems of the NGFF 0.5 image at ``store`` (empty: valid)."""
    problems: list[str] = []
    group = _json(store / "zarr.json")
    if group.get("zarr_format") != 3 or group.get("node_type") != "group":
        problems.append("zarr.json: expected a Zarr v3 group")
    ome = group.get("attributes", {}).get("ome")
    if not isinstance(ome, dict):
        return [*problems, "attributes.ome: missing"]
    if ome.get("version") != "0.5":
        problems.append(f"ome.version: expected '0.5', got {ome.get('version')!r}")
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        return [*problems, "ome.multiscales: expected a non-empty list"]
    for number, image in enumerate(multiscales):
        problems += [f"multiscales[{number}]: {p}" for p in _multiscale(store, image)]
    return problems


def _multiscale(store: Path, image: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if "version" in image:
        problems.append("version: belongs in ome.version from 0.5 on")
    axes = image.get("axes")
    if not isinstance(axes, list) or not 2 <= len(axes) <= 5:
        return [*problems, "axes: expected 2 to 5 axes"]
    names = [axis.get("name") for axis in axes]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        problems.append(f"axes: expected unique non-empty names, got {names}")
    kinds = [axis.get("type") for axis in axes]
    for axis in axes:
        if axis.get("type") not in AXIS_TYPES:
            problems.append(f"axis {axis.get('name')}: type {axis.get('type')!r} unknown")
        if axis.get("type") == "space" and "unit" in axis and axis["unit"] not in SPACE_UNITS:
            problems.append(f"axis {axis.get('name')}: unit {axis['unit']!r} is not a length")
    space = [i for i, kind in enumerate(kinds) if kind == "space"]
    if len(space) not in (2, 3) or space != list(range(len(axes) - len(space), len(axes))):
        problems.append(f"axes: expected 2 or 3 space axes, last, got types {kinds}")
    datasets = image.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        return [*problems, "datasets: expected a non-empty list"]
    previous: list[float] | None = None
    for dataset in datasets:
        path = dataset.get("path")
        where = f"dataset {path!r}"
        array_json = store / str(path) / "zarr.json"
        if not isinstance(path, str) or not array_json.exists():
            problems.append(f"{where}: expected the path of an array in the store")
            continue
        array = _json(array_json)
        if array.get("node_type") != "array" or len(array.get("shape", [])) != len(axes):
            problems.append(f"{where}: expected an array with {len(axes)} dimensions")
        if array.get("dimension_names") != names:
            problems.append(f"{where}: dimension_names {array.get('dimension_names')} "
                            f"must equal the axes {names}")
        transforms = dataset.get("coordinateTransformations")
        if not isinstance(transforms, list) or not transforms \
                or transforms[0].get("type") != "scale":
            problems.append(f"{where}: expected coordinateTransformations starting with scale")
            continue
        if len(transforms) > 2 or (len(transforms) == 2
                                   and transforms[1].get("type") != "translation"):
            problems.append(f"{where}: expected at most one translation, after the scale")
        for transform in transforms:
            values = transform.get(transform.get("type"))
            if not isinstance(values, list) or len(values) != len(axes):
                problems.append(f"{where}: {transform.get('type')}: expected {len(axes)} "
                                f"values, got {values}")
        scale = transforms[0].get("scale")
        if isinstance(scale, list):
            if not all(isinstance(v, int | float) and v > 0 for v in scale):
                problems.append(f"{where}: scale: expected positive numbers, got {scale}")
            elif previous is not None and any(a < b for a, b in zip(scale, previous,
                                                                    strict=True)):
                problems.append(f"{where}: datasets must go from fine to coarse")
            previous = scale
    return problems


__all__ = ["validate_image"]

"""Find the frames, image_key and angles of a NeXus/HDF5 scan when no paths are given.

The standard NXtomo paths (``ENTRY/instrument/detector/data``, ``…/image_key``,
``ENTRY/sample/rotation_angle``, in any ``NXentry``, an entry declaring ``NXtomo`` first)
win when present. Otherwise every dataset reachable through links is scored:

* frames: a 3-D numeric dataset, preferably one whose first dimension equals the length of
  a valid image_key (values 0-3), under an ``NXdetector`` group, named ``data``;
* image_key: a 1-D integer dataset of that length, named like ``*key*``, with values in
  0-3, preferably ``image_key`` in the same group as the frames;
* angles: a 1-D float dataset with one value per frame or per projection whose name (or
  ``units``) says it is an angle: ``rotation_angle``, ``*theta*``, ``*angle*``; set-points
  (``*_set``, ``*demand*``) rank below read-back values.

Paths given in :class:`~streamer.sources.formats.options.LoadOptions` are used as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import h5py
import numpy as np

from streamer.errors import ScanFormatError
from streamer.sources.formats.h5tree import (
    FoundDataset,
    attr_text,
    is_nxtomo,
    nx_entries,
    walk_datasets,
)

VALID_KEYS: Final = frozenset({0, 1, 2, 3})
_ANGLE_UNITS: Final = frozenset(
    {"deg", "degree", "degrees", "rad", "radian", "radians", "mrad", "°"}
)
#: Least score an angle candidate needs (its name or units must say it is an angle).
_ANGLE_EVIDENCE: Final = 50


class NexusSearch:
    """Auto-detection over one open file; the file is walked once, on first need.

    Parameters
    ----------
    file : h5py.File
        The open scan file.
    name : str
        File name for messages.
    """

    def __init__(self, file: h5py.File, name: str) -> None:
        self._file = file
        self._name = name
        self._found: list[FoundDataset] | None = None
        self._standard = _standard_paths(file)
        self._is_key = _KeyChecker()

    @property
    def found(self) -> list[FoundDataset]:
        """Every dataset reachable through links (walked once)."""
        if self._found is None:
            self._found = list(walk_datasets(self._file))
        return self._found

    def data(self) -> str:
        """Path of the frames: standard NXtomo path, else the best 3-D dataset."""
        frames = [f for f in self.found if f.dataset.ndim == 3 and _numeric(f.dataset)
                  and f.dataset.shape[0] > 0]
        if not frames:
            raise ScanFormatError(
                f"{self._name}: no 3-D dataset of frames (frames, rows, cols) found; "
                "pass --data-path (and --image-key-path)"
            )
        lengths = {int(f.dataset.shape[0]) for f in frames}
        key_lengths = {int(f.dataset.shape[0]) for f in self._keys(lengths)}

        def score(f: FoundDataset) -> int:
            value = self._standard.data.get(f.path, 0)
            value += 500 if f.dataset.shape[0] in key_lengths else 0
            value += 50 if f.parent_class == "NXdetector" else 0
            value += 20 if f.name.lower() == "data" else 0
            value += 10 if "detector" in f.path.lower() else 0
            return value

        chosen = _best(frames, score, None)
        assert chosen is not None
        return chosen

    def image_key(self, data_path: str, frames: int) -> str | None:
        """Path of the image_key for ``frames`` frames at ``data_path``, or None."""
        parent = data_path.rsplit("/", 1)[0] or "/"

        def score(f: FoundDataset) -> int:
            value = self._standard.image_key.get(f.path, 0)
            value += 100 if f.parent == parent else 0
            value += 50 if f.parent_class == "NXdetector" else 0
            value += 20 if f.name.lower() == "image_key" else 0
            return value

        return _best(self._keys({frames}), score)

    def angles(self, lengths: set[int]) -> str | None:
        """Path of the best angle dataset with one of ``lengths`` values, or None."""
        candidates = [f for f in self.found
                      if _is_float_vector(f.dataset) and f.dataset.shape[0] in lengths]
        return _best(candidates, lambda f: _angle_score(f, self._standard), _ANGLE_EVIDENCE)

    def _keys(self, lengths: set[int]) -> list[FoundDataset]:
        """Integer vectors named like a key, of one of ``lengths``, holding values 0-3."""
        return [
            f for f in self.found
            if f.dataset.ndim == 1 and f.dataset.dtype.kind in "ui"
            and f.dataset.shape[0] in lengths
            and ("key" in f.name.lower() or f.path in self._standard.image_key)
            and self._is_key(f)
        ]


@dataclass(frozen=True)
class _Standard:
    data: dict[str, int]
    image_key: dict[str, int]
    angles: dict[str, int]


def _standard_paths(file: h5py.File) -> _Standard:
    data, keys, angles = {}, {}, {}
    for entry in nx_entries(file):
        bonus = 1000 if is_nxtomo(file, entry) else 800
        data[f"{entry}/instrument/detector/data"] = bonus
        keys[f"{entry}/instrument/detector/image_key"] = bonus
        angles[f"{entry}/sample/rotation_angle"] = bonus
    return _Standard(data, keys, angles)


class _KeyChecker:
    """Whether a 1-D integer dataset holds image_key values (cached per dataset)."""

    def __init__(self) -> None:
        self._seen: dict[int, bool] = {}

    def __call__(self, found: FoundDataset) -> bool:
        if found.identity not in self._seen:
            try:
                values = np.unique(found.dataset[()])
                self._seen[found.identity] = set(values.tolist()) <= VALID_KEYS
            except (OSError, KeyError, RuntimeError, ValueError):
                self._seen[found.identity] = False
        return self._seen[found.identity]


def _numeric(dataset: h5py.Dataset) -> bool:
    return bool(dataset.dtype.kind in "uifb")


def _is_float_vector(dataset: h5py.Dataset) -> bool:
    return bool(dataset.ndim == 1 and dataset.dtype.kind == "f" and dataset.shape[0] > 0)


def _angle_score(found: FoundDataset, standard: _Standard) -> int:
    name = found.name.lower()
    parent = found.parent.rsplit("/", 1)[-1].lower()
    units = (attr_text(found.dataset, "units") or "").strip().lower()
    if units and units not in _ANGLE_UNITS:
        return -1000  # a length, a time, a current: not an angle whatever its name
    value = standard.angles.get(found.path, 0)
    value += 100 if name == "rotation_angle" else 0
    value += 60 if "theta" in name or "angle" in name else 0
    value += 30 if "theta" in parent or "angle" in parent or "rotation" in parent else 0
    value += 50 if units else 0
    value += 5 if "value" in name else 0
    value -= 30 if name.endswith("set") or "demand" in name else 0
    value += 10 if found.parent_class in ("NXsample", "NXpositioner", "NXtransformations") else 0
    return value


def _best(candidates: list[FoundDataset], score: Callable[[FoundDataset], int],
          least: int | None = 0) -> str | None:
    """Path of the best-scoring candidate: highest score, then largest, then shortest path.

    ``least`` is the score a candidate must reach (None: any).
    """
    ranked = sorted(
        candidates,
        key=lambda f: (-score(f), -int(np.prod(f.dataset.shape)), len(f.path), f.path),
    )
    if not ranked or (least is not None and score(ranked[0]) < least):
        return None
    return ranked[0].path

"""HDF5 helpers shared by the NeXus, data-exchange and reference loaders.

Beamline files reach their data through soft and *external* links, some of which dangle
(the linked file was never copied). ``h5py``'s ``visititems`` does not follow links at
all, so :func:`walk_datasets` walks groups itself, resolving every link it meets and
skipping the dangling ones. External links are resolved by HDF5 relative to the linking
file's own directory, so scans load from any working directory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamer.errors import ScanFormatError

#: Stop walking a file after this many groups and datasets (a guard against huge trees).
MAX_NODES = 200_000

#: What h5py raises when a link cannot be resolved or an object cannot be opened.
_OPEN_ERRORS = (KeyError, OSError, RuntimeError, ValueError)


def open_h5(path: Path) -> h5py.File:
    """Open ``path`` read-only, turning HDF5 errors into :class:`ScanFormatError`."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ScanFormatError(f"{path.name}: cannot open as HDF5 ({exc})") from None


def attr_text(obj: h5py.HLObject, name: str) -> str | None:
    """Attribute ``name`` of ``obj`` as text (bytes, str or one-element arrays), else None."""
    try:
        value = obj.attrs.get(name)
    except _OPEN_ERRORS:  # unreadable attribute types: treat as absent
        return None
    return as_text(value)


def as_text(value: Any) -> str | None:
    """Decode a scalar string-like HDF5 value (bytes, str, 0-d or 1-element array)."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(-1)[0]
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


def dataset_at(file: h5py.File, path: str, where: str) -> h5py.Dataset:
    """The dataset at ``path``, or a :class:`ScanFormatError` saying why not.

    ``where`` is the file name used in messages (``tooth.h5``).
    """
    try:
        link = file.get(path, getlink=True)
    except _OPEN_ERRORS:
        link = None
    if link is None:
        raise ScanFormatError(f"{where}:{path}: no such dataset in the file")
    try:
        obj = file[path]
    except _OPEN_ERRORS:
        target = ""
        if isinstance(link, h5py.ExternalLink):
            target = f" (external link to {link.filename}:{link.path})"
        elif isinstance(link, h5py.SoftLink):
            target = f" (soft link to {link.path})"
        raise ScanFormatError(
            f"{where}:{path}: the link cannot be resolved{target}; is the linked file there?"
        ) from None
    if not isinstance(obj, h5py.Dataset):
        raise ScanFormatError(f"{where}:{path}: expected a dataset, got a group")
    return obj


@dataclass(frozen=True)
class FoundDataset:
    """A dataset reached while walking a file, with the path used to reach it.

    Attributes
    ----------
    path : str
        Absolute path in the *walked* file (through links), e.g. ``/entry/imaging/data``.
    dataset : h5py.Dataset
        The resolved dataset (possibly in another file).
    parent_class : str
        ``NX_class`` of the group holding the link (``""`` if none).
    """

    path: str
    dataset: h5py.Dataset
    parent_class: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] or "/"

    @property
    def identity(self) -> int:
        """Same value for every path that reaches the same stored dataset."""
        return hash(self.dataset.id)


def walk_datasets(file: h5py.File, max_nodes: int = MAX_NODES) -> Iterator[FoundDataset]:
    """Yield every dataset reachable from the root, following soft and external links.

    Groups are visited breadth first (shorter paths first) and once each, so link cycles
    terminate; a dataset reached by several paths is yielded once per path. Dangling links
    are skipped.
    """
    seen_groups: set[int] = {hash(file.id)}
    queue: deque[tuple[str, h5py.Group, str]] = deque([("", file, "")])
    nodes = 0
    while queue:
        prefix, group, group_class = queue.popleft()
        for name in sorted(group):
            nodes += 1
            if nodes > max_nodes:
                return
            path = f"{prefix}/{name}"
            try:
                obj = group[name]
            except _OPEN_ERRORS:  # dangling soft/external link, or unopenable object
                continue
            if isinstance(obj, h5py.Dataset):
                yield FoundDataset(path, obj, group_class)
            elif isinstance(obj, h5py.Group):
                key = hash(obj.id)
                if key not in seen_groups:
                    seen_groups.add(key)
                    queue.append((path, obj, attr_text(obj, "NX_class") or ""))


def nx_entries(file: h5py.File) -> list[str]:
    """Paths of the top-level ``NXentry`` groups (any name); ``/entry`` if none is tagged."""
    entries = []
    for name in sorted(file):
        try:
            obj = file[name]
        except _OPEN_ERRORS:
            continue
        if isinstance(obj, h5py.Group) and attr_text(obj, "NX_class") == "NXentry":
            entries.append(f"/{name}")
    if not entries and isinstance(file.get("entry"), h5py.Group):
        entries.append("/entry")
    return entries


def is_nxtomo(file: h5py.File, entry: str) -> bool:
    """Whether ``entry`` declares the NXtomo application definition."""
    group = file[entry]
    declared = attr_text(group, "definition")
    try:
        field = group.get("definition")
        if isinstance(field, h5py.Dataset):
            declared = as_text(field[()]) or declared
    except _OPEN_ERRORS:
        pass
    return declared is not None and declared.strip() == "NXtomo"

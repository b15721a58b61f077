"""The example pipelines shipped inside the package, found by name.

The repository's ``configs/*.yaml`` are installed with the package (``streamer/configs``
is a link to them in a checkout and a real folder in a wheel), so the documented
``tomo-streamer run configs/standard.yaml`` works after ``pip install`` too: a pipeline
argument that names an existing file is that file; otherwise ``standard``,
``standard.yaml`` or ``configs/standard.yaml`` name the shipped one.
"""

from __future__ import annotations

from pathlib import Path

from streamer.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent / "configs"
"""Where the shipped pipelines are (a link to the repository's ``configs/`` in a checkout)."""

SUFFIXES = (".yaml", ".yml")


def shipped_names() -> list[str]:
    """The names of the shipped pipelines (``standard``, …), sorted."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.stem for p in SHIPPED_DIR.iterdir() if p.suffix in SUFFIXES)


def shipped_pipeline(name: str) -> Path | None:
    """The shipped pipeline called ``name`` (with or without ``.yaml``), or ``None``."""
    stem = name[: -len(suffix)] if (suffix := Path(name).suffix) in SUFFIXES else name
    for suffix in SUFFIXES:
        candidate = SHIPPED_DIR / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def pipeline_file(given: Path, what: str) -> tuple[Path, str | None]:
    """The pipeline file meant by ``given``, and a note when it is a shipped one that
    stands in for a path that does not exist here.

    Raises
    ------
    ConfigError
        ``what`` named, when ``given`` is a folder, or neither a file nor a shipped name
        (the shipped names are listed).
    """
    if given.is_dir():
        raise ConfigError(f"{what}: expected a pipeline YAML file, got a folder: {given}")
    if given.is_file():
        return given, None
    plain_name = given.parent in (Path(), Path("configs"))
    found = shipped_pipeline(given.name) if plain_name else None
    if found is None:
        names = ", ".join(shipped_names()) or "none found"
        raise ConfigError(f"{what}: no such file: {given} (or name a shipped pipeline: "
                          f"{names})")
    note = None if given.parent == Path() and given.suffix not in SUFFIXES else (
        f"{what}: {given} is not here; using the shipped {found.name} ({found})")
    return found, note

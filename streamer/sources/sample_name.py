"""The sample a scan is of, as a source names it on the wire (``start``'s
``metadata["sample"]``).

A consumer carries the CoR of a sample's previous scan to its next one by this name
(``streamer.run.center_streaming.sample_key``). Our senders set it from ``--sample``;
``replay`` takes it by default from the file when the file names its sample: NeXus's
``/<entry>/sample/name`` (the NXentry holding the data) or TomoPy's data-exchange
``/measurement/sample/name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from streamer.errors import ConfigError

if TYPE_CHECKING:
    import h5py

#: The ``start`` metadata entry that names the sample.
SAMPLE_ENTRY: Final = "sample"
#: Longest sample name sent (a name, not a description; the wire allows more).
MAX_SAMPLE_CHARS: Final = 128


def sample_name_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a sample name (1 to :data:`MAX_SAMPLE_CHARS`
    printable characters, not only spaces), or None when nothing is."""
    if text.strip() and len(text) <= MAX_SAMPLE_CHARS and text.isprintable():
        return None
    size = f" ({len(text)} characters)" if len(text) > MAX_SAMPLE_CHARS else ""
    return (f"expected a sample name of 1-{MAX_SAMPLE_CHARS} printable characters, got "
            f"{text[:MAX_SAMPLE_CHARS + 8]!r}{size}")


def check_sample_name(text: str, what: str = "--sample") -> str:
    """``text`` when it is a usable sample name, else a :class:`ConfigError` saying what
    was expected and what came."""
    problem = sample_name_problem(text)
    if problem is not None:
        raise ConfigError(f"{what}: {problem}")
    return text


def stored_sample_name(file: h5py.File, path: str) -> str | None:
    """The sample name stored at ``path`` in ``file`` (a scalar string, or a one-element
    array of one, as TomoPy's files hold it), or None when there is none or it is not a
    usable name (then the scan is sent without one, as before)."""
    import h5py  # noqa: PLC0415  # only where a file is read (the senders' CLI stays light)

    node: Any = file.get(path)
    if not isinstance(node, h5py.Dataset) or node.size != 1 or node.dtype.kind not in "SOU":
        return None
    value = node[()]
    if not isinstance(value, str | bytes):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if sample_name_problem(value) is None else None

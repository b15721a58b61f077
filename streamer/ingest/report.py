"""Run reports: the JSON file per scan and the summary printed for people.

The JSON layout is documented in ``docs/reference/run-report.md``. A report is written
atomically (temporary file, then rename) so a reader never sees half a report.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import zmq

import streamer
from streamer.ingest.accounting import Rejections, ScanReport

REPORT_FORMAT_VERSION = 1


def software_versions() -> dict[str, str]:
    """Versions of tomo-streamer and the libraries that shape its results."""
    return {
        "tomo-streamer": streamer.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(str(part) for part in msgpack.version),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }


def report_document(
    report: ScanReport,
    *,
    config: dict[str, Any] | None = None,
    between_scans: Rejections | None = None,
) -> dict[str, Any]:
    """The full JSON document for one scan."""
    document: dict[str, Any] = {
        "report_format": REPORT_FORMAT_VERSION,
        "kind": "scan",
        **report.as_dict(),
        "versions": software_versions(),
    }
    if config is not None:
        document["config"] = config
    if between_scans:
        document["rejected_outside_scans"] = between_scans.as_dict()
    return document


def write_report(document: dict[str, Any], directory: Path) -> Path:
    """Write ``document`` as ``<directory>/<scan>.json`` (``-2``, ``-3`` … if taken).

    Written to ``<name>.json.tmp`` and renamed; if that fails (a full disk) the temporary
    file is removed and the ``OSError`` raised.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(document.get("scan", "scan")))
    path = directory / f"{stem}.json"
    number = 2
    while path.exists():
        path = directory / f"{stem}-{number}.json"
        number += 1
    temporary = path.with_suffix(".json.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        # A full or failing disk leaves no half-written ``.json.tmp`` behind: the caller
        # reports the error, and the folder holds only whole reports.
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return path


def add_to_report(path: Path, figures: dict[str, Any]) -> None:
    """Add ``figures`` (known once the volume is complete: ``latency``, ``transfers``)
    to the report at ``path``, which ingest wrote when the scan closed; rewritten
    atomically, as :func:`write_report` writes.

    Raises
    ------
    OSError
        If the report cannot be read or rewritten (the caller reports it).
    """
    document = json.loads(path.read_text())
    document.update(figures)
    temporary = path.with_suffix(".json.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def format_report(report: ScanReport) -> str:
    """A short human summary: one line of status, then the counts per image key."""
    lines = [f"scan {report.scan}: {report.status.upper()} ({report.close_reason})"]
    lines.append(f"  {'':12s} {'expected':>9s} {'received':>9s} {'missing':>9s}")
    for name in ("projections", "flats", "darks"):
        lines.append(
            f"  {name:12s} {report.expected[name]:9d} {report.received[name]:9d} "
            f"{report.missing[name]:9d}"
        )
    lines.append(
        f"  duplicate {report.duplicate}, out of range {report.out_of_range}, "
        f"rejected frames {report.total_rejected_frames}"
    )
    for reason, counts in report.rejected.items():
        lines.append(
            f"    rejected {reason}: {counts['messages']} messages, {counts['frames']} frames"
        )
    if report.missing_ranges:
        shown = ", ".join(f"{a}..{b - 1}" for a, b in report.missing_ranges[:8])
        more = " ..." if len(report.missing_ranges) > 8 or report.missing_ranges_truncated else ""
        lines.append(f"  missing frame indices: {shown}{more}")
    if report.sent_by_source is not None:
        lines.append(f"  source says it sent {report.sent_by_source} frames")
    rate = report.timing.get("bytes_per_s")
    fps = report.timing.get("frames_per_s")
    if rate and fps:
        lines.append(f"  {fps:,.0f} frames/s, {rate / 1e6:,.1f} MB/s")
    if not report.complete:
        lines.append("  WARNING: scan is INCOMPLETE; results from it are marked incomplete")
    return "\n".join(lines)

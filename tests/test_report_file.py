"""The JSON run report on a failing disk: an error, and no ``*.json.tmp`` left behind."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from streamer.ingest.report import write_report


def test_a_report_is_written_whole_and_named_after_the_scan(tmp_path: Path) -> None:
    first = write_report({"scan": "a/b", "n": 1}, tmp_path)
    second = write_report({"scan": "a/b", "n": 2}, tmp_path)
    assert (first.name, second.name) == ("a_b.json", "a_b-2.json")
    assert json.loads(second.read_text())["n"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_leaves_no_temporary_report(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    original = Path.write_text

    def half_then_full(self: Path, data: str, *args: object, **kwargs: object) -> int:
        original(self, data[: len(data) // 2])  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_report({"scan": "full", "payload": "x" * 1000}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_no_temporary_report(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("streamer.ingest.report.os.replace", refuse)
    with pytest.raises(OSError, match="Input/output"):
        write_report({"scan": "io"}, tmp_path)
    assert list(tmp_path.iterdir()) == []

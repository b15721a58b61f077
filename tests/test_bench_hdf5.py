"""Smoke test of ``tools/bench_hdf5.py``: every mode runs at a tiny size, twice."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_hdf5.py"


def test_bench_hdf5_runs_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_hdf5", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_hdf5"] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "hdf5.json"
        rc = module.main(["--runs", "2", "--slices", "6", "--size", "32", "--band", "4",
                          "--dir", str(tmp_path / "scratch"), "--json", str(out)])
    finally:
        sys.modules.pop("bench_hdf5", None)
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == set(module.MODES)
    for row in result["modes"].values():
        assert len(row["seconds"]) == 2 and row["gb_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["modes"]["raw"]["median_s"] / result["modes"]["sink"]["median_s"])
    assert result["bytes"] == 6 * 32 * 32 * 4
    assert list((tmp_path / "scratch").iterdir()) == []  # nothing left behind
    assert "sink / raw (throughput ratio) =" in capsys.readouterr().out

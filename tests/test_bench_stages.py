"""Smoke test of ``tools/bench_stages.py``: every case runs at tiny sizes, once."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_stages.py"


def test_bench_stages_runs_every_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_stages", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_stages"] = module  # dataclasses resolve annotations through it
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "stages.json"
        rc = module.main([
            "--runs", "1", "--size", "64", "--frames", "1", "--refs", "1",
            "--sinos", "1", "--angles", "32", "--cols", "64", "--json", str(out),
        ])
    finally:
        sys.modules.pop("bench_stages", None)
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    assert [row["stage"] for row in results] == [case.label for case in module.CASES]
    for row in results:
        assert row["ours"]["units_per_s"] > 0
        assert row["ours"]["cpu_median_s"] >= 0  # the CPU time per call is kept
        assert ("ratio" in row) == (row["peer_name"] != "(TomoPy absent)")
    assert "| stage | block | peer |" in capsys.readouterr().out

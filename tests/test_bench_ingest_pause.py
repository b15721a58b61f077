"""Smoke test of ``tools/bench_ingest_pause.py``: both modes run a few tries (no timing
is asserted: only that every try resumed and the figures are written)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_ingest_pause.py"


def test_bench_ingest_pause_runs_both_modes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_ingest_pause", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest_pause"] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "pause.json"
        assert module.main(["--tries", "2", "--json", str(out)]) == 0
    finally:
        sys.modules.pop("bench_ingest_pause", None)
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["event", "sleep"]
    for row in results.values():
        assert row["tries"] == 2 and 0 <= row["median_ms"] <= row["max_ms"]

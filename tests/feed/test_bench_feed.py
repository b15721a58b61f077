"""Smoke test of ``tools/bench_feed.py`` at a tiny size: every figure is measured."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_feed.py"


def test_bench_feed_measures_every_latency(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_feed", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_feed"] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "feed.json"
        rc = module.main(["--rows", "4", "--cols", "48", "--projections", "40", "--rate", "400",
                          "--scans", "2", "--json", str(out)])
    finally:
        sys.modules.pop("bench_feed", None)
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["preview_per_projection"]["n"] == 80  # every projection of both scans
    for key in ("preview_per_projection", "preview_newest", "last_projection_to_last_slice",
                "last_projection_to_cuts", "last_projection_to_scan_end",
                "last_band_handed_to_slice_sent"):
        stats = result[key]
        assert stats["n"] > 0 and 0 <= stats["median_ms"] <= stats["p95_ms"], (key, stats)
    # The feed's share of the final-slice latency is part of the whole.
    assert (result["last_band_handed_to_slice_sent"]["median_ms"]
            <= result["last_projection_to_last_slice"]["median_ms"])
    assert "| projection arrives → first preview with it sent |" in capsys.readouterr().out

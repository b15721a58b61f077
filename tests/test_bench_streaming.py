"""Smoke test of ``tools/bench_streaming.py``: one tiny run, figures in the JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_streaming.py"


def test_bench_streaming_runs_and_agrees_with_batch(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_streaming", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_streaming"] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "streaming.json"
        rc = module.main(["--size", "64", "--angles", "60", "--rows", "3", "--block", "16",
                          "--runs", "2", "--threads", "1", "--json", str(out)])
    finally:
        sys.modules.pop("bench_streaming", None)
    assert rc == 0
    figures = json.loads(out.read_text())
    assert len(figures["runs"]) == 2
    assert all(run["relative_difference"] < 1e-5 for run in figures["runs"])
    assert figures["latency_ratio"] > 0


def test_bench_streaming_tapers_the_last_block(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_streaming_taper", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "tapered.json"
    rc = module.main(["--size", "48", "--angles", "60", "--rows", "2", "--block", "16",
                      "--last", "3", "--runs", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    run = json.loads(out.read_text())["runs"][0]
    assert 3 <= run["last_block_frames"] < 6  # tapered_block: last … 2·last - 1
    assert run["relative_difference"] < 1e-5


def test_bench_streaming_refuses_bad_sizes() -> None:
    spec = importlib.util.spec_from_file_location("bench_streaming_bad", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--block", "0"]) == 2
    assert module.main(["--last", "0"]) == 2

"""Smoke test of ``tools/bench_e2e.py`` at a tiny size, once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_e2e.py"


def test_bench_e2e_prints_stage_times_wall_and_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("bench_e2e", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--size", "32", "--projections", "40", "--repeats", "1",
                        "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in table.strip("|").split("|")]
    assert len(cells) == 11
    latency = float(cells[-1].removesuffix(" s"))
    assert 0.0 <= latency < 60.0
    assert (tmp_path / "recon.h5").exists() and (tmp_path / "live-0").is_dir()

"""Smoke test of ``tools/bench_reslice.py``: both modes at a tiny size on two MPI ranks
(the tool checks the bands it gets against regenerated frames)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpi.test_launch import mpiexec

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_reslice.py"


@pytest.mark.parametrize("order", [[], ["--arrival-order"]])
def test_bench_reslice_runs_on_two_ranks(tmp_path: Path, order: list[str]) -> None:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
    out = tmp_path / "reslice.json"
    result = subprocess.run(
        [launcher, "-n", "2", sys.executable, str(TOOL), "--rows", "9", "--cols", "8",
         "--projections", "21", "--repeats", "2", "--block", "4", "--json", str(out),
         *order],
        capture_output=True, text=True, timeout=120, check=False, cwd=TOOL.parents[1],
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "ratio raw/reslice:" in result.stdout
    report = json.loads(out.read_text())
    assert report["ranks"] == 2 and report["total_bytes"] == 21 * 9 * 8 * 4
    assert len(report["times_s"]["reslice"]) == len(report["times_s"]["raw"]) == 2
    assert report["ratio"] == pytest.approx(
        report["median_s"]["raw"] / report["median_s"]["reslice"])
    band_bytes = [rank["band_bytes"] for rank in report["memory_per_rank"]]
    assert band_bytes == [21 * 5 * 8 * 4, 21 * 4 * 8 * 4]  # bands of 5 and 4 rows
    for rank in report["memory_per_rank"]:
        assert rank["peak_held_bytes"] >= rank["band_bytes"]
        # with the first index known (the default), frames land in place: no sorting
        assert (rank["assembly_bytes"] > 0) == bool(order)

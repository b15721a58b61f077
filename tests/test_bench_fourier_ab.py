"""Smoke test of ``tools/bench_fourier_ab.py``: a revision against the checkout at a tiny size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_fourier_ab.py"


def test_bench_fourier_ab_compares_a_revision_with_the_checkout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = importlib.util.spec_from_file_location("bench_fourier_ab", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fourier_ab"] = module
    try:
        spec.loader.exec_module(module)
        rc = module.main(["--ref", "HEAD", "--size", "64", "--rows", "3", "--runs", "2",
                          "--threads", "1"])
    finally:
        for name in ("bench_fourier_ab", "fourier_ref", "bench_recon"):
            sys.modules.pop(name, None)
    assert rc == 0
    out = capsys.readouterr().out
    # HEAD's fourier.py and the checkout's agree (the same code, or float32 rounding).
    diff = float(out.split("max |diff| ")[1].split()[0])
    assert diff <= 1e-5
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    sides = [row.split(" | ")[0].strip("| ") for row in rows[1:]]
    assert sides == ["HEAD", "checkout", "bound (bench_recon)", "bound, in place",
                     "bound, strict"]
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        # wall, CPU (ms): numbers; a tiny case may print 0.0 at the table's precision
        assert float(cells[1]) >= 0 and float(cells[2]) >= 0

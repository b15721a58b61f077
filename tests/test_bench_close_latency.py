"""Smoke test of ``tools/bench_close_latency.sh`` with ``BATCH=1`` (issue 19's ratio as defined).

One tiny scan on one rank: the tool streams it through ``run``, saves the same scan with
``simulate --save``, times ``recon`` of that file and prints the table of medians. The test
checks that both figures came, that ``recon``'s volume equals the streamed one (the two
really are the same scan and the same pipeline) and that the ratio is the ratio of the two.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "bench_close_latency.sh"


@pytest.mark.slow
def test_bench_close_latency_batch_ratio_of_the_same_scan() -> None:
    bin_dir = Path(sys.executable).parent
    if shutil.which("bash") is None or not (bin_dir / "tomo-streamer").exists():
        pytest.skip("needs bash and the tomo-streamer entry point beside this interpreter")
    env = {**os.environ, "BATCH": "1", "CASES": "128 4 90 200 0 1",
           "TOMO_STREAMER": str(bin_dir / "tomo-streamer")}
    done = subprocess.run(["bash", str(TOOL), "1"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    latency = re.search(r"^128 ranks=1 new streaming ([0-9.]+) ", out, re.M)
    wall = re.search(r"^128 ranks=1 new recon ([0-9.]+) ", out, re.M)
    assert latency and wall, out
    assert "reconstruction: streaming" in out
    agreement = re.search(r"recon vs run: ([0-9.e+-]+) of the peak", out)
    assert agreement and float(agreement.group(1)) < 1e-5, out
    row = re.search(r"^\| 128 \| 1 \| new \| .* \| ([0-9.]+) s \| .* \| ([0-9.]+) s "
                    r"\| ([0-9.]+) \|$", out, re.M)
    assert row, out
    streamed, batch, ratio = (float(v) for v in row.groups())
    assert streamed == pytest.approx(float(latency.group(1)), abs=0.006)
    assert batch == pytest.approx(float(wall.group(1)), abs=0.006)
    assert ratio == pytest.approx(streamed / batch, abs=0.006)

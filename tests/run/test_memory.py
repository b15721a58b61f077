"""Memory you can state: the peak RSS of ``recon`` on one rank and on each of two MPI ranks
stays within the plan (``plan_scan``: the rank's sinogram band + references + the largest
block) plus what the plan does not count yet (the raw read block, the output slab, the
allocator), measured against the same command on a two-row scan (interpreter, libraries).

The figures are printed (``-s``); the headroom is stated, not tuned to pass: 48 MiB over
the plan on a ~120 MiB plan. A path that held the whole corrected scan a second time
(45 MiB here) or the whole volume (16 MiB) on top of its blocks would use it up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.pipeline.plan import plan_scan
from streamer.run.from_file import ReconSettings, pipeline_for
from streamer.sources.formats import write_nxtomo
from streamer.sources.simulate import SimulatedScan, SimulationConfig

MIB = 2**20
BUDGET_GIB = 0.12
HEADROOM = 48 * MIB
CHILD = ("import resource, sys\nfrom streamer.cli import main\ncode = main(sys.argv[1:])\n"
         "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "flush=True)\nsys.exit(code)\n")


def peaks(scan: Path, out: Path, ranks: int) -> list[int]:
    """Peak RSS in bytes of each rank of ``recon scan -o out``."""
    command = [sys.executable, "-c", CHILD, "recon", str(scan), "-o", str(out), "--center",
               "127.5", "--memory", str(BUDGET_GIB), "--quiet"]
    if ranks > 1:
        launcher = Path(sys.executable).with_name("mpiexec")
        if not launcher.exists():
            pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
        command = [str(launcher), "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = [int(line.split()[1]) * 1024 for line in done.stdout.splitlines()
             if line.startswith("PEAK_RSS_KIB")]
    assert len(found) == ranks, done.stdout
    return found


def planned(rows: int, ranks: int) -> int:
    settings = ReconSettings(Path("x.h5"), center=127.5)
    steps, _ = pipeline_for(settings, "flat_dark")
    *_, memory = plan_scan(steps, rows=rows, cols=256, angles=720, references=30,
                           dtype=np.dtype(np.uint16), budget_bytes=int(BUDGET_GIB * 2**30),
                           band_rows=-(-rows // ranks))
    return memory.total


@pytest.mark.parametrize("ranks", [1, 2])
def test_recon_peak_rss_per_rank_is_within_the_plan(tmp_path: Path, ranks: int) -> None:
    scans = {}
    for rows in (2, 64):
        scans[rows] = tmp_path / f"scan{rows}.nxs"
        write_nxtomo(scans[rows], SimulatedScan(SimulationConfig.from_kwargs(
            rows=rows, cols=256, projections=720)))
    # The two-row run: interpreter and libraries, plus its own (small) plan.
    base = max(peaks(scans[2], tmp_path / "base.h5", ranks)) - planned(2, ranks)
    plan = planned(64, ranks)
    measured = peaks(scans[64], tmp_path / "big.h5", ranks)
    whole_scan = 64 * 720 * 256 * 4
    print(f"\n{ranks} rank(s): plan {plan / MIB:.1f} MiB per rank; peak over the base "
          f"{', '.join(f'{(m - base) / MIB:.1f}' for m in measured)} MiB "
          f"(base {base / MIB:.1f} MiB; corrected scan {whole_scan / MIB:.1f} MiB)")
    for peak in measured:
        assert peak - base <= plan + HEADROOM, (peak - base) / MIB

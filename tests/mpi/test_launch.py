"""Runs the ``mpi``-marked tests under ``mpiexec -n 2`` (MPI from pip: mpi4py + mpich).

Two ranks only: MPICH busy-polls, and CI machines have two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RANKS = 2
TIMEOUT_S = 300


def mpiexec() -> str | None:
    beside_python = Path(sys.executable).with_name("mpiexec")
    return str(beside_python) if beside_python.exists() else shutil.which("mpiexec")


def test_mpi_suite_passes_on_two_ranks(tmp_path: Path) -> None:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
    env = dict(os.environ)
    env["TOMO_MPI_TMP"] = str(tmp_path)
    here = Path(__file__).resolve().parent
    result = subprocess.run(
        [launcher, "-n", str(RANKS), sys.executable, "-m", "pytest", "-m", "mpi", "-q",
         "-p", "no:cacheprovider", "-o", "faulthandler_timeout=200", str(here)],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        cwd=here.parents[1], check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert output.count(" passed") >= RANKS, output[-3000:]

"""The prepared device check, in its ``--dry-run`` form (no device needed): the script
runs end to end, the gpu tests skip cleanly, and the benchmark JSON has every
device-ready stage and the end-to-end recon, with every device figure null."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.backends.xp import gpu_available
from stages.registry import REGISTRY
from tests.conftest import REPO

SCRIPT = REPO / "tools" / "gpu_check.sh"
VENV = Path(sys.prefix)  # this venv: the dry run installs nothing


def test_dry_run_writes_the_json_with_every_device_ready_stage(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--venv", str(VENV), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["gpu_tests_exit_code"] == 0
    ready = {name for name, spec in REGISTRY.items() if spec.device}
    assert {row["stage"] for row in report["stages"]} == ready
    for row in report["stages"]:
        assert row["numpy_s"] > 0 and row["numpy_mpix_s"] > 0
        if not gpu_available():
            assert row["cupy_s"] is None and row["cupy_skipped"] == "no CUDA device"
    overlap = report["overlap"]  # the pinned/streamed copies against copies in turn
    assert overlap["blocks"] == 8
    if not gpu_available():
        assert overlap["overlapped_s"] is None and overlap["skipped"] == "no CUDA device"
    recon = report["recon"]
    assert recon["complete"] is True and recon["gvoxel_s"] > 0
    assert any("sinogram section [fbp]" in line for line in recon["plan"])
    fourier = report["recon_fourier"]  # the fourier_fbp device benchmark, end to end
    assert fourier["reconstructor"] == "fourier_fbp" and fourier["complete"] is True
    assert fourier["gvoxel_s"] > 0 and "peak_device_bytes" in fourier
    assert any("[fourier_fbp]" in line for line in fourier["plan"])
    seconds = report["seconds"]
    assert seconds["budget"] == 480 and seconds["total"] <= seconds["budget"]
    log = (tmp_path / "gpu-tests.log").read_text()
    assert "skipped" in log or gpu_available()
    junit = (tmp_path / "gpu-tests.xml").read_text()  # the new gpu tests are collected
    for name in ("test_cupy_agrees_with_numpy_on_a_phantom",
                 "test_on_a_gpu_the_queued_section_agrees_with_the_host_run",
                 "test_on_a_gpu_the_cupy_band_agrees_with_the_host_band",
                 "test_on_a_gpu_two_ranks_share_the_device_through_the_queue",
                 "test_on_a_gpu_a_cupy_reconstructor_streams"):
        assert name in junit


def test_a_wrong_option_is_refused_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--gpus", "2"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error: gpu_check.sh: expected --out DIR")
    assert done.stderr.count("\n") == 1


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is present")
def test_without_cuda_the_check_fails_loudly_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error: gpu_check.sh: expected a CUDA machine")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "gpu_check.json").exists()


@pytest.mark.skipif(gpu_available(), reason="a CUDA device is present")
def test_the_benchmark_refuses_to_run_without_a_device(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_bench.py"), "--out",
                           str(tmp_path / "x.json")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "use --dry-run" in done.stderr
    assert not (tmp_path / "x.json").exists()

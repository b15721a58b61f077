"""The device side of the memory plan, the rank → device map and the backend switch,
with stated (fake) device sizes: none of this needs a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stages.backends.device import (
    DEVICE_HEADROOM,
    device_budget_bytes,
    device_for_rank,
    ranks_per_device,
    stated_device,
    visible_device_count,
)
from stages.backends.xp import gpu_available
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.plan import (
    block_sizes,
    plan_blocks,
    plan_device_blocks,
    steps_on_device,
)

PIPELINE = """pipeline:
  - method: normalize
  - method: median_filter
    backend: cupy
  - method: minus_log
  - method: gaussian_filter
    parameters: {axis: 1, sigma: 1.0}
  - method: find_center_vo
  - method: fourier_fbp
"""
SHAPE = {"rows": 512, "cols": 1024, "angles": 900, "dtype": np.dtype("uint16")}
GIB = 2**30


def steps() -> Any:
    return parse_pipeline(PIPELINE, REGISTRY, source="p.yaml").steps


@pytest.mark.parametrize(("listed", "detected", "count"), [
    (None, 4, 4), (None, None, 0), ("0,2", 4, 2), ("", 4, 0), ("-1", 4, 0),
    ("1,-1,2", 4, 1), ("0,1,2,3", 2, 2), (" 3 ", None, 1),
])
def test_visible_devices_follow_cuda_visible_devices(listed: str | None, detected: int | None,
                                                     count: int) -> None:
    environ = {} if listed is None else {"CUDA_VISIBLE_DEVICES": listed}
    assert visible_device_count(environ, detected) == count


def test_one_device_per_rank_round_robin_by_local_rank() -> None:
    assert [device_for_rank(rank, {}, 4) for rank in range(6)] == [0, 1, 2, 3, 0, 1]
    two = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert [device_for_rank(rank, two, 8) for rank in range(4)] == [0, 1, 0, 1]
    # ranks 4..7 on a second node of 4 GPUs: the launcher's local rank decides
    assert device_for_rank(5, {"OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 4) == 1
    assert device_for_rank(9, {"SLURM_LOCALID": "3"}, 4) == 3
    assert ranks_per_device(6, {}, 4) == 2 and ranks_per_device(4, two, 8) == 2


def test_no_visible_device_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES='' hides every device") as error:
        device_for_rank(0, {"CUDA_VISIBLE_DEVICES": ""}, 4)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="no CUDA device was detected"):
        device_for_rank(0, {}, None)


def test_device_budget_keeps_headroom_and_splits_between_sharing_ranks() -> None:
    assert device_budget_bytes(100 * GIB) == int(100 * GIB * (1 - DEVICE_HEADROOM))
    assert device_budget_bytes(100 * GIB, sharing=2) == int(100 * GIB * 0.9 / 2)
    for bad in ({"free_bytes": 0}, {"free_bytes": GIB, "sharing": 0}):
        with pytest.raises(ConfigError):
            device_budget_bytes(**bad)
    with pytest.raises(ConfigError, match="size in GiB > 0"):
        stated_device(0)


def test_device_switch_moves_only_device_ready_stages_left_on_numpy() -> None:
    moved = {step.name: step.backend for step in steps_on_device(steps())}
    assert moved == {"normalize": "cupy", "median_filter": "cupy", "minus_log": "cupy",
                     "gaussian_filter": "cupy", "find_center_vo": "numpy",
                     "fourier_fbp": "cupy"}


def test_device_plan_counts_only_device_steps_and_sizes_blocks_from_free_memory() -> None:
    pipeline = steps()
    usable = device_budget_bytes(stated_device(1.0).free_bytes)
    plans = plan_device_blocks(pipeline, **SHAPE, device_bytes=usable)
    assert [plan.steps for plan in plans] == [("median_filter",)]  # gaussian: on numpy
    frame = REGISTRY["median_filter"].memory((1, 512, 1024), SHAPE["dtype"], None)
    # proportional estimate: floor(budget / frame), less gaussian_filter's (axis 1, sigma 1)
    # 4 neighbours on each side that every block of its section gets (ADR 0019)
    assert plans[0].block == usable // frame - 2 * 4
    assert plans[0].peak_bytes <= usable
    on_gpu = plan_device_blocks(steps_on_device(pipeline), **SHAPE, device_bytes=usable)
    assert [plan.steps for plan in on_gpu] == [
        ("normalize", "median_filter", "minus_log", "gaussian_filter"), ("fourier_fbp",)]
    # a bigger device gives bigger blocks; the run takes the smaller of host and device
    bigger = plan_device_blocks(pipeline, **SHAPE, device_bytes=4 * usable)
    assert bigger[0].block > plans[0].block
    host = plan_blocks(pipeline, **SHAPE, budget_bytes=64 * GIB)
    frames, _, both = block_sizes(pipeline, **SHAPE, budget_bytes=64 * GIB, device_bytes=usable)
    assert frames == min(host[0].block, plans[0].block) == plans[0].block
    assert len(both) == len(host) + len(plans)


def test_a_frame_that_cannot_fit_the_device_is_refused_before_the_scan() -> None:
    with pytest.raises(ConfigError, match="usable device memory is") as error:
        plan_device_blocks(steps(), **SHAPE, device_bytes=2**20)
    assert "one frame (with its 4 neighbours on each side) of shape (512, 1024)" in str(error.value)


def test_check_prints_the_device_plan_for_a_stated_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    assert main(["check", str(path), "--frame", "512x1024", "--projections", "900",
                 "--device", "2"]) == 0
    out = capsys.readouterr().out
    assert "device plan (device 0 (stated): 2.0 GiB" in out
    assert "usable 1.8 GiB after 10% headroom" in out
    assert ("projection section [normalize, median_filter, minus_log, gaussian_filter]"
            in out.split("device plan")[1])
    assert "on the host (not device-ready): find_center_vo" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["--device", "0.0001"], "the usable device memory is"),
    (["--device", "many"], "expected a size in GiB or 'auto'"),
])
def test_check_refuses_a_device_that_cannot_hold_a_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    assert main(["check", str(path), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "nothing is printed before the refusal"
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert needle in captured.err


@pytest.mark.skipif(gpu_available(), reason="a CUDA device is present")
def test_gpu_runs_without_a_device_are_refused_in_one_line(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    assert main(["check", str(path), "--device", "auto"]) == 2
    assert "--device auto: expected a CUDA device detected by cupy" in capsys.readouterr().err
    scan = shared_data / "real/aps_tooth/tooth.h5"
    assert main(["recon", str(scan), "-o", str(tmp_path / "o.h5"), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device gpu: expected a usable CUDA device, got none")
    assert err.count("\n") == 1 and not (tmp_path / "o.h5").exists()
    assert main(["run", str(path), "--out", str(tmp_path / "vol"), "--device", "gpu"]) == 2
    assert "--device gpu: expected a usable CUDA device" in capsys.readouterr().err


def test_transfers_are_described_in_one_line_for_the_run_log() -> None:
    from stages.backends.xp import TransferStats

    stats = TransferStats(to_device=3, to_host=2, bytes_to_device=3 * 2**20,
                          bytes_to_host=2**21, seconds_to_device=0.5, seconds_to_host=0.25)
    assert stats.describe() == ("host->device 3 copies, 3.0 MiB in 0.500 s; device->host 2 "
                                "copies, 2.0 MiB in 0.250 s")


def test_the_device_plan_uses_a_stage_s_own_device_estimate() -> None:
    """remove_stripe_based_sorting holds the whole block's sort order on the device
    (9 float32 blocks) but one sinogram at a time through algotom on the host (its
    float64 copies of one sinogram: another estimate, which the device plan must not use)."""
    text = "pipeline:\n  - method: remove_stripe_based_sorting\n    backend: cupy\n"
    pipeline = parse_pipeline(text, REGISTRY, source="p.yaml").steps
    spec = REGISTRY["remove_stripe_based_sorting"]
    shape, dtype = (1, 900, 1024), np.dtype("float32")
    assert spec.device_memory is not None
    one = spec.device_memory(shape, dtype, None)
    assert one == 9 * 900 * 1024 * 4 != spec.memory(shape, dtype, None)
    plans = plan_device_blocks(pipeline, rows=512, cols=1024, angles=900, dtype=dtype,
                               device_bytes=40 * one)
    assert plans[0].block == 40 and plans[0].peak_bytes == 40 * one


@pytest.mark.skipif(gpu_available(), reason="a CUDA device is present")
def test_a_rank_without_a_device_is_refused() -> None:
    from stages.backends.device import detect_device, use_device_for_rank

    assert detect_device() is None
    with pytest.raises(ConfigError, match="rank 3: --device gpu: expected a usable CUDA"):
        use_device_for_rank(3, 4)


def test_plan_scan_takes_the_device_plan_and_counts_host_memory_only() -> None:
    from streamer.pipeline.plan import plan_scan

    pipeline = steps()
    usable = device_budget_bytes(stated_device(1.0).free_bytes)
    host_frames, _, _, host_memory = plan_scan(
        pipeline, **SHAPE, references=20, budget_bytes=64 * GIB)
    frames, _, plans, memory = plan_scan(pipeline, **SHAPE, references=20,
                                         budget_bytes=64 * GIB, device_bytes=usable)
    device_plans = [plan for plan in plans if plan.device]
    assert [plan.steps for plan in device_plans] == [("median_filter",)]
    assert frames == device_plans[0].block < host_frames
    assert memory == host_memory  # the device's blocks are not host memory
    assert device_plans[0].describe().startswith("device: projection section")


def test_the_how_to_s_device_plan_example_is_what_check_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/how-to/gpu-and-backends.md shows `check standard --device 80`: its device lines
    are the command's output (the normalisations now plan on the device)."""
    from tests.conftest import REPO

    assert main(["check", "standard", "--device", "80"]) == 0
    out = capsys.readouterr().out
    howto = (REPO / "docs/how-to/gpu-and-backends.md").read_text()
    shown = howto.split("$ tomo-streamer check standard --device 80\n...\n")[1].split("```")[0]
    for line in shown.strip().splitlines():
        assert line in out, line

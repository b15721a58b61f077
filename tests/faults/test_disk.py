"""Disk faults: the output filesystem fills up, or the output path cannot be written.

A real (small) tmpfs is mounted and filled: no mocked errors. Each case checks the error
is clear (names the file, says "no space" or why it cannot write), nothing already on
the disk is corrupted, what was written is marked incomplete, and the service survives.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from streamer.errors import SinkError
from streamer.sinks import VOLUME_PATH, Hdf5VolumeWriter, TiffStackWriter
from streamer.sinks.disk import RESERVE_BYTES
from streamer.sources.formats import write_nxtomo
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, open_socket
from tests.conftest import RANDOM_LOOPBACK, start_consumer_cli
from tests.faults.conftest import Lines, MountFactory

SLICE = (64, 64)  # 16 KiB float32 slices
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"
JOIN_S = 90.0


def writer_kwargs(n: int, scan: str) -> dict[str, Any]:
    return {"detector_rows": range(n), "slice_shape": SLICE, "angles_deg": np.arange(8.0),
            "center_of_rotation": 31.5, "center_method": "given", "pipeline_yaml": PIPELINE,
            "scan": scan}


def slices(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SLICE)).astype(np.float32)


def fill(folder: Path, leave_bytes: int) -> Path:
    """A file that leaves about ``leave_bytes`` free on the filesystem of ``folder``."""
    import os

    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler.bin"
    filler.write_bytes(b"\0" * max(free - leave_bytes, 0))
    return filler


def previous_volume(folder: Path) -> tuple[Path, np.ndarray]:
    """A complete volume already on the disk before the fault."""
    data = slices(8, seed=1)
    path = folder / "previous.h5"
    with Hdf5VolumeWriter(path, **writer_kwargs(8, "previous")) as writer:
        writer.write(0, data)
    return path, data


def assert_previous_intact(path: Path, data: np.ndarray) -> None:
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is True
        np.testing.assert_array_equal(f[VOLUME_PATH][...], data)


def test_full_disk_refuses_the_band_keeps_earlier_ones_and_recovers(
    small_fs: MountFactory,
) -> None:
    fs = small_fs(4096)
    previous, previous_data = previous_volume(fs)
    filler = fill(fs, leave_bytes=RESERVE_BYTES + 600 * 1024)  # room for ~2 bands of 16
    data = slices(64, seed=2)
    path = fs / "scan.h5"
    writer = Hdf5VolumeWriter(path, **writer_kwargs(64, "scan"))
    written = 0
    with pytest.raises(SinkError) as info:
        for first in range(0, 64, 16):
            writer.write(first, data[first:first + 16])
            written = first + 16
    message = str(info.value)
    assert message.startswith(str(path)) and "no space left on device" in message
    assert f"{written} of 64 slices written" in message
    assert 0 < written < 64
    assert_previous_intact(previous, previous_data)
    with h5py.File(path, "r") as f:  # readable while the writer is still open
        assert bool(f["entry"].attrs["complete"]) is False
        assert f["entry/reconstruction/slice_written"][...].sum() == written
    # space freed (the operator deletes something): the same writer goes on and finishes
    filler.unlink()
    for first in range(written, 64, 16):
        writer.write(first, data[first:first + 16])
    writer.close(complete=True, report={"status": "complete"})
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is True
        np.testing.assert_array_equal(f[VOLUME_PATH][...], data)
    assert_previous_intact(previous, previous_data)


def test_hdf5_failing_itself_freezes_the_file_at_its_last_good_band(
    small_fs: MountFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where free space cannot be known in advance (a filesystem that does not report
    it, or another process filling the disk between check and write), HDF5 itself
    meets ENOSPC: the file must stay as it was after the last good band."""
    fs = small_fs(4096)
    previous, previous_data = previous_volume(fs)
    monkeypatch.setattr("streamer.sinks.hdf5.free_bytes", lambda folder: None)
    fill(fs, leave_bytes=500 * 1024)
    data = slices(64, seed=3)
    path = fs / "scan.h5"
    writer = Hdf5VolumeWriter(path, **writer_kwargs(64, "scan"))
    with pytest.raises(SinkError) as info:
        for first in range(0, 64, 8):
            writer.write(first, data[first:first + 8])
    message = str(info.value)
    assert message.startswith(f"{path}: writing slices") and "No space left on device" in message
    assert "\n" not in message  # h5py's multi-line text is reduced to one reason
    with pytest.raises(SinkError, match="the file is frozen after an earlier failure"):
        writer.write(56, data[56:64])
    writer.close(complete=False, report={"status": "incomplete"})  # nothing more written
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        written = f["entry/reconstruction/slice_written"][...]
        assert 0 < written.sum() < 64
        np.testing.assert_array_equal(f[VOLUME_PATH][...][written], data[written])
    assert_previous_intact(previous, previous_data)


@pytest.mark.parametrize("checked", [True, False])
def test_full_disk_tiff_stack_leaves_whole_slices_only(
    small_fs: MountFactory, monkeypatch: pytest.MonkeyPatch, checked: bool
) -> None:
    fs = small_fs(2048)
    if not checked:  # no free-space figure: tifffile meets the full disk mid-slice
        monkeypatch.setattr("streamer.sinks.tiff.free_bytes", lambda folder: None)
    fill(fs, leave_bytes=RESERVE_BYTES + 300 * 1024 if checked else 300 * 1024)
    data = slices(64, seed=4)
    writer = TiffStackWriter(fs / "stack", **writer_kwargs(64, "stack"))
    with pytest.raises(SinkError, match="writing slice") as info:
        writer.write(0, data)
    assert str(info.value).startswith(str(fs / "stack" / "slice_"))
    if checked:
        assert "no space left on device" in str(info.value)
    names = sorted(p.name for p in (fs / "stack").iterdir())
    assert not [n for n in names if n.endswith(".tmp")]  # no partial slice left behind
    stored = [n for n in names if n.startswith("slice_")]
    assert 0 < len(stored) < 64
    import tifffile

    for name in stored:
        row = int(name[6:11])
        np.testing.assert_array_equal(tifffile.imread(fs / "stack" / name), data[row])
    sidecar = json.loads((fs / "stack" / "volume.json").read_text())
    assert sidecar["complete"] is False


def cli(python: str, env: dict[str, str], *args: str, timeout: float = JOIN_S) -> Any:
    return subprocess.run([python, "-m", "streamer.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def stored_scan(tmp_path: Path, rows: int, cols: int = 128) -> Path:
    path = tmp_path / f"scan_{rows}x{cols}.nxs"
    write_nxtomo(path, SimulatedScan(SimulationConfig(rows=rows, cols=cols, projections=90,
                                                      flats=4, darks=2)))
    return path


def assert_one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_recon_into_a_full_disk_fails_with_one_line(
    tmp_path: Path, small_fs: MountFactory, python: str, cli_env: dict[str, str]
) -> None:
    scan = stored_scan(tmp_path, rows=64)  # 64 slices of 128² float32: 4 MiB
    fs = small_fs(3072)
    out = fs / "recon.h5"
    result = cli(python, cli_env, "recon", str(scan), "-o", str(out), "--center", "63.5",
                 "--sinogram-block", "8", "--quiet")
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(out), "no space left on device")
    with h5py.File(out, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        written = f["entry/reconstruction/slice_written"][...]
        assert 0 < written.sum() < 64
        assert np.isfinite(f[VOLUME_PATH][...][written]).all()


@pytest.mark.parametrize("how", ["under_a_file", "read_only_fs"])
def test_recon_refuses_an_unwritable_output_before_reading_the_scan(
    tmp_path: Path, small_fs: MountFactory, python: str, cli_env: dict[str, str], how: str
) -> None:
    scan = stored_scan(tmp_path, rows=4)
    if how == "under_a_file":
        (tmp_path / "plain.txt").write_text("a file, not a folder")
        out, reason = tmp_path / "plain.txt" / "recon.h5", "plain.txt is a file, not a folder"
    else:
        out, reason = small_fs(64, read_only=True) / "recon.h5", "Read-only file system"
    result = cli(python, cli_env, "recon", str(scan), "-o", str(out), "--quiet")
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(out), "-o/--output: cannot write", reason)
    assert "scan:" not in result.stderr  # refused before the scan was opened


@pytest.mark.parametrize("how", ["under_a_file", "read_only_fs"])
def test_run_refuses_an_unwritable_out_folder_at_startup(
    tmp_path: Path, small_fs: MountFactory, python: str, cli_env: dict[str, str], how: str
) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    if how == "under_a_file":
        (tmp_path / "plain.txt").write_text("a file")
        out, reason = tmp_path / "plain.txt" / "volumes", "plain.txt is a file, not a folder"
    else:
        out, reason = small_fs(64, read_only=True) / "volumes", "Read-only file system"
    result = cli(python, cli_env, "run", str(pipeline), "--out", str(out), "--listen",
                 RANDOM_LOOPBACK)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(out), "--out: cannot write", reason)
    assert "listening on" not in result.stderr  # refused before binding a socket


def test_run_survives_a_full_disk_and_serves_the_next_scan(
    tmp_path: Path, small_fs: MountFactory, python: str, cli_env: dict[str, str],
    context: zmq.Context[Any],
) -> None:
    fs = small_fs(12288)
    out = fs / "volumes"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--out", str(out), "--scans", "3",
        "--center", "63.5", "--sinogram-block", "8", "--idle-timeout", "20", "--quiet")
    assert process.stdout is not None
    lines = Lines(process.stdout)
    push = open_socket(context, "push", Endpoint(address, bind=False), hwm=16,
                       send_timeout_ms=30_000)
    try:
        small = SimulatedScan(SimulationConfig(rows=4, cols=128, projections=90, flats=4,
                                               darks=2))
        send_scan(push, small, SendOptions(scan_id="small"))
        assert "complete)" in lines.wait_for("volume: ")
        filler = fill(fs, leave_bytes=RESERVE_BYTES + 1536 * 1024)
        big = SimulatedScan(SimulationConfig(rows=64, cols=128, projections=90, flats=4,
                                             darks=2))  # 4 MiB of slices: does not fit
        began = time.perf_counter()
        send_scan(push, big, SendOptions(scan_id="big"))
        failed = lines.wait_for("volume: ")
        fail_s = time.perf_counter() - began
        assert "INCOMPLETE" in failed and "no space left on device" in failed
        assert str(out / "big.h5") in failed
        filler.unlink()  # space freed: the service, still up, writes the next scan
        send_scan(push, big, SendOptions(scan_id="again"))
        assert "complete)" in lines.wait_for("volume: ")
        process.wait(timeout=JOIN_S)
    finally:
        push.close()
        process.kill()
        process.wait(timeout=JOIN_S)
        lines.close()
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
    assert process.returncode == 1, stderr  # a scan's output was incomplete
    assert "Traceback" not in stderr
    with h5py.File(out / "small.h5", "r") as f:  # written before the fault, intact
        assert bool(f["entry"].attrs["complete"]) is True
        assert np.isfinite(f[VOLUME_PATH][...]).all()
    with h5py.File(out / "again.h5", "r") as f:
        assert bool(f["entry"].attrs["complete"]) is True
        whole = f[VOLUME_PATH][...]
    with h5py.File(out / "big.h5", "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        written = f["entry/reconstruction/slice_written"][...]
        assert 0 < written.sum() < 64
        # same scan, same reconstruction: the slices written before the disk filled are
        # exactly those of the complete run
        np.testing.assert_array_equal(f[VOLUME_PATH][...][written], whole[written])
    print(f"run: full disk reported {fail_s:.2f} s after the scan was sent")

"""``kill -9`` at the worst moments of creating a volume: the visible path is absent or
opens. The writer runs in a subprocess that announces each point and waits there to be
killed (a hook around the rename), so the kill lands exactly there: no timing involved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.sinks.hdf5 import Hdf5VolumeWriter, temporary_path

WRITER = r"""
import os, sys, time
from pathlib import Path
import numpy as np
import streamer.sinks.hdf5 as hdf5

target, point = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace

def replace(source, destination):
    if point == "before_rename":
        print("at before_rename", flush=True)
        time.sleep(120)
    real_replace(source, destination)
    if point == "after_rename":
        print("at after_rename", flush=True)
        time.sleep(120)

hdf5.os.replace = replace
writer = hdf5.Hdf5VolumeWriter(
    target, detector_rows=range(4), slice_shape=(8, 8), angles_deg=np.arange(5.0),
    center_of_rotation=3.5, center_method="given", pipeline_yaml="pipeline: []",
    scan="crash", overwrite=True)
writer.write(0, np.ones((2, 8, 8), np.float32))
print("at after_band", flush=True)
time.sleep(120)
"""


def kill_at(target: Path, point: str) -> None:
    """Run the writer until it reaches ``point``, then ``kill -9`` it."""
    with subprocess.Popen([sys.executable, "-c", WRITER, str(target), point],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()  # blocks until the writer is there (or dies)
        if line.strip() != f"at {point}":
            process.kill()
            pytest.fail(f"the writer did not reach {point}: {process.stderr.read()}")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_killed_before_the_rename_leaves_no_visible_file(tmp_path: Path) -> None:
    target = tmp_path / "scan.h5"
    kill_at(target, "before_rename")
    assert not target.exists()
    assert temporary_path(target).exists()  # hidden, and replaced by the next writer


def test_killed_before_the_rename_keeps_the_old_file_readable(tmp_path: Path) -> None:
    target = tmp_path / "scan.h5"
    target.write_bytes(b"previous output")
    kill_at(target, "before_rename")  # the writer was told to overwrite
    assert target.read_bytes() == b"previous output"


@pytest.mark.parametrize("point", ["after_rename", "after_band"])
def test_killed_after_the_rename_leaves_a_file_that_opens(tmp_path: Path, point: str) -> None:
    target = tmp_path / "scan.h5"
    kill_at(target, point)
    assert not temporary_path(target).exists()
    with h5py.File(target, "r") as file:
        assert file["entry"].attrs["complete"] == np.False_
        written = file["entry/reconstruction/slice_written"][:]
        assert written.tolist() == ([True, True, False, False] if point == "after_band"
                                    else [False] * 4)
        assert file["entry/reconstruction/data"].shape == (4, 8, 8)


def test_a_writer_after_a_crash_replaces_the_stale_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "scan.h5"
    temporary_path(target).write_bytes(b"left by a killed writer")
    with Hdf5VolumeWriter(target, detector_rows=[0], slice_shape=(2, 2), angles_deg=[0.0],
                          center_of_rotation=0.5, center_method="given",
                          pipeline_yaml="", scan="again") as writer:
        writer.write(0, np.zeros((1, 2, 2), np.float32))
    assert not temporary_path(target).exists()
    with h5py.File(target, "r") as file:
        assert file["entry"].attrs["complete"]


def test_the_visible_path_appears_only_once_the_layout_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "scan.h5"
    seen: list[bool] = []
    real_file = h5py.File

    def watching_file(name: object, *args: object, **kwargs: object) -> h5py.File:
        seen.append(target.exists())  # the moment HDF5 creates a file
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr("streamer.sinks.hdf5.h5py.File", watching_file)
    writer = Hdf5VolumeWriter(target, detector_rows=[0], slice_shape=(2, 2),
                              angles_deg=[0.0], center_of_rotation=0.5,
                              center_method="given", pipeline_yaml="", scan="s")
    writer.close(complete=False)
    assert seen == [False] and target.exists()

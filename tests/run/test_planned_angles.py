"""The planned angles of a streamed scan from its first block, also when that block holds
projections dealt to this rank (not consecutive).

A loaded ``mpiexec -n 2`` run once gave rank 0 frames 8, 10, 12 …: the smallest step was
twice the scan's, the plan held every other angle, and the first angle off it sent the
scan back to reconstruction at close (``tests/mpi/test_mpi_streaming_center.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import StageError
from streamer.run.streaming import _planned_angles

STEP = 2.25
PROJECTIONS = 160


@pytest.mark.parametrize("frames", [
    [8, 9, 10, 11],                # consecutive
    [8, 10, 12, 14, 16],           # every other frame (two ranks)
    [9, 12, 15],                   # every third (three ranks)
    [8, 10, 13, 15],               # dealt unevenly
])
def test_the_plan_is_the_scans_whatever_frames_the_block_holds(frames: list[int]) -> None:
    indices = np.array(frames, dtype=np.int64)
    angles = (indices - 8) * STEP  # 8 reference frames before the first projection
    planned = _planned_angles(angles, PROJECTIONS, indices)
    np.testing.assert_allclose(planned, STEP * np.arange(PROJECTIONS), atol=1e-9)


def test_references_between_two_projections_do_not_shrink_the_step() -> None:
    indices = np.array([8, 9, 20, 21], dtype=np.int64)  # 10 flats after projection 1
    angles = np.array([0, 1, 2, 3]) * STEP
    np.testing.assert_allclose(_planned_angles(angles, PROJECTIONS, indices)[:3],
                               [0.0, STEP, 2 * STEP], atol=1e-9)


def test_without_indices_the_smallest_step_is_the_plans() -> None:
    angles = np.array([2, 4, 6]) * STEP
    assert _planned_angles(angles, PROJECTIONS)[1] == pytest.approx(2 * STEP)


def test_one_angle_cannot_tell() -> None:
    with pytest.raises(StageError, match="one angle"):
        _planned_angles(np.array([4.5]), PROJECTIONS, np.array([10]))

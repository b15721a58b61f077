"""Zinger removal: tomopy's remove_outlier test and a temporal dezinger on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from stages.prep import zinger as zg
from streamer.errors import StageError


def test_remove_outlier_matches_tomopy_dezinger_test(shared_data: Path) -> None:
    path = shared_data / "tomopy_test_data" / "proj.npy"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    proj = np.load(path)
    p = proj.copy()
    p[8][4][6] = 20
    out = zg.remove_outlier(p, dif=10)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, proj, rtol=1e-7)
    assert np.array_equal(out, proj)  # measured: max abs difference 0
    assert p[8][4][6] == 20  # input not modified


def test_remove_outlier_threshold_and_axes() -> None:
    block = np.zeros((3, 5, 5), np.float32)
    block[1, 2, 2] = 10.0
    assert zg.remove_outlier(block, dif=10.0)[1, 2, 2] == 0  # >= dif, as tomopy
    assert zg.remove_outlier(block, dif=10.5)[1, 2, 2] == 10
    for axis in (0, 1, 2):
        out = zg.remove_outlier(block, dif=5, size=3, axis=axis)
        assert not out.any()
    dark_pixel = np.ones((3, 5, 5), np.float32)
    dark_pixel[1, 2, 2] = -50  # only bright outliers are removed
    assert zg.remove_outlier(dark_pixel, dif=5)[1, 2, 2] == -50


def moving_feature(frames: int = 40) -> np.ndarray:
    """A Gaussian blob drifting 0.5 px per frame across a smooth background."""
    rows, cols = 16, 48
    y, x = np.mgrid[:rows, :cols].astype(np.float64)
    stack = []
    for k in range(frames):
        cx = 8 + 0.5 * k
        stack.append(100 + 50 * np.exp(-((x - cx) ** 2 + (y - 8) ** 2) / (2 * 3.0**2)))
    return np.asarray(stack, dtype=np.float32)


def test_dezinger_temporal_finds_zingers_and_keeps_motion() -> None:
    clean = moving_feature()
    rng = np.random.default_rng(1)
    noisy = clean.copy()
    hits = rng.choice(clean.size, size=60, replace=False)
    frame, row, col = np.unravel_index(hits, clean.shape)
    noisy[frame, row, col] += rng.uniform(200, 1000, size=hits.size)
    noisy[0, 3, 3] += 500  # on the first and last frames: mirror edges still find them
    noisy[-1, 4, 4] += 500
    out = zg.dezinger_temporal(noisy, dif=40.0)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    # Every zinger is replaced by a neighbour value: back within the feature's change
    # between adjacent frames (a 50-count blob of sigma 3 px moving 0.5 px per frame
    # changes a pixel by at most 50 * 0.5 / 3 * exp(-1/2) ~ 5 counts per frame).
    max_step = float(np.abs(np.diff(clean, axis=0)).max())
    assert max_step < 6
    assert np.abs(out - clean).max() <= max_step + 1e-3
    # Without zingers the moving feature is left exactly as it was (its frame-to-frame
    # change is far below dif).
    assert np.array_equal(zg.dezinger_temporal(clean, dif=40.0), clean)


def test_dezinger_temporal_edges_and_windows() -> None:
    one = np.ones((1, 2, 2), np.float32)
    out = zg.dezinger_temporal(one, dif=1)
    assert out is not one and np.array_equal(out, one)
    block = np.zeros((7, 1, 1), np.float32)
    block[2:4, 0, 0] = 100  # two frames long: not a zinger for window 3 ...
    assert np.array_equal(zg.dezinger_temporal(block, dif=10, window=3), block)
    assert not zg.dezinger_temporal(block, dif=10, window=5).any()  # ... but is for 5
    with pytest.raises(StageError, match="window: expected an odd integer >= 3, got 4"):
        zg.dezinger_temporal(block, dif=10, window=4)


def test_errors() -> None:
    with pytest.raises(StageError, match="3-D projection block"):
        zg.remove_outlier(np.ones((3, 3)), dif=1)
    with pytest.raises(StageError, match="axis: expected 0, 1 or 2, got 3"):
        zg.remove_outlier(np.ones((3, 3, 3)), dif=1, axis=3)


@pytest.mark.parametrize("spec", zg.SPECS, ids=lambda s: s.name)
def test_specs_params(spec: Any) -> None:
    params = spec.params(dif=1.0)
    assert spec.memory((4, 5, 6), np.dtype(np.float32), params) > 0
    with pytest.raises(ValidationError):
        spec.params()  # dif has no default
    with pytest.raises(ValidationError):
        spec.params(dif=-1.0)


def test_params_aliases_and_ranges() -> None:
    assert zg.RemoveOutlierParams(dif=1, kernel_size=5).size == 5
    assert zg.RemoveOutlierParams(dif=1, size=5).size == 5
    for bad in ({"size": 0}, {"axis": 3}, {"other": 1}):
        with pytest.raises(ValidationError):
            zg.RemoveOutlierParams(dif=1, **bad)
    with pytest.raises(ValidationError):
        zg.DezingerTemporalParams(dif=1, window=1)

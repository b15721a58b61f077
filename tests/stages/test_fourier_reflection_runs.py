"""The gridder reflects only the rows its points reach: the same grid, bit for bit, as
reflecting the whole grid, and about half the rows for the half set of a 180° scan."""

from __future__ import annotations

import finufft
import numpy as np
import pytest

from stages.recon.fourier import (
    _UPSAMPFAC,
    _add_reflected,
    _add_reflected_runs,
    _Geometry,
    _grid_size,
    _Plan,
    _reflected_runs,
)

#: Angle sets: a 180° scan, a 360° scan (merged lines), angles centred on 0° (points at
#: y < 0 too), a short wedge near 0° (few rows), a shuffled irregular set.
ANGLE_SETS = {
    "180": np.arange(90) * 2.0,
    "360": np.arange(120) * 3.0,
    "centred": np.arange(-45, 45) * 2.0,
    "wedge": np.linspace(-4.0, 4.0, 9),
    "irregular": np.random.default_rng(3).permutation(np.random.default_rng(4).uniform(
        -180.0, 360.0, 70)),
}


@pytest.mark.parametrize("name", sorted(ANGLE_SETS))
def test_reflecting_the_reached_rows_equals_reflecting_the_grid(name: str) -> None:
    angles = ANGLE_SETS[name]
    size = 96
    geometry = _Geometry(angles=np.ascontiguousarray(angles, dtype=np.float64).tobytes(),
                         cols=size, size=size, axis=(size - 1) / 2 + 0.3, filter_name="hann",
                         pad=True, circle=False, eps=1e-2)
    lines = _Plan(geometry).lines
    grid = _grid_size(size)
    plan = finufft.Plan(1, (grid, grid), n_trans=2, eps=1e-2, dtype="complex64",
                        spreadinterponly=1, upsampfac=_UPSAMPFAC, nthreads=1)
    plan.setpts(lines.rows_y, lines.cols_x)
    rng = np.random.default_rng(7)
    strengths = (rng.standard_normal((2, lines.points))
                 + 1j * rng.standard_normal((2, lines.points))).astype(np.complex64)
    spread = plan.execute(strengths)
    whole, runs_only = spread[0].copy(), spread[0].copy()
    _add_reflected(whole, spread[1])
    runs = _reflected_runs(lines.rows_y, grid)
    _add_reflected_runs(runs_only, spread[1], runs)
    assert np.array_equal(whole, runs_only)
    # The runs are ordered, disjoint and inside the grid; rows outside them really are
    # untouched by the reflection (their mirrors are zero in the spread).
    flat = [edge for run in runs for edge in run]
    assert flat == sorted(flat) and flat[0] >= 0 and flat[-1] <= grid
    outside = np.ones(grid, dtype=bool)
    for first, end in runs:
        outside[first:end] = False
    assert not np.any(spread[1][(-np.flatnonzero(outside)) % grid])
    reached = sum(end - first for first, end in runs)
    if name == "180":  # the half set lies at y >= 0: about half the rows (+ the reach)
        assert reached <= grid // 2 + 40
    if name == "wedge":  # angles within 4° of the x axis: a narrow band around y = 0
        assert reached < grid // 4

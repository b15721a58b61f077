"""StreamingFbp equals batch fourier_fbp whatever the blocks, and refuses what it cannot do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import finufft
import numpy as np
import numpy.typing as npt
import pytest

from stages.recon.fourier import (
    FourierFbpCache,
    FourierFbpParams,
    _add_reflected,
    fourier_fbp,
)
from stages.recon.streaming import (
    IncompleteScanError,
    StreamingFbp,
    streaming_memory,
    tapered_block,
)
from streamer.errors import StageError
from tests.test_pair_center import i13_scan


def _gaussian_sinogram(
    rows: int, count: int, cols: int, full_deg: float, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Exact projections of a few Gaussian blobs per row (a smooth, non-symmetric object)."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0.0, full_deg, count, endpoint=False)
    theta = np.deg2rad(angles)[:, None]
    x = np.arange(cols) - (cols - 1) / 2
    sino = np.zeros((rows, count, cols), dtype=np.float32)
    for row in range(rows):
        for _ in range(4):
            cx, cy = rng.uniform(-cols / 4, cols / 4, size=2)
            width = rng.uniform(2.0, cols / 8)
            position = cx * np.cos(theta) + cy * np.sin(theta)
            sino[row] += width * np.exp(-((x[None] - position) ** 2) / (2 * width**2))
    return sino, angles


def _relative(got: npt.NDArray[Any], want: npt.NDArray[Any]) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _stream(
    sino: npt.NDArray[np.float32],
    angles: npt.NDArray[np.float64],
    params: FourierFbpParams,
    blocks: list[npt.NDArray[np.intp]],
    rows_early: bool = True,
) -> npt.NDArray[np.float32]:
    band = StreamingFbp(sino.shape[0], sino.shape[2], angles, params, rows_early=rows_early)
    for chosen in blocks:
        band.add(sino[:, chosen], angles[chosen])
    return band.finish()


def _batch(
    sino: npt.NDArray[np.float32], angles: npt.NDArray[np.float64], params: FourierFbpParams
) -> npt.NDArray[np.float32]:
    return fourier_fbp(sino, angles_deg=angles, **params.model_dump())


@pytest.mark.parametrize("rows_early", [True, False])
@pytest.mark.parametrize(
    ("full_deg", "count", "settings"),
    [
        (180.0, 128, {}),  # equally spaced, power of two: angular decimation on
        (180.0, 90, {"filter_name": "hann", "center": 30.7}),
        (360.0, 120, {}),  # repeated lines, merged by the batch call
        (180.0, 64, {"circle_mask": True, "output_size": 41, "pad": False}),
    ],
)
def test_out_of_order_uneven_blocks_equal_batch(
    full_deg: float, count: int, settings: dict[str, Any], rows_early: bool
) -> None:
    sino, angles = _gaussian_sinogram(5, count, 64, full_deg, seed=count)
    params = FourierFbpParams(threads=1, **settings)
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.choice(np.arange(1, count), size=5, replace=False))
    blocks = np.split(rng.permutation(count), cuts)  # uneven sizes, any order
    assert len({block.size for block in blocks}) > 1
    got = _stream(sino, angles, params, blocks, rows_early)
    assert _relative(got, _batch(sino, angles, params)) < 1e-5


def test_in_order_blocks_and_nonuniform_angles_equal_batch() -> None:
    sino, _ = _gaussian_sinogram(4, 100, 48, 180.0, seed=3)
    rng = np.random.default_rng(3)
    angles = np.sort(rng.uniform(0.0, 180.0, size=100))  # irregular: no decimation
    params = FourierFbpParams(threads=2)
    blocks = list(np.array_split(np.arange(100), 7))
    assert _relative(_stream(sino, angles, params, blocks), _batch(sino, angles, params)) < 1e-5


def test_repeated_angles_equal_batch() -> None:
    """0° and 360° (one line, reversed) and a projection taken twice at the same angle."""
    sino, _ = _gaussian_sinogram(3, 122, 40, 360.0, seed=9)
    angles = np.concatenate([np.linspace(0.0, 360.0, 121), [90.0]])
    params = FourierFbpParams(threads=1)
    blocks = list(np.array_split(np.random.default_rng(9).permutation(122), 5))
    assert _relative(_stream(sino, angles, params, blocks), _batch(sino, angles, params)) < 1e-5


def test_one_block_at_a_time_equals_whole() -> None:
    sino, angles = _gaussian_sinogram(3, 40, 32, 180.0, seed=1)
    params = FourierFbpParams(threads=1)
    blocks = [np.array([p]) for p in range(40)][::-1]
    assert _relative(_stream(sino, angles, params, blocks), _batch(sino, angles, params)) < 1e-5


@pytest.mark.parametrize("eps", [1e-2, 1e-4])
@pytest.mark.parametrize("rows_early", [True, False])
def test_narrow_blocks_near_0_and_180_degrees_equal_batch(eps: float, rows_early: bool) -> None:
    """Blocks of a few degrees next to 0° and 180° (and a 1-projection last block) spread
    on a few grid rows only, which are the only ones reflected and transformed."""
    sino, angles = _gaussian_sinogram(3, 180, 64, 180.0, seed=11)
    params = FourierFbpParams(threads=1, eps=eps, center=31.9)
    order = np.arange(180)
    blocks = [order[2:170], order[:2], order[170:176], order[176:179], order[179:]]
    got = _stream(sino, angles, params, blocks, rows_early)
    assert _relative(got, _batch(sino, angles, params)) < 1e-5


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-4])
@pytest.mark.parametrize("chosen", [[0, 1], [179], [178, 179], [88, 89, 90], [44]])
def test_last_block_grids_hold_every_row_a_block_spreads(eps: float, chosen: list[int]) -> None:
    """The last block, spread onto a band of grid rows (y stretched) when it lies next to
    0° or 180°, is the whole grid's spreading there; every row outside ``rows`` stays
    exactly 0 after the reflection (so skipping them changes nothing)."""
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    band = StreamingFbp(2, 512, angles, FourierFbpParams(threads=1, eps=eps))
    band.received[:] = True
    band.received[chosen] = False  # the block that completes the scan
    grid = band.grid
    gridding = band._block_gridding(np.array(chosen, dtype=np.intp), shared=False)
    rng = np.random.default_rng(5)
    entries = gridding.multiplier.shape[1]
    strengths = (rng.standard_normal((2, entries))
                 + 1j * rng.standard_normal((2, entries))).astype(np.complex64)
    got = np.zeros((2, grid, grid), dtype=np.complex64)
    got[:, gridding.offset:gridding.offset + gridding.height] = gridding.plan.execute(strengths)
    whole = finufft.Plan(1, (grid, grid), n_trans=2, eps=eps, dtype="complex64",
                         spreadinterponly=1, upsampfac=1.25, nthreads=1)
    points = band.lines.rows_y, band.lines.cols_x
    table = band.table
    entries_of = np.concatenate([np.arange(table.ptr[p], table.ptr[p + 1]) for p in chosen])
    whole.setpts(np.ascontiguousarray(points[0][table.point[entries_of]]),
                 np.ascontiguousarray(points[1][table.point[entries_of]]))
    want = whole.execute(strengths)
    # The same up to float32 rounding of the stretched coordinates (~1e-5 of a cell).
    assert np.abs(got - want).max() <= 2e-4 * np.abs(want).max()
    _add_reflected(got[0], got[1])
    inside = np.zeros(grid, dtype=bool)
    for first, end in gridding.rows:
        inside[first:end] = True
    assert not np.any(got[0][~inside])
    assert np.any(got[0][inside])
    if chosen[0] in (0, 178, 179):  # a wedge along the x axis: a small part of the rows
        assert inside.sum() < grid / 8
    # A band of rows for a narrow last block only (at most 1/16 of the grid).
    assert (gridding.height < grid) == (chosen in ([0, 1], [179]))
    assert gridding.offset == (grid - gridding.height) // 2


def test_a_block_that_does_not_complete_the_scan_fills_the_whole_grid() -> None:
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    band = StreamingFbp(2, 512, angles, FourierFbpParams(threads=1))
    gridding = band._block_gridding(np.array([179], dtype=np.intp), shared=False)
    assert gridding.height == band.grid and gridding.offset == 0


@pytest.mark.parametrize("last", [[179], [0, 1], [178, 179]])
def test_narrow_last_block_on_a_band_of_rows_equals_batch(last: list[int]) -> None:
    """N = 512: the last block next to 0° or 180° is spread on a band of rows (or the whole
    grid), the volume is batch's."""
    sino, angles = _gaussian_sinogram(3, 180, 512, 180.0, seed=16)
    params = FourierFbpParams(threads=2, center=255.6, filter_name="hann")
    cache = FourierFbpCache()
    band = StreamingFbp(3, 512, angles, params, cache=cache)
    rest = np.setdiff1d(np.arange(180), last)
    for chosen in np.array_split(rest, 3):
        band.add(sino[:, chosen], angles[chosen])
    band.add(sino[:, last], angles[last])
    gridding = band.plan.derived["block"]
    assert (gridding.height < band.grid) == (len(last) < 2 or last[0] == 0)
    assert _relative(band.finish(), _batch(sino, angles, params)) < 1e-5


@pytest.mark.parametrize(("total", "block", "last"), [(1200, 100, 8), (77, 10, 3), (5, 100, 8),
                                                      (1000, 100, 100), (40, 16, 1)])
def test_tapered_blocks_cover_the_scan_and_end_with_last(total: int, block: int,
                                                         last: int) -> None:
    sizes = []
    remaining = total
    while remaining:
        sizes.append(tapered_block(remaining, block, last))
        remaining -= sizes[-1]
    assert sum(sizes) == total
    assert all(0 < size <= block for size in sizes)
    assert min(last, total, block) <= sizes[-1] < 2 * last
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True)  # shrinking toward the end


def test_tapered_blocks_equal_batch() -> None:
    sino, angles = _gaussian_sinogram(3, 120, 48, 180.0, seed=12)
    params = FourierFbpParams(threads=1, filter_name="hann")
    blocks, first = [], 0
    while first < 120:
        size = tapered_block(120 - first, 25, 2)
        blocks.append(np.arange(first, first + size))
        first += size
    assert [block.size for block in blocks[-3:]] == [6, 3, 3]
    assert _relative(_stream(sino, angles, params, blocks), _batch(sino, angles, params)) < 1e-5


def test_tapered_block_refuses_bad_sizes() -> None:
    with pytest.raises(StageError, match="expected remaining >= 0"):
        tapered_block(10, 0, 2)


def test_missing_projection_refused_at_finish() -> None:
    sino, angles = _gaussian_sinogram(2, 32, 32, 180.0, seed=2)
    band = StreamingFbp(2, 32, angles, FourierFbpParams(threads=1))
    band.add(sino[:, :31], angles[:31])
    assert band.missing == 1
    with pytest.raises(IncompleteScanError, match="expected all 32 planned projections, got 31"):
        band.finish()


@pytest.mark.parametrize(
    ("block_shape", "angles", "message"),
    [
        ((2, 1, 32), [1.0], "not in the planned angles"),
        ((2, 1, 32), [0.0], "already received"),
        ((3, 1, 32), [5.625], r"expected \(2, angles, 32\)"),
        ((2, 2, 32), [5.625], "expected 2 angles"),
    ],
)
def test_bad_blocks_refused(
    block_shape: tuple[int, int, int], angles: list[float], message: str
) -> None:
    _, planned = _gaussian_sinogram(2, 32, 32, 180.0, seed=2)
    band = StreamingFbp(2, 32, planned, FourierFbpParams(threads=1))
    band.add(np.zeros((2, 1, 32), dtype=np.float32), np.array([0.0]))
    with pytest.raises(StageError, match=message):
        band.add(np.zeros(block_shape, dtype=np.float32), np.array(angles))


def test_finished_band_refuses_more() -> None:
    sino, angles = _gaussian_sinogram(1, 8, 16, 180.0, seed=4)
    band = StreamingFbp(1, 16, angles, FourierFbpParams(threads=1))
    band.add(sino, angles)
    band.finish()
    with pytest.raises(StageError, match="got a finished one"):
        band.add(sino, angles)


def test_memory_estimate_covers_the_grids() -> None:
    params = FourierFbpParams()
    grids = 8 * 1280 * 1024 * 8  # 16 rows: 8 pairs of 1280 x 1024 complex64 at N = 1024
    output = 16 * 1024 * 1024 * 4
    estimate = streaming_memory(16, 1024, 1200, params)
    assert grids + output < estimate < 2 * (grids + output)
    whole = streaming_memory(16, 1024, 1200, params, rows_early=False)
    assert whole - estimate == 8 * 1280 * (1280 - 1024) * 8


def test_real_scan_i13_blocks_as_they_arrive_equal_batch(shared_data: Path) -> None:
    """The I13 scan (91 projections, -88.2° … 91.8°), 8 middle rows, CoR 85.5, in the
    order and blocks of an acquisition: the same volume as batch."""
    projections, angles = i13_scan(shared_data / "real")
    sino = np.ascontiguousarray(
        np.transpose(projections[:, 60:68], (1, 0, 2)), dtype=np.float32
    )
    params = FourierFbpParams(center=85.5, filter_name="hann", threads=2)
    blocks = list(np.array_split(np.arange(angles.size), 6))
    got = _stream(sino, angles, params, blocks)
    assert _relative(got, _batch(sino, angles, params)) < 1e-5


def test_bands_sharing_a_cache_equal_bands_on_their_own() -> None:
    sino, angles = _gaussian_sinogram(5, 90, 64, 180.0, seed=3)
    params = FourierFbpParams(threads=1, center=32.2)
    cache = FourierFbpCache()
    bands = [StreamingFbp(rows, 64, angles, params, cache=cache) for rows in (3, 2)]
    alone = [StreamingFbp(rows, 64, angles, params) for rows in (3, 2)]
    assert bands[0].table is bands[1].table  # one contribution table for the scan
    for chosen in np.array_split(np.arange(90)[::-1], 4):
        for first, band, own in zip((0, 3), bands, alone, strict=True):
            part = sino[first : first + band.rows, chosen]
            band.add(part, angles[chosen])
            own.add(part, angles[chosen])
    for band, own in zip(bands, alone, strict=True):
        np.testing.assert_array_equal(band.finish(), own.finish())
    # The second band of each block found the first's gridding plan.
    assert cache.blocks_shared == 4

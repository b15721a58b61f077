"""Flat/dark normalisation stages against tomopy's expected outputs and on edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from stages.prep import normalize as nm
from stages.prep.repair import RepairCounts
from stages.spec import StageParams
from streamer.errors import StageError

FLAT_LOC = (0, 4, 8, 12, 16)


def load(shared_data: Path, name: str) -> npt.NDArray[Any]:
    path = shared_data / "tomopy_test_data" / f"{name}.npy"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data: npt.NDArray[Any] = np.load(path)
    return data


def check_output(out: npt.NDArray[Any], shape: tuple[int, ...]) -> None:
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out.shape == shape


# ------------------------------------------------------------ tomopy reference data


def test_normalize_matches_tomopy_exactly(shared_data: Path) -> None:
    tomo, flat, dark = (load(shared_data, n) for n in ("tomo", "flat", "dark"))
    expected = load(shared_data, "normalize")
    out = nm.normalize(tomo, darks=dark, flats=flat)
    check_output(out, tomo.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-7)
    assert np.array_equal(out, expected)  # measured: max abs difference 0


def test_normalize_nf_matches_tomopy(shared_data: Path) -> None:
    tomo, flat_1, dark = (load(shared_data, n) for n in ("tomo", "flat_1", "dark"))
    expected = load(shared_data, "normalize_nf")  # float64 in tomopy
    out = nm.normalize_nf(tomo, darks=dark, flats=flat_1, flat_loc=FLAT_LOC)
    check_output(out, tomo.shape)
    # we return float32: the difference is one float32 rounding (measured 4.5e-8 rel)
    np.testing.assert_allclose(out, expected, rtol=1e-7)


def test_normalize_nf_streamed_blocks_match_whole(shared_data: Path) -> None:
    tomo, flat_1, dark = (load(shared_data, n) for n in ("tomo", "flat_1", "dark"))
    whole = nm.normalize_nf(tomo, darks=dark, flats=flat_1, flat_loc=FLAT_LOC)
    parts = [
        nm.normalize_nf(tomo[a:a + 5], darks=dark, flats=flat_1, flat_loc=FLAT_LOC,
                        projection_indices=np.arange(a, a + len(tomo[a:a + 5])))
        for a in range(0, tomo.shape[0], 5)
    ]
    assert np.array_equal(np.concatenate(parts), whole)


def test_normalize_bg_matches_tomopy_exactly(shared_data: Path) -> None:
    tomo = load(shared_data, "tomo")
    expected = load(shared_data, "normalize_bg")
    out = nm.normalize_bg(tomo)
    check_output(out, tomo.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-7)
    assert np.array_equal(out, expected)


# ---------------------------------------------------------------- normalize options


def synthetic() -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    rng = np.random.default_rng(0)
    darks = rng.integers(90, 110, size=(4, 5, 7)).astype(np.uint16)
    flats = rng.integers(900, 1100, size=(6, 5, 7)).astype(np.uint16)
    block = rng.integers(0, 1200, size=(3, 5, 7)).astype(np.uint16)
    return block, darks, flats


def test_normalize_median_and_zero_darks() -> None:
    block, darks, flats = synthetic()
    out = nm.normalize(block, darks=darks, flats=flats, averaging="median")
    dark = np.median(darks.astype(np.float64), axis=0)
    flat = np.median(flats.astype(np.float64), axis=0)
    np.testing.assert_allclose(out, (block - dark) / (flat - dark), rtol=1e-6)
    no_dark = nm.normalize(block, darks=darks[:0], flats=flats)
    np.testing.assert_allclose(no_dark, block / flats.mean(axis=0), rtol=1e-6)


def test_normalize_cutoff_log_nonnegative_nans() -> None:
    block, darks, flats = synthetic()
    block[0, 0, 0] = 0  # T < 0: no signal, repaired from its row neighbour before -log
    t = nm.normalize(block, darks=darks, flats=flats)
    assert t[0, 0, 0] < 0  # without -log a negative transmission is kept (noise), as tomopy
    clipped = nm.normalize(block, darks=darks, flats=flats, cutoff=1.0)
    assert clipped.max() <= 1.0
    np.testing.assert_array_equal(clipped, np.minimum(t, np.float32(1)))
    repairs = RepairCounts()
    logged = nm.normalize(block, darks=darks, flats=flats, minus_log=True, repairs=repairs)
    assert np.isfinite(logged).all()
    # T <= 0 (pixel [0, 0, 0] and the noise of the random block below the dark) is
    # interpolated along its row from the nearest valid pixels (np.interp: the same line,
    # the nearest value beyond the last valid one)
    bad = t <= 0
    assert bad[0, 0, 0]
    for a, r in zip(*np.nonzero(bad.any(axis=2)), strict=True):
        good = ~bad[a, r]
        expected = np.interp(np.arange(t.shape[2]), np.flatnonzero(good), t[a, r][good])
        np.testing.assert_allclose(logged[a, r], -np.log(expected), rtol=1e-5, atol=1e-6)
    assert repairs.counts == {"no_signal": int(bad.sum())}
    positive = t > 0
    np.testing.assert_allclose(logged[positive], -np.log(t[positive]), rtol=1e-6)
    nonneg = nm.normalize(block, darks=darks, flats=flats, minus_log=True, nonnegative=True)
    assert nonneg.min() >= 0
    # two dead pixels (flat == dark) at the start of row 0: repaired in every frame from
    # the first live pixel of the row, with or without -log (no division by eps)
    dead = flats.copy()
    dead[:, 0, :2] = darks.mean(axis=0)[0, :2]
    repairs = RepairCounts()
    finite = nm.normalize(block, darks=darks, flats=dead, repairs=repairs)
    assert np.isfinite(finite).all()
    np.testing.assert_array_equal(finite[:, 0, 0], finite[:, 0, 2])
    np.testing.assert_array_equal(finite[:, 0, 1], finite[:, 0, 2])
    assert repairs.counts == {"no_signal": 2 * block.shape[0]}


@pytest.mark.parametrize("case", ["zero", "equal", "swapped"])
def test_flats_without_beam_are_refused(case: str) -> None:
    block, darks, flats = synthetic()
    bad = {"zero": np.zeros_like(flats), "equal": darks.copy(), "swapped": darks}[case]
    refs = flats if case == "swapped" else darks
    with pytest.raises(StageError, match=r"flats: expected flat − dark > 0 in most pixels, "
                                         r"got <= 0 in 100 % .*swapped\?"):
        nm.normalize(block, darks=refs, flats=bad)


def test_minus_log() -> None:
    t = np.array([[[1.0, 0.5, 0.0, -1.0]]], dtype=np.float64)
    repairs = RepairCounts()
    out = nm.minus_log(t, repairs=repairs)
    check_output(out, t.shape)
    np.testing.assert_allclose(out[0, 0, :2], [0.0, np.log(2.0)], rtol=1e-7)
    # no signal at the end of the row: the nearest valid value (0.5), never -log(tiny)
    np.testing.assert_allclose(out[0, 0, 2:], [np.log(2.0), np.log(2.0)], rtol=1e-7)
    assert repairs.counts == {"no_signal": 2}


def test_minus_log_interpolates_dead_pixels_between_neighbours() -> None:
    t = np.array([[[0.8, 0.0, np.nan, np.inf, 0.2, 0.4]]], dtype=np.float32)
    out = nm.minus_log(t)
    # 0, NaN and inf between 0.8 (column 0) and 0.2 (column 4): the straight line
    np.testing.assert_allclose(np.exp(-out[0, 0]), [0.8, 0.65, 0.5, 0.35, 0.2, 0.4],
                               rtol=1e-6)
    assert float(out.max()) < 2.0  # not the ≈ 87 of a clamp to the smallest float32


def test_interpolated_flats_linear_between_groups() -> None:
    flats = np.concatenate(
        [np.full((2, 2, 3), 100.0), np.full((2, 2, 3), 200.0)]
    ).astype(np.float32)
    flat_indices = [0, 1, 12, 13]  # groups centred at 0.5 and 12.5
    frames = [0, 2, 6, 8, 12, 13, 20]
    out = nm.interpolated_flats(flats, flat_indices, frames)
    check_output(out, (len(frames), 2, 3))
    weight = np.clip((np.asarray(frames) - 0.5) / 12.0, 0.0, 1.0)
    expected = 100.0 + 100.0 * weight  # 100 up to frame 0.5, 200 from frame 12.5
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-6)
    single = nm.interpolated_flats(flats[:2], [0, 1], frames, averaging="median")
    np.testing.assert_allclose(single, 100.0)


def test_normalize_per_frame_uses_interpolated_flats() -> None:
    block, darks, flats = synthetic()
    per_frame = nm.interpolated_flats(flats, [0, 1, 2, 10, 11, 12], [4, 6, 8])
    out = nm.normalize_per_frame(block, darks=darks, flat_per_frame=per_frame)
    dark = darks.mean(axis=0)
    np.testing.assert_allclose(out, (block - dark) / (per_frame - dark), rtol=1e-5)
    with pytest.raises(StageError, match="flat_per_frame: expected shape"):
        nm.normalize_per_frame(block, darks=darks, flat_per_frame=per_frame[:2])


def test_interpolated_flats_errors() -> None:
    flats = np.ones((2, 2, 3), np.float32)
    with pytest.raises(StageError, match="strictly increasing"):
        nm.interpolated_flats(flats, [1, 1], [0])
    with pytest.raises(StageError, match="flat_indices: expected 2 integers"):
        nm.interpolated_flats(flats, [0], [0])
    with pytest.raises(StageError, match="flat_frames"):
        nm.interpolated_flats(flats[:0], [], [0])


# --------------------------------------------------------------------------- errors


def test_reference_shape_mismatch_message() -> None:
    block, darks, flats = synthetic()
    with pytest.raises(StageError) as err:
        nm.normalize(block, darks=darks, flats=flats[:, :, :4])
    assert str(err.value) == (
        "stage 'normalize': flats: expected shape (n, 5, 7) matching the block's frames, "
        "got (6, 5, 4)"
    )
    with pytest.raises(StageError, match="darks: expected shape"):
        nm.normalize(block, darks=darks[0], flats=flats)
    with pytest.raises(StageError, match="darks: expected an array"):
        nm.normalize(block, darks=None, flats=flats)


def test_no_flats_is_an_error() -> None:
    block, darks, flats = synthetic()
    for fn in (nm.normalize, nm.normalize_nf):
        kwargs: dict[str, Any] = {"flat_loc": [0]} if fn is nm.normalize_nf else {}
        with pytest.raises(StageError, match="flats: expected at least 1 flat frame, got 0"):
            fn(block, darks=darks, flats=flats[:0], **kwargs)


def test_normalize_nf_errors() -> None:
    block, darks, flats = synthetic()
    with pytest.raises(StageError, match="multiple of len"):
        nm.normalize_nf(block, darks=darks, flats=flats, flat_loc=[0, 5, 9, 12])
    with pytest.raises(StageError, match="non-decreasing"):
        nm.normalize_nf(block, darks=darks, flats=flats, flat_loc=[5, 0])


def test_normalize_bg_errors() -> None:
    with pytest.raises(StageError, match=r"air: expected 1 <= air <= 3, got 4"):
        nm.normalize_bg(np.ones((1, 2, 3)), air=4)
    with pytest.raises(StageError, match="at least 2 columns"):
        nm.normalize_bg(np.ones((1, 2, 1)))
    with pytest.raises(StageError, match="3-D projection block"):
        nm.normalize_bg(np.ones((2, 3)))


# ---------------------------------------------------------------- parameter models


@pytest.mark.parametrize("spec", nm.SPECS, ids=lambda s: s.name)
def test_specs_params_defaults_and_memory(spec: Any) -> None:
    if spec.name == "normalize_nf":
        params: StageParams = spec.params(flat_loc=[0, 8])
    else:
        params = spec.params()
    assert spec.memory((4, 5, 6), np.dtype(np.uint16), params) > 0


def test_params_validation_and_aliases() -> None:
    assert nm.NormalizeParams(nonnegativity=True).nonnegative is True
    assert nm.NormalizeParams(nonnegative=True).nonnegative is True
    assert dict(nm.NormalizeParams())["averaging"] == "mean"
    for bad in ({"averaging": "max"}, {"eps": 0}, {"cutoff": -1}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            nm.NormalizeParams(**bad)
    with pytest.raises(ValidationError):
        nm.NormalizeNfParams()  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        nm.NormalizeNfParams(flat_loc=[])
    with pytest.raises(ValidationError):
        nm.NormalizeBgParams(air=0)


def test_spec_run_passes_references(shared_data: Path) -> None:
    tomo, flat, dark = (load(shared_data, n) for n in ("tomo", "flat", "dark"))
    spec = next(s for s in nm.SPECS if s.name == "normalize")
    out = spec.run(
        tomo, spec.params.model_validate({"nonnegativity": False}), darks=dark, flats=flat
    )
    np.testing.assert_array_equal(out, load(shared_data, "normalize"))

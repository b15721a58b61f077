"""Flat/dark normalisation stages against tomopy's expected outputs and on edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from stages.prep import normalize as nm
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
                        frame_offset=a)
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
    block[0, 0, 0] = 0  # T < 0: -log clamps to the floor, result finite
    t = nm.normalize(block, darks=darks, flats=flats)
    clipped = nm.normalize(block, darks=darks, flats=flats, cutoff=1.0)
    assert clipped.max() <= 1.0
    np.testing.assert_array_equal(clipped, np.minimum(t, np.float32(1)))
    logged = nm.normalize(block, darks=darks, flats=flats, minus_log=True)
    assert np.isfinite(logged).all()
    assert logged[0, 0, 0] == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)
    positive = t > 0
    np.testing.assert_allclose(logged[positive], -np.log(t[positive]), rtol=1e-6)
    nonneg = nm.normalize(block, darks=darks, flats=flats, minus_log=True, nonnegative=True)
    assert nonneg.min() >= 0
    # a few dead pixels (flat == dark): denominator clamped to eps, no NaN
    dead = flats.copy()
    dead[:, 0, :2] = darks.mean(axis=0)[0, :2]
    finite = nm.normalize(block, darks=darks, flats=dead, remove_nans=True)
    assert np.isfinite(finite).all()


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
    out = nm.minus_log(t)
    check_output(out, t.shape)
    np.testing.assert_allclose(out[0, 0, :2], [0.0, np.log(2.0)], rtol=1e-7)
    floor = -np.log(np.float32(np.finfo(np.float32).tiny))
    np.testing.assert_allclose(out[0, 0, 2:], [floor, floor], rtol=1e-7)


# ------------------------------------------------------------ interpolated flats


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

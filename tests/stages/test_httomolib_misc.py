"""httomolib(gpu)'s ``data_checker``, ``binary_thresholding`` and
``seam_blend_stitched_data`` against ports of their upstream source (httomolib 4.0.1
``misc/utils.py``/``misc/segm.py``, httomolibgpu ``misc/blend.py``), and the data
checker's findings reaching a run's counts and warnings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.misc.blend import seam_blend_stitched_data
from stages.misc.data_checker import NONFINITE_KEPT, NONFINITE_ZEROED, data_checker
from stages.misc.segm import binary_thresholding, otsu_threshold
from stages.prep.repair import CHECKED, ZEROS, RepairCounts
from stages.registry import REGISTRY
from streamer.errors import StageError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import apply_steps


def _dirty(shape: tuple[int, int, int]) -> np.ndarray[Any, Any]:
    data = np.random.default_rng(3).random(shape, dtype=np.float32) + 0.1
    data[0, 0, :3] = (np.nan, np.inf, -np.inf)
    data[1, 2, 4] = np.nan
    return data


def test_data_checker_zeroes_nonfinite_values_and_counts_them() -> None:
    data = _dirty((3, 5, 6))
    repairs = RepairCounts()
    result = data_checker(data, repairs=repairs)
    expected = np.where(np.isfinite(data), data, 0.0)  # httomolibgpu's remove_nan_inf kernel
    np.testing.assert_array_equal(result, expected)
    assert repairs.counts == {NONFINITE_ZEROED: 4}
    assert np.isnan(data[0, 0, 0]), "input modified"


def test_data_checker_without_correction_counts_what_it_leaves() -> None:
    data = _dirty((3, 5, 6))
    repairs = RepairCounts()
    result = data_checker(data, infsnans_correct=False, repairs=repairs)
    np.testing.assert_array_equal(result, data)
    assert repairs.counts == {} and repairs.observed == {NONFINITE_KEPT: 4}


def test_data_checker_zeros_warning_is_the_runs_warning_at_half_the_values() -> None:
    repairs = RepairCounts()
    data = np.ones((2, 4, 5), dtype=np.float32)
    data[0] = 0.0  # 50 % zeros: httomolib's ">= 50" threshold
    data_checker(data, zeros_warning=True, repairs=repairs)
    assert repairs.observed == {CHECKED: 40, ZEROS: 20} and repairs.counts == {}
    warning = repairs.warning()
    assert warning is not None and "20 of 40 values checked are zero" in warning
    assert repairs.as_dict()["observed"] == {CHECKED: 40, ZEROS: 20}
    assert repairs.as_metadata()["observed_zeros"] == 20
    fewer = RepairCounts()
    data[0, 0, 0] = 1.0
    data_checker(data, zeros_warning=True, repairs=fewer)
    assert fewer.warning() is None


def test_data_checker_reaches_the_counts_through_a_pipeline_in_the_sinogram_section() -> None:
    text = ("- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n"
            "  parameters: {}\n"
            "- method: data_checker\n  module_path: httomolibgpu.misc.utils\n"
            "  parameters: {zeros_warning: true}\n")
    pipeline = parse_pipeline(text, REGISTRY, source="test")
    repairs = RepairCounts()
    data = _dirty((2, 7, 8))
    out = apply_steps(pipeline.steps, data, darks=None, flats=None, repairs=repairs)
    assert np.isfinite(out).all()
    assert repairs.counts == {NONFINITE_ZEROED: 4}
    assert repairs.observed[CHECKED] == data.size


def _skimage_otsu_bruteforce(values: np.ndarray[Any, Any], nbins: int = 256) -> float:
    """Otsu by definition: every bin-centre threshold, the largest between-class variance
    of the histogram (scikit-image's ``threshold_otsu`` on float data)."""
    counts, edges = np.histogram(values.ravel().astype(np.float64), bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_variance = centres[0], -1.0
    for i in range(nbins - 1):
        w1, w2 = counts[: i + 1].sum(), counts[i + 1:].sum()
        if w1 == 0 or w2 == 0:
            continue
        m1 = (counts[: i + 1] * centres[: i + 1]).sum() / w1
        m2 = (counts[i + 1:] * centres[i + 1:]).sum() / w2
        variance = w1 * w2 * (m1 - m2) ** 2
        if variance > best_variance:
            best, best_variance = centres[i], variance
    return float(best)


def test_otsu_matches_its_definition_and_splits_two_modes() -> None:
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.8, 0.05, 1000)])
    threshold = otsu_threshold(data)
    assert threshold == pytest.approx(_skimage_otsu_bruteforce(data))
    assert 0.35 < threshold < 0.65
    assert otsu_threshold(np.full(5, 0.3)) == pytest.approx(0.3)


def test_binary_thresholding_is_httomolibs_mask() -> None:
    data = np.random.default_rng(1).random((3, 6, 7), dtype=np.float32)
    mask = np.zeros(data.shape, dtype=np.uint8)  # httomolib's _get_mask
    mask[data > 0.4] = 1
    np.testing.assert_array_equal(binary_thresholding(data, val_intensity=0.4), mask)
    background = np.zeros(data.shape, dtype=np.uint8)
    background[data <= 0.4] = 1
    np.testing.assert_array_equal(
        binary_thresholding(data, val_intensity=0.4, foreground=False), background)
    otsu = binary_thresholding(data, otsu=True)
    np.testing.assert_array_equal(otsu, (data > otsu_threshold(data)).astype(np.float32))
    assert REGISTRY["binary_thresholding"].params(axis="auto").axis == 1


def _httomolibgpu_blend(data: np.ndarray[Any, Any], overlap: int, seam_index: int,
                        shift_seam_index: int | None) -> np.ndarray[Any, Any]:
    """httomolibgpu's ``seam_blend_stitched_data`` body, in NumPy."""
    seam_index -= shift_seam_index or 0
    angles_dim, det_y, det_x = data.shape
    ramp = np.linspace(0, 1, overlap)
    blended = np.empty((angles_dim, det_y, det_x - overlap), dtype=data.dtype)
    blended[:, :, 0: seam_index - overlap] = data[:, :, 0: seam_index - overlap]
    blended[:, :, seam_index::] = data[:, :, seam_index + overlap:]
    blended[:, :, seam_index - overlap: seam_index] = (
        data[:, :, seam_index - overlap: seam_index] * ramp[::-1]
        + data[:, :, seam_index: seam_index + overlap] * ramp)
    return blended


@pytest.mark.parametrize(("overlap", "seam", "shift"), [(4, 12, None), (3, 10, 2), (1, 5, 0)])
def test_seam_blend_equals_httomolibgpu(overlap: int, seam: int, shift: int | None) -> None:
    data = np.random.default_rng(overlap).random((2, 3, 20), dtype=np.float32)
    expected = _httomolibgpu_blend(data, overlap, seam, shift)
    result = seam_blend_stitched_data(data, overlap=overlap, seam_index=seam,
                                      shift_seam_index=shift)
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_seam_blend_joins_two_views_of_one_ramp_without_a_step() -> None:
    scene = np.linspace(0.0, 1.0, 30, dtype=np.float32)  # one detector row of the object
    left, right = scene[:16], scene[12:]  # the right camera repeats 4 columns
    stitched = np.broadcast_to(np.concatenate([left, right]), (2, 2, 34)).copy()
    result = seam_blend_stitched_data(stitched, overlap=4, seam_index=16)
    np.testing.assert_allclose(result[0, 0], scene, atol=1e-6)


def test_seam_blend_refuses_a_seam_outside_the_frame() -> None:
    with pytest.raises(StageError, match=r"seam 18 .* overlap 4"):
        seam_blend_stitched_data(np.ones((1, 2, 20), np.float32), overlap=4, seam_index=18)
    with pytest.raises(ValueError, match="overlap"):
        REGISTRY["seam_blend_stitched_data"].params()

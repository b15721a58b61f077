"""Angle-local stages really act per projection; which pipelines stream; `check` says so."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from stages.registry import REGISTRY
from stages.spec import Pattern
from streamer.cli import main
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.streaming import streaming_kind

#: Parameters for stages with required ones, plus non-default axes worth checking.
PARAMS: dict[str, dict[str, Any]] = {
    "remove_outlier": {"dif": 0.1},
    "dezinger_temporal": {"dif": 0.1},
    "normalize_nf": {"flat_loc": [0, 5]},
    "pad": {"axis": 2},
    "seam_blend_stitched_data": {"overlap": 3, "seam_index": 8},
    "shift_images": {"sx": [0.1 * k for k in range(10)], "sy": [-0.2 * k for k in range(10)]},
    "distortion_correction_proj": {"xcenter": 7.5, "ycenter": 3.5,
                                   "list_fact": [1.0, 0.0, -1e-3]},
    "distortion_correction_sino": {"ind": "all", "xcenter": 7.5, "ycenter": 3.5,
                                   "list_fact": [1.0, 0.0, -1e-3]},
    "distortion_correction_proj_discorpy": {"xcenter": 7.5, "ycenter": 3.5,
                                            "list_fact": [1.0, 0.0, -1e-3]},
    "rescale": {"window": [0.3, 0.9], "dtype": "uint16"},
}
ANGLE_LOCAL = {
    "normalize_interpolated", "normalize", "normalize_nf", "normalize_bg", "minus_log",
    "remove_outlier", "paganin", "paganin_filter", "paganin_filter_savu_legacy",
    "paganin_filter_httomolib", "median_filter", "gaussian_filter",
    "downsample", "upsample", "binning", "crop", "dark_flat_field_correction", "remove_nan",
    "remove_neg", "adjust_range",
    # issue 16's remaining TomoPy/httomolib methods
    "median_filter_nonfinite", "sobel_filter", "pad", "normalize_roi", "data_checker",
    "binary_thresholding", "seam_blend_stitched_data", "shift_images",
    "distortion_correction_proj", "distortion_correction_proj_discorpy",
    "distortion_correction_sino", "data_reducer",
    # a fixed window, element-wise (ADR 0023)
    "rescale",
}


def _run(name: str, block: np.ndarray[Any, Any], first: int, params: Any) -> np.ndarray[Any, Any]:
    """Run stage ``name`` on ``block`` whose first frame is scan frame ``first``."""
    spec = REGISTRY[name]
    projection = spec.pattern is not Pattern.SINOGRAM  # "all": run on projection blocks
    frame = block.shape[1:] if projection else (block.shape[0], 16)
    angles_axis = 0 if projection else 1
    count = block.shape[angles_axis]
    return spec.run(
        block, params,
        darks=np.full((2, *frame), 0.05, np.float32),
        flats=np.linspace(1.5, 2.5, 4 * frame[0] * frame[1]).reshape(4, *frame).astype(np.float32),
        angles_deg=np.linspace(0.0, 180.0, count, endpoint=False),
        frame_indices=np.arange(first, first + count) + 2,
        flat_indices=np.array([0, 1, 20, 21]),
        projection_indices=np.arange(first, first + count),
    )


def test_declared_angle_local_stages_with_default_parameters() -> None:
    local = {
        name for name, spec in REGISTRY.items()
        if spec.angle_local is True or (
            callable(spec.angle_local)
            and spec.is_angle_local(spec.params.model_validate(PARAMS.get(name, {})))
        )
    }
    assert local == ANGLE_LOCAL


@pytest.mark.parametrize(
    ("name", "settings"),
    [(name, {}) for name in sorted(ANGLE_LOCAL)] + [("circular_mask", {"axis": 1})],
)
def test_angle_local_stage_gives_the_same_frames_one_at_a_time(
    name: str, settings: dict[str, Any]
) -> None:
    spec = REGISTRY[name]
    params = spec.params.model_validate({**PARAMS.get(name, {}), **settings})
    assert spec.is_angle_local(params)
    rng = np.random.default_rng(1)
    if spec.pattern is not Pattern.SINOGRAM:
        block = rng.uniform(0.3, 0.9, size=(10, 16, 16)).astype(np.float32)
        block[3, 5, 5] = 50.0  # an outlier to remove
        whole = _run(name, block, 0, params)
        parts = [_run(name, block[i : i + 1], i, params) for i in range(10)]
        np.testing.assert_allclose(np.concatenate(parts, axis=0), whole, rtol=1e-6, atol=1e-7)
    else:
        block = rng.uniform(0.3, 0.9, size=(4, 10, 16)).astype(np.float32)
        whole = _run(name, block, 0, params)
        parts = [_run(name, block[:, i : i + 1], i, params) for i in range(10)]
        np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "settings"),
    [("median_filter", {"axis": 1}), ("gaussian_filter", {"axis": 2}),
     ("downsample", {"axis": 0}), ("remove_outlier", {"dif": 0.1, "axis": 1}),
     ("circular_mask", {"axis": 0})],
)
def test_axis_across_the_angles_is_not_angle_local(name: str, settings: dict[str, Any]) -> None:
    spec = REGISTRY[name]
    assert not spec.is_angle_local(spec.params.model_validate(settings))


def _kind(body: str) -> Any:
    return streaming_kind(parse_pipeline("pipeline:\n" + body, REGISTRY, source="test").steps)


def test_corrections_then_fourier_fbp_stream() -> None:
    kind = _kind("  - method: normalize\n    parameters: {minus_log: true}\n"
                 "  - method: remove_outlier\n    parameters: {dif: 0.5}\n"
                 "  - method: fourier_fbp\n")
    assert kind.streaming and kind.reconstructor == "fourier_fbp" and not kind.blockers
    assert kind.describe().startswith("reconstruction: streaming (fourier_fbp")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("  - method: minus_log\n  - method: remove_stripe_based_sorting\n"
         "  - method: fourier_fbp\n", "step 2 remove_stripe_based_sorting needs whole sinograms"),
        ("  - method: find_center_vo\n  - method: fourier_fbp\n",
         "step 1 find_center_vo finds the CoR from whole sinograms"),
        ("  - method: dezinger_temporal\n    parameters: {dif: 1}\n  - method: fourier_fbp\n",
         "step 1 dezinger_temporal needs whole sinograms"),
        ("  - method: minus_log\n  - method: fbp\n", "step 2 fbp has no streaming form"),
        ("  - method: minus_log\n  - method: sirt\n", "step 2 sirt has no streaming form"),
    ],
)
def test_whole_sinogram_pipelines_reconstruct_at_close(body: str, reason: str) -> None:
    kind = _kind(body)
    assert not kind.streaming
    assert any(blocker.startswith(reason) for blocker in kind.blockers), kind.blockers
    assert kind.describe().startswith("reconstruction: at close, band by band (")


def test_fourier_fbp_on_the_device_streams_and_other_backends_do_not() -> None:
    """The accumulators live in the reconstructor's array module (numpy or CuPy); a
    backend with no such module reconstructs at close."""
    body = "  - method: minus_log\n  - method: fourier_fbp\n    backend: cupy\n"
    assert _kind(body).streaming
    steps = parse_pipeline("pipeline:\n" + body, REGISTRY, source="test").steps
    elsewhere = (steps[0], replace(steps[1], backend="tomopy"))
    kind = streaming_kind(elsewhere)
    assert not kind.streaming
    assert kind.blockers == ("step 2 fourier_fbp runs on backend 'tomopy' (its streaming "
                             "form runs on cupy or numpy)",)


def test_stages_after_the_reconstructor_do_not_matter() -> None:
    kind = _kind("  - method: minus_log\n  - method: fourier_fbp\n"
                 "  - method: total_variation_rof\n")
    assert kind.streaming


def test_no_reconstructor() -> None:
    kind = _kind("  - method: minus_log\n")
    assert not kind.streaming and kind.reconstructor is None
    assert "none in the pipeline" in kind.describe()


def test_check_prints_the_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "standard", "--frame", "64x64", "--projections", "90"]) == 0
    assert ("reconstruction: at close, band by band (step 4 remove_stripe_based_sorting "
            "needs whole sinograms)") in capsys.readouterr().out

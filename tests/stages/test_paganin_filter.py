"""paganin_filter: Paganin (2002) in httomolibgpu's units, checked against the physics.

(Its exact agreement with httomolibgpu's source is in ``test_paganin_upstream.py``.)

The forward model is written down analytically (no FFT): for a smooth single-material
thickness map t and f = exp(-μ t), the transport-of-intensity equation gives

    I_z / I_0 = f - a ∇²f,   ∇²f = f (μ² |∇t|² - μ ∇²t),   a = z δ / μ = z λ (δ/β) / (4π),

which the stage inverts to μ t when given ``δ/β / 4``: httomolibgpu's reciprocal grid
(kept, for HTTomo users' δ/β) makes its filter about 4× the continuous operator.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from stages.prep.phase import (
    SPECS,
    PaganinFilterParams,
    paganin_filter,
    paganin_filter_kernel_um2,
    paganin_filter_pad,
    wavelength_cm,
)
from stages.registry import REGISTRY
from streamer.errors import StageError

# 20 keV, 6.5 µm pixels, 10 cm, δ/β = 250: a = 1.23e-10 m² ≈ 2.9 pixel².
PIXEL_UM, DIST_M, ENERGY_KEV, RATIO = 6.5, 0.1, 20.0, 250.0
MU_PER_M = 1e4  # μ = 4πβ/λ: β ≈ 4.9e-8, δ ≈ 1.2e-5 at 20 keV
T0_M = 50e-6  # peak thickness: μ t0 = 0.5


def _gaussian_object(
    shape: tuple[int, int], sigma_px: tuple[float, float]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Thickness t (m) of a smooth elliptical blob and the TIE intensity I_z / I_0."""
    h = PIXEL_UM * 1e-6
    y = (np.arange(shape[0]) - 0.5 * shape[0] + 0.3)[:, None] * h
    x = (np.arange(shape[1]) - 0.5 * shape[1] - 0.7)[None, :] * h
    sy, sx = sigma_px[0] * h, sigma_px[1] * h
    t = T0_M * np.exp(-0.5 * (y / sy) ** 2 - 0.5 * (x / sx) ** 2)
    grad2 = t**2 * ((y / sy**2) ** 2 + (x / sx**2) ** 2)
    lap = t * ((y**2 / sy**4 - 1 / sy**2) + (x**2 / sx**4 - 1 / sx**2))
    f = np.exp(-MU_PER_M * t)
    lap_f = f * (MU_PER_M**2 * grad2 - MU_PER_M * lap)
    a = DIST_M * wavelength_cm(ENERGY_KEV) * 1e-2 * RATIO / (4 * math.pi)
    return t, f - a * lap_f


def test_recovers_thickness_of_a_single_material_object() -> None:
    # σ of 3 and 5 pixels: the spectrum of f is negligible at the Nyquist frequency and
    # t < 1e-16 t0 at the frame border, so the edge padding sees flat background. At
    # δ/β / 4 httomolibgpu's filter approximates the continuous inverse up to its grid
    # (spacing 4π/((n-1) pixel) instead of 2π/(n pixel), no zero frequency for even n):
    # measured max |error| 1.04e-3 of μ t0 = 0.5; 2e-3 asserted.
    t, intensity = _gaussian_object((64, 96), (3.0, 5.0))
    assert intensity.min() < 0.5  # a strong phase-contrast signal ...
    assert intensity.max() > 1.01  # ... with its bright fringe above the background
    block = np.stack([intensity, intensity[::-1, ::-1]]).astype(np.float32)
    out = paganin_filter(
        block, pixel_size_um=PIXEL_UM, distance_m=DIST_M, energy_kev=ENERGY_KEV,
        ratio_delta_beta=RATIO / 4,
    )
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == block.shape
    expected = MU_PER_M * t
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=2e-3)
    np.testing.assert_allclose(out[1], expected[::-1, ::-1], rtol=0, atol=2e-3)
    # the test discriminates: without phase retrieval -ln I_z is off by 0.25
    assert np.abs(-np.log(intensity) - expected).max() > 0.2
    # and at the physical δ/β httomolibgpu's filter is 4× too strong: visibly off
    strong = paganin_filter(
        block, pixel_size_um=PIXEL_UM, distance_m=DIST_M, energy_kev=ENERGY_KEV,
        ratio_delta_beta=RATIO,
    )
    assert np.abs(strong[0] - expected).max() > 0.1


def test_filter_depends_on_distance_times_ratio_over_energy() -> None:
    rng = np.random.default_rng(1)
    block = (0.6 + 0.3 * rng.random((2, 20, 24))).astype(np.float32)
    # 20 µm pixels: a ≈ 1.2 pixel², a filter far from saturated (at 1.28 µm it is)
    base = paganin_filter(block, pixel_size_um=20.0, distance_m=1.0, ratio_delta_beta=250.0)
    same = [
        paganin_filter(block, pixel_size_um=20.0, distance_m=2.0, ratio_delta_beta=125.0),
        paganin_filter(block, pixel_size_um=20.0, distance_m=2.0, energy_kev=106.0),  # λ ∝ 1/E
        paganin_filter(block, pixel_size_um=40.0, distance_m=4.0),  # a / pixel² fixed
    ]
    for other in same:
        np.testing.assert_allclose(other, base, rtol=1e-6, atol=1e-6)
    assert np.abs(paganin_filter(block, pixel_size_um=20.0, distance_m=2.0) - base).max() > 1e-3
    # httomolibgpu's alpha in µm²: z λ (δ/β) / (4π), λ(53 keV) = 0.2339 Å
    assert paganin_filter_kernel_um2(1.0, 53.0, 250.0) == pytest.approx(
        1e6 * 0.23393e-4 * 250 / (4 * math.pi), rel=1e-4
    )


def test_constant_frames_give_minus_log() -> None:
    block = np.full((2, 10, 12), 0.5, dtype=np.float32)
    for method in ("next_power_of_2", "next_fast_length"):
        np.testing.assert_allclose(
            paganin_filter(block, calculate_padding_value_method=method),
            np.log(2.0), rtol=1e-6,
        )
    out = paganin_filter(block, calculate_padding_value_method="use_pad_x_y", pad_x_y=(0, 3))
    np.testing.assert_allclose(out, np.log(2.0), rtol=1e-6)


def test_padding_rules_follow_httomolibgpu() -> None:
    assert paganin_filter_pad(16, "next_power_of_2") == (8, 8)  # strictly greater: 32
    assert paganin_filter_pad(20, "next_power_of_2") == (6, 6)
    assert paganin_filter_pad(21, "next_power_of_2") == (5, 6)  # odd: the extra one after
    assert paganin_filter_pad(21, "next_fast_length") == (0, 0)
    assert paganin_filter_pad(14, "next_fast_length") == (0, 0)  # 15: even axis, odd excess lost
    assert paganin_filter_pad(17, "next_fast_length") == (0, 1)
    assert paganin_filter_pad(17, "use_pad_x_y", 4) == (4, 4)


def test_params_aliases_defaults_and_validation() -> None:
    params = PaganinFilterParams.model_validate(
        {"pixel_size": 0.65, "distance": 0.2, "energy": 30, "ratio_delta_beta": 100}
    )
    assert (params.pixel_size_um, params.distance_m, params.energy_kev) == (0.65, 0.2, 30.0)
    defaults = PaganinFilterParams()
    assert (defaults.pixel_size_um, defaults.distance_m, defaults.energy_kev) == (1.28, 1.0, 53.0)
    assert defaults.ratio_delta_beta == 250.0
    for field in ("pixel_size", "distance_m", "energy", "ratio_delta_beta"):
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValidationError, match=field.split("_")[0]):
                PaganinFilterParams.model_validate({field: bad})
    with pytest.raises(ValidationError, match="pad_x_y"):
        PaganinFilterParams(calculate_padding_value_method="use_pad_x_y")
    with pytest.raises(ValidationError, match="pad_x_y"):
        PaganinFilterParams.model_validate({"pad_x_y": [2, 2]})
    with pytest.raises(ValidationError):
        PaganinFilterParams.model_validate({"calculate_padding_value_method": "nearest"})
    with pytest.raises(ValidationError):
        PaganinFilterParams.model_validate({"alpha": 1e-3})
    ok = PaganinFilterParams.model_validate(
        {"calculate_padding_value_method": "use_pad_x_y", "pad_x_y": [3, 5]}
    )
    assert ok.pad_x_y == (3, 5)


def test_function_errors() -> None:
    with pytest.raises(StageError, match="distance_m"):
        paganin_filter(np.ones((1, 4, 4)), distance_m=0.0)
    with pytest.raises(StageError, match="ratio_delta_beta"):
        paganin_filter(np.ones((1, 4, 4)), ratio_delta_beta=-5.0)
    with pytest.raises(StageError, match="3-D"):
        paganin_filter(np.ones((4, 4)))
    with pytest.raises(StageError, match="dtype"):
        paganin_filter(np.ones((1, 4, 4), dtype=np.complex64))
    with pytest.raises(StageError, match="pad_x_y"):
        paganin_filter(np.ones((1, 4, 4)), pad_x_y=(1, 1))


def test_runs_through_the_spec_and_registry() -> None:
    spec = next(s for s in SPECS if s.name == "paganin_filter")
    assert REGISTRY["paganin_filter"] is spec
    assert spec.aliases == ("httomolibgpu.prep.phase.paganin_filter",)
    rng = np.random.default_rng(2)
    block = (0.5 + 0.5 * rng.random((2, 16, 32))).astype(np.float32)
    params = PaganinFilterParams.model_validate({"pixel_size": 1.0, "distance": 0.05})
    out = spec.run(block, params)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == block.shape
    assert np.isfinite(out).all()
    # smoothing: the result varies less than -ln of the input
    assert out.std() < np.log(block).std()
    estimate = spec.memory(block.shape, block.dtype, params)
    assert estimate >= 2 * block.nbytes + 2 * 32 * 64 * 24

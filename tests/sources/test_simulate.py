"""The simulated detector: layout, determinism, noise statistics, defects, validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from scipy import ndimage

from streamer.errors import ConfigError, ScanFormatError
from streamer.sources.simulate import (
    DARK_PATTERN_RMS,
    FULL_SCALE,
    GAIN_CLIP,
    ZINGER_AMPLITUDE,
    ZINGER_MAX_LENGTH,
    SimulatedScan,
    SimulationConfig,
    beam_profile,
)
from streamer.wire.protocol import IMAGE_KEY_DARK, IMAGE_KEY_FLAT, IMAGE_KEY_PROJECTION

#: Variance of rounding to integers (uniform on ±0.5): part of a uint16 reading's noise.
ROUNDING_VAR = 1 / 12


def _scan(**kwargs: Any) -> SimulatedScan:
    return SimulatedScan(SimulationConfig.from_kwargs(**kwargs))


def _first_projection(scan: SimulatedScan) -> int:
    return int(np.flatnonzero(scan.layout.image_keys == IMAGE_KEY_PROJECTION)[0])


# --- layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("scan_range", [180, 360])
@pytest.mark.parametrize("endpoint", [False, True])
def test_layout_with_flats_at_start(scan_range: int, endpoint: bool) -> None:
    scan = _scan(
        rows=4, cols=16, projections=9, flats=3, darks=2,
        scan_range_deg=scan_range, endpoint=endpoint,
    )
    layout = scan.layout
    assert (layout.rows, layout.cols, layout.frames) == (4, 16, 14)
    assert (layout.projections, layout.flats, layout.darks) == (9, 3, 2)
    expected_keys = [IMAGE_KEY_DARK] * 2 + [IMAGE_KEY_FLAT] * 3 + [IMAGE_KEY_PROJECTION] * 9
    assert layout.image_keys.tolist() == expected_keys
    angles = np.linspace(0, scan_range, 9, endpoint=endpoint)
    np.testing.assert_array_equal(layout.angles_deg[5:], angles)
    np.testing.assert_array_equal(layout.angles_deg[:5], 0.0)  # nearest projection: the first
    assert layout.angles_deg[-1] == (scan_range if endpoint else scan_range * 8 / 9)
    assert layout.normalisation == "flat_dark"
    assert layout.geometry.scan_range_deg == scan_range
    assert layout.geometry.cor_px == 7.5
    assert layout.source == "simulate"
    assert layout.dtype == np.dtype("<u2")
    assert layout.metadata["phantom"] == "shepp_logan_3d"
    assert layout.metadata["seed"] == 0


@pytest.mark.parametrize(("flats", "lead", "trail"), [(4, 2, 2), (5, 3, 2), (1, 1, 0)])
def test_layout_with_flats_at_start_and_end(flats: int, lead: int, trail: int) -> None:
    scan = _scan(rows=2, cols=8, projections=6, flats=flats, darks=1, flats_at="start_end",
                 scan_range_deg=360)
    layout = scan.layout
    expected = (
        [IMAGE_KEY_DARK] + [IMAGE_KEY_FLAT] * lead + [IMAGE_KEY_PROJECTION] * 6
        + [IMAGE_KEY_FLAT] * trail
    )
    assert layout.image_keys.tolist() == expected
    last = 360 * 5 / 6
    assert layout.angles_deg[1 + lead + 5] == last
    # Trailing flats carry the last projection's angle, leading ones the first.
    np.testing.assert_array_equal(layout.angles_deg[1 + lead + 6:], last)
    np.testing.assert_array_equal(layout.angles_deg[: 1 + lead], 0.0)


def test_layout_without_flats_asks_for_air_normalisation() -> None:
    scan = _scan(rows=2, cols=8, projections=3, flats=0, darks=0, dtype="float32", cor_px=3.0)
    assert scan.layout.normalisation == "air"
    assert scan.layout.image_keys.tolist() == [IMAGE_KEY_PROJECTION] * 3
    assert scan.layout.dtype == np.dtype("<f4")
    assert scan.layout.geometry.cor_px == 3.0


# --- determinism ------------------------------------------------------------------------

DEFECTIVE = dict(
    rows=6, cols=24, projections=10, flats=4, darks=3, flats_at="start_end",
    zinger_rate=2.0, dead_columns=[2], hot_columns=[20], seed=7,
)


def test_frames_depend_only_on_seed_and_index() -> None:
    scan = _scan(**DEFECTIVE)
    whole = scan.read(0, scan.layout.frames)
    assert whole.shape == (17, 6, 24)
    assert whole.dtype == np.dtype("<u2")
    assert whole.flags.c_contiguous
    # Backwards, in uneven blocks, and from a second instance: the same bytes.
    blocks = [(12, 17), (5, 12), (4, 5), (0, 4)]
    pieces = {start: scan.read(start, stop) for start, stop in blocks}
    again = np.concatenate([pieces[start] for start in sorted(pieces)])
    assert again.tobytes() == whole.tobytes()
    assert _scan(**DEFECTIVE).read(0, 17).tobytes() == whole.tobytes()
    # Frame 9 alone equals frame 9 of the whole read.
    assert scan.read(9, 10).tobytes() == whole[9:10].tobytes()


def test_different_seeds_give_different_frames() -> None:
    first = _scan(**DEFECTIVE).read(0, 17)
    other = _scan(**{**DEFECTIVE, "seed": 8}).read(0, 17)
    for index in range(17):  # every kind of frame differs, darks included
        assert not np.array_equal(first[index], other[index]), index


def test_float32_output_is_the_uint16_reading_before_rounding() -> None:
    as_int = _scan(**DEFECTIVE).read(0, 17).astype(np.float64)
    as_float = _scan(**{**DEFECTIVE, "dtype": "float32"}).read(0, 17)
    assert as_float.dtype == np.dtype("<f4")
    assert not np.array_equal(as_float, np.rint(as_float))  # read noise is not rounded away
    np.testing.assert_allclose(as_float, as_int, rtol=0, atol=0.5 + 1e-2)


def test_bad_reads_are_refused() -> None:
    scan = _scan(rows=2, cols=8, projections=3, flats=1, darks=1)
    with pytest.raises(ScanFormatError, match=r"expected 0 <= start < stop <= 5, got start=3"):
        scan.read(3, 6)
    with pytest.raises(ScanFormatError):
        scan.read(2, 2)
    with scan:
        scan.read(0, 1)
    with pytest.raises(ScanFormatError, match="read after close"):
        scan.read(0, 1)


# --- physics ----------------------------------------------------------------------------


def test_flat_dark_correction_recovers_the_attenuation_within_poisson_noise() -> None:
    """-log((P - D̄)/(F̄ - D̄)) = L + noise whose size Poisson statistics predict.

    A projection pixel expecting N photons reads N(1 + ε) with ε of σ = 1/sqrt(N) (photon
    noise) plus read noise and rounding (σ² + 1/12 counts²); to first order -log of the
    corrected value is L - ε. The standardised errors z must then be N(0, 1): over 8192
    pixels |mean z| < 0.06 (5 standard errors), std z within ±0.05 (6 standard errors of a
    std estimate, 1/sqrt(2n) = 0.008, plus the second-order log term), and no |z| > 6
    (probability ~1e-5 for all pixels together).
    """
    scan = _scan(rows=16, cols=64, projections=8, flats=1, darks=1, dtype="float32", seed=3)
    start = _first_projection(scan)
    stop = scan.layout.frames
    reading = scan.read(start, stop).astype(np.float64)
    truth = scan.attenuation(start, stop)
    dark = scan.mean_dark()
    signal = scan.mean_flat() - dark
    estimate = -np.log((reading - dark) / signal)
    expected_photons = signal * np.exp(-truth)
    sigma = np.sqrt(1 / expected_photons + scan.config.dark_noise**2 / expected_photons**2)
    z = (estimate - truth) / sigma
    assert truth.max() > 1.5  # the phantom is really there
    assert abs(z.mean()) < 0.06
    assert 0.95 < z.std() < 1.05
    assert np.abs(z).max() < 6


def test_peak_attenuation_is_max_attenuation() -> None:
    scan = _scan(rows=64, cols=128, projections=90, flats=0, darks=0, max_attenuation=1.5)
    attenuation = scan.attenuation(0, 90)
    # The detector rows need not sample the peak's plane exactly (z = -0.25 half-widths
    # falls between rows 23 and 24 here): a few percent lower is expected, never higher.
    assert 0.95 * 1.5 <= attenuation.max() <= 1.5 * 1.001
    assert attenuation[:, :, :5].max() == 0 and attenuation[:, :, -5:].max() == 0  # air


def test_ground_truth_matches_the_projections() -> None:
    """At θ = 0 the attenuation integrates the ground truth along y (same scale, same grid).

    Point-sampled voxels (supersample=1) summed along y measure each ellipse's chord to
    within one pixel, so the error is below scale × Σ|value| of the phantom.
    """
    scan = _scan(rows=8, cols=128, projections=4, flats=1, darks=1, max_attenuation=3.0)
    index = _first_projection(scan)
    assert scan.layout.angles_deg[index] == 0.0
    truth = scan.ground_truth(supersample=1)
    assert truth.shape == (8, 128, 128) and truth.dtype == np.float32
    attenuation = scan.attenuation(index, index + 1)[0]
    along_y = truth.astype(np.float64).sum(axis=1)
    # the ground truth's scale: largest density (skull, value 1.0) in attenuation units
    skull = float(truth.max())
    bound = skull * 3.2 + 1e-4  # Σ|value| of the Shepp–Logan ellipsoids is 3.2
    np.testing.assert_allclose(attenuation, along_y, rtol=0, atol=bound)
    assert attenuation.max() > 5 * bound  # a scale error of 20 % would show


def test_flats_follow_the_beam_profile_with_poisson_noise() -> None:
    flats = 40
    scan = _scan(rows=16, cols=64, projections=1, flats=flats, darks=0, seed=5)
    reading = scan.read(0, flats).astype(np.float64)
    mean_flat = scan.mean_flat()
    signal = mean_flat - scan.mean_dark()
    # Expected image: flat_counts × smooth profile × pixel gain (within ±GAIN_CLIP).
    ratio = signal / (scan.config.flat_counts * beam_profile(16, 64))
    assert np.all(np.abs(ratio - 1) <= GAIN_CLIP + 1e-12)
    assert ratio.std() > 0.005  # the fixed gain pattern is there
    # Mean of 40 flats against the model, standardised by the Poisson + read noise.
    variance = (signal + scan.config.dark_noise**2 + ROUNDING_VAR) / flats
    z = (reading.mean(axis=0) - mean_flat) / np.sqrt(variance)
    assert abs(z.mean()) < 5 / 32  # 1024 pixels: 5 standard errors
    assert 0.85 < z.std() < 1.15
    assert np.abs(z).max() < 5.5
    # Per-pixel variance across flats is the Poisson variance (a noise-free flat fails).
    var_ratio = reading.var(axis=0, ddof=1) / (signal + scan.config.dark_noise**2)
    assert 0.9 < var_ratio.mean() < 1.1


def test_beam_profile_varies_smoothly_within_fifteen_percent() -> None:
    profile = beam_profile(64, 128)
    assert profile.min() >= 0.85 - 1e-12 and profile.max() <= 1.15 + 1e-12
    assert profile.max() - profile.min() > 0.25
    assert profile[32].argmax() in range(44, 84)  # brightest near the middle
    assert np.abs(np.diff(profile, axis=1)).max() < 0.01  # smooth: no pixel-scale structure
    assert beam_profile(1, 1).shape == (1, 1)


def test_darks_have_the_configured_offset_and_read_noise() -> None:
    darks = 20
    scan = _scan(rows=16, cols=64, projections=1, flats=0, darks=darks, dark_counts=200.0,
                 dark_noise=4.0, seed=9)
    reading = scan.read(0, darks).astype(np.float64)
    offset = scan.mean_dark()
    assert abs(offset.mean() - 200.0) < 200.0 * DARK_PATTERN_RMS * 5 / 32
    assert 0.5 * DARK_PATTERN_RMS < offset.std() / 200.0 < 1.5 * DARK_PATTERN_RMS
    residual = reading - offset
    expected_sigma = np.sqrt(4.0**2 + ROUNDING_VAR)
    assert abs(residual.mean()) < 5 * expected_sigma / np.sqrt(residual.size)
    # std of 20480 samples: standard error ~0.5 %
    assert abs(residual.std() / expected_sigma - 1) < 0.03


def test_zingers_come_at_the_configured_rate_and_only_in_projections() -> None:
    """Bright clusters per projection ~ Poisson(rate): the total is within 5 σ of its mean.

    A zinger adds at least 0.3 × 65535 counts, far above any flat-field reading here
    (2000 counts × 1.15 × 1.03 + dark); the threshold sits between. Two zingers merging
    into one cluster is rare on 2048 pixels (~1 % of them) and biases the count by less
    than the margin.
    """
    rate, projections = 2.0, 200
    scan = _scan(rows=32, cols=64, projections=projections, flats=30, darks=30,
                 flat_counts=2000.0, zinger_rate=rate, seed=11)
    frames = scan.read(0, scan.layout.frames)
    threshold = 0.2 * FULL_SCALE
    assert ZINGER_AMPLITUDE[0] * FULL_SCALE > threshold > 3 * 2000
    keys = scan.layout.image_keys
    assert not (frames[keys != IMAGE_KEY_PROJECTION] > threshold).any()
    clusters = 0
    for frame in frames[keys == IMAGE_KEY_PROJECTION]:
        labels, count = ndimage.label(frame > threshold, structure=np.ones((3, 3)))
        clusters += count
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            assert sizes.min() >= 1
    expected = rate * projections
    assert abs(clusters - expected) < 5 * np.sqrt(expected)
    # Zingers are short streaks, not single pixels only and never long.
    bright = (frames[keys == IMAGE_KEY_PROJECTION] > threshold).sum()
    assert clusters < bright < clusters * ZINGER_MAX_LENGTH


def test_no_zingers_by_default() -> None:
    scan = _scan(rows=16, cols=32, projections=50, flats=0, darks=0, flat_counts=2000.0)
    assert scan.read(0, 50).max() < 0.2 * FULL_SCALE


def test_dead_and_hot_columns_show_in_every_projection() -> None:
    dead, hot = 6, 40
    scan = _scan(rows=16, cols=64, projections=12, flats=2, darks=2, dead_columns=[dead],
                 hot_columns=[hot], seed=2)
    frames = scan.read(0, scan.layout.frames).astype(np.float64)
    keys = scan.layout.image_keys
    dark_level = scan.mean_dark()
    noise = scan.config.dark_noise
    for frame in frames[keys == IMAGE_KEY_PROJECTION]:
        # dead: only the dark level, no photons at all
        assert np.all(np.abs(frame[:, dead] - dark_level[:, dead]) < 6 * noise + 1)
        assert np.all(frame[:, dead - 1] > 10 * dark_level[:, dead - 1])
        # hot: four times the gain, or saturated; at least twice the dimmer neighbour
        # (not the brighter one: at the skull's edge a neighbour may see open beam)
        neighbours = np.minimum(frame[:, hot - 1], frame[:, hot + 1])
        assert np.all((frame[:, hot] > 2 * neighbours) | (frame[:, hot] == FULL_SCALE))
    # Hot columns saturate in the open beam.
    assert np.all(frames[keys == IMAGE_KEY_FLAT][:, :, hot] == FULL_SCALE)
    assert scan.layout.metadata["dead_columns"] == "6"
    assert scan.layout.metadata["hot_columns"] == "40"


def test_off_centre_rotation_axis_moves_the_sinogram() -> None:
    centred = _scan(rows=4, cols=64, projections=2, flats=0, darks=0)
    shifted = _scan(rows=4, cols=64, projections=2, flats=0, darks=0, cor_px=31.5 + 4)
    a = centred.attenuation(0, 2)
    b = shifted.attenuation(0, 2)
    # Same phantom size is not guaranteed (the radius shrinks with the offset), but the
    # centroid of every row moves by the CoR shift.
    cols = np.arange(64)

    def centroid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        weighted: npt.NDArray[np.float64] = (x * cols).sum(axis=-1) / x.sum(axis=-1)
        return weighted

    np.testing.assert_allclose(centroid(b) - centroid(a), 4.0, atol=0.2)


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, r"^simulate\.rows: must be >= 1, got 0$"),
        ({"cols": 70000}, r"^simulate\.cols: must be <= 65536, got 70000$"),
        ({"rows": True}, r"^simulate\.rows: must be an integer, got True$"),
        ({"rows": 8.0}, r"^simulate\.rows: must be an integer, got 8\.0$"),
        ({"projections": 0}, r"^simulate\.projections: must be >= 1, got 0$"),
        ({"flats": -1}, r"^simulate\.flats: must be >= 0, got -1$"),
        ({"flats_at": "middle"}, r"^simulate\.flats_at: must be one of .*start_end.*'middle'$"),
        ({"scan_range_deg": 90}, r"^simulate\.scan_range_deg: must be one of 180 or 360"),
        ({"flat_counts": 0}, r"^simulate\.flat_counts: must be > 0, got 0$"),
        ({"max_attenuation": float("nan")}, r"^simulate\.max_attenuation: must be finite"),
        ({"dark_noise": -1.0}, r"^simulate\.dark_noise: must be >= 0"),
        ({"zinger_rate": -0.5}, r"^simulate\.zinger_rate: must be >= 0"),
        ({"dtype": "uint8"}, r"^simulate\.dtype: must be one of 'uint16' or 'float32'"),
        ({"seed": -1}, r"^simulate\.seed: must be >= 0, got -1$"),
        ({"block": 8}, r"^simulate\.block: unknown field \(allowed: rows, cols, .*\), got 8$"),
        ({"cols": 128, "dead_columns": [128]},
         r"^simulate\.dead_columns: columns must be in 0 … 127 \(cols = 128\), got \[128\]$"),
        ({"hot_columns": [3, 3]}, r"^simulate\.hot_columns: each column may be listed only once"),
        ({"dead_columns": [3], "hot_columns": [3, 4]},
         r"^simulate\.hot_columns: columns \[3\] are also listed in dead_columns"),
        ({"dead_columns": [True]}, r"^simulate\.dead_columns\[0\]: must be an integer, got True$"),
        ({"cols": 100, "cor_px": 95.0},
         r"^simulate\.cor_px: must lie within 45 px of the detector centre 49\.5 "
         r"\(from 4\.5 to 94\.5\) so that the phantom fits, got 95\.0$"),
        ({"projections": 9_999_990, "flats": 20},
         r"^simulate: projections \+ flats \+ darks: must be <= 10000000 frames, got 10000020$"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimulationConfig.from_kwargs(**kwargs)


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError, match=r"simulate\.rows: .*; simulate\.darks: must be >= 0"):
        SimulationConfig.from_mapping({"rows": 0, "darks": -2})


def test_direct_construction_raises_pydantic_errors_and_is_frozen() -> None:
    with pytest.raises(ValidationError):
        SimulationConfig(rows=0)
    config = SimulationConfig.from_kwargs(dead_columns=[1, 2])
    assert config.dead_columns == (1, 2)
    assert config.frames == 180 + 20 + 10
    assert config.centre_of_rotation == 63.5
    with pytest.raises(ValidationError):
        config.rows = 3  # type: ignore[misc]

"""paganin against tomopy.prep.phase.retrieve_phase (README B: rtol 1e-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.prep.phase import SPECS, PaganinParams, pad_width, paganin, paganin_transfer
from streamer.errors import StageError


def test_matches_tomopy_retrieve_phase(shared_data: Path) -> None:
    root = shared_data / "tomopy_test_data"
    out = paganin(np.load(root / "proj.npy"))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, np.load(root / "retrieve_phase.npy"), rtol=1e-6)


def test_padding_rule_and_filter() -> None:
    # Fresnel width ceil(π λ dist / pixel²) = 98 pixels at the defaults.
    assert pad_width(8, 1e-4, 50.0, 20.0) == 60  # 8 + 98 -> 128
    assert pad_width(48, 1e-4, 50.0, 20.0) == 104  # 48 + 98 -> 256
    even = paganin_transfer((8, 8), 1e-4, 50.0, 20.0, 1e-3)
    assert even[0, 0] == 1.0 and even.max() == 1.0 and even.min() > 0
    # TomoPy arranges the grid with fftshift (not ifftshift): for an odd size the peak
    # lands on the last index, not on the zero frequency.
    odd = paganin_transfer((9, 9), 1e-4, 50.0, 20.0, 1e-3)
    assert odd[-1, -1] == 1.0 and odd[0, 0] < 1.0


def test_constant_frames_pass_unchanged() -> None:
    block = np.full((3, 10, 12), 0.7, dtype=np.float32)
    np.testing.assert_allclose(paganin(block), block, rtol=1e-6)
    np.testing.assert_allclose(paganin(block, pad=False), block, rtol=1e-6)


def test_smooths_and_conserves_mean_without_padding() -> None:
    rng = np.random.default_rng(0)
    block = rng.random((2, 16, 16)).astype(np.float32)
    out = paganin(block, pad=False, alpha=1e-3)
    assert out.std() < 0.5 * block.std()
    # even sizes: the filter's peak (1) is at the zero frequency, so each mean is kept
    np.testing.assert_allclose(out.mean(axis=(1, 2)), block.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_size": 0.0}, "pixel_size"),
        ({"energy": -1.0}, "energy"),
        ({"alpha": float("nan")}, "alpha"),
    ],
)
def test_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(StageError, match=match):
        paganin(np.ones((1, 4, 4)), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(StageError, match="3-D"):
        paganin(np.ones((4, 4)))


def test_memory_counts_padded_scratch() -> None:
    spec = SPECS[0]
    small = spec.memory((4, 8, 48), np.dtype(np.float32), PaganinParams(pad=False))
    padded = spec.memory((4, 8, 48), np.dtype(np.float32), PaganinParams())
    assert padded > small > 2 * 4 * 8 * 48 * 4

"""Stage memory estimates against the peak NumPy really allocates (tracemalloc).

The memory plan sizes blocks from each stage's ``memory(shape, dtype, params)``; an
estimate below the real peak lets a block outgrow the budget (H65 found the 3-D median
at 1.6 MiB estimated against 97 MiB allocated). tracemalloc sees every NumPy buffer, so
the peak is exact and deterministic for a given shape and parameters. The estimate must
cover it (input included) and stay within 1.6× of it plus 1 MiB, so that it is not a
blanket either. Buffers allocated outside NumPy (pocketfft's work space) are not seen.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from stages.registry import REGISTRY

CASES: tuple[tuple[str, tuple[int, int, int], dict[str, Any], str], ...] = (
    # the 3-D median: neighbour stack of whole planes, of row bands, and the dif phase
    ("median_filter3d", (16, 90, 64), {"kernel_size": 9}, "float32"),
    ("median_filter3d", (12, 64, 64), {"kernel_size": 3}, "float32"),
    ("median_filter3d", (2, 96, 96), {"kernel_size": 13}, "float32"),  # row bands
    ("median_filter3d", (4, 128, 128), {"kernel_size": 3, "dif": 0.1}, "uint16"),
    ("remove_outlier3d", (24, 96, 96), {"kernel_size": 5}, "float32"),
    ("remove_outlier3d", (3, 48, 48), {"kernel_size": 13}, "uint16"),
    # Paganin variants: one chunk of padded frames, several chunks, other paddings
    ("paganin_filter", (4, 64, 64), {}, "float32"),
    ("paganin_filter", (8, 100, 120), {"calculate_padding_value_method": "next_fast_length"},
     "uint16"),
    ("paganin_filter_savu_legacy", (6, 90, 64), {}, "float32"),
    ("paganin_filter_httomolib", (6, 90, 64), {}, "float32"),
    ("paganin", (4, 64, 64), {}, "float32"),
    ("paganin", (20, 200, 200), {}, "float32"),
    # Vo's stripe methods (algotom): float64 sinogram copies, few sinograms a block
    ("remove_stripe_based_sorting", (2, 900, 300), {"size": 51}, "float32"),
    ("remove_stripe_based_filtering", (4, 360, 512), {}, "uint16"),
    ("remove_stripe_based_fitting", (2, 900, 300), {}, "float32"),
    ("remove_stripe_based_fitting", (8, 180, 256), {}, "float32"),
    ("remove_dead_stripe", (8, 180, 256), {}, "float32"),
    ("remove_large_stripe", (2, 900, 300), {}, "float32"),
    ("remove_all_stripe", (16, 90, 64), {}, "float32"),
    ("remove_all_stripe", (4, 360, 512), {}, "float32"),
    # Raven's filter: the whole padded block through complex64 FFTs
    ("raven_filter", (16, 90, 64), {}, "float32"),
    ("raven_filter", (2, 900, 300), {"pad_x": 50}, "uint16"),
)


def _measured_peak(name: str, block: np.ndarray[Any, Any], params: Any) -> int:
    """Bytes at the stage's peak: the input block plus what the call allocates."""
    tracemalloc.start()
    try:
        REGISTRY[name].run(block, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak) + block.nbytes


@pytest.mark.parametrize(("name", "shape", "kwargs", "dtype"), CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}-{c[3]}" for c in CASES])
def test_estimate_covers_the_measured_peak(name: str, shape: tuple[int, int, int],
                                           kwargs: dict[str, Any], dtype: str) -> None:
    spec = REGISTRY[name]
    params = spec.params(**kwargs)
    rng = np.random.default_rng(7)
    if dtype == "uint16":
        block = rng.integers(1000, 4000, shape, dtype=np.uint16)
    else:
        block = (0.5 + 0.5 * rng.random(shape, dtype=np.float32)).astype(np.float32)
    peak = _measured_peak(name, block, params)
    estimate = spec.memory(shape, block.dtype, params)
    assert estimate >= peak, f"{name}: estimate {estimate} B below the measured {peak} B"
    assert estimate <= 1.6 * peak + (1 << 20), f"{name}: estimate {estimate} B, peak {peak} B"


def test_median3d_row_bands_give_the_whole_plane_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunking that bounds the neighbour stack does not change the median."""
    from stages.prep import httomo_prep

    block = np.random.default_rng(3).random((5, 23, 16), dtype=np.float32)
    whole = httomo_prep.median3d(block, 3)
    assert httomo_prep.median_chunk(block.shape, 3) == (5, 23)
    monkeypatch.setattr(httomo_prep, "MEDIAN_STACK_BYTES", 27 * 4 * 16 * 5)  # 5-row bands
    assert httomo_prep.median_chunk(block.shape, 3) == (1, 5)
    np.testing.assert_array_equal(httomo_prep.median3d(block, 3), whole)
    monkeypatch.setattr(httomo_prep, "MEDIAN_STACK_BYTES", 27 * 4 * 23 * 16 * 2)  # 2 planes
    assert httomo_prep.median_chunk(block.shape, 3) == (2, 23)
    np.testing.assert_array_equal(httomo_prep.median3d(block, 3), whole)

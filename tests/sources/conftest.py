"""Fixtures for the stored-scan loaders: the real scans and small synthetic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

#: The repository is ``<x>/main``; the real scans are in ``<x>/shared/data``.
DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL = DATA_ROOT / "real"


@pytest.fixture
def real() -> Path:
    """``shared/data/real`` (skips with the reason when the data are not present)."""
    if not REAL.is_dir():
        pytest.skip(f"real scans not found at {REAL} (see shared/data/README.md)")
    return REAL


@pytest.fixture
def frames() -> np.ndarray:
    """A tiny deterministic stack: 12 frames of 4x5 uint16, distinct values."""
    return np.arange(12 * 4 * 5, dtype=np.uint16).reshape(12, 4, 5)

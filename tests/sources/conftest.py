"""Fixtures for the stored-scan loaders: the real scans and small synthetic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def real(shared_data: Path) -> Path:
    """``shared/data/real`` (the ``shared_data`` fixture skips when it is absent)."""
    return shared_data / "real"


@pytest.fixture
def frames() -> np.ndarray:
    """A tiny deterministic stack: 12 frames of 4x5 uint16, distinct values."""
    return np.arange(12 * 4 * 5, dtype=np.uint16).reshape(12, 4, 5)

"""Public APIs raise the project's errors (``streamer.errors``), not bare ValueError."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import ConfigError, ScanFormatError
from streamer.ingest.state import IngestState
from streamer.ingest.store import FrameStore
from streamer.sources.memory import ArrayScan


def test_array_scan_refuses_bad_shapes_with_a_scan_format_error() -> None:
    with pytest.raises(ScanFormatError, match=r"frames: expected a 3-D"):
        ArrayScan(np.zeros((4, 4), np.uint16), [0] * 4, [0.0] * 4)
    with pytest.raises(ScanFormatError, match=r"image_keys: expected 2 entries"):
        ArrayScan(np.zeros((2, 4, 4), np.uint16), [0] * 3, [0.0] * 3)


def test_ingest_settings_out_of_range_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"idle_timeout_s: expected > 0, got 0"):
        IngestState(0)
    with pytest.raises(ConfigError, match=r"capacity_bytes: expected >= 1, got 0"):
        FrameStore(0)

"""TomoPy's entropy CoR search (``tomopy.recon.rotation.find_center``): its cost against a
port of TomoPy's ``_find_center_cost`` histogram, on a simulated scan with a known axis,
and on the three real scans through the CoR policy (truths 295.0, 85.5, 12.5 from
/work/shared/data/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stages.recon.center_policy import LOW_CONFIDENCE
from stages.recon.center_tomopy import (
    FindCenterEntropyParams,
    center_by_entropy,
    entropy_center,
    slice_entropy,
)
from stages.registry import REGISTRY
from streamer.pipeline.config import parse_pipeline
from tests.stages.test_center_policy import TRUTH, projections


def test_cost_is_tomopys_histogram_entropy() -> None:
    rec = np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32)
    hmin, hmax = -8.0, 8.0
    hist, _ = np.histogram(rec, bins=64, range=[hmin, hmax])  # tomopy's _find_center_cost
    hist = hist.astype("float32") / rec.size + 1e-12
    assert slice_entropy(rec, hmin, hmax) == pytest.approx(float(-np.dot(hist, np.log2(hist))))


def _disc_scan(center: float, cols: int = 96, angles: int = 120) -> tuple[Any, Any]:
    """Parallel projections of two uniform discs rotating about column ``center``."""
    theta = np.linspace(0.0, np.pi, angles, endpoint=False)
    u = np.arange(cols) - center
    sino = np.zeros((angles, cols), np.float64)
    for (x0, y0, radius, value) in ((8.0, -5.0, 20.0, 1.0), (-15.0, 10.0, 7.0, 2.0)):
        offset = x0 * np.cos(theta) + y0 * np.sin(theta)
        d = u[None, :] - offset[:, None]
        sino += value * 2 * np.sqrt(np.clip(radius**2 - d**2, 0, None))
    return sino.astype(np.float32), np.degrees(theta)


@pytest.mark.parametrize("truth", [45.0, 50.5])
def test_entropy_search_finds_a_simulated_axis(truth: float) -> None:
    sino, angles = _disc_scan(truth)
    found, calls = entropy_center(sino, angles, init=truth + 3)
    assert found == pytest.approx(truth, abs=0.75)
    assert calls >= 3


@pytest.mark.parametrize("scan", ["tooth", "i13", "diad"])
def test_template_parameters_on_the_real_scans(shared_data: Path, scan: str) -> None:
    data, angles = projections(shared_data, scan)
    estimate = center_by_entropy(data, angles, FindCenterEntropyParams())
    assert estimate.center == pytest.approx(TRUTH[scan], abs=1.0)
    if scan == "diad":  # 26 columns: the entropy minimum (13.98) is off; the policy's is used
        assert estimate.method.endswith("(entropy disagreed)")
        assert any("disagree" in w for w in estimate.warnings)
    else:  # 296.0 and 86.0: within the policy's tolerance of its own estimate
        assert estimate.method.startswith("entropy+")
        assert estimate.warnings == () and estimate.confidence >= LOW_CONFIDENCE


def test_template_is_a_cor_finder_with_a_side_output() -> None:
    text = (Path(__file__).parents[1] / "pipeline/httomo_templates"
            / "tomopy.recon.rotation.find_center.yaml").read_text()
    pipeline = parse_pipeline("- method: standard_tomo\n  module_path: httomo.data.hdf.loaders"
                              "\n  parameters: {}\n" + text, REGISTRY, source="template")
    (step,) = pipeline.steps
    assert step.name == "find_center_entropy" and step.spec.finds_center is not None

"""httomolibgpu's ``find_center_metric_recon`` (implemented from its documented contract:
its source for the 1.3.1 template is not public): a simulated axis is found by both
metrics, I13 agrees with the CoR policy, and DIAD's edge minimum is replaced by the
policy's centre with a warning (truths from /work/shared/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.recon.center_metric import FindCenterMetricParams, center_by_metric, metric_curve
from stages.registry import REGISTRY
from streamer.pipeline.config import parse_pipeline
from tests.stages.test_center_policy import TRUTH, projections
from tests.stages.test_center_tomopy import _disc_scan


@pytest.mark.parametrize("metric", ["tv", "entropy"])
def test_a_simulated_axis_is_the_metric_minimum(metric: str) -> None:
    sino, angles = _disc_scan(50.5)
    params = FindCenterMetricParams(metric_type=metric, range=4, step=0.5,
                                    cor_initialisation_value=49.0)
    centers = 45.0 + 0.5 * np.arange(17)
    scores = metric_curve(sino, angles, centers, params)
    assert centers[int(np.argmin(scores))] == pytest.approx(50.5, abs=0.5)


def test_i13_agrees_with_the_cor_policy(shared_data: Path) -> None:
    data, angles = projections(shared_data, "i13")
    estimate = center_by_metric(data, angles, FindCenterMetricParams())
    assert estimate.center == pytest.approx(TRUTH["i13"], abs=0.5)  # 85.93
    assert estimate.method == "metric-tv+vo+pair" and estimate.warnings == ()


def test_diad_edge_minimum_is_replaced_with_a_warning(shared_data: Path) -> None:
    data, angles = projections(shared_data, "diad")
    estimate = center_by_metric(data, angles, FindCenterMetricParams())
    assert estimate.center == pytest.approx(TRUTH["diad"], abs=0.5)
    assert estimate.method.endswith("(metric disagreed)")
    assert any("edge of the search window" in w for w in estimate.warnings)


def test_template_is_a_cor_finder() -> None:
    text = (Path(__file__).parents[1] / "pipeline/httomo_templates"
            / "httomolibgpu.recon.rotation.find_center_metric_recon.yaml").read_text()
    pipeline = parse_pipeline("- method: standard_tomo\n  module_path: httomo.data.hdf.loaders"
                              "\n  parameters: {}\n" + text, REGISTRY, source="template")
    (step,) = pipeline.steps
    assert step.name == "find_center_metric_recon" and step.spec.finds_center is not None
    with pytest.raises(ValueError, match="save_recon_tiff"):
        FindCenterMetricParams(save_recon_tiff="/tmp/x")

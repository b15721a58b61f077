"""YAML pipeline validation: every error class names the file, line, entry and field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import Field

from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import ConfigError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.plan import plan_blocks


class ScaleParams(StageParams):
    factor: float = Field(default=1.0, gt=0)


class OutlierParams(StageParams):
    dif: float = Field(gt=0)
    size: int = Field(default=3, ge=1)


def _identity(block: np.ndarray, **params: Any) -> np.ndarray:
    return block


REGISTRY = {
    "scale": StageSpec("scale", _identity, Pattern.PROJECTION, ScaleParams, scaled_memory(2),
                       "multiply"),
    "remove_outlier": StageSpec(
        "remove_outlier", _identity, Pattern.PROJECTION, OutlierParams, scaled_memory(3),
        "zingers", aliases=("tomopy.misc.corr.remove_outlier",
                            "httomolibgpu.misc.corr.remove_outlier"),
    ),
    "ring": StageSpec("ring", _identity, Pattern.SINOGRAM, ScaleParams, scaled_memory(4),
                      "rings", adapters={"algotom": _identity}),
}


def parse(text: str) -> Any:
    return parse_pipeline(text, REGISTRY, source="p.yaml")


def test_our_format_with_defaults_and_backend() -> None:
    pipeline = parse("pipeline:\n  - method: scale\n  - method: ring\n    backend: algotom\n"
                     "    parameters: {factor: 2}\n")
    assert [s.name for s in pipeline.steps] == ["scale", "ring"]
    assert pipeline.steps[0].params == ScaleParams(factor=1.0)
    assert pipeline.steps[1].backend == "algotom" and pipeline.steps[1].where == "p.yaml:3"


def test_httomo_entries_map_to_our_stages_and_the_loader_is_read() -> None:
    text = (
        "- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n"
        "  parameters: {data_path: /entry/imaging/data}\n"
        "- method: remove_outlier\n  module_path: tomopy.misc.corr\n"
        "  parameters: {dif: 200}\n"
    )
    pipeline = parse(text)
    assert [s.name for s in pipeline.steps] == ["remove_outlier"]
    assert pipeline.loader is not None and pipeline.loader.data_path == "/entry/imaging/data"
    assert "HTTomo loader standard_tomo: data_path='/entry/imaging/data'" in pipeline.notes[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pipeline:\n  - method: scael\n", "p.yaml:2: pipeline[0].method: unknown method "
         "'scael'"),
        ("pipeline:\n  - method: scael\n", "did you mean 'scale'?"),
        ("- method: paganin_filter\n  module_path: httomolibgpu.prep.phase\n",
         "unknown method 'httomolibgpu.prep.phase.paganin_filter'"),
        ("pipeline:\n  - method: scale\n    parameters: {factor: -1}\n",
         "p.yaml:3: pipeline[0] (stage scale).parameters.factor: Input should be greater "
         "than 0, got -1"),
        ("pipeline:\n  - method: scale\n    parameters: {factor: abc}\n",
         "pipeline[0] (stage scale).parameters.factor: Input should be a valid number"),
        ("pipeline:\n  - method: remove_outlier\n",
         "p.yaml:2: pipeline[0] (stage remove_outlier).parameters.dif: required, not given"),
        ("pipeline:\n  - method: scale\n    parameters:\n      factr: 2\n",
         "p.yaml:4: pipeline[0] (stage scale).parameters.factr: unknown parameter (got 2); "
         "scale takes factor"),
        ("pipeline:\n  - method: scale\n    colour: red\n",
         "p.yaml:3: pipeline[0].colour: unknown key"),
        ("pipeline:\n  - method: scale\n    backend: cupy\n",
         "p.yaml:3: pipeline[0].backend: stage 'scale' runs on numpy, got 'cupy'"),
        ("pipeline: [\n", "p.yaml:2: not valid YAML"),
        ("stages: []\n", "p.yaml:1: stages: unknown top-level key"),
        ("pipeline: []\n", "expected at least one stage"),
    ],
)
def test_each_error_names_file_line_entry_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text)
    assert expected in str(error.value)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        parse("pipeline:\n  - method: nope\n  - method: scale\n    parameters: {factor: 0}\n")
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("p.yaml:2") and lines[1].startswith("p.yaml:4")


@pytest.mark.parametrize(
    "text",
    [
        "pipeline:\n  - !!python/object/apply:os.system ['true']\n",
        "pipeline:\n  - method: scale\n    parameters: !!python/object/apply:os.system ['true']\n",
        "pipeline:\n  - method: !!python/name:os.system\n",
    ],
)
def test_yaml_cannot_execute_code(text: str) -> None:
    with pytest.raises(ConfigError, match=r"p\.yaml:\d+: pipeline\[0\]"):
        parse(text)


def test_block_plan_splits_sections_and_respects_the_budget() -> None:
    pipeline = parse("pipeline:\n  - method: scale\n  - method: remove_outlier\n"
                     "    parameters: {dif: 1}\n  - method: ring\n")
    frame = 64 * 128 * 4
    plans = plan_blocks(pipeline.steps, rows=64, cols=128, angles=1000,
                        dtype=np.dtype(np.uint16), budget_bytes=300 * frame)
    projection, sinogram = plans
    assert projection.pattern is Pattern.PROJECTION and projection.limiting_step == "remove_outlier"
    assert projection.block == 100 and projection.peak_bytes <= 300 * frame  # 3 buffers/frame
    # a sinogram of 1000 angles × 128 float32 is 512 KiB; 'ring' holds 4 of them
    assert sinogram.block == (300 * frame) // (4 * 1000 * 128 * 4) == 4
    assert "blocks of 100 frames" in projection.describe()


def _overhead_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """A fixed 8 MiB (say, a filter table) plus one float32 block: the largest one-frame
    estimate, but it grows more slowly than a 3-buffer stage."""
    return 8 * 2**20 + int(np.prod(shape)) * 4


def test_set_by_names_the_step_at_the_planned_peak_not_the_largest_per_frame() -> None:
    registry = {**REGISTRY, "overhead": StageSpec(
        "overhead", _identity, Pattern.PROJECTION, ScaleParams, _overhead_memory, "fixed")}
    pipeline = parse_pipeline("pipeline:\n  - method: overhead\n  - method: remove_outlier\n"
                              "    parameters: {dif: 1}\n", registry, source="p.yaml")
    frame = 64 * 128 * 4  # 32 KiB: one frame needs 8 MiB + 32 KiB ('overhead') vs 96 KiB
    (plan,) = plan_blocks(pipeline.steps, rows=64, cols=128, angles=1000,
                          dtype=np.dtype(np.float32), budget_bytes=60 * 2**20)
    # at the planned block 'remove_outlier' (3 buffers a frame) holds more than 'overhead'
    assert plan.block == 60 * 2**20 // (3 * frame) == 640
    assert plan.limiting_step == "remove_outlier" and plan.peak_bytes == 3 * frame * 640
    assert plan.peak_bytes > _overhead_memory((640, 64, 128), np.dtype(np.float32), None)
    assert "set by 'remove_outlier'" in plan.describe()


def test_a_frame_that_cannot_fit_is_refused_before_the_scan() -> None:
    pipeline = parse("pipeline:\n  - method: remove_outlier\n    parameters: {dif: 1}\n")
    with pytest.raises(ConfigError, match="stage 'remove_outlier': one frame of shape "
                       r"\(2048, 2048\) needs 48.0 MiB, the memory budget is 10.0 MiB"):
        plan_blocks(pipeline.steps, rows=2048, cols=2048, angles=10,
                    dtype=np.dtype(np.float32), budget_bytes=10 * 2**20)

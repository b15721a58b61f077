"""A bad parameter value names the entry, its stage and the parameter, and says what is
wrong in our words: ``pipeline[N] (stage NAME).parameters.PARAM: message`` — no empty
location, no pydantic boilerplate (``Value error,``, ``Field required``, ``Extra inputs
are not permitted``), for field errors, field validators and model validators alike.
The stages are the shipped ones (``stages.registry.REGISTRY``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import model_validator

from stages.registry import REGISTRY
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import ConfigError
from streamer.pipeline.config import parse_pipeline

BOILERPLATE = ("Value error", "Assertion failed", "Field required", "Extra inputs",
               ".parameters.:", "{'")


def problem(entry: str) -> str:
    """The one line ``parse_pipeline`` refuses a one-entry pipeline with."""
    with pytest.raises(ConfigError) as error:
        parse_pipeline(f"pipeline:\n  - {entry}\n", REGISTRY, source="p.yaml")
    (line,) = str(error.value).splitlines()
    for text in BOILERPLATE:
        assert text not in line
    return line


def test_a_field_out_of_range_names_the_stage_and_the_parameter() -> None:
    assert problem("method: remove_outlier\n    parameters: {dif: -1}") == (
        "p.yaml:3: pipeline[0] (stage remove_outlier).parameters.dif: Input should be "
        "greater than 0, got -1")


def test_a_field_validators_error_keeps_its_own_text_without_pydantics_prefix() -> None:
    assert problem("method: normalize_roi\n    parameters: {roi: [5, 0, 1, 10]}") == (
        "p.yaml:3: pipeline[0] (stage normalize_roi).parameters.roi: expected 0 <= top < "
        "bottom and 0 <= left < right, got [5, 0, 1, 10]")


def test_a_model_validators_error_is_placed_on_the_parameter_it_names() -> None:
    assert problem("method: rescale\n    parameters: {window: [1, 0]}") == (
        "p.yaml:3: pipeline[0] (stage rescale).parameters.window: expected -inf <= low < "
        "high <= inf, got (1.0, 0.0)")
    # a parameter the stage refuses before validation (not a field of its model)
    line = problem("method: rescale\n    parameters: {window: [0, 1], percentiles: [1, 99]}")
    assert line.startswith("p.yaml:3: pipeline[0] (stage rescale).parameters.percentiles: a "
                           "window from each block's statistics would depend on the block size")


def test_a_missing_required_parameter_is_named() -> None:
    assert problem("method: remove_outlier") == (
        "p.yaml:2: pipeline[0] (stage remove_outlier).parameters.dif: required, not given")


def test_an_unknown_parameter_lists_what_the_stage_takes() -> None:
    assert problem("method: remove_outlier\n    parameters:\n      dif: 0.5\n      difs: 3") == (
        "p.yaml:5: pipeline[0] (stage remove_outlier).parameters.difs: unknown parameter "
        "(got 3); remove_outlier takes axis, dif, size")


def test_a_bad_sweep_value_names_the_stage_and_has_no_boilerplate() -> None:
    assert problem("method: rescale\n    parameters: {window: !Sweep [[0, 1], [1, 0]]}") == (
        "p.yaml:3: pipeline[0] (stage rescale).parameters.window: sweep value [1, 0]: "
        "expected -inf <= low < high <= inf, got (1.0, 0.0)")


class _EitherParams(StageParams):
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _one_of_them(self) -> _EitherParams:
        if (self.low is None) == (self.high is None):
            raise ValueError("give exactly one of low and high")
        return self


def _identity(block: Any, **params: Any) -> Any:
    return block


def test_a_model_validators_error_that_names_no_parameter_ends_at_parameters() -> None:
    registry = {"either": StageSpec("either", _identity, Pattern.PROJECTION, _EitherParams,
                                    scaled_memory(1), "one bound")}
    with pytest.raises(ConfigError) as error:
        parse_pipeline("pipeline:\n  - method: either\n    parameters: {low: 1, high: 2}\n",
                       registry, source="p.yaml")
    assert str(error.value) == (
        "p.yaml:3: pipeline[0] (stage either).parameters: give exactly one of low and high")

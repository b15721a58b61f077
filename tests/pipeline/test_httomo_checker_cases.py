"""HTTomo's YAML-checker cases (tests/pipeline/httomo_checker/, copied with provenance)
get HTTomo's verdicts from `tomo-streamer check`.

The verdicts are those of httomo's tests/test_yaml_checker.py (kept as
test_yaml_checker.py.txt): a case is invalid when any of its checks there is expected
to fail, valid when `validate_yaml_config` expects True or no check names it invalid.
Where our verdict or reason differs, DIFFERENCES says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.cli import main

CASES = Path(__file__).parent / "httomo_checker"

#: HTTomo's verdict (True: valid) and the reason our `check` gives for refusing.
VERDICTS: dict[str, tuple[bool, str]] = {
    "duplicated_key.yaml": (False, "duplicated key"),
    "example.yaml": (True, ""),
    "imagesave_after_sweep.yaml": (False, "save_to_images after a parameter sweep"),
    "incorrect_method.yaml": (False, "unknown method 'tomopy.misc.corr.median_filters'"),
    "invalid_reference.yaml": (False, "has no side output named 'cor'"),
    "invalid_reference_1.yaml": (False, "has no side_outputs"),
    "invalid_reference_2.yaml": (False, "expected a reference ${{ID.side_outputs.NAME}}"),
    "invalid_reference_3.yaml": (False, "reference to unknown id 'centerin'"),
    "invalid_reference_4.yaml": (False, "duplicate id 'centering'"),
    "loader_omitted_image_key_path.yaml": (True, ""),
    "loader_with_all_auto_params.yaml": (True, ""),
    "loader_with_some_auto_params.yaml": (True, ""),
    "no_loader_method.yaml": (False, "starts with its loader"),
    "non_str_param_name.yaml": (False, "parameter names are text, got 67"),
    "omitted_required_param.yaml": (False, "newshape: required, not given"),
    "required_keys.yaml": (False, "module_path, parameters missing"),
    "required_param.yaml": (False, "left as REQUIRED"),
    "step_absent.yml": (False, "expected exactly start, stop and step"),
    "sweep_manual.yaml": (True, ""),
    "sweep_range.yaml": (True, ""),
    "valid_reference.yaml": (True, ""),
    "wrong_indentation_pipeline.yaml": (False, "not valid YAML"),
}
#: Cases where our verdict differs from HTTomo's or HTTomo's needs the data file.
DIFFERENCES: dict[str, tuple[bool, str]] = {
    # HTTomo refuses it by reading the scan (the image-key path is not in the file); we
    # refuse it for its `preview: [None, None, None]` (the text "None", not null).
    "incorrect_path.yaml": (False, "preview.detector_x: expected {start: N, stop: M}"),
    # HTTomo refuses `data_path: /foo` by reading the scan; `check` has no scan (recon
    # refuses the path when it opens the file).
    "loader_null_image_key_path_before_invalid_non_auto_params.yaml": (True, ""),
    # HTTomo accepts it (no test); we cannot select a subset of a continuous scan yet.
    "loader_with_offset_param.yaml": (False, "continuous_scan_subset"),
    # HTTomo skips this test ("some parameters are additional"); we refuse unknown names.
    "unknown_param.yaml": (False, "unknown_param: unknown parameter"),
}


def test_every_case_has_a_verdict() -> None:
    files = {p.name for p in CASES.iterdir() if p.suffix in (".yaml", ".yml")}
    assert files == set(VERDICTS) | set(DIFFERENCES)


@pytest.mark.parametrize("name", sorted({**VERDICTS, **DIFFERENCES}))
def test_check_gives_the_verdict(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    valid, reason = {**VERDICTS, **DIFFERENCES}[name]
    code = main(["check", str(CASES / name), "--memory", "4"])
    captured = capsys.readouterr()
    if valid:
        assert code == 0, captured.err
        assert "valid" in captured.out
    else:
        assert code == 2
        assert reason in captured.err, captured.err

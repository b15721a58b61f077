"""The stage registry, the example pipelines in configs/, and `tomo-streamer check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.registry import REGISTRY, reference_markdown
from stages.spec import Pattern
from streamer.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
#: Parameters for the stages that have required ones, to run every stage once.
REQUIRED = {
    "remove_outlier": {"dif": 0.5},
    "dezinger_temporal": {"dif": 0.5},
    "normalize_nf": {"flat_loc": [0]},
    "data_resampler": {"newshape": [16, 16]},
    "remove_outlier1d": {"dif": 0.5},
    "remove_outlier3d_tomopy": {"dif": 0.5},
    "pad": {"axis": 2},
    "rescale": {"window": [0.0, 1.0]},
    "trim_sinogram": {"center": 15.5, "x": 2, "y": -1, "diameter": 12},
    "normalize_roi": {"roi": [0, 0, 4, 4]},
    "seam_blend_stitched_data": {"overlap": 4, "seam_index": 16},
    "shift_images": {"sx": [0.5] * 6, "sy": [-1.0] * 6},
    "stripes_mask3d": {"min_stripe_length": 5, "min_stripe_depth": 2, "min_stripe_width": 3},
    "sino_360_to_180": {"overlap": 6, "side": "left"},
    "sino_360_to_180_tomopy": {"overlap": 6},
    "distortion_correction_proj": {"xcenter": 15.5, "ycenter": 3.5,
                                   "list_fact": [1.0, 0.0, -1e-4]},
    "distortion_correction_proj_discorpy": {"xcenter": 15.5, "ycenter": 3.5,
                                            "list_fact": [1.0, 0.0, -1e-4]},
    "distortion_correction_sino": {"ind": "all", "xcenter": 15.5, "ycenter": 3.5,
                                   "list_fact": [1.0, 0.0, -1e-4]},
}


def test_stage_reference_is_up_to_date() -> None:
    text = (REPO / "docs/reference/stages.md").read_text()
    assert text == reference_markdown(), (
        "docs/reference/stages.md is stale: run `python -m stages.registry > "
        "docs/reference/stages.md`"
    )


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_stage_runs_on_a_small_block(name: str) -> None:
    spec = REGISTRY[name]
    rng = np.random.default_rng(0)
    shape = (6, 8, 32) if spec.pattern is Pattern.PROJECTION else (4, 24, 32)
    block = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    params = spec.params.model_validate(REQUIRED.get(name, {}))
    frame_shape = (block.shape[1], block.shape[2])
    darks = np.full((2, *frame_shape), 0.1, np.float32)
    flats = np.full((2, *frame_shape), 2.0, np.float32)
    angles = np.linspace(0.0, 180.0, block.shape[1], endpoint=False)  # sinogram angle axis
    out = spec.run(block, params, darks=darks, flats=flats, angles_deg=angles,
                   frame_indices=np.arange(3, 3 + block.shape[0]),  # after the 2 flats
                   flat_indices=np.array([0, 1]),
                   projection_indices=np.arange(block.shape[0]))
    assert out.ndim == 3
    if spec.name not in ("rescale",):
        assert np.all(np.isfinite(out)), name
    assert spec.memory(block.shape, block.dtype, params) > 0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_example_pipelines_pass_check(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(config), "--memory", "4"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "memory plan" in out


def test_check_reports_errors_with_file_and_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- method: FBP4d_tomobar\n  module_path: httomolibgpu.recon.algorithm\n"
                   "- method: remove_outlier\n  module_path: tomopy.misc.corr\n"
                   "  parameters: {dif: -1}\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: pipeline[0].method: unknown method " in err
    assert "'httomolibgpu.recon.algorithm.FBP4d_tomobar'" in err
    assert (f"{bad}:5: pipeline[1] (stage remove_outlier).parameters.dif: Input should be "
            "greater than 0") in err


def test_check_refuses_a_frame_that_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(REPO / "configs/standard.yaml"), "--memory", "0.01"]) == 2
    assert "one frame of shape (2048, 2048) needs" in capsys.readouterr().err


def test_check_parses_the_pipeline_file_once(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.pipeline import config

    sources: list[str] = []
    real_parse = config.parse_pipeline

    def counting(text: str, *args: object, source: str, **kwargs: object) -> object:
        sources.append(source)
        return real_parse(text, *args, source=source, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(config, "parse_pipeline", counting)
    path = REPO / "configs/standard.yaml"
    assert main(["check", str(path), "--memory", "4"]) == 0
    assert sources.count(str(path)) == 1

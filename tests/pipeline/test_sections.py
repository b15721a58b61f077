"""The one sectionizer: several reslices, and what R ranks refuse (before any scan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.registry import REGISTRY
from stages.spec import Pattern
from streamer.errors import ConfigError, StageError
from streamer.exchange.links import MemoryNetwork
from streamer.pipeline.config import load_pipeline, parse_pipeline
from streamer.pipeline.sections import refuse_on_ranks, sections_of, split_sections
from streamer.run.ranks import RankedReconstruction

FULL = Path(__file__).parent / "httomo_full"


def test_deg360_paganin_has_four_sections() -> None:
    steps = load_pipeline(FULL / "deg360_paganin_FBP3d_tomobar.yaml", REGISTRY).steps
    found = sections_of(steps)
    assert [s.pattern for s in found] == [Pattern.PROJECTION, Pattern.SINOGRAM,
                                          Pattern.PROJECTION, Pattern.SINOGRAM]
    assert [[step.name for step in s.steps] for s in found] == [
        ["dark_flat_field_correction"],
        ["find_center_360", "sino_360_to_180", "remove_stripe_based_sorting"],
        ["paganin_filter"],
        ["FBP3d_tomobar", "calculate_stats", "rescale_to_int", "save_to_images"],
    ]
    with pytest.raises(StageError, match=r"'paganin_filter' .* needs a second reslice"):
        split_sections(steps)


def test_a_pipeline_starting_on_sinograms_has_an_empty_first_section() -> None:
    steps = parse_pipeline("pipeline:\n  - method: remove_all_stripe\n  - method: fbp\n",
                           REGISTRY, source="t.yaml").steps
    found = sections_of(steps)
    assert [len(s.steps) for s in found] == [0, 2]
    assert split_sections(steps)[0] == ()


@pytest.mark.parametrize(("name", "expected"), [
    ("deg360_paganin_FBP3d_tomobar.yaml", "needs 3 reslices"),
    ("angles_averaging.yaml", "'average_projection_frames' .* changes the projections"),
])
def test_ranks_refuse_what_one_rank_runs(name: str, expected: str, tmp_path: Path) -> None:
    steps = load_pipeline(FULL / name, REGISTRY).steps
    with pytest.raises(ConfigError, match=expected):
        refuse_on_ranks(steps)
    # before any scan: building the reconstruction on two ranks is refused ...
    two = MemoryNetwork(2)
    with pytest.raises(ConfigError, match=expected):
        RankedReconstruction(steps, "", tmp_path, control=two.link(0), band_link=None)
    # ... and on one rank the runner takes it (its processor runs every section)
    one = RankedReconstruction(steps, "", tmp_path, control=MemoryNetwork(1).link(0),
                               band_link=None)
    assert one.control.size == 1


def test_a_run_time_side_output_is_refused_on_ranks() -> None:
    text = (FULL / "deg360_paganin_FBP3d_tomobar.yaml").read_text()
    start = text.index("- method: paganin_filter")
    text = text[:start] + text[text.index("# --- Reconstruction method"):]
    steps = parse_pipeline(text, REGISTRY, source="t.yaml").steps
    assert len(sections_of(steps)) == 2
    with pytest.raises(ConfigError, match="sino_360_to_180"):
        refuse_on_ranks(steps)
    fixed = parse_pipeline("pipeline:\n  - method: normalize\n  - method: fbp\n", REGISTRY,
                           source="t.yaml").steps
    refuse_on_ranks(fixed)  # a plain pipeline is fine

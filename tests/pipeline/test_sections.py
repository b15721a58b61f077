"""The one sectionizer: several reslices, and what R ranks still refuse (before any
scan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.registry import REGISTRY
from stages.spec import Pattern
from streamer.errors import StageError
from streamer.exchange.links import MemoryNetwork
from streamer.pipeline.config import load_pipeline, parse_pipeline
from streamer.pipeline.sections import (
    beyond_one_band,
    refuse_on_ranks,
    sections_of,
    split_sections,
)
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
    with pytest.raises(StageError, match=r"'paganin_filter' .* needs a second reslice") as error:
        split_sections(steps)
    # the text names the runners that do run it, and they do take it off the band path
    # (RankedReconstruction: one rank's whole-scan path, R ranks' later sections)
    assert "`recon` and `run` run such a pipeline on any number of ranks" in str(error.value)
    assert "one rank: the scan processor's later sections at the scan's close" in \
        str(error.value)
    assert "R ranks: streamer.run.later_sections" in str(error.value)
    assert "only `recon`" not in str(error.value)
    assert beyond_one_band(steps) and beyond_one_band(steps, on_ranks=True)


def test_a_pipeline_starting_on_sinograms_has_an_empty_first_section() -> None:
    steps = parse_pipeline("pipeline:\n  - method: remove_all_stripe\n  - method: fbp\n",
                           REGISTRY, source="t.yaml").steps
    found = sections_of(steps)
    assert [len(s.steps) for s in found] == [0, 2]
    assert split_sections(steps)[0] == ()


@pytest.mark.parametrize("name", ["deg360_paganin_FBP3d_tomobar.yaml", "angles_averaging.yaml"])
def test_ranks_take_several_reslices_and_geometry_changes(name: str, tmp_path: Path) -> None:
    """Three reslices, the 360° fold, averaged angles, HTTomo's image tail by reference:
    R ranks run them (tests/run/test_later_reslices_on_ranks.py,
    tests/run/test_image_tail_on_ranks.py)."""
    steps = load_pipeline(FULL / name, REGISTRY).steps
    assert beyond_one_band(steps)
    two = MemoryNetwork(2)
    # a 3-D median reaches across the block axis: R ranks take it too (ADR 0019's
    # addendum), here without it, as before
    refuse_on_ranks(steps)
    without_halo = tuple(s for s in steps if s.name != "remove_outlier3d")
    refuse_on_ranks(without_halo)
    ranked = RankedReconstruction(without_halo, "", tmp_path, control=two.link(0),
                                  band_link=None)
    assert ranked._tail is not None and ranked._tail.axis == 0
    assert ranked._later
    # one rank takes it as generated (its processor runs every section)
    one = RankedReconstruction(steps, "", tmp_path, control=MemoryNetwork(1).link(0),
                               band_link=None)
    assert one._whole_scan and not one._later


def test_a_plain_pipeline_stays_on_one_band() -> None:
    fixed = parse_pipeline("pipeline:\n  - method: normalize\n  - method: fbp\n", REGISTRY,
                           source="t.yaml").steps
    refuse_on_ranks(fixed)
    assert not beyond_one_band(fixed)

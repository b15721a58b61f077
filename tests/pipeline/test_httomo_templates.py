"""Every httomo-backends 1.3.1 method template (tests/pipeline/httomo_templates/) that we
map is accepted with the template's own parameter names and defaults, and the coverage
of the 101 methods is what docs/reference/httomo-methods.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stages.registry import REGISTRY
from streamer.errors import ConfigError
from streamer.pipeline.config import parse_pipeline

TEMPLATES = Path(__file__).parent / "httomo_templates"
DOC = Path(__file__).parents[2] / "docs/reference/httomo-methods.md"
LOADER = "- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n  parameters: {}\n"
ALIASES = {alias: spec.name for spec in REGISTRY.values() for alias in spec.aliases}
NAMES = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
#: Mapped, but the template leaves a value for the user (HTTomo refuses it as is too).
USER_MUST_SET = {
    "httomolibgpu.misc.morph.data_resampler": "newshape",
    "tomopy.misc.corr.circ_mask": "axis",
    # every coefficient null: httomolibgpu raises at run time, we at validation
    "httomolibgpu.prep.alignment.distortion_correction_proj_discorpy": "metadata_path",
    "tomopy.prep.alignment.distortion_correction_proj": "xcenter",
    "tomopy.prep.alignment.distortion_correction_sino": "ind",  # every parameter REQUIRED
    "tomopy.misc.corr.remove_outlier": "dif",
    "tomopy.misc.corr.remove_outlier1d": "dif",
    "tomopy.misc.corr.remove_outlier3d": "dif",
    "tomopy.misc.morph.pad": "axis",
    "httomolib.misc.blend.seam_blend_stitched_data": "overlap",
    # TomoPy's data argument listed as a parameter: null is its only value here
    "tomopy.prep.stripe.stripes_mask3d": "weights",
    "tomopy.misc.corr.remove_ring": "rec",
    "tomopy.prep.alignment.shift_images": "sx",
    "httomolibgpu.misc.blend.seam_blend_stitched_data": "overlap",
    "tomopy.misc.morph.trim_sinogram": "center",
    "tomopy.prep.normalize.normalize_nf": "flat_loc",
    "tomopy.recon.algorithm.recon": "algorithm",  # null: tomopy needs one chosen
    # the template holds a !!python/tuple tag, which a safe loader never constructs
    "tomopy.prep.stripe.remove_stripe_based_fitting": "!!python/tuple",
}


def test_all_101_templates_are_here() -> None:
    assert len(NAMES) == 101


@pytest.mark.parametrize("name", [n for n in NAMES if n in ALIASES])
def test_mapped_template_is_accepted_with_its_parameters(name: str) -> None:
    text = (TEMPLATES / f"{name}.yaml").read_text()
    text = re.sub(r"\$\{\{[^}]*\}\}", "null", text)  # side outputs of absent methods
    if name in USER_MUST_SET:
        with pytest.raises(ConfigError, match=re.escape(USER_MUST_SET[name].split(":")[0])
                           if not USER_MUST_SET[name].startswith("!") else "python/tuple"):
            parse_pipeline(LOADER + text, REGISTRY, source=name)
        return
    pipeline = parse_pipeline(LOADER + text, REGISTRY, source=name)
    assert [s.name for s in pipeline.steps] == [ALIASES[name]]


def test_the_coverage_table_matches_the_registry() -> None:
    table = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([\w.]+)` \| (mapped|loader|waiting|not yet|not applicable)", line)
        if match:
            table[match[1]] = match[2]
    assert set(table) == set(NAMES)  # every method has a row
    assert {n for n, status in table.items() if status == "mapped"} == {
        n for n in NAMES if n in ALIASES}

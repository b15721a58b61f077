"""httomo-backends 1.3.1's 15 full pipelines (tests/pipeline/httomo_full/, expanded by its
own generator, see PROVENANCE.md) through `check`, and the runnable ones through `recon`
on the real scan each suits, against an independent reconstruction (algotom's FBP of
the flat/dark-corrected sinogram at the README's CoR)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from algotom.rec.reconstruction import fbp_reconstruction

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.pipeline.config import load_pipeline, parse_pipeline
from streamer.sources.formats import LoadOptions
from tests.test_recon_real import corrected_sinograms, i13_options

FULL = Path(__file__).parent / "httomo_full"
PIPELINES = sorted(p.name for p in FULL.glob("*.yaml"))
#: Waiting for the model-based reconstruction issue (SIRT/CGLS/FISTA, TV denoisers):
#: pipeline → the method it waits for. That issue emptied this list (stages.recon.iterative,
#: stages.misc.denoise).
WAITING_FOR_MODEL_BASED: dict[str, str] = {}
#: Refused for now, and why (the first unmapped method named by `check`).
NOT_YET = {
    # averaging frames changes the number of projections (and their angles) mid-pipeline
    "angles_averaging.yaml": "httomolibgpu.misc.morph.average_projection_frames",
    # discorpy coefficients file + 360° offset-axis conversion with run-time overlap/side
    "deg360_distortion_FBP3d_tomobar.yaml":
        "httomolibgpu.prep.alignment.distortion_correction_proj_discorpy",
    # 360° offset-axis conversion (find_center_360 is mapped; its overlap/side feed
    # sino_360_to_180); then Paganin (projection) after a sinogram step
    "deg360_paganin_FBP3d_tomobar.yaml": "httomolibgpu.misc.morph.sino_360_to_180",
}
#: Templates that leave a value REQUIRED (HTTomo refuses them as generated, so do we).
REQUIRED_LEFT = {"titaren_center_pc_FBP3d_resample.yaml": ("newshape: REQUIRED",
                                                           "newshape: [80, 80]")}


def test_the_fifteen_are_here() -> None:
    assert len(PIPELINES) == 15


@pytest.mark.parametrize("name", PIPELINES)
def test_full_pipeline_check_verdict(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = FULL / name
    refused_for = WAITING_FOR_MODEL_BASED.get(name) or NOT_YET.get(name)
    if refused_for is not None:
        assert main(["check", str(path)]) == 2
        assert f"unknown method {refused_for!r}" in capsys.readouterr().err
        return
    if name in REQUIRED_LEFT:
        assert main(["check", str(path)]) == 2
        assert "left as REQUIRED" in capsys.readouterr().err
        old, new = REQUIRED_LEFT[name]
        parse_pipeline(path.read_text().replace(old, new), REGISTRY, source=name)
        return
    assert main(["check", str(path), "--memory", "4"]) == 0
    assert "valid" in capsys.readouterr().out


def test_check_refuses_what_recon_would_refuse(tmp_path: Path) -> None:
    # a projection step (Paganin) after a sinogram step needs a second reslice
    text = (FULL / "sweep_paganin_FBP3d_tomobar.yaml").read_text()
    stripe = ("- method: remove_stripe_based_sorting\n"
              "  module_path: httomolibgpu.prep.stripe\n  parameters: {size: 11, dim: 1}\n")
    moved = text.replace("- method: paganin_filter", stripe + "- method: paganin_filter")
    path = tmp_path / "two_reslices.yaml"
    path.write_text(moved)
    load_pipeline(path, REGISTRY)  # the language is fine …
    assert main(["check", str(path)]) == 2  # … but the sections are not


TRUTH = {"tooth": 295.0, "i13": 85.5, "diad": 12.5}
RUNS = [
    ("FBP3d_tomobar.yaml", "tooth"),
    ("FBP3d_tomobar_noimagesaving.yaml", "tooth"),
    ("FBP3d_tomobar_tomobank.yaml", "tooth"),
    ("FBP2d_astra.yaml", "tooth"),
    ("LPRec3d_tomobar.yaml", "tooth"),
    ("tomopy_gridrec.yaml", "tooth"),
    ("tomopy_tomobank.yaml", "tooth"),
    ("sweep_paganin_FBP3d_tomobar.yaml", "tooth"),
    ("titaren_center_pc_FBP3d_resample.yaml", "i13"),
    ("FBP3d_tomobar.yaml", "diad"),
    ("FISTA3d_tomobar.yaml", "tooth"),
    ("FBP3d_tomobar_denoising.yaml", "tooth"),
]


def _scan(shared_data: Path, scan: str) -> tuple[Path, LoadOptions, list[str]]:
    real = shared_data / "real"
    if scan == "tooth":
        return real / "aps_tooth/tooth.h5", LoadOptions(), []
    if scan == "i13":
        options, args = i13_options(real / "dls_i13_24737", (60, 64))
        return real / "dls_i13_24737/tiffs", options, args
    return real / "diad_k11-18014/k11-18014.nxs", LoadOptions(rows=(8, 12)), ["--rows", "8:12"]


@pytest.mark.parametrize(("name", "scan"), RUNS, ids=[f"{n[:-5]}-{s}" for n, s in RUNS])
def test_full_pipeline_runs_on_a_real_scan(shared_data: Path, tmp_path: Path, name: str,
                                           scan: str) -> None:
    path, options, args = _scan(shared_data, scan)
    text = (FULL / name).read_text()
    if name in REQUIRED_LEFT:
        text = text.replace(*REQUIRED_LEFT[name])
    pipeline = tmp_path / name
    pipeline.write_text(text)
    out = tmp_path / "rec.h5"
    code = main(["recon", str(path), "-o", str(out), "--pipeline", str(pipeline), *args])
    assert code == 0
    outputs = sorted(tmp_path.glob("rec*.h5"))  # a sweep writes one per value
    assert outputs
    sinograms, angles = corrected_sinograms(path, options)
    for output in outputs:
        with h5py.File(output, "r") as handle:
            ours = handle["/entry/reconstruction/data"][()]
            cor = float(handle["/entry/process/center_of_rotation"][()])
            assert bool(handle["/entry"].attrs["complete"])
            assert "WARNING" not in handle["/entry/process/center_of_rotation"].attrs["method"]
        assert cor == pytest.approx(TRUTH[scan], abs=0.5), output.name
        if "resample" in name:  # data_resampler to 80 x 80
            assert ours.shape[1:] == (80, 80)
            continue
        if scan == "diad":  # 22 x 26 pixels: a CoR and loader check, not an image check
            continue
        size = ours.shape[-1]
        axis = np.arange(size) - (size - 1) / 2
        inside = np.hypot(*np.meshgrid(axis, axis)) < 0.45 * size
        reference = fbp_reconstruction(sinograms[0].astype(np.float32), TRUTH[scan],
                                       angles=np.deg2rad(angles), apply_log=False,
                                       gpu=False, filter_name="hann")
        r = np.corrcoef(ours[0][inside], reference[inside])[0, 1]
        print(f"{name} {scan} {output.name}: CoR {cor:.2f}, Pearson r {r:.4f}")
        # measured: 0.96-0.99 on the tooth (stripe removal and the SINC/LPRec windows
        # account for the rest), Paganin 0.88-0.98 (it smooths, more with delta/beta)
        minimum = 0.85 if "paganin" in name else 0.95
        assert r >= minimum, f"{output.name}: Pearson r {r:.4f} against algotom FBP"
    if "save_to_images" in text and "noimagesaving" not in name:
        images = sorted((tmp_path / "images").glob("*.tif"))
        assert len(images) == ours.shape[0]
        first = tifffile.imread(images[0])
        assert first.dtype == np.uint8 and first.max() > 0


def test_recon_refuses_what_check_refuses(shared_data: Path, tmp_path: Path) -> None:
    path = FULL / "angles_averaging.yaml"
    with pytest.raises(ConfigError, match="average_projection_frames"):
        load_pipeline(path, REGISTRY)
    assert main(["recon", str(shared_data / "real/aps_tooth/tooth.h5"), "-o",
                 str(tmp_path / "x.h5"), "--pipeline", str(path)]) == 2

"""`tomo-streamer recon`: stored scan → corrected → FBP → HDF5, on one process."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.cli import main
from streamer.sources.formats import write_nxtomo
from streamer.sources.simulate import SimulatedScan, SimulationConfig


def simulated(tmp_path: Path, **kw: object) -> tuple[Path, SimulatedScan]:
    config = SimulationConfig.from_kwargs(rows=4, cols=96, projections=180, **kw)
    scan = SimulatedScan(config)
    path = tmp_path / "scan.nxs"
    write_nxtomo(path, scan)
    return path, scan


def volume(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    with h5py.File(path) as file:
        data = file["/entry/reconstruction/data"][...]
        facts = {
            "complete": bool(file["/entry"].attrs["complete"]),
            "center": float(file["/entry/process/center_of_rotation"][()]),
            "method": file["/entry/process/center_of_rotation"].attrs["method"],
            "rows": file["/entry/reconstruction/detector_row"][...].tolist(),
            "pipeline": file["/entry/process/pipeline"][()].decode(),
            "angles": file["/entry/process/angles_deg"].shape[0],
        }
    return data, facts


def test_simulated_off_centre_scan_reconstructs_with_automatic_cor(tmp_path: Path) -> None:
    scan_path, scan = simulated(tmp_path, cor_px=50.5)
    out = tmp_path / "out.h5"
    assert main(["recon", str(scan_path), "-o", str(out)]) == 0
    data, facts = volume(out)
    assert facts["complete"] and facts["method"] == "vo" and facts["angles"] == 180
    assert abs(facts["center"] - 50.5) <= 0.25  # Vo's step is 0.25 px
    assert "method: normalize" in facts["pipeline"]
    assert "method: fourier_fbp" in facts["pipeline"]
    truth = scan.ground_truth()
    inside = np.hypot(*np.meshgrid(np.arange(96) - 47.5, np.arange(96) - 47.5)) < 40
    error = np.linalg.norm((data - truth)[:, inside]) / np.linalg.norm(truth[:, inside])
    # Poisson noise at 20 000 counts and the discontinuous phantom at N = 96 with 180
    # angles: measured 0.179 with fourier_fbp (0.146 with fbp, whose linear interpolation
    # smooths the ramlak noise); a wrong CoR, orientation or scale gives > 0.5.
    assert error < 0.3, error


def test_given_center_is_used_and_recorded(tmp_path: Path) -> None:
    scan_path, _ = simulated(tmp_path)
    out = tmp_path / "out.h5"
    assert main(["recon", str(scan_path), "-o", str(out), "--center", "47.5"]) == 0
    _, facts = volume(out)
    assert facts["center"] == 47.5 and facts["method"] == "given"


def test_existing_output_is_not_overwritten(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    scan_path, _ = simulated(tmp_path)
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep me")
    assert main(["recon", str(scan_path), "-o", str(out)]) == 2
    assert out.read_bytes() == b"keep me"
    assert "error:" in capsys.readouterr().err


def test_tiff_stack_output(tmp_path: Path) -> None:
    scan_path, _ = simulated(tmp_path)
    out = tmp_path / "stack"
    assert main(["recon", str(scan_path), "-o", str(out), "--tiff"]) == 0
    assert len(list(out.glob("slice_*.tif"))) == 4
    assert json.loads((out / "volume.json").read_text())["complete"] is True


@pytest.mark.parametrize(
    ("scan", "extra", "known_cor"),
    [
        ("aps_tooth/tooth.h5", [], 295.0),
        ("diad_k11-18014/k11-18014.nxs", [], 12.5),  # 26 columns: no algotom range warning
        ("dls_i13_24737/tiffs", ["--darks", "{base}/dark_00001.tiff", "--flats",
                                 "{base}/flat_00001.tiff", "--angles-path",
                                 "{base}/24737_processed.nxs:/entry/input_data/tomo/"
                                 "rotation_angle", "--rows", "60:64"], 85.5),
    ],
)
def test_real_scans_find_their_known_cor(shared_data: Path, tmp_path: Path, scan: str,
                                         extra: list[str], known_cor: float) -> None:
    """CoR values from the data README (0-based detector column)."""
    base = shared_data / "real" / scan.split("/", maxsplit=1)[0]
    args = [arg.format(base=base) for arg in extra]
    out = tmp_path / "rec.h5"
    assert main(["recon", str(shared_data / "real" / scan), "-o", str(out), *args]) == 0
    data, facts = volume(out)
    assert abs(facts["center"] - known_cor) <= 0.5
    assert facts["complete"] and np.all(np.isfinite(data))
    if "--rows" in args:
        assert facts["rows"] == [60, 61, 62, 63]  # slice -> detector row map


def test_block_sizes_come_from_the_memory_plan_and_are_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan_path, _ = simulated(tmp_path)
    assert main(["recon", str(scan_path), "-o", str(tmp_path / "a.h5"), "--memory", "1"]) == 0
    err = capsys.readouterr().err
    assert "plan: projection section [normalize]: blocks of 180 frames" in err
    assert "plan: sinogram section [fourier_fbp]: blocks of 4 sinograms" in err


def test_a_budget_too_small_for_one_frame_is_refused_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan_path, _ = simulated(tmp_path)
    out = tmp_path / "never.h5"
    assert main(["recon", str(scan_path), "-o", str(out), "--memory", "0.000001"]) == 2
    assert "the memory budget is" in capsys.readouterr().err
    assert not out.exists()


def test_httomo_pipeline_with_find_center_vo_sets_the_cor(shared_data: Path,
                                                          tmp_path: Path) -> None:
    """HTTomo's find_center_vo entry runs once per scan and its CoR is the one used."""
    out = tmp_path / "tooth.h5"
    assert main(["recon", str(shared_data / "real/aps_tooth/tooth.h5"), "-o", str(out),
                 "--pipeline", str(Path(__file__).parents[1] / "configs/httomo_standard.yaml"),
                 ]) == 0
    _, facts = volume(out)
    assert abs(facts["center"] - 295.0) <= 0.5
    assert facts["method"] == "find_center_vo (pipeline)"
    assert "httomolibgpu.recon.rotation" in facts["pipeline"]


def test_find_center_vo_step_errors_name_the_entry(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    scan_path, _ = simulated(tmp_path)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
                        "  - method: find_center_vo\n    parameters: {ind: 99}\n")
    assert main(["recon", str(scan_path), "-o", str(tmp_path / "x.h5"), "--pipeline",
                 str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert "ind: expected a row below 4, got 99" in err and f"{pipeline}:4" in err

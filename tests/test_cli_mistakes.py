"""Mistakes on the command line: one ``error:`` line, exit 2, nothing written — and the
documented commands that used to be refused (a TIFF glob, a shipped pipeline by name)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import h5py
import pytest

from streamer.cli import main
from tests.conftest import start_consumer_cli

TOOTH = "real/aps_tooth/tooth.h5"
I13 = "real/dls_i13_24737"


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("center", ["900", "-3", "639.5"])
def test_recon_refuses_a_center_off_the_detector_before_reading(
    shared_data: Path, tmp_path: Path, center: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.h5"
    refused(["recon", str(shared_data / TOOTH), "-o", str(out), "--center", center],
            capsys, "center: expected a detector column in [0, 639]", "640 columns")
    assert list(tmp_path.iterdir()) == []


def test_recon_refuses_a_pipeline_center_off_the_detector(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n  - method: fourier_fbp\n"
                        "    parameters: {center: 700}\n")
    refused(["recon", str(shared_data / TOOTH), "-o", str(tmp_path / "o.h5"),
             "--pipeline", str(pipeline)], capsys, "got 700")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_missing_pipeline_file_is_one_line(command: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    refused([command, str(tmp_path / "missing.yaml")], capsys, "no such file",
            "standard")  # the shipped names are offered
    assert list(tmp_path.iterdir()) == []


def test_recon_with_a_missing_pipeline_file_is_one_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(["recon", str(shared_data / TOOTH), "-o", str(tmp_path / "o.h5"), "--pipeline",
             str(tmp_path / "nope.yaml")], capsys, "--pipeline: no such file")
    assert list(tmp_path.iterdir()) == []


def test_view_on_a_busy_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused(["view", "--feed", "tcp://127.0.0.1:5600", "--port", str(port)], capsys,
                f"cannot serve on 127.0.0.1:{port}", "--port")


def test_attenuation_read_as_counts_is_refused_naming_normalised(
    shared_data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dendrite = str(shared_data / "real/dls_i12_dendrite/RealDataDend.mat")
    refused(["recon", dendrite, "-o", str(tmp_path / "d.h5")], capsys,
            "looks like attenuation", "--normalised")
    refused(["replay", dendrite, "--bind", "tcp://127.0.0.1:*"], capsys, "--normalised")
    assert list(tmp_path.iterdir()) == []


def test_a_glob_that_matches_nothing_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    refused(["replay", str(tmp_path / "raw_*.tiff")], capsys, "no file matches the pattern")


def test_the_how_to_tiff_glob_replays(shared_data: Path, tmp_path: Path, python: str,
                                      cli_env: dict[str, str]) -> None:
    folder = shared_data / I13
    ingest, address = start_consumer_cli(python, cli_env, "ingest", "--scans", "1",
                                         "--report-dir", str(tmp_path))
    try:
        assert main(["replay", str(folder / "tiffs/raw_*.tiff"), "--darks",
                     str(folder / "dark_00001.tiff"), "--flats", str(folder / "flat_00001.tiff"),
                     "--angles-path",
                     f"{folder / '24737_processed.nxs'}:/entry/input_data/tomo/rotation_angle",
                     "--connect", address, "--scan-id", "i13"]) == 0
        _out, err = ingest.communicate(timeout=120)
    finally:
        ingest.kill()
        ingest.communicate()
    assert ingest.returncode == 0, err
    report = json.loads((tmp_path / "i13.json").read_text())
    assert report["received"] == {"projections": 91, "flats": 1, "darks": 1}


def test_check_shows_the_reconstruction_recon_appends(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    pipeline = tmp_path / "corrections.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n")
    assert main(["check", str(pipeline), "--frame", "64x64", "--projections", "90"]) == 0
    out = capsys.readouterr().out
    assert "valid, 1 stages (+1 appended by recon/run)" in out
    assert "2. fourier_fbp" in out and "recon and run append fourier_fbp" in out
    assert "sinogram" in out.split("memory plan:")[1]  # the plan covers the reconstruction


def test_a_shipped_pipeline_is_found_by_name(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after pip install
    assert main(["check", "standard", "--frame", "64x64", "--projections", "90"]) == 0
    captured = capsys.readouterr()
    assert "streamer/configs/standard.yaml: valid" in captured.out
    assert main(["check", "configs/standard.yaml", "--frame", "64x64"]) == 0
    captured = capsys.readouterr()
    assert "not here; using the shipped standard.yaml" in captured.err


def test_a_path_wins_over_a_shipped_name(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    Path("standard").write_text("pipeline:\n  - method: normalize\n  - method: fourier_fbp\n")
    assert main(["check", "standard", "--frame", "64x64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("standard: valid, 2 stages\n")


def test_recon_quiet_prints_only_the_result(shared_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "tooth.h5"
    assert main(["recon", str(shared_data / TOOTH), "-o", str(out_file), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "scan:" not in captured.err and "plan:" not in captured.err, captured.err
    assert captured.out.startswith(f"wrote 2 slices to {out_file} (complete)")
    with h5py.File(out_file) as file:
        assert file["entry"].attrs["complete"]


def test_recon_loud_prints_the_scan_and_plan_lines(shared_data: Path, tmp_path: Path,
                                                   python: str, cli_env: dict[str, str]
                                                   ) -> None:
    result = subprocess.run([python, "-m", "streamer.cli", "recon", str(shared_data / TOOTH),
                             "-o", str(tmp_path / "t.h5")], env=cli_env, text=True,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "scan: 181 projections of 2x640" in result.stderr
    assert "plan: " in result.stderr


def test_run_refuses_only_the_scan_whose_detector_the_center_is_off(
    tmp_path: Path, python: str, cli_env: dict[str, str]
) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n  - method: fourier_fbp\n")
    out = tmp_path / "volumes"
    service, address = start_consumer_cli(python, cli_env, "run", str(pipeline), "--out",
                                          str(out), "--scans", "2", "--center", "20")
    try:
        for scan_id, cols in (("narrow", 16), ("wide", 48)):  # CoR 20: off, then on
            assert main(["simulate", "--connect", address, "--rows", "2", "--cols",
                         str(cols), "--projections", "30", "--scan-id", scan_id]) == 0
        stdout, stderr = service.communicate(timeout=120)
    finally:
        service.kill()
        service.communicate()
    assert service.returncode == 1, stderr  # one scan without a volume
    assert ("volume: none for scan narrow: refused at its start: fourier_fbp: center: "
            "expected a detector column in [0, 15] (the detector has 16 columns), got 20"
            ) in stdout
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.glob("*.h5")) == ["wide.h5"]
    with h5py.File(out / "wide.h5") as file:
        assert file["entry"].attrs["complete"]
        assert float(file["entry/process/center_of_rotation"][()]) == 20.0


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_a_bad_scan_id_is_one_line_not_a_traceback(command: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--scan-id", "a scan"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--scan-id: expected 1-128 characters" in err and "got 'a scan'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "0.9", "half"])
def test_run_refuses_an_early_center_fraction_it_could_not_use(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "standard", "--early-center", value, "--out", str(tmp_path / "v")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--early-center" in err and repr(value) in err and "Traceback" not in err
    assert "expected a fraction of the scan in (0, 0.75] or off" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_run_refuses_an_interrupt_grace_it_could_not_use(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "standard", "--interrupt-after", value, "--out", str(tmp_path / "v")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--interrupt-after" in err and repr(value) in err and "Traceback" not in err
    assert "expected seconds (a number >= 0) or off" in err
    assert list(tmp_path.iterdir()) == []

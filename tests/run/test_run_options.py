"""``run`` takes the output format and the CoR rules of ``recon``: ``--output-format tiff``
writes a TIFF stack named by the one naming rule, and ``--center VALUE`` is stored as
``given`` (it was stored as ``pipeline``)."""

from __future__ import annotations

import json
from pathlib import Path

from streamer.cli import main
from tests.conftest import start_consumer_cli

REPO = Path(__file__).resolve().parents[2]
JOIN_S = 60.0


def test_run_writes_the_requested_format_and_records_a_given_cor(
        tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(REPO / "configs/standard.yaml"), "--scans", "1",
        "--out", str(out), "--center", "23.5", "--output-format", "tiff")
    try:
        assert main(["simulate", "--connect", address, "--rows", "2", "--cols", "48",
                     "--projections", "90", "--scan-id", "a:scan@1"]) == 0
        _, stderr = process.communicate(timeout=JOIN_S)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    stack = out / "a_scan_1"  # the naming rule: ":" and "@" become "_"
    sidecar = json.loads((stack / "volume.json").read_text())
    assert sidecar["complete"] is True
    assert sidecar["center_of_rotation"] == 23.5 and sidecar["center_method"] == "given"
    assert len(list(stack.glob("slice_*.tif"))) == 2

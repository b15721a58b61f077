"""``tomo-streamer run`` on one rank prints no ``transfers:`` line (nothing crosses between
ranks), while its JSON report keeps the ``transfers`` entry with its zeros, as the report
reference says; on R ranks the line comes (``tests/mpi/test_mpi_run.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from streamer.cli import main
from tests.conftest import start_consumer_cli


def test_one_rank_run_prints_no_transfers_line_and_reports_zeros(
        tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
                        "  - method: fbp\n")
    out = tmp_path / "volumes"
    service, address = start_consumer_cli(python, cli_env, "run", str(pipeline), "--out",
                                          str(out), "--scans", "1", "--center", "15.5")
    try:
        assert main(["simulate", "--connect", address, "--rows", "2", "--cols", "32",
                     "--projections", "30", "--scan-id", "alone"]) == 0
        stdout, stderr = service.communicate(timeout=120)
    finally:
        service.kill()
        service.communicate()
    assert service.returncode == 0, stderr
    assert "  volume: " in stdout and "complete" in stdout, stdout
    assert "transfers:" not in stdout, stdout
    report = json.loads((out / "alone.json").read_text())
    total = report["transfers"]["total"]
    assert set(total) == {"reslice", "relay"}
    assert all(count == 0 for kind in total.values() for count in kind.values())

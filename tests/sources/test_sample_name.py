"""A sample name on the wire from our own senders: ``--sample`` (``simulate``, ``replay``)
puts it in ``start``'s metadata, ``replay`` defaults it from the file, and ``run`` carries
the CoR of the sample's previous scan to the next one by it (the documented example)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from streamer.cli import main
from streamer.errors import ConfigError
from streamer.sources.formats import open_scan
from streamer.sources.formats.options import LoadOptions
from streamer.sources.sample_name import MAX_SAMPLE_CHARS, check_sample_name, stored_sample_name
from streamer.sources.sender import SendOptions, start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.conftest import start_consumer_cli

SMALL = SimulationConfig.from_kwargs(rows=2, cols=16, projections=8)


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "x" * (MAX_SAMPLE_CHARS + 1)])
def test_a_bad_sample_name_is_one_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"--sample: expected a sample name of 1-"
                       f"{MAX_SAMPLE_CHARS} printable characters, got"):
        check_sample_name(bad)
    with pytest.raises(ConfigError, match="--sample: expected a sample name"):
        SendOptions(sample=bad)


def test_the_cli_refuses_a_bad_sample_name_before_sending(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--sample", "", "--rows", "2", "--cols", "16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --sample: expected a sample name of 1-128 printable" in err
    assert "Traceback" not in err


def test_the_sample_goes_into_start_and_replaces_the_scans_own() -> None:
    scan = SimulatedScan(SMALL)
    assert "sample" not in start_header(scan.layout, "s").metadata
    start = start_header(scan.layout, "s", "bone-7")
    assert start.metadata["sample"] == "bone-7"
    assert start.metadata["phantom"] == scan.layout.metadata["phantom"]  # the rest kept
    layout = scan.layout
    named = type(layout)(**{**layout.__dict__, "metadata": {**layout.metadata,
                                                            "sample": "from file"}})
    assert start_header(named, "s").metadata["sample"] == "from file"
    assert start_header(named, "s", "given").metadata["sample"] == "given"


def test_replay_defaults_the_sample_from_tomopys_file(real: Path) -> None:
    """The APS tooth (data-exchange) names its sample in ``/measurement/sample/name``."""
    with open_scan(real / "aps_tooth/tooth.h5", LoadOptions()) as reader:
        assert reader.layout.metadata["sample"] == "Tooth"
        assert start_header(reader.layout, "t").metadata["sample"] == "Tooth"


def test_replay_defaults_the_sample_from_a_nexus_entry(tmp_path: Path) -> None:
    path = tmp_path / "scan.nxs"
    assert main(["simulate", "--save", str(path), "--rows", "2", "--cols", "16",
                 "--projections", "8"]) == 0
    with open_scan(path, LoadOptions()) as reader:
        assert "sample" not in reader.layout.metadata  # none stored: none sent
    with h5py.File(path, "a") as file:
        file["/entry/sample/name"] = "  lens-test  "
    with open_scan(path, LoadOptions()) as reader:
        assert reader.layout.metadata["sample"] == "lens-test"


def test_a_stored_name_that_is_not_usable_is_not_sent(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "names.h5", "w") as file:
        file["empty"] = ""
        file["number"] = 3
        file["two"] = np.array([b"a", b"b"])
        file["one"] = np.array([b"Tooth"])
        file["long"] = "x" * (MAX_SAMPLE_CHARS + 1)
        assert [stored_sample_name(file, name) for name in
                ("empty", "number", "two", "one", "long", "absent")] == [
            None, None, None, "Tooth", None, None]


def test_run_carries_the_cor_to_the_next_scan_of_the_sample(tmp_path: Path, python: str,
                                                             cli_env: Any) -> None:
    """The documented example (docs/reference/cli.md, ``run``): two scans of one sample;
    the second streams at once with the first's CoR (its report's ``center`` says
    ``carried``), the first found its CoR from the opposite pair."""
    pipeline = tmp_path / "found.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
                        "  - method: fourier_fbp\n    parameters: {}\n")
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(python, cli_env, "run", str(pipeline),
                                          "--scans", "2", "--out", str(out))
    scan = ["--connect", address, "--rows", "4", "--cols", "48", "--projections", "120",
            "--range", "360", "--cor", "22.5", "--sample", "tooth-3", "--quiet"]
    try:
        assert main(["simulate", *scan, "--scan-id", "first"]) == 0
        assert main(["simulate", *scan, "--scan-id", "second"]) == 0
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    first = json.loads((out / "first.json").read_text())["center"]
    second = json.loads((out / "second.json").read_text())["center"]
    assert first["source"] == "pair" and first["streamed"], first
    assert second["source"] == "carried" and second["streamed"], second
    assert second["streamed_with"] == first["center"] and not second["redone"], second
    assert "pair" not in second["estimates"]  # started at once: no pair waited for
    assert (f"scan second: streaming with the CoR {first['center']:.2f} carried from the "
            "previous scan of sample tooth-3 (48 columns)") in stderr + stdout

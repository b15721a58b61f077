"""The sink registry: the format follows ``--output-format``, else the output's suffix; one
scan-id → file-name rule; a new format is one registry line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streamer.cli import main
from streamer.errors import ConfigError
from streamer.sinks import registry
from streamer.sinks.registry import (
    SINKS,
    format_for,
    free_output_path,
    open_sink,
    output_stem,
    sink_format,
)
from streamer.sources.formats import write_nxtomo
from streamer.sources.simulate import SimulatedScan, SimulationConfig

GEOMETRY = {"detector_rows": [0, 1], "slice_shape": (4, 4), "angles_deg": [0.0, 90.0],
            "center_of_rotation": 1.5, "center_method": "given", "pipeline_yaml": "p",
            "scan": "s"}


@pytest.mark.parametrize(("output", "requested", "expected"), [
    (Path("a.h5"), None, "hdf5"), (Path("a.nxs"), None, "hdf5"),
    (Path("stack.tiff"), None, "tiff"), (Path("stack"), None, "hdf5"),
    (Path("a.h5"), "tiff", "tiff"), (None, None, "hdf5"), (None, "tiff", "tiff"),
    (Path("v.ome.zarr"), None, "zarr"), (Path("v.zarr"), None, "zarr"), (None, "zarr", "zarr"),
])
def test_the_format_follows_the_request_else_the_suffix(
        output: Path | None, requested: str | None, expected: str) -> None:
    assert format_for(output, requested) == expected


def test_an_unknown_format_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError,
                       match=r"--output-format: expected one of hdf5, tiff, zarr, got 'n5'"):
        sink_format("n5")


def test_one_naming_rule_and_a_free_name_per_scan(tmp_path: Path) -> None:
    assert output_stem("scan 1/../x") == "scan_1_.._x"
    first = free_output_path(tmp_path, "a b", "hdf5")
    assert first == tmp_path / "a_b.h5"
    first.write_bytes(b"")
    assert free_output_path(tmp_path, "a b", "hdf5") == tmp_path / "a_b-2.h5"
    (tmp_path / "c.part0of2.h5").write_bytes(b"")  # a part file takes the name too
    assert free_output_path(tmp_path, "c", "hdf5") == tmp_path / "c-2.h5"
    assert free_output_path(tmp_path, "a b", "tiff") == tmp_path / "a_b"


def test_every_registered_sink_writes_and_closes(tmp_path: Path) -> None:
    for name, sink in SINKS.items():
        writer = open_sink(name, tmp_path / f"v{sink.suffix}", **GEOMETRY)
        writer.write(0, np.ones((2, 4, 4), np.float32))
        writer.close(complete=True)
        assert (tmp_path / f"v{sink.suffix}").exists()


def test_a_new_format_is_one_registry_line(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A format registered under a new name is chosen by its suffix and opened."""
    opened: list[Path] = []

    def opener(path: Path, **geometry: object) -> object:
        opened.append(path)
        return SINKS["tiff"].opener(path, **geometry)

    extra = replace(SINKS["tiff"], name="tiffdir", suffixes=(".tiffdir",), opener=opener)
    monkeypatch.setattr(registry, "SINKS", {**SINKS, "tiffdir": extra})
    assert format_for(Path("out.tiffdir")) == "tiffdir"
    open_sink("tiffdir", tmp_path / "out.tiffdir", **GEOMETRY).close(complete=False)
    assert opened == [tmp_path / "out.tiffdir"]


def test_recon_format_option_and_suffix(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    scan = SimulatedScan(SimulationConfig.from_kwargs(rows=2, cols=48, projections=60))
    path = tmp_path / "scan.nxs"
    write_nxtomo(path, scan)
    assert main(["recon", str(path), "-o", str(tmp_path / "by_suffix.tiff")]) == 0
    assert json.loads((tmp_path / "by_suffix.tiff" / "volume.json").read_text())["complete"]
    stack = tmp_path / "s"
    assert main(["recon", str(path), "-o", str(stack), "--output-format", "tiff"]) == 0
    assert len(list(stack.glob("slice_*.tif"))) == 2
    store = tmp_path / "by_suffix.ome.zarr"
    assert main(["recon", str(path), "-o", str(store)]) == 0
    assert json.loads((store / "zarr.json").read_text())["attributes"]["tomo_streamer"][
        "complete"] is True
    n5 = tmp_path / "z.n5"
    assert main(["recon", str(path), "-o", str(n5), "--output-format", "n5"]) == 2
    error = capsys.readouterr().err
    assert "error: --output-format: expected one of hdf5, tiff, zarr, got 'n5'" in error

"""HTTomo's ``save_result: true`` in the ``run`` service (issue 16, ADR 0029): every scan
gets the files ``recon`` writes for it (one per step; on R ranks a part per rank and rank
0's file over them), named per scan (``{scan}-task_…h5``), equal to ``recon``'s files of
the same scan; a second scan of the same name gets ``{scan}-2-…`` and overwrites nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.exchange.links import MemoryLink
from streamer.pipeline.config import parse_pipeline
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from streamer.sinks.master import part_path
from streamer.sources.simulate import SimulatedScan
from tests.conftest import start_consumer_cli
from tests.run.ranks import run_ranks, serve_scans
from tests.run.test_save_result_on_ranks import read_result
from tests.run.test_service_on_ranks import CONFIG, JOIN_S
from tests.run.test_service_on_ranks import _source as service_source

PIPELINE = """\
pipeline:
  - method: normalize
    save_result: true
  - method: remove_all_stripe
    save_result: true
  - method: fbp
    save_result: true
    parameters: {center: 16.0}
"""


def _serve(ranks: int, out: Path, lines: list[str]) -> list[ScanOutput]:
    """``run`` on ``ranks`` in-process ranks, two scans (``a`` and ``b``) as it wires
    them (``save_results``); rank 0's outputs."""
    steps = parse_pipeline(PIPELINE, REGISTRY, source="saving.yaml").steps
    ready, address = threading.Event(), []
    source = service_source(ranks, ready, address)
    assert ready.wait(JOIN_S)

    def rank(link: MemoryLink) -> list[ScanOutput]:
        ranked = RankedReconstruction(steps, PIPELINE, out, link.duplicate(),
                                      link.duplicate(), block_frames=8, block_sinograms=3,
                                      memory_bytes=1 << 28, background=True,
                                      save_results=True, estimate_center=True,
                                      log=lines.append if link.rank == 0 else None)
        return serve_scans(link, ranked, address[0], scans=2, wait_s=JOIN_S)

    results = run_ranks(ranks, rank)
    source.join(JOIN_S)
    outputs: list[ScanOutput] = results[0]
    return outputs


def _names() -> list[str]:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="saving.yaml").steps
    return [f"{step.result_name}.h5" for step in steps if step.save_result]


@pytest.mark.parametrize("ranks", [1, 2])
def test_run_writes_each_scans_results_as_recon_does(tmp_path: Path, ranks: int) -> None:
    one = tmp_path / "recon"
    one.mkdir()
    pipeline = tmp_path / "saving.yaml"
    pipeline.write_text(PIPELINE)
    run_recon(SimulatedScan(CONFIG), ReconSettings(one / "v.h5", pipeline=pipeline))
    out, lines = tmp_path / "run", []
    outputs = _serve(ranks, out, lines)
    assert sorted(output.scan for output in outputs) == ["a", "b"]
    assert all(output.complete for output in outputs)
    for scan in ("a", "b"):
        for name in _names():
            path = out / f"{scan}-{name}"
            assert lines.count(f"scan {scan}: save_result: {path}") == 1, lines
            expected, found = read_result(one / name), read_result(path)
            assert found["virtual"] is (ranks > 1)
            assert found["complete"] and expected["complete"]
            assert found["data"].shape == expected["data"].shape
            assert found["data_attrs"]["step"] == expected["data_attrs"]["step"]
            assert found["data_attrs"]["axes"] == expected["data_attrs"]["axes"]
            np.testing.assert_array_equal(found["angles"], expected["angles"])
            np.testing.assert_array_equal(found["dims"], expected["dims"])
            scale = float(np.abs(expected["data"]).max())
            np.testing.assert_allclose(found["data"], expected["data"], rtol=1e-5,
                                       atol=1e-5 * scale)
            if ranks > 1:
                assert all(part_path(path, r, ranks).exists() for r in range(ranks))


def test_a_scan_whose_files_exist_gets_the_next_name(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    taken = out / f"a-{_names()[1]}"
    with h5py.File(taken, "w") as file:  # an earlier run's file: kept as it is
        file["mine"] = 1
    lines: list[str] = []
    outputs = _serve(1, out, lines)
    assert all(output.complete for output in outputs)
    with h5py.File(taken) as file:
        assert list(file) == ["mine"]
    for name in _names():
        assert (out / f"a-2-{name}").exists() and (out / f"b-{name}").exists()
        assert not (out / f"a-{name}").exists() or name == _names()[1]


def test_the_run_command_writes_save_result_per_scan(
        tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    """The documented example: ``tomo-streamer run --out DIR --pipeline saving.yaml``
    (docs/reference/intermediate-output.md) names each file after its scan, once."""
    pipeline = tmp_path / "saving.yaml"
    pipeline.write_text(PIPELINE.replace("16.0", "15.5"))
    out = tmp_path / "volumes"
    service, address = start_consumer_cli(python, cli_env, "run", str(pipeline), "--out",
                                          str(out), "--scans", "1")
    try:
        assert main(["simulate", "--connect", address, "--rows", "2", "--cols", "32",
                     "--projections", "30", "--scan-id", "alone"]) == 0
        stdout, stderr = service.communicate(timeout=120)
    finally:
        service.kill()
        service.communicate()
    assert service.returncode == 0, stderr
    for name in _names():
        path = out / f"alone-{name}"
        assert f"save_result: {path}" in stderr + stdout
        with h5py.File(path) as file:
            assert bool(file.attrs["complete"]) and np.isfinite(file["data"][()]).all()

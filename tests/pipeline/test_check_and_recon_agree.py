"""``check`` and ``recon`` agree on generated orderings (issue 15: one sectionizer).

Every ordering of three steps of different patterns after the correction — a sinogram
step (Vo's stripe filter), a step of any pattern (a median) and a projection step with a
kernel across frames (the 3-D outlier filter) — is given to ``check`` and to ``recon`` of
a small simulated scan: both accept it (the volume is complete) or both refuse it with a
one-line error. Before the one sectionizer, ``check`` approved
``normalize, remove_all_stripe, median_filter, fbp`` and ``recon`` refused it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import pytest

from streamer.cli import main
from streamer.sources.formats import write_nxtomo
from streamer.sources.simulate import SimulatedScan, SimulationConfig

MIDDLE = {
    "remove_all_stripe": "  - method: remove_all_stripe\n",
    "median_filter": "  - method: median_filter\n    parameters: {size: 3}\n",
    "remove_outlier3d": ("  - method: remove_outlier3d\n"
                         "    parameters: {kernel_size: 3, dif: 0.1}\n"),
}
ORDERINGS = list(itertools.permutations(MIDDLE))


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "scan.nxs"
    write_nxtomo(path, SimulatedScan(SimulationConfig.from_kwargs(rows=4, cols=32,
                                                                  projections=24)))
    return path


@pytest.mark.parametrize("order", ORDERINGS, ids=["-".join(o) for o in ORDERINGS])
def test_check_and_recon_give_the_same_verdict(order: tuple[str, ...], scan: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
                        + "".join(MIDDLE[name] for name in order)
                        + "  - method: fbp\n    parameters: {center: 15.5}\n")
    checked = main(["check", str(pipeline)])
    checked_err = capsys.readouterr().err
    out = tmp_path / "rec.h5"
    ran = main(["recon", str(scan), "-o", str(out), "--pipeline", str(pipeline),
                "--block", "5", "--quiet"])
    ran_err = capsys.readouterr().err
    assert checked == ran, (order, checked_err, ran_err)
    if ran == 0:
        with h5py.File(out, "r") as handle:
            assert bool(handle["/entry"].attrs["complete"])
            assert handle["/entry/reconstruction/data"].shape == (4, 32, 32)
    else:
        assert checked == 2 and ran_err.count("error:") == 1, ran_err

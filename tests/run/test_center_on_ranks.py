"""On R ranks, as on one, a fixed CoR off a scan's detector refuses that scan at its start
(every rank alike, before any frame is held), and the next scan on the same ranks opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.registry import REGISTRY
from streamer.errors import ScanFailedError
from streamer.exchange.links import MemoryLink
from streamer.pipeline.config import parse_pipeline
from streamer.run.ranks import RankedReconstruction
from streamer.wire.protocol import StartHeader
from tests.run.ranks import run_ranks

PIPELINE = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
            "  - method: fbp\n    parameters: {center: 900}\n")


def _start(scan: str, cols: int) -> StartHeader:
    return StartHeader(scan=scan, rows=4, cols=cols, dtype="uint16", frames=14,
                       projections=10, flats=2, darks=2, normalisation="flat_dark")


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_cor_off_the_detector_refuses_the_scan_on_every_rank(tmp_path: Path,
                                                               ranks: int) -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="ranks.yaml").steps

    def work(link: MemoryLink) -> tuple[str, bool]:
        ranked = RankedReconstruction(steps, PIPELINE, tmp_path / f"rank{link.rank}",
                                      link.duplicate(), link.duplicate(),
                                      memory_bytes=1 << 28)
        with pytest.raises(ScanFailedError) as refused:
            ranked.open_scan(_start("narrow", cols=640))  # 900 is off 0 … 639
        ranked.open_scan(_start("wide", cols=1024))  # on it: opens
        return str(refused.value), ranked._scan is not None

    results = run_ranks(ranks, work)
    for reason, opened in results:
        assert "refused at its start" in reason
        assert "expected a detector column in [0, 639]" in reason and "got 900" in reason
        assert opened

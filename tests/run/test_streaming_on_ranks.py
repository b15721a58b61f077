"""Streaming reconstruction on R ranks (in-memory link, ranks in threads): each rank's
band accumulates as corrected projection pieces land through the reslice, so at the last
frame only the last piece's share and the write remain. The streamed volume equals the
one reconstructed at close on the same ranks (same bands, same blocks) within 1e-5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks

CONFIG = SimulationConfig.from_kwargs(rows=6, cols=64, projections=120, cor_px=33.5)
STREAMS = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fourier_fbp
    parameters: {center: 33.5}
"""


def reconstruct(tmp_path: Path, ranks: int, *, stream: bool) -> tuple[np.ndarray, list[str]]:
    pipeline = tmp_path / "streams.yaml"
    pipeline.write_text(STREAMS)
    output = tmp_path / f"{'stream' if stream else 'batch'}{ranks}.h5"
    lines: list[str] = []

    def rank(link: MemoryLink) -> object:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=16,
                                 block_sinograms=2)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link, log=lines.append,
                              stream=stream)

    results = run_ranks(ranks, rank)
    assert results[0] is not None and results[0].complete, results[0]
    with h5py.File(output) as file:
        return file["/entry/reconstruction/data"][...], lines


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_streamed_volume_equals_the_volume_reconstructed_at_close(
        tmp_path: Path, ranks: int) -> None:
    streamed, lines = reconstruct(tmp_path, ranks, stream=True)
    assert any("reconstruction: streaming" in line for line in lines), lines
    assert not any("back to reconstruction at close" in line for line in lines), lines
    batch, batch_lines = reconstruct(tmp_path, ranks, stream=False)
    assert not any("reconstruction: streaming" in line for line in batch_lines)
    assert streamed.shape == batch.shape == (CONFIG.rows, CONFIG.cols, CONFIG.cols)
    error = np.linalg.norm(streamed - batch) / np.linalg.norm(batch)
    assert 0 < error < 1e-5, error  # 0 would mean the batch path ran twice


def test_a_cor_found_at_close_is_reconstructed_at_close(tmp_path: Path) -> None:
    pipeline = tmp_path / "auto.yaml"
    pipeline.write_text(STREAMS.replace("{center: 33.5}", "{}"))
    lines: list[str] = []
    output = tmp_path / "auto.h5"

    def rank(link: MemoryLink) -> object:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=16)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link, log=lines.append)

    results = run_ranks(2, rank)
    assert results[0] is not None and results[0].complete, results[0]
    assert any("the CoR is found at close" in line for line in lines), lines

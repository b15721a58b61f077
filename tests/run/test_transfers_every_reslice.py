"""Transfers on R ranks count every reslice: the band exchange (the first) and each later
transpose of a several-reslice pipeline, per rank and summed, in the run report's
``transfers`` and its terminal line (the ``run`` service on 2 ranks with the relay, whose
figures keep the image tail's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from stages.registry import REGISTRY
from streamer.exchange.reslice import row_bands
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.sections import sections_of
from tests.run import test_feature_matrix as matrix

#: projection → sinogram (angles halved) → projection → sinogram: reslices 2 and 3 are
#: transposes of the bands (rows × 30 angles × 48 columns, float32).
SEVERAL = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: average_projection_frames
  - method: gaussian_filter
    parameters: {sigma: 1.0}
  - method: fbp
    parameters: {filter_name: hann, center: 23.5}
  - method: calculate_stats
    id: statistics
    side_outputs: {glob_stats: glob_stats}
  - method: rescale_to_int
    parameters: {glob_stats: "${{statistics.side_outputs.glob_stats}}"}
  - method: save_to_images
    parameters: {subfolder_name: images}
"""


@pytest.fixture
def context() -> Any:
    with zmq.Context() as context:
        yield context


def test_transfers_count_the_later_reslices_on_two_ranks(
        tmp_path: Path, context: zmq.Context[Any]) -> None:
    steps = parse_pipeline(SEVERAL, REGISTRY, source="several.yaml").steps
    assert len(sections_of(steps)) == 4  # three reslices
    output, _, _, dealt, _ = matrix.run_scan(2, tmp_path, context, pipeline=SEVERAL)
    assert output.complete, output
    config = matrix.CONFIG
    rows, cols, angles = config.rows, config.cols, config.projections // 2
    bands = row_bands(rows, 2)  # rows of each rank's band
    ranges = row_bands(angles, 2)  # angles of each rank's range between the transposes
    pixel = cols * 4  # float32
    transfers = output.figures["transfers"]
    later_total = 0
    for rank in range(2):
        band = bands[rank][1] - bands[rank][0]
        own = ranges[rank][1] - ranges[rank][0]
        # reslice 1: each projection it corrected, the other ranks' rows
        first_sent = dealt.projections[rank] * (rows - band) * pixel
        first_received = (config.projections - dealt.projections[rank]) * band * pixel
        # reslice 2 (bands → angles): its rows of the others' angles; 3 (back): its angles
        # of the others' rows
        later_sent = band * (angles - own) * pixel + own * (rows - band) * pixel
        later_received = own * (rows - band) * pixel + band * (angles - own) * pixel
        reslice = transfers["per_rank"][str(rank)]["reslice"]
        assert reslice["bytes_sent"] == first_sent + later_sent
        assert reslice["bytes_received"] == first_received + later_received
        later_total += later_sent
    total = transfers["total"]["reslice"]
    assert total["bytes_sent"] == total["bytes_received"]
    first_total = sum(dealt.projections[r] * (rows - (bands[r][1] - bands[r][0])) * pixel
                      for r in range(2))
    assert total["bytes_sent"] == first_total + later_total and later_total > 0
    assert total["messages_sent"] == total["messages_received"]
    megabytes = f"transfers: reslice {total['bytes_sent'] / 1e6:.1f} MB in " \
                f"{total['messages_sent']} messages"
    assert output.notes and output.notes[0].startswith(megabytes), output.notes
    # the image tail's figure and line survive the relay's (run's R-rank observer)
    assert output.images is not None and output.figures["images"]["count"] == rows
    assert output.notes[-1] == f"save_to_images: {rows} TIFFs in {output.images[0]}"

"""Preview reconstruction: exact against the FBP stage, and converging as projections arrive."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.recon.fbp import fbp, filter_response
from streamer.live.client import Control, Preview, ScanEnd, Subscription
from streamer.live.preview import (
    PreviewGeometry,
    backproject,
    bin_columns,
    bin_image,
    filter_rows,
    scale,
    sweep_image,
)
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.feed.conftest import fixed_center_pipeline


def _sinogram(cols: int, cor: float, projections: int = 120) -> tuple[Any, Any]:
    scan = SimulatedScan(SimulationConfig(rows=4, cols=cols, projections=projections,
                                          cor_px=cor))
    layout = scan.layout
    indices = np.flatnonzero(layout.image_keys == 0)
    lines = np.stack([scan.attenuation(i, i + 1)[0] for i in indices]).astype(np.float32)
    return lines[:, [1, 2], :], layout.angles_deg[indices]  # (angles, 2 rows, cols)


def _incremental(lines: Any, angles_deg: Any, cor: float, geometry: PreviewGeometry,
                 block: int = 7) -> Any:
    response = filter_response(geometry.length)
    x, y = geometry.grid()
    acc = np.zeros((lines.shape[1], geometry.size ** 2), dtype=np.float32)
    for first in range(0, len(angles_deg), block):  # projections one block at a time
        part = slice(first, first + block)
        filtered = filter_rows(bin_columns(lines[part], geometry.binning), geometry, response)
        backproject(acc, filtered, np.deg2rad(angles_deg[part]), center=cor, geometry=geometry,
                    x=x, y=y)
    size = geometry.size
    return scale(acc, len(angles_deg), geometry.binning).reshape(-1, size, size)


# (152 = 4 x 38: the binned detector's own grid is then the binned slice grid.)
@pytest.mark.parametrize(("cols", "max_size", "cor"), [(80, 512, 41.5), (152, 40, 73.0)])
def test_incremental_preview_is_the_fbp_of_its_rows(cols: int, max_size: int, cor: float
                                                    ) -> None:
    lines, angles = _sinogram(cols, cor)
    geometry = PreviewGeometry.for_detector(cols, max_size)
    preview = _incremental(lines, angles, cor, geometry)
    binned = bin_columns(lines, geometry.binning)  # (angles, rows, width)
    # The same filter, weights and interpolation as the fbp stage, on the binned detector
    # (whose CoR is the binned column of the axis); values per unbinned pixel.
    reference = fbp(np.ascontiguousarray(binned.transpose(1, 0, 2)), angles_deg=angles,
                    center=geometry.binned_center(cor)) / geometry.binning
    assert preview.shape == reference.shape
    # float32 sums in a different order: agreement to ~1e-6 relative; 1e-4 leaves room.
    error = np.linalg.norm(preview - reference) / np.linalg.norm(reference)
    assert error < 1e-4, error
    if geometry.binning == 1:  # unbinned: the final slice itself
        final = fbp(np.ascontiguousarray(lines.transpose(1, 0, 2)), angles_deg=angles,
                    center=cor)
        assert np.linalg.norm(preview - final) / np.linalg.norm(final) < 1e-4


@pytest.mark.parametrize("cols", [160, 150])
def test_binned_preview_lies_on_the_binned_slice_grid(cols: int) -> None:
    # A binned preview is compared with the binned final slice: same grid (also when the
    # width is not a multiple of the binning), so the difference is only the resolution
    # lost by binning before filtering.
    cor = cols / 2 + 0.5
    lines, angles = _sinogram(cols, cor, projections=240)
    geometry = PreviewGeometry.for_detector(cols, 40)  # binning 4
    preview = _incremental(lines, angles, cor, geometry)
    final = fbp(np.ascontiguousarray(lines.transpose(1, 0, 2)), angles_deg=angles, center=cor)
    binned = np.stack([bin_image(image, geometry.binning) for image in final])
    aligned = np.linalg.norm(preview - binned) / np.linalg.norm(binned)
    shifted = np.linalg.norm(preview - np.roll(binned, 1, axis=2)) / np.linalg.norm(binned)
    # Binning a discontinuous phantom before the ramp filter costs ~20 % (measured 0.2 at
    # this size); a one-pixel misregistration would cost far more.
    assert aligned < 0.3, aligned
    assert shifted > 1.5 * aligned, (aligned, shifted)


def test_sweep_image_is_sharpest_at_the_true_center() -> None:
    cols, cor = 96, 50.0
    lines, angles = _sinogram(cols, cor, projections=180)
    geometry = PreviewGeometry.for_detector(cols)
    filtered = filter_rows(lines[:, :1, :], geometry, filter_response(geometry.length))
    centers = [cor - 3, cor - 1, cor, cor + 1, cor + 3]
    images = [sweep_image(filtered[:, 0, :], np.deg2rad(angles), c, geometry, 64)
              for c in centers]
    # A wrong CoR smears edges into arcs: the total variation of the image grows.
    variation = [float(np.abs(np.diff(image, axis=0)).sum() + np.abs(np.diff(image, axis=1)).sum())
                 for image in images]
    assert int(np.argmin(variation)) == 2, variation


def test_previews_converge_to_the_final_slice(live_run: Any) -> None:
    cor = 45.5
    run = live_run(pipeline=fixed_center_pipeline(cor), preview_interval_s=0.0, sndhwm=10_000)
    scan = SimulatedScan(SimulationConfig(rows=8, cols=96, projections=240, cor_px=cor))
    with Subscription(run.feed.address, timeout_s=30, hwm=10_000) as subscription, \
            Control(str(run.feed.control_address)) as control:
        subscription.wait_connected()
        previews: list[Preview] = []

        def shown(projections: int) -> None:
            # Handshake: each block of 8 projections gets its own preview before the next
            # block is sent (no pacing, no timing: the same checkpoints on any machine).
            while projections and not (previews and previews[-1].header.projections
                                       == projections):
                message = subscription.receive()
                if isinstance(message, Preview):
                    previews.append(message)

        run.send_refs_first_shuffled(scan, "converge", after_block=shown)
        for message in subscription:
            if isinstance(message, Preview):
                previews.append(message)
            if isinstance(message, ScanEnd):
                break
        run.join()
        rows = previews[-1].header.rows
        finals = [np.asarray(control.slice(row).images[0]) for row in rows]
    assert subscription.missed == 0
    assert previews[-1].header.projections == 240
    assert [control_row for control_row in rows] == [2, 4, 6]  # a quarter, half, 3/4 of 8

    def error(preview: Preview) -> float:
        return float(np.mean([np.linalg.norm(image - final) / np.linalg.norm(final)
                              for image, final in zip(preview.images, finals, strict=True)]))

    def at(fraction: float) -> Preview:
        return next(p for p in previews if p.header.projections >= fraction * 240)

    assert (at(0.25).header.projections, at(0.5).header.projections) == (64, 120)
    errors = [error(at(0.25)), error(at(0.5)), error(previews[-1])]
    # Shuffled blocks: a quarter of the angles leaves streaks (~0.5 relative), half fewer;
    # with every projection the preview is the FBP of the row (float32 rounding only).
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-3, errors
